//! bf16 against f32 on the same inputs: how far the towers' features turn, and whether the
//! ImageNet top-1 class changes. The figures decide whether `--tower-precision bf16` may be the
//! default (BENCHMARKS.md, "Towers on the current machine").
//!
//! ```sh
//! TRIO_HOME=~/.cache/trio cargo run -p trio-lab --example precision_check -- [--items 1000]
//! ```
//!
//! Inputs: the five test photos, and the first `--items` demo rows (Google's emoji images,
//! their titles and descriptions). Cosines are between the f32 and bf16 features of each input.

use std::path::PathBuf;

use anyhow::Context;
use trio_engine::ingest::demo::{self, Vendor};
use trio_engine::models::minilm::Backend;
use trio_engine::towers::image::{top_k, ImageTower, ImageTowerConfig, PreparedImage};
use trio_engine::towers::text::TextTower;
use trio_engine::towers::TowerPrecision;
use trio_engine::DeviceChoice;

const PHOTOS: [&str; 5] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "motorcycle_left.png",
];

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

/// Smallest and mean cosine between paired vectors.
fn summary(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    let cos: Vec<f32> = a.iter().zip(b).map(|(x, y)| cosine(x, y)).collect();
    let min = cos.iter().copied().fold(1.0, f32::min);
    (min, cos.iter().sum::<f32>() / cos.len().max(1) as f32)
}

fn main() -> anyhow::Result<()> {
    let mut items = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--items" => items = args.next().context("--items N")?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let home = std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .context("set TRIO_HOME")?;
    let cpu = DeviceChoice::Cpu.resolve()?;
    let weights = home.join("models/efficientnet-lite0/efficientnet-lite0.pth");
    let load = |p: TowerPrecision| {
        ImageTower::load(&weights, &ImageTowerConfig::lite0().with_precision(p), &cpu)
    };
    let (f32_tower, bf16_tower) = (load(TowerPrecision::F32)?, load(TowerPrecision::Bf16)?);
    let pre = f32_tower.preprocessor();
    let photos: Vec<PreparedImage> = PHOTOS
        .iter()
        .map(|name| pre.prepare_path(&home.join("data/photos").join(name)))
        .collect::<Result<_, _>>()?;
    let rows: Vec<_> = demo::load(&home.join("data/emoji"), &[Vendor::Google])?
        .into_iter()
        .take(items)
        .collect();
    let demo_images: Vec<PreparedImage> = rows
        .iter()
        .filter_map(|r| r.image.as_ref())
        .map(|p| pre.prepare_path(p))
        .collect::<Result<_, _>>()?;

    println!("| inputs | count | min cosine | mean cosine | top-1 changes |");
    println!("|---|---:|---:|---:|---:|");
    for (name, images) in [("test photos", &photos), ("demo images", &demo_images)] {
        let a = f32_tower.embed(images)?;
        let b = bf16_tower.embed(images)?;
        let (min, mean) = summary(&a.features, &b.features);
        let changed = a
            .probabilities
            .iter()
            .zip(&b.probabilities)
            .filter(|(p, q)| top_k(p, 1)[0].index != top_k(q, 1)[0].index)
            .count();
        println!(
            "| image, {name} | {} | {min:.5} | {mean:.5} | {changed} |",
            images.len()
        );
    }

    let folder = home.join("models/all-MiniLM-L6-v2");
    let text_f32 = TextTower::load_with(&folder, &cpu, Backend::Auto)?;
    let text_bf16 = TextTower::load_with(&folder, &cpu, Backend::FusedBf16)?;
    let texts: Vec<&str> = rows
        .iter()
        .flat_map(|r| [r.title.as_deref(), r.description.as_deref()])
        .flatten()
        .filter(|t| !t.trim().is_empty())
        .collect();
    let sentences: Vec<&str> = include_str!("../../benches/text_sentences.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    for (name, texts) in [
        ("demo titles and descriptions", &texts),
        ("catalogue sentences", &sentences),
    ] {
        let a = text_f32.embed(texts)?;
        let b = text_bf16.embed(texts)?;
        let (min, mean) = summary(&a, &b);
        println!(
            "| text, {name} | {} | {min:.5} | {mean:.5} | |",
            texts.len()
        );
    }
    Ok(())
}
