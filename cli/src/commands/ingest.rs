//! `trio ingest`: a manifest (JSONL/CSV) or the demo catalogue into the database.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use trio_engine::catalog::{Catalog, DEFAULT_LOAD_BATCH};
use trio_engine::exchange::feature_files;
use trio_engine::ingest::demo::{self, Vendor};
use trio_engine::ingest::manifest::{self, ManifestOptions};
use trio_engine::ingest::pipeline::{IngestOptions, IngestReport};
use trio_engine::store::{PutMode, Store};

use crate::output;
use crate::progress::Bars;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The manifest: JSONL or CSV with id, image, title, description, tags, label, and any
    /// other fields (kept as metadata).
    #[arg(required_unless_present_any = ["demo", "features"], conflicts_with_all = ["demo", "features"])]
    manifest: Option<PathBuf>,
    /// Load precomputed features instead (Parquet files, or folders of them, from `trio embed`
    /// or `trio items export`): no tower runs; the indexes are built once at the end.
    #[arg(long, num_args = 1.., conflicts_with = "demo")]
    features: Vec<PathBuf>,
    /// Ingest the demo catalogue (emoji from the google and twitter renders; `trio fetch` first).
    #[arg(long)]
    demo: bool,
    /// Demo only: leave out skin-tone variants (about half the images).
    #[arg(long, requires = "demo")]
    no_skin_tones: bool,
    /// Resolve relative image paths against this folder (default: the manifest's folder).
    #[arg(long)]
    images_root: Option<PathBuf>,
    /// Replace stored items whose content changed (default: keep them).
    #[arg(long)]
    update: bool,
    /// Exit non-zero if any row failed.
    #[arg(long)]
    strict: bool,
    /// Write every failed row (row number, id, reason) to this file as JSONL.
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Rows per commit (and per tower batch); default 64, or 1024 with --features.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Ingest only the first N rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Longest text kept, in characters; longer texts are cut with a warning.
    #[arg(long, default_value_t = manifest::DEFAULT_MAX_TEXT_CHARS)]
    max_text_chars: usize,
    /// Print each committed chunk's ids on stderr as `committed <id>` lines (for tooling).
    #[arg(long, hide = true)]
    report_commits: bool,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

/// Exit code when not a single row could be ingested.
pub const EXIT_NOTHING_INGESTED: i32 = 2;
/// Exit code under `--strict` when some rows failed.
pub const EXIT_SOME_FAILED: i32 = 3;

pub fn run(args: IngestArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    // The errors file is opened before any row is read: a path that cannot be written must
    // fail the run before it commits anything, not after.
    let errors_file = args
        .errors
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("cannot create the errors file {}", path.display()))
        })
        .transpose()?;
    let device = global.device()?;
    let bars = Bars::new(!global.show_progress());
    let catalog = Catalog::open_or_create(&args.db.db, args.towers.settings(global)?, device)?;
    if !args.features.is_empty() {
        let files = feature_files(&args.features)?;
        let report = catalog.ingest_features(
            &files,
            args.batch_size.unwrap_or(DEFAULT_LOAD_BATCH),
            &bars,
            &mut |ids| report_commits(args.report_commits, ids),
        )?;
        drop(catalog);
        if report.inserted > 0 {
            // A bulk load's transactions leave freed pages behind: a third of the file at 100k
            // rows (BENCHMARKS.md, "Scale-out"). Compacting needs the database to itself.
            let (before, after) = Store::open(&args.db.db)?.compact()?;
            if global.show_progress() {
                eprintln!(
                    "compacted {}: {before} to {after} bytes",
                    args.db.db.display()
                );
            }
        }
        return finish(&args, errors_file, report, global);
    }
    let rows: Box<dyn Iterator<Item = _>> = if args.demo {
        let home = global.home()?;
        let opts = demo::DemoOptions {
            skin_tones: !args.no_skin_tones,
        };
        let rows = demo::load_with(&home.emoji_dir(), &[Vendor::Google, Vendor::Twitter], &opts)
            .context("reading the demo catalogue (run `trio fetch` first)")?;
        Box::new(rows.into_iter().map(Ok))
    } else {
        let path = args
            .manifest
            .as_ref()
            .context("a manifest path or --demo is needed")?;
        let opts = ManifestOptions {
            images_root: args.images_root.clone(),
            max_text_chars: args.max_text_chars,
            ..ManifestOptions::default()
        };
        Box::new(manifest::open(path, &opts)?)
    };
    let total = match (&args.manifest, args.limit) {
        (_, Some(n)) => Some(n as u64),
        _ => None,
    };
    bars_start(&bars, total);
    let opts = IngestOptions {
        mode: if args.update {
            PutMode::Update
        } else {
            PutMode::Skip
        },
        batch_size: args.batch_size.unwrap_or(64),
        limit: args.limit,
    };
    let report = catalog.ingest(rows, &opts, &bars, &mut |ids| {
        report_commits(args.report_commits, ids)
    })?;
    trio_engine::Progress::finish(&bars);
    finish(&args, errors_file, report, global)
}

/// `committed <id>` lines on stderr, for tooling that tracks what is durable.
fn report_commits(enabled: bool, ids: &[String]) {
    if enabled {
        let mut err = std::io::stderr().lock();
        for id in ids {
            let _ = writeln!(err, "committed {id}");
        }
    }
}

/// Writes the errors file and the report; the exit code says whether rows failed.
fn finish(
    args: &IngestArgs,
    errors_file: Option<std::fs::File>,
    report: IngestReport,
    global: &GlobalArgs,
) -> anyhow::Result<i32> {
    if let (Some(path), Some(file)) = (&args.errors, errors_file) {
        output::write_row_errors(path, file, &report.errors)?;
    }
    let code = exit_code(&report, args.strict);
    output::emit(global.json, &report, |r| {
        println!(
            "ingested {} new, {} updated, {} skipped (already stored), {} failed of {} rows in {:.1}s",
            r.inserted, r.updated, r.skipped, r.failed, r.rows, r.times.total_s
        );
        for e in r.errors.iter().take(10) {
            println!("  {e}");
        }
        if r.errors.len() > 10 {
            println!(
                "  … and {} more (use --errors FILE for all)",
                r.errors.len() - 10
            );
        }
    })?;
    Ok(code)
}

fn bars_start(bars: &Bars, total: Option<u64>) {
    trio_engine::Progress::start(bars, "ingest", total);
}

fn exit_code(report: &IngestReport, strict: bool) -> i32 {
    if report.rows > 0 && report.stored() + report.skipped == 0 {
        EXIT_NOTHING_INGESTED
    } else if strict && report.failed > 0 {
        EXIT_SOME_FAILED
    } else {
        0
    }
}
