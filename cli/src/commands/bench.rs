//! `trio bench`: tower throughput on this machine's device at several batch sizes, and (with
//! `--parity`) how far a GPU's outputs are from the CPU's on the same inputs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use trio_engine::ingest::demo::{self, Vendor};
use trio_engine::towers::image::PreparedImage;
use trio_engine::{Device, Progress};
use trio_lab::throughput::{self, Parity, Throughput};

use crate::output;
use crate::progress::Bars;
use crate::settings::{GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    batch: Vec<usize>,
    /// Items to time at least, per tower and batch size.
    #[arg(long, default_value_t = 64)]
    min_items: usize,
    /// Seconds to time at least, per tower and batch size.
    #[arg(long, default_value_t = 2.0)]
    min_seconds: f64,
    /// Images to use (default: the test photos in TRIO_HOME).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Texts to use (default: names and tags of the demo emoji in TRIO_HOME).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// A file of texts to use, one per line.
    #[arg(long = "texts-file")]
    texts_file: Option<PathBuf>,
    /// Skip the image tower.
    #[arg(long)]
    no_image: bool,
    /// Skip the text tower.
    #[arg(long)]
    no_text: bool,
    /// Also run the same inputs on the CPU and report the largest output difference.
    #[arg(long)]
    parity: bool,
    #[command(flatten)]
    towers: TowerArgs,
}

#[derive(Serialize)]
struct BenchOutput {
    device: &'static str,
    image_model: String,
    images: usize,
    texts: usize,
    rows: Vec<Throughput>,
    /// Present with `--parity` on a non-CPU device.
    parity: Option<Parity>,
    /// The process's peak resident memory, from the kernel (Linux).
    peak_rss_mib: Option<f64>,
}

pub fn run(args: BenchArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let device = global.device()?;
    let home = global.home()?;
    let min_time = Duration::from_secs_f64(args.min_seconds.max(0.0));
    let bars = Bars::new(!global.show_progress());

    let image_paths = if args.no_image {
        Vec::new()
    } else if args.images.is_empty() {
        photo_paths(&home.photos_dir())?
    } else {
        args.images.clone()
    };
    let texts = if args.no_text {
        Vec::new()
    } else if let Some(file) = &args.texts_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading texts from {}", file.display()))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!lines.is_empty(), "{} holds no texts", file.display());
        lines
    } else if args.texts.is_empty() {
        demo_texts(&home.emoji_dir())?
    } else {
        args.texts.clone()
    };

    let mut out = BenchOutput {
        device: trio_engine::device::device_name(&device),
        image_model: format!("{:?}", args.towers.image_model).to_lowercase(),
        images: 0,
        texts: 0,
        rows: Vec::new(),
        parity: None,
        peak_rss_mib: None,
    };
    let steps = args.batch.len() as u64 * (u64::from(!args.no_image) + u64::from(!args.no_text));
    bars.start("measuring towers", Some(steps));

    let mut prepared = Vec::new();
    if !args.no_image {
        let tower = args.towers.load_image_tower(global, &device)?;
        let pre = tower.preprocessor();
        prepared = image_paths
            .iter()
            .map(|p| pre.prepare_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        out.images = prepared.len();
        for &batch in &args.batch {
            bars.message(&format!("image tower, batch {batch}"));
            out.rows.push(throughput::image_throughput(
                &tower,
                &prepared,
                batch,
                args.min_items,
                min_time,
            )?);
            bars.advance(1);
        }
    }
    if !args.no_text {
        let tower = args.towers.load_text_tower(global, &device)?;
        out.texts = texts.len();
        for &batch in &args.batch {
            bars.message(&format!("text tower, batch {batch}"));
            out.rows.push(throughput::text_throughput(
                &tower,
                &texts,
                batch,
                args.min_items,
                min_time,
            )?);
            bars.advance(1);
        }
    }
    bars.finish();

    if args.parity && !matches!(device, Device::Cpu) {
        out.parity = Some(parity(&args, global, &device, &prepared, &texts)?);
    }
    out.peak_rss_mib = peak_rss_mib();

    output::emit(global.json, &out, |o| {
        println!(
            "{} on {} ({} images, {} texts)",
            o.image_model, o.device, o.images, o.texts
        );
        for r in &o.rows {
            println!(
                "  {:<5} batch {:>3}: {:>8.1} items/s  (batch p50 {:.1} ms, max {:.1} ms)",
                r.tower, r.batch, r.items_per_second, r.batch_ms_p50, r.batch_ms_max
            );
        }
        if let Some(p) = &o.parity {
            println!(
                "  parity vs cpu: image features {:.2e}, probabilities {:.2e}, text {:.2e}, top-1 disagreements {}",
                p.image_features_max_abs_diff,
                p.image_probabilities_max_abs_diff,
                p.text_max_abs_diff,
                p.image_top1_disagreements
            );
        }
        if let Some(m) = o.peak_rss_mib {
            println!("  peak memory {m:.0} MiB");
        }
    })
}

/// The same inputs through both devices' towers, compared.
fn parity(
    args: &BenchArgs,
    global: &GlobalArgs,
    device: &Device,
    images: &[PreparedImage],
    texts: &[String],
) -> anyhow::Result<Parity> {
    let texts: Vec<&str> = texts.iter().take(64).map(String::as_str).collect();
    let run = |device: &Device| -> anyhow::Result<_> {
        let image = if images.is_empty() {
            Default::default()
        } else {
            args.towers
                .load_image_tower(global, device)?
                .embed(images)?
        };
        let text = if texts.is_empty() {
            Vec::new()
        } else {
            args.towers.load_text_tower(global, device)?.embed(&texts)?
        };
        Ok((image, text))
    };
    let (image_gpu, text_gpu) = run(device)?;
    let (image_cpu, text_cpu) = run(&Device::Cpu)?;
    Ok(throughput::parity(
        &image_gpu, &image_cpu, &text_gpu, &text_cpu,
    )?)
}

fn photo_paths(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "no test photos in {} (run `trio fetch`, or pass --image)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no images in {} (run `trio fetch`, or pass --image)",
        dir.display()
    );
    Ok(paths)
}

/// Realistic short texts: the demo emoji's names and tag lists.
fn demo_texts(emoji_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let rows = demo::load(emoji_dir, &[Vendor::Google]).with_context(|| {
        format!(
            "no demo catalogue in {} to take texts from (run `trio fetch`, or pass --text)",
            emoji_dir.display()
        )
    })?;
    Ok(rows
        .into_iter()
        .flat_map(|r| [r.title, r.description])
        .flatten()
        .filter(|t| !t.trim().is_empty())
        .take(512)
        .collect())
}

/// Peak resident set size of this process (VmHWM), where the kernel reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
