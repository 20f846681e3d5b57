//! `trio classify`: labels for any subset of image, title and description; `--claimed` checks
//! a label (machine-in-the-loop verification).

use std::path::PathBuf;

use clap::Args;
use trio_engine::catalog::{Catalog, ClassifyInput};

use crate::output;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// How many labels to return (doubles as tag suggestions).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// A label to verify: does the model agree, and which stored items support each side?
    #[arg(long)]
    claimed: Option<String>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn run(args: ClassifyArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let input = ClassifyInput {
        image_path: args.image,
        image_bytes: None,
        title: args.title,
        description: args.description,
    };
    let result = catalog.classify(&input, args.top, args.claimed.as_deref())?;
    output::emit(global.json, &result, |r| {
        for l in &r.labels {
            println!("{:>6.1}%  {}", l.probability * 100.0, l.label);
        }
        if let Some(c) = &r.claimed {
            let verdict = if c.agrees {
                "agrees with"
            } else {
                "disagrees with"
            };
            println!(
                "model {verdict} `{}` (p = {:.3}); its choice: `{}`",
                c.label, c.probability, c.model_choice
            );
            for e in &c.evidence_claimed {
                println!("  like `{}`: {} ({:.3})", c.label, e.id, e.score);
            }
            for e in &c.evidence_model {
                println!("  like `{}`: {} ({:.3})", c.model_choice, e.id, e.score);
            }
        }
    })
}
