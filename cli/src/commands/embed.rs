//! `trio embed`: tower features for images and texts (and ImageNet top-5 for images), or for a
//! whole manifest (or one shard of it) into a Parquet feature file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use trio_engine::exchange::{ExchangeRow, FeatureFileWriter, Precision};
use trio_engine::ingest::manifest::{self, ManifestOptions};
use trio_engine::ingest::pipeline::{self, IngestOptions, IngestReport};
use trio_engine::ingest::shard::Shard;
use trio_engine::towers::image::{top_k, ClassScore};
use trio_engine::towers::service::EmbeddingService;

use crate::output;
use crate::progress::Bars;
use crate::settings::{GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image files to embed (repeatable; batched together).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Texts to embed (repeatable; batched together).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// ImageNet classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Embed every row of this manifest (JSONL or CSV, as `trio ingest` reads) into a feature
    /// file under `--out`, instead of printing.
    #[arg(long, conflicts_with_all = ["images", "texts"], requires = "out")]
    manifest: Option<PathBuf>,
    /// Folder for the feature file `part-IIIII-of-NNNNN.parquet` and its errors
    /// `part-IIIII-of-NNNNN.errors.jsonl`.
    #[arg(long, requires = "manifest")]
    out: Option<PathBuf>,
    /// Embed only shard I of N (0-based): rows whose number r has (r - 1) % N == I.
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    /// Rows per tower batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Vector precision in the file: f32, or f16 for half the size.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Resolve relative image paths against this folder (default: the manifest's folder).
    #[arg(long)]
    images_root: Option<PathBuf>,
    /// Longest text kept, in characters; longer texts are cut with a warning.
    #[arg(long, default_value_t = manifest::DEFAULT_MAX_TEXT_CHARS)]
    max_text_chars: usize,
    #[command(flatten)]
    towers: TowerArgs,
}

/// What `trio embed --manifest` did.
#[derive(Serialize)]
struct ShardReport<'a> {
    shard: String,
    features_file: PathBuf,
    errors_file: PathBuf,
    #[serde(flatten)]
    report: &'a IngestReport,
}

#[derive(Serialize)]
struct ImageResult {
    image: String,
    features: Vec<f32>,
    imagenet_top: Vec<ClassScore>,
}

#[derive(Serialize)]
struct TextResult {
    text: String,
    /// `null` for a missing (blank) text: it has no embedding.
    embedding: Option<Vec<f32>>,
}

#[derive(Serialize)]
struct EmbedOutput {
    device: &'static str,
    images: Vec<ImageResult>,
    texts: Vec<TextResult>,
}

pub fn run(args: EmbedArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let (Some(manifest), Some(out)) = (&args.manifest, &args.out) {
        return embed_manifest(&args, manifest, out, global);
    }
    if args.images.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to embed: pass --image PATH and/or --text TEXT");
    }
    let device = global.device()?;
    let mut out = EmbedOutput {
        device: trio_engine::device::device_name(&device),
        images: Vec::new(),
        texts: Vec::new(),
    };
    if !args.images.is_empty() {
        let tower = args.towers.load_image_tower(global, &device)?;
        let pre = tower.preprocessor();
        let prepared = args
            .images
            .iter()
            .map(|p| pre.prepare_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let emb = tower.embed(&prepared)?;
        for ((path, features), probs) in args.images.iter().zip(emb.features).zip(emb.probabilities)
        {
            out.images.push(ImageResult {
                image: path.display().to_string(),
                features,
                imagenet_top: top_k(&probs, args.top),
            });
        }
    }
    if !args.texts.is_empty() {
        let tower = args.towers.load_text_tower(global, &device)?;
        let texts: Vec<Option<&str>> = args.texts.iter().map(|t| Some(t.as_str())).collect();
        let emb = tower.embed_with_report(&texts)?;
        if !emb.truncated.is_empty() && !global.quiet && !global.json {
            eprintln!(
                "warning: {} text(s) cut at the model's maximum length",
                emb.truncated.len()
            );
        }
        for (text, embedding) in args.texts.iter().zip(emb.vectors) {
            out.texts.push(TextResult {
                text: text.clone(),
                embedding,
            });
        }
    }
    output::emit(global.json, &out, |o| {
        for r in &o.images {
            println!("{}: {}", r.image, output::short_vector(&r.features));
            for c in &r.imagenet_top {
                println!(
                    "    {:>5.1}%  {} ({})",
                    c.probability * 100.0,
                    c.label,
                    c.index
                );
            }
        }
        for r in &o.texts {
            match &r.embedding {
                Some(v) => println!("{:?}: {}", r.text, output::short_vector(v)),
                None => println!("{:?}: missing (blank text has no embedding)", r.text),
            }
        }
    })
}

/// Streams the manifest's shard through both towers into `out/<shard>.parquet`, with its bad
/// rows in `out/<shard>.errors.jsonl`. Both files appear complete or not at all: the errors
/// file is renamed into place first, so a feature file present means its shard is done.
fn embed_manifest(
    args: &EmbedArgs,
    manifest_path: &Path,
    out: &Path,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = args.shard.file_stem();
    let features_path = out.join(format!("{stem}.parquet"));
    let errors_path = out.join(format!("{stem}.errors.jsonl"));
    let settings = args.towers.settings(global)?;
    let device = global.device()?;
    let fingerprint = settings.fingerprint()?;
    let service = EmbeddingService::load(&settings, &device)
        .context("loading the towers (run `trio fetch`?)")?;
    let opts = ManifestOptions {
        images_root: args.images_root.clone(),
        max_text_chars: args.max_text_chars,
        ..ManifestOptions::default()
    };
    let shard = args.shard;
    let rows = manifest::open(manifest_path, &opts)?.filter(move |r| {
        shard.contains(match r {
            Ok(row) => row.row,
            Err(e) => e.row,
        })
    });
    let mut writer = FeatureFileWriter::create(&features_path, &fingerprint, args.precision)?;
    let bars = Bars::new(!global.show_progress());
    trio_engine::Progress::start(&bars, &format!("embed {shard}"), None);
    let ingest_opts = IngestOptions {
        batch_size: args.batch_size,
        ..IngestOptions::default()
    };
    let report = pipeline::embed(rows, &service, &ingest_opts, &bars, &mut |chunk| {
        let rows: Vec<ExchangeRow> = chunk
            .into_iter()
            .map(|e| ExchangeRow {
                source_row: Some(e.row as u64),
                item: e.item,
                features: e.features,
            })
            .collect();
        writer.write(&rows)
    })?;
    trio_engine::Progress::finish(&bars);
    write_errors_atomically(&errors_path, &report)?;
    writer.finish()?;
    let out = ShardReport {
        shard: shard.to_string(),
        features_file: features_path,
        errors_file: errors_path,
        report: &report,
    };
    output::emit(global.json, &out, |o| {
        println!(
            "shard {}: embedded {} of {} rows ({} failed) into {} in {:.1}s",
            o.shard,
            o.report.inserted,
            o.report.rows,
            o.report.failed,
            o.features_file.display(),
            o.report.times.total_s
        );
        if o.report.failed > 0 {
            println!("  errors: {}", o.errors_file.display());
        }
    })
}

fn write_errors_atomically(path: &Path, report: &IngestReport) -> anyhow::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    output::write_row_errors(&tmp, file, &report.errors)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
