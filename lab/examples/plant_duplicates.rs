//! Plants copies of demo catalogue images for the duplicate-detection measurement
//! (lab/scripts/dup_eval.sh runs it; see BENCHMARKS.md).
//!
//! ```sh
//! cargo run -p trio-lab --example plant_duplicates -- --out DIR [--every 50] [--offset 0]
//! ```
//!
//! Takes every `every`-th base emoji render (no skin tone) of the demo catalogue, starting at
//! the `offset`-th (a validation set takes another offset than the test set), and writes:
//! - `DIR/copies/`: its five planted copies (`plant_copies`: resize, 90% crop, JPEG quality 40,
//!   brightness +20, horizontal flip), and `DIR/planted.jsonl`, a manifest ingesting them as
//!   image-only items `planted:<original id>:<transform>`;
//! - `DIR/all/`: every demo image and every copy under one flat name (`<id>.png`, `:` as `_`),
//!   the folder imagededup reads;
//! - `DIR/planted.tsv` (original, copy, transform), `DIR/vendor_pairs.tsv` (the google and the
//!   twitter render of one emoji) and `DIR/ids.tsv` (file name, Trio id, emoji key): what the scorer reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use trio_engine::fetch::Home;
use trio_engine::ingest::demo::{self, DemoOptions, Vendor};
use trio_lab::planted::plant_copies;

fn file_name(id: &str) -> String {
    format!("{}.png", id.replace([':', '/'], "_"))
}

fn main() -> anyhow::Result<()> {
    let mut out: Option<PathBuf> = None;
    let mut every = 50usize;
    let mut offset = 0usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().map(PathBuf::from),
            "--every" => every = it.next().context("--every needs a value")?.parse()?,
            "--offset" => offset = it.next().context("--offset needs a value")?.parse()?,
            other => bail!("unknown argument {other} (--out DIR, --every N, --offset K)"),
        }
    }
    let out = out.context("give --out DIR")?;
    if every == 0 || offset >= every {
        bail!("--every must be at least 1 and --offset below it");
    }
    let home = Home::resolve(None)?;
    let rows = demo::load_with(
        &home.emoji_dir(),
        &[Vendor::Google, Vendor::Twitter],
        &DemoOptions::default(),
    )?;
    let (copies_dir, all_dir) = (out.join("copies"), out.join("all"));
    for d in [&copies_dir, &all_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let mut ids = String::from("# file\tid\temoji_key\n");
    let mut planted_tsv = String::from("# original\tcopy\ttransform\n");
    let mut manifest = String::new();
    // emoji_key of base renders → (vendor, file)
    let mut renders: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut base_seen = 0usize;
    let mut originals = 0usize;
    for row in &rows {
        let (Some(id), Some(path)) = (&row.id, &row.image) else {
            continue;
        };
        let file = file_name(id);
        link_or_copy(path, &all_dir.join(&file))?;
        let emoji_key = row
            .metadata
            .get("emoji_key")
            .and_then(|v| v.as_str())
            .unwrap_or(id)
            .to_string();
        writeln!(ids, "{file}\t{id}\t{emoji_key}")?;
        if row.metadata.contains_key("skin_tone") {
            continue;
        }
        let vendor = row
            .metadata
            .get("vendor")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        renders
            .entry(emoji_key.clone())
            .or_default()
            .push((vendor, file.clone()));
        base_seen += 1;
        if (base_seen - 1) % every != offset {
            continue;
        }
        originals += 1;
        let img = image::open(path).with_context(|| format!("decoding {}", path.display()))?;
        for (transform, copy) in plant_copies(&img)? {
            let copy_id = format!("planted:{id}:{transform}");
            let copy_file = file_name(&copy_id);
            let copy_path = copies_dir.join(&copy_file);
            copy.save(&copy_path)
                .with_context(|| format!("writing {}", copy_path.display()))?;
            link_or_copy(&copy_path, &all_dir.join(&copy_file))?;
            writeln!(ids, "{copy_file}\t{copy_id}\t{emoji_key}")?;
            writeln!(planted_tsv, "{file}\t{copy_file}\t{transform}")?;
            let line = serde_json::json!({
                "id": copy_id,
                "image": std::path::absolute(&copy_path)?,
                "planted_from": id,
                "transform": transform,
            });
            writeln!(manifest, "{line}")?;
        }
    }
    let mut vendor_tsv = String::from("# google\ttwitter\n");
    let mut vendor_pairs = 0;
    for files in renders.values() {
        let g = files.iter().find(|(v, _)| v == "google");
        let t = files.iter().find(|(v, _)| v == "twitter");
        if let (Some(g), Some(t)) = (g, t) {
            writeln!(vendor_tsv, "{}\t{}", g.1, t.1)?;
            vendor_pairs += 1;
        }
    }
    for (name, text) in [
        ("ids.tsv", &ids),
        ("planted.tsv", &planted_tsv),
        ("planted.jsonl", &manifest),
        ("vendor_pairs.tsv", &vendor_tsv),
    ] {
        std::fs::write(out.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    println!(
        "{} demo images, {originals} originals with 5 copies each, {vendor_pairs} google/twitter pairs, in {}",
        rows.len(),
        out.display()
    );
    Ok(())
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        return Ok(());
    }
    let from = std::path::absolute(from)?;
    #[cfg(unix)]
    if std::os::unix::fs::symlink(&from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(&from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}
