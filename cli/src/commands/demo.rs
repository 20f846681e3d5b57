//! `trio demo`: the whole job on the embedded default — fetch the models and the emoji
//! catalogue, ingest it, train the study's models, print the table, classify a few examples.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use trio_engine::catalog::{
    Catalog, Classification, ClassifyInput, Query, SearchHit, SearchRequest, Space, TrainOptions,
    TrainOutcome,
};
use trio_engine::fetch::{self, FetchOptions};
use trio_engine::ingest::demo::{self, DemoOptions, Vendor};
use trio_engine::ingest::pipeline::{IngestOptions, IngestReport};
use trio_engine::train::TrainConfig;
use trio_engine::Progress;
use trio_lab::Markdown;

use crate::output;
use crate::progress::Bars;
use crate::settings::{GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo database (created if needed; ingest skips items already there).
    #[arg(long, default_value = "demo.trio")]
    db: PathBuf,
    /// Leave out skin-tone variants: about half the images, twice as fast.
    #[arg(long)]
    no_skin_tones: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    towers: TowerArgs,
}

#[derive(Serialize)]
struct Example {
    input: String,
    result: Classification,
}

#[derive(Serialize)]
struct DemoOutput {
    ingest: IngestReport,
    train: TrainOutcome,
    examples: Vec<Example>,
    search: Vec<(String, Vec<SearchHit>)>,
}

pub fn run(args: DemoArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let home = global.home()?;
    let bars = Bars::new(!global.show_progress());
    fetch::fetch(&home, &FetchOptions::default(), &bars)?;

    let catalog =
        Catalog::open_or_create(&args.db, args.towers.settings(global)?, global.device()?)?;
    let opts = DemoOptions {
        skin_tones: !args.no_skin_tones,
    };
    let rows = demo::load_with(&home.emoji_dir(), &[Vendor::Google, Vendor::Twitter], &opts)?;
    bars.start("ingest emoji", Some(rows.len() as u64));
    let ingest = catalog.ingest(
        rows.into_iter().map(Ok),
        &IngestOptions::default(),
        &bars,
        &mut |_| {},
    )?;
    bars.finish();

    let train_opts = TrainOptions {
        config: TrainConfig {
            seed: args.seed,
            ..TrainConfig::default()
        },
        // One emoji drawn by two vendors stays in one split: test emoji are never seen in training.
        group_field: Some("emoji_key".into()),
        keep_active: false,
    };
    let train = catalog.train(&train_opts, &bars)?;

    let photos = home.photos_dir();
    let inputs = [
        (
            "title: \"grinning cat with smiling eyes\"",
            ClassifyInput {
                title: Some("grinning cat with smiling eyes".into()),
                ..Default::default()
            },
        ),
        (
            "title: \"high-speed train\"",
            ClassifyInput {
                title: Some("high-speed train".into()),
                ..Default::default()
            },
        ),
        (
            "image: rocket.jpg (a photo, no text)",
            ClassifyInput {
                image_path: Some(photos.join("rocket.jpg")),
                ..Default::default()
            },
        ),
        (
            "image: chelsea.png + title \"cat\"",
            ClassifyInput {
                image_path: Some(photos.join("chelsea.png")),
                title: Some("cat".into()),
                ..Default::default()
            },
        ),
    ];
    let mut examples = Vec::new();
    for (name, input) in inputs {
        examples.push(Example {
            input: name.to_string(),
            result: catalog.classify(&input, 3, None)?,
        });
    }
    let mut search = Vec::new();
    for q in ["red heart", "pizza"] {
        let req = SearchRequest {
            query: Query::Text(q.into()),
            space: Space::Fused,
            k: 5,
            offset: 0,
            filters: Vec::new(),
        };
        search.push((q.to_string(), catalog.search(&req)?));
    }
    let out = DemoOutput {
        ingest,
        train,
        examples,
        search,
    };
    output::emit(global.json, &out, |o| {
        println!(
            "\ningested {} items ({} new, {} already stored, {} failed) into {}",
            o.ingest.stored() + o.ingest.skipped,
            o.ingest.inserted,
            o.ingest.skipped,
            o.ingest.failed,
            args.db.display()
        );
        println!(
            "\nmodel v{}: test split, {} classes (label = emoji subcategory)",
            o.train.version, o.train.report.classes
        );
        print!("{}", o.train.report.to_markdown());
        println!("\nclassify:");
        for e in &o.examples {
            let top: Vec<String> = e
                .result
                .labels
                .iter()
                .map(|l| format!("{} {:.0}%", l.label, l.probability * 100.0))
                .collect();
            println!("  {:<42} → {}", e.input, top.join(", "));
        }
        println!("\nsearch (fused space, text query):");
        for (q, hits) in &o.search {
            let names: Vec<String> = hits
                .iter()
                .map(|h| h.title.clone().unwrap_or_else(|| h.id.clone()))
                .collect();
            println!("  {:<12} → {}", format!("\"{q}\""), names.join(" | "));
        }
    })
}
