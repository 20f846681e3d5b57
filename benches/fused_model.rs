//! The fused model on the real demo catalogue: the study's training time (logistic regression,
//! image-only, text-only, fused: what `trio train` trains) and the latency of classifying one
//! item from raw inputs, both towers included (read and decode the image, EfficientNet-Lite0,
//! MiniLM on title and description, the fused head), as p50 / p90 / p99.
//!
//! Percentiles are the point, so this is a plain timing harness rather than criterion (whose
//! report has no tail percentiles). With `TRIO_BENCH_DB` naming a database that holds the
//! ingested demo and a trained model, both figures are taken on it:
//!
//! ```text
//! trio ingest --demo --db demo.trio && trio train --db demo.trio --group-field emoji_key
//! RAYON_NUM_THREADS=2 TRIO_BENCH_DB=demo.trio cargo bench --profile dev --bench fused_model
//! ```
//!
//! Without it, only the training time is taken, on a synthetic catalogue of the demo's size
//! (7,500 items, 100 classes, 1280/384-d features), which needs no fetched files.
//!
//! `TRIO_BENCH_ITERS` sets the number of timed classifications (default 300);
//! `TRIO_BENCH_LATENCY_ONLY=1` skips the study's training time (`trio train` reports its own).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use trio_engine::catalog::{Catalog, ClassifyInput};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::towers::service::TowerSettings;
use trio_engine::train::{Example, TrainConfig, Trainer};
use trio_engine::{DeviceChoice, NoProgress};
use trio_lab::synthetic::{catalogue, SyntheticSpec};
use trio_lab::Markdown;

/// Untimed classifications before measuring (first-touch allocations, lazy tower loading).
const WARMUP: usize = 10;
/// Distinct catalogue items cycled through, so no single input is cached by accident.
const DISTINCT: usize = 50;

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    sorted_ms[rank.clamp(1, sorted_ms.len()) - 1]
}

/// Times the study on `examples` (wall and process CPU time) and prints its table.
fn time_study(examples: &[Example], what: &str) -> anyhow::Result<()> {
    let trainer = Trainer::new(TrainConfig::default(), DeviceChoice::Cpu.resolve()?)?;
    let cpu = cpu_time::ProcessTime::now();
    let started = Instant::now();
    let study = trainer.run_study(examples, &NoProgress)?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu.elapsed().as_secs_f64();
    println!(
        "study on {what}: {} items, {} classes, {} rayon threads: {wall:.1} s wall, {cpu:.1} s CPU",
        examples.len(),
        study.report.classes,
        rayon::current_num_threads()
    );
    print!("{}", study.report.to_markdown());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; any other argument is a filter this harness ignores.
    let Some(db) = std::env::var_os("TRIO_BENCH_DB").map(PathBuf::from) else {
        let examples = catalogue(&SyntheticSpec {
            classes: 100,
            groups_per_class: 25,
            items_per_group: 3,
            image_dim: 1280,
            text_dim: 384,
            // Wider features spread the same noise over more coordinates; scale it down so the
            // task stays about as hard as the small default.
            image_noise: 0.08,
            text_noise: 0.12,
            seed: 1,
            ..SyntheticSpec::default()
        });
        time_study(&examples, "a synthetic demo-sized catalogue")?;
        println!("(set TRIO_BENCH_DB to time the real demo and single-item classification)");
        return Ok(());
    };
    let iters: usize = std::env::var("TRIO_BENCH_ITERS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("TRIO_BENCH_ITERS")?
        .unwrap_or(300);
    let home = Home::resolve(None)?;
    let threads = rayon::current_num_threads();
    let catalog = Catalog::open(
        &db,
        TowerSettings::from_home(&home, LiteVariant::Lite0),
        DeviceChoice::Cpu.resolve()?,
    )?;

    // Training: the study exactly as `trio train --group-field emoji_key` runs it, minus the
    // store writes (the fused vectors, timed separately by `trio train` itself).
    if std::env::var_os("TRIO_BENCH_LATENCY_ONLY").is_none() {
        let examples = catalog.examples("label", Some("emoji_key"))?;
        time_study(&examples, "the demo catalogue")?;
    }

    // Latency: one item at a time from raw inputs, as `trio classify` and the server do.
    let items = catalog.store().list(0, DISTINCT * 20)?;
    let inputs: Vec<ClassifyInput> = items
        .into_iter()
        .filter(|i| i.image_path.is_some() && i.description.is_some())
        .step_by(20)
        .take(DISTINCT)
        .map(|i| ClassifyInput {
            image_path: i.image_path.map(PathBuf::from),
            image_bytes: None,
            title: Some(i.title),
            description: i.description,
        })
        .collect();
    anyhow::ensure!(
        !inputs.is_empty(),
        "no stored item has an image and a description"
    );
    for input in inputs.iter().cycle().take(WARMUP) {
        catalog.classify(input, 5, None)?;
    }
    let mut ms = Vec::with_capacity(iters);
    let cpu = cpu_time::ProcessTime::now();
    for input in inputs.iter().cycle().take(iters) {
        let t = Instant::now();
        let result = catalog.classify(input, 5, None)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(result);
    }
    let cpu_ms = cpu.elapsed().as_secs_f64() * 1e3 / iters as f64;
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "classify one item (image + title + description, both towers), {iters} runs over {} items, {threads} rayon threads:",
        inputs.len()
    );
    println!(
        "  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, mean {mean:.1} ms, CPU {cpu_ms:.1} ms per item",
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0)
    );
    Ok(())
}
