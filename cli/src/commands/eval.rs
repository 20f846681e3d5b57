//! `trio eval`: the active model on an external labelled manifest (embedded, never stored), or
//! an evaluation protocol on the catalogue's own items (`--protocol demo|cross-style`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use trio_engine::catalog::{Catalog, EvalOptions, ManifestEvaluation, TrainOptions};
use trio_engine::ingest::manifest::{self, ManifestOptions};
use trio_engine::train::TrainConfig;
use trio_lab::protocol::{self, CrossStyle, ProtocolConfig, ProtocolReport, ProtocolSeries};
use trio_lab::Markdown;

use crate::output;
use crate::progress::Bars;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

/// Evaluation protocols run on the catalogue itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Test groups never seen in training; 20% symmetric label noise on training labels, 34% of
    /// training descriptions and 2% of titles dropped; clean test labels. Trains every variant
    /// (nothing is stored) and reports the study's table, the robustness table and the targets.
    Demo,
    /// The demo protocol, but training and validation see only the items of one style
    /// (`--style-field`, `--train-style`) and the test only the other styles' items of the
    /// unseen test groups: a catalogue whose pictures change supplier.
    CrossStyle,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Demo => "demo protocol",
            Protocol::CrossStyle => "cross-style protocol",
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A labelled manifest (JSONL/CSV, the ingest format) to score the active model on.
    #[arg(
        long,
        required_unless_present = "protocol",
        conflicts_with = "protocol"
    )]
    manifest: Option<PathBuf>,
    /// Resolve relative image paths against this folder (default: the manifest's folder).
    #[arg(long, requires = "manifest")]
    images_root: Option<PathBuf>,
    /// Write every failed row (row number, id, reason) to this file as JSONL.
    #[arg(long, requires = "manifest")]
    errors: Option<PathBuf>,
    /// Rows per tower batch.
    #[arg(long, default_value_t = 64, requires = "manifest")]
    batch_size: usize,
    /// Run an evaluation protocol on the catalogue's own labelled items instead.
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// Protocol: the field holding the class (`label`, or a metadata field).
    #[arg(long, default_value = "label", requires = "protocol")]
    label_field: String,
    /// Protocol: items with equal values of this metadata field stay on one side of the split
    /// (the demo: `emoji_key`, so test emoji are never seen in training).
    #[arg(long, requires = "protocol")]
    group_field: Option<String>,
    /// Cross-style protocol: the metadata field naming each item's style (the demo: `vendor`).
    #[arg(long, required_if_eq("protocol", "cross-style"))]
    style_field: Option<String>,
    /// Cross-style protocol: the style training and validation see (the demo: `google`); the
    /// test holds the other styles.
    #[arg(long, required_if_eq("protocol", "cross-style"))]
    train_style: Option<String>,
    /// Protocol: fraction of each class held out (half validation, half test).
    #[arg(long, default_value_t = 0.2, requires = "protocol")]
    holdout: f64,
    /// Protocol: seed for the split, the injected noise and training.
    #[arg(long, default_value_t = 0, requires = "protocol")]
    seed: u64,
    /// Protocol: run it this many times, with seeds `--seed`, `--seed`+1, …, and judge the
    /// targets on the mean (one test split's luck is about ±1.5 points on the demo).
    #[arg(long, default_value_t = 1, requires = "protocol", value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Protocol: most epochs per model.
    #[arg(long, requires = "protocol")]
    epochs: Option<usize>,
    /// Protocol: training hyper-parameters as JSON (see `trio train --config`).
    #[arg(long, value_name = "FILE", requires = "protocol")]
    config: Option<PathBuf>,
    /// Protocol: fine-tune the image tower's top on each run's degraded training split.
    #[command(flatten)]
    finetune: super::train::FinetuneArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

impl EvalArgs {
    /// Whether this evaluation trains models (a protocol) rather than embedding a manifest.
    pub fn trains(&self) -> bool {
        self.protocol.is_some()
    }
}

pub fn run(args: EvalArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let bars = Bars::new(!global.show_progress());
    if args.manifest.is_some() && args.finetune.requested() {
        anyhow::bail!(
            "--finetune-image trains; it applies to --protocol (a manifest is scored with the active model, fine-tuned or not)"
        );
    }
    match (&args.manifest, args.protocol) {
        (Some(path), _) => eval_manifest(&catalog, path, &args, &bars, global.json),
        (None, Some(p)) => eval_protocol(&catalog, p, &args, &bars, global.json),
        (None, None) => anyhow::bail!("give --manifest FILE or --protocol demo|cross-style"),
    }
}

fn eval_manifest(
    catalog: &Catalog,
    path: &Path,
    args: &EvalArgs,
    bars: &Bars,
    json: bool,
) -> anyhow::Result<()> {
    let opts = ManifestOptions {
        images_root: args.images_root.clone(),
        ..ManifestOptions::default()
    };
    let rows = manifest::open(path, &opts)?;
    let result = catalog.evaluate_manifest(
        rows,
        &EvalOptions {
            batch_size: args.batch_size,
        },
        bars,
    )?;
    if let Some(errors) = &args.errors {
        write_errors(errors, &result)?;
    }
    output::emit(json, &result, |r| print_manifest(r, path))
}

