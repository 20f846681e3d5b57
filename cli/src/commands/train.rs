//! `trio train`: the study's baselines and the fused model, on the catalogue's own labels.

use clap::Args;
use trio_engine::catalog::{Catalog, TrainOptions};
use trio_engine::train::TrainConfig;
use trio_lab::Markdown;

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
    /// Training hyper-parameters as JSON (a `TrainConfig`; absent keys keep their defaults,
    /// e.g. `{"lr": 0.002, "model": {"aux_weight": 0.5}}`). `--seed`, `--holdout`,
    /// `--label-field` and `--epochs` still apply on top.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Store the new model without making it active (`trio models activate V` later).
    #[arg(long)]
    keep_active: bool,
    #[command(flatten)]
    finetune: FinetuneArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

impl TrainArgs {
    pub fn options(&self) -> anyhow::Result<TrainOptions> {
        let mut config = TrainConfig {
            seed: self.seed,
            holdout: self.holdout,
            label_field: self.label_field.clone(),
            ..read_train_config(self.config.as_deref())?
        };
        if let Some(e) = self.epochs {
            config.epochs = e;
        }
        self.finetune.apply(&mut config);
        Ok(TrainOptions {
            config,
            group_field: self.group_field.clone(),
            keep_active: self.keep_active,
        })
    }
}

pub fn run(args: TrainArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let bars = Bars::new(!global.show_progress());
    let outcome = catalog.train(&args.options()?, &bars)?;
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
        if let Some(t) = &o.image_tuning {
            println!("{}", t.summary());
        }
        print!("{}", o.report.to_markdown());
        println!(
            "{} fused vectors stored; v{} is {state}",
            o.fused_vectors, o.version
        );
    })
}

/// Fine-tuning the image tower's top (the study fine-tuned the top half of its CNN).
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Fine-tune the top of the image tower on the labels before training the fused model.
    /// Meant for a GPU (`--device cuda`); on a CPU, `--finetune-blocks 1` keeps it to minutes.
    #[arg(long)]
    finetune_image: bool,
    /// Image-tower blocks to fine-tune, counted from the top (default: half of them).
    #[arg(long, requires = "finetune_image")]
    finetune_blocks: Option<usize>,
    /// Most fine-tuning epochs (early stopping on validation usually ends sooner).
    #[arg(long, requires = "finetune_image")]
    finetune_epochs: Option<usize>,
}

impl FinetuneArgs {
    /// Whether `--finetune-image` was given.
    pub fn requested(&self) -> bool {
        self.finetune_image
    }

    /// Turns fine-tuning on in `config` (keeping settings from `--config`) when asked.
    pub fn apply(&self, config: &mut TrainConfig) {
        if !self.finetune_image {
            return;
        }
        let tuning = config.finetune_image.get_or_insert_with(Default::default);
        if let Some(b) = self.finetune_blocks {
            tuning.blocks = Some(b);
        }
        if let Some(e) = self.finetune_epochs {
            tuning.epochs = e;
        }
    }
}

/// The training settings in `path` (JSON, absent keys at their defaults), or the defaults.
pub fn read_train_config(path: Option<&std::path::Path>) -> anyhow::Result<TrainConfig> {
    use anyhow::Context;
    let Some(path) = path else {
        return Ok(TrainConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the training config {}", path.display()))?;
    let given: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing the training config {}", path.display()))?;
    // Laid over the defaults key by key, so an absent nested key (say `model.text_fields`)
    // keeps `TrainConfig::default()`'s value rather than the nested type's own default.
    let mut merged = serde_json::to_value(TrainConfig::default())?;
    overlay(&mut merged, given);
    let config: TrainConfig = serde_json::from_value(merged)
        .with_context(|| format!("reading the training config {}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("the training config {}", path.display()))?;
    Ok(config)
}

/// Writes every key of `top` into `base`, recursing into objects present in both.
fn overlay(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
