//! Writes the demo catalogue as a JSONL manifest (absolute image paths), so measurements of
//! manifest-driven paths (`trio embed --manifest`, the Ray job) run on real images and texts.
//!
//! ```sh
//! cargo run -p trio-lab --example demo_manifest -- OUT.jsonl [--limit N]
//! ```

use std::io::Write;

use anyhow::Context;
use trio_engine::fetch::Home;
use trio_engine::ingest::demo::{self, DemoOptions, Vendor};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .context("usage: demo_manifest OUT.jsonl [--limit N]")?;
    let limit = match (args.next().as_deref(), args.next()) {
        (Some("--limit"), Some(n)) => n.parse().context("--limit takes a number")?,
        _ => usize::MAX,
    };
    let home = Home::resolve(None)?;
    let rows = demo::load_with(&home.emoji_dir(), &Vendor::ALL, &DemoOptions::default())
        .context("reading the demo catalogue (run `trio fetch` first)")?;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&out).with_context(|| format!("creating {out}"))?,
    );
    for row in rows.into_iter().take(limit) {
        let mut obj = row.metadata.clone();
        obj.insert("id".into(), row.id.into());
        obj.insert(
            "image".into(),
            row.image.map(|p| p.display().to_string()).into(),
        );
        obj.insert("title".into(), row.title.into());
        obj.insert("description".into(), row.description.into());
        obj.insert("tags".into(), row.tags.into());
        obj.insert("label".into(), row.label.into());
        writeln!(f, "{}", serde_json::Value::Object(obj))?;
    }
    f.flush()?;
    Ok(())
}