fn print_manifest(r: &ManifestEvaluation, path: &Path) {
    let e = &r.evaluation;
    println!(
        "model v{} on {}: {} rows, {} scored, {} failed, {} unlabelled, {} with labels the model does not know ({:.1}s)",
        r.model_version,
        path.display(),
        r.rows,
        e.scored,
        r.failed,
        e.unlabelled,
        e.unknown(),
        r.seconds
    );
    if !e.unknown_labels.is_empty() {
        let list: Vec<String> = e
            .unknown_labels
            .iter()
            .take(10)
            .map(|(l, n)| format!("{l} ({n})"))
            .collect();
        let more = e.unknown_labels.len().saturating_sub(10);
        println!(
            "  not scored, unknown `{}`: {}{}",
            r.label_field,
            list.join(", "),
            if more > 0 {
                format!(", … and {more} more labels")
            } else {
                String::new()
            }
        );
    }
    for err in r.errors.iter().take(10) {
        println!("  {err}");
    }
    if r.errors.len() > 10 {
        println!(
            "  … and {} more (use --errors FILE for all)",
            r.errors.len() - 10
        );
    }
    let have: Vec<String> = e
        .with_input
        .iter()
        .map(|(input, n)| format!("{input} {n}"))
        .collect();
    println!("scored items having each input: {}", have.join(", "));
    print!("{}", e.to_markdown());
    if e.rows.iter().all(|row| row.model == "fused") {
        println!("(this model was stored without its image-only / text-only baselines: retrain to score them)");
    }
}

fn eval_protocol(
    catalog: &Catalog,
    kind: Protocol,
    args: &EvalArgs,
    bars: &Bars,
    json: bool,
) -> anyhow::Result<()> {
    let mut config = TrainConfig {
        seed: args.seed,
        label_field: args.label_field.clone(),
        ..super::train::read_train_config(args.config.as_deref())?
    };
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    args.finetune.apply(&mut config);
    let opts = TrainOptions {
        config,
        group_field: args.group_field.clone(),
        keep_active: false,
    };
    let cross_style = match (kind, &args.style_field, &args.train_style) {
        (Protocol::CrossStyle, Some(field), Some(train)) => Some(CrossStyle {
            field: field.clone(),
            train: train.clone(),
        }),
        (Protocol::CrossStyle, _, _) => {
            anyhow::bail!("--protocol cross-style needs --style-field and --train-style")
        }
        (Protocol::Demo, None, None) => None,
        (Protocol::Demo, _, _) => {
            anyhow::bail!("--style-field and --train-style apply to --protocol cross-style")
        }
    };
    let protocol = ProtocolConfig {
        holdout: args.holdout,
        cross_style,
        ..ProtocolConfig::default()
    };
    let name = kind.name();
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (0..args.seeds).map(|i| args.seed + i).collect();
    let mut series = protocol::evaluate_catalog(catalog, &opts, &protocol, &seeds, bars)?;
    if args.seeds > 1 {
        let out = SeriesOutput {
            seconds: started.elapsed().as_secs_f64(),
            series,
        };
        return output::emit(json, &out, |o| {
            let r = &o.series.runs[0].report;
            println!(
                "{name}, {} seeds: {} classes; per seed about {} train / {} val / {} test items, {:.1}s",
                o.series.seeds.len(),
                r.classes,
                r.train_items,
                r.val_items,
                r.test_items,
                o.seconds
            );
            for run in &o.series.runs {
                if let Some(t) = &run.image_tuning {
                    println!("seed {}: {}", run.report.seed, t.summary());
                }
            }
            println!("test top-1 per seed:\n{}", o.series.to_markdown());
            print!("{}", o.series.targets_markdown());
        });
    }
    let report = series.runs.pop().context("the protocol ran no seed")?;
    let out = ProtocolOutput {
        targets: report.targets(),
        seconds: started.elapsed().as_secs_f64(),
        report,
    };
    output::emit(json, &out, |o| {
        let r = &o.report.report;
        println!(
            "{name}: {} classes; train {} / val {} / test {} items (test groups also in training: {}), {:.1}s",
            r.classes,
            r.train_items,
            r.val_items,
            r.test_items,
            o.report.test_groups_in_training,
            o.seconds
        );
        println!("{}", o.report.to_markdown());
        print!("{}", o.report.targets_markdown());
    })
}

#[derive(serde::Serialize)]
struct SeriesOutput {
    series: ProtocolSeries,
    seconds: f64,
}

#[derive(serde::Serialize)]
struct ProtocolOutput {
    report: ProtocolReport,
    targets: Vec<protocol::TargetCheck>,
    seconds: f64,
}

fn write_errors(path: &Path, r: &ManifestEvaluation) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for e in &r.errors {
        serde_json::to_writer(&mut f, e)?;
        writeln!(f)?;
    }
    f.flush()?;
    Ok(())
}
