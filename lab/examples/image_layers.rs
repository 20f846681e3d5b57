//! Where the image tower's time goes: milliseconds per image in each kind of layer (stem,
//! expand 1x1, depthwise, project 1x1, head, classifier) at batch sizes 1, 8 and 32, read from
//! the tracing spans the network enters, for two ways of running it on the CPU:
//!
//! - `fused`: `ImageTower::embed`, each image through the whole network on one thread with
//!   every block's expand → depthwise → project fused (`kernels/mbconv.rs`);
//! - `layers`: the same kernels one layer at a time over the whole batch, each layer's output a
//!   tensor (what fine-tuning runs: `tuned_features` with a top of every block, so without the
//!   classifier; always f32).
//!
//! ```sh
//! TRIO_HOME=~/.cache/trio RAYON_NUM_THREADS=2 \
//!     cargo run -p trio-lab --example image_layers -- [--seconds 3] [--batch 1,8,32] \
//!         [--precision f32|bf16] [--path layers,fused]
//! ```
//!
//! Inputs are the five test photos cycled, prepared once. A span's time is summed over every
//! thread that entered it, then divided by the thread count, so layers run inside worker
//! threads (the fused blocks, one image per thread) add up to wall time as the caller's do.
//! `other` is the embed call's wall time not inside any span (batching, softmax, copies).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use trio_engine::towers::image::{ImageTower, ImageTowerConfig, PreparedImage};
use trio_engine::towers::TowerPrecision;
use trio_engine::DeviceChoice;

const PHOTOS: [&str; 5] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "motorcycle_left.png",
];
/// Layer kinds in network order; `mbconv` spans only contain the three inner kinds.
const KINDS: [&str; 6] = [
    "stem",
    "expand",
    "depthwise",
    "project",
    "head",
    "classifier",
];

/// Sums each span name's entered time, across threads.
#[derive(Clone, Default)]
struct Timer {
    totals: Arc<Mutex<HashMap<&'static str, Duration>>>,
}

struct Entered(Instant);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Timer {
    fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: LayerContext<'_, S>) {}

    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().replace(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Entered(start)) = span.extensions_mut().remove::<Entered>() {
                let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
                *totals.entry(span.name()).or_default() += start.elapsed();
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 3.0f64;
    let mut batches = vec![1usize, 8, 32];
    let mut precision = TowerPrecision::F32;
    let mut paths = vec!["layers".to_string(), "fused".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "--precision" => precision = args.next().context("--precision f32|bf16")?.parse()?,
            "--path" => {
                paths = args
                    .next()
                    .context("--path layers,fused")?
                    .split(',')
                    .map(String::from)
                    .collect();
                if let Some(bad) = paths
                    .iter()
                    .find(|p| !["layers", "fused"].contains(&p.as_str()))
                {
                    anyhow::bail!("--path: {bad} is neither layers nor fused")
                }
            }
            "--batch" => {
                batches = args
                    .next()
                    .context("--batch 1,8,32")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let home = std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .context("set TRIO_HOME")?;
    let timer = Timer::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(timer.clone().with_filter(
            tracing_subscriber::filter::filter_fn(|m| KINDS.contains(&m.name())),
        )),
    )?;
    let cpu = DeviceChoice::Cpu.resolve()?;
    let tower = ImageTower::load(
        &home.join("models/efficientnet-lite0/efficientnet-lite0.pth"),
        &ImageTowerConfig::lite0().with_precision(precision),
        &cpu,
    )?;
    let pre = tower.preprocessor();
    let photos: Vec<PreparedImage> = PHOTOS
        .iter()
        .map(|name| pre.prepare_path(&home.join("data/photos").join(name)))
        .collect::<Result<_, _>>()?;
    let images: Vec<PreparedImage> = photos.iter().cycle().take(32).cloned().collect();
    let threads = rayon::current_num_threads() as f64;

    let layers = tower.model().top(0)?;
    let run = |path: &str, input: &[PreparedImage]| -> trio_engine::Result<()> {
        match path {
            "fused" => tower.embed(input).map(drop),
            _ => tower.tuned_features(input, &layers).map(drop),
        }
    };
    println!(
        "| path | batch | images/s | {} | other |",
        KINDS.join(" | ")
    );
    println!("|---|---:|---:|{}---:|", "---:|".repeat(KINDS.len()));
    for (path, batch) in paths
        .iter()
        .flat_map(|p| batches.iter().map(move |&b| (p.as_str(), b)))
    {
        let input = &images[..batch.min(images.len())];
        run(path, input)?;
        timer
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (start, mut done) = (Instant::now(), 0usize);
        while start.elapsed().as_secs_f64() < seconds {
            run(path, input)?;
            done += input.len();
        }
        let wall = start.elapsed().as_secs_f64();
        let totals = timer
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let per_image = |d: Duration| d.as_secs_f64() * 1e3 / done as f64;
        let mut row = format!("| {path} | {batch} | {:.1} |", done as f64 / wall);
        // Spans entered on the caller thread cover its parallel work already; spans entered
        // inside workers (one image per thread) add up to more than the wall time, and are
        // shared out over the threads.
        let summed: f64 = totals.values().map(Duration::as_secs_f64).sum();
        let share = if summed > wall * 1.05 { threads } else { 1.0 };
        let mut inside = 0.0;
        for kind in KINDS {
            let d = totals.get(kind).copied().unwrap_or_default();
            let ms = per_image(d) / share;
            inside += ms;
            row.push_str(&format!(" {ms:.2} |"));
        }
        let total_ms = wall * 1e3 / done as f64;
        row.push_str(&format!(" {:.2} |", (total_ms - inside).max(0.0)));
        println!("{row}");
    }
    Ok(())
}
