//! `trio train`: the study's baselines and the fused model, on the catalogue's own labels.

use clap::Args;
use trio_engine::catalog::{Catalog, TrainOptions};
use trio_engine::train::TrainConfig;

use crate::output;
use crate::progress::Bars;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The field holding the class: `label`, or any metadata field.
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Keep items with the same value of this metadata field in one split.
    #[arg(long)]
    group_field: Option<String>,
    /// Most epochs (early stopping on validation usually ends sooner).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seed for splits, initialisation and shuffling: same seed, same model.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of each class held out (half validation, half test).
    #[arg(long, default_value_t = 0.04)]
    holdout: f64,
    /// Store the new model without making it active (`trio models activate V` later).
    #[arg(long)]
    keep_active: bool,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

impl TrainArgs {
    pub fn options(&self) -> TrainOptions {
        let mut config = TrainConfig {
            seed: self.seed,
            holdout: self.holdout,
            label_field: self.label_field.clone(),
            ..TrainConfig::default()
        };
        if let Some(e) = self.epochs {
            config.epochs = e;
        }
        TrainOptions {
            config,
            group_field: self.group_field.clone(),
            keep_active: self.keep_active,
        }
    }
}

pub fn run(args: TrainArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let bars = Bars::new(!global.show_progress());
    let outcome = catalog.train(&args.options(), &bars)?;
    let state = if args.keep_active {
        "stored, not active"
    } else {
        "active"
    };
    output::emit(global.json, &outcome, |o| {
        println!(
            "model v{} ({} classes; train {} / val {} / test {} items, {:.1}s)",
            o.version,
            o.report.classes,
            o.report.train_items,
            o.report.val_items,
            o.report.test_items,
            o.report.seconds
        );
        print!("{}", o.report.to_markdown());
        println!(
            "{} fused vectors stored; v{} is {state}",
            o.fused_vectors, o.version
        );
    })
}
