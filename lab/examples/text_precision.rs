//! The text tower in bf16 and int8 against f32 on the demo catalogue: how far each text's
//! vector turns (cosine to f32's), and whether search in text space finds the same items
//! (recall@10 of each item's exact text-space neighbours, f32's being the truth). The figures
//! are the ones BENCHMARKS.md gives for `--tower-precision bf16` and `int8`.
//!
//! ```sh
//! TRIO_HOME=~/.cache/trio cargo run -p trio-lab --example text_precision -- [--items N]
//! ```
//!
//! Items are the demo catalogue's rows (both vendors' emoji, as `trio ingest --demo` reads
//! them); an item's text-space vector is what the catalogue stores and searches: the normalised
//! mean of its title's and description's vectors. Neighbours are exact (brute force over all
//! items, the item itself left out), so the recall measures the tower alone, not the index.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;
use trio_engine::catalog::text_space_vector;
use trio_engine::ingest::demo::{self, Vendor};
use trio_engine::ingest::manifest::ManifestRow;
use trio_engine::models::minilm::Backend;
use trio_engine::store::Features;
use trio_engine::towers::text::TextTower;
use trio_engine::DeviceChoice;

/// Neighbours compared per item.
const K: usize = 10;
/// Rows per tower call, as an ingest chunk.
const CHUNK: usize = 64;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Per row, its title's and description's vectors (normalised, as the tower returns them).
fn embed(tower: &TextTower, rows: &[ManifestRow]) -> anyhow::Result<Vec<Features>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(CHUNK) {
        let mut features = vec![Features::default(); chunk.len()];
        for field in ["title", "description"] {
            let texts: Vec<Option<&str>> = chunk
                .iter()
                .map(|r| match field {
                    "title" => r.title.as_deref(),
                    _ => r.description.as_deref(),
                })
                .collect();
            for (f, v) in features.iter_mut().zip(tower.embed_fields(&texts)?) {
                if let Some(v) = v {
                    f.text.insert(field.to_string(), v);
                }
            }
        }
        out.extend(features);
    }
    Ok(out)
}

/// The `K` nearest other items of each item by cosine (vectors are normalised).
fn neighbours(vectors: &[Vec<f32>]) -> Vec<Vec<usize>> {
    (0..vectors.len())
        .into_par_iter()
        .map(|i| {
            let mut scored: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, v)| (dot(&vectors[i], v), j))
                .collect();
            scored.select_nth_unstable_by(K - 1, |a, b| b.0.total_cmp(&a.0));
            scored[..K].iter().map(|&(_, j)| j).collect()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut items = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--items" => items = args.next().context("--items N")?.parse()?,
            other => anyhow::bail!("unknown argument {other} (--items N)"),
        }
    }
    let home = std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .context("set TRIO_HOME")?;
    let cpu = DeviceChoice::Cpu.resolve()?;
    let rows: Vec<ManifestRow> = demo::load(&home.join("data/emoji"), &Vendor::ALL)?
        .into_iter()
        .filter(|r| r.title.is_some() || r.description.is_some())
        .take(items)
        .collect();
    let folder = home.join("models/all-MiniLM-L6-v2");
    let reference = embed(&TextTower::load_with(&folder, &cpu, Backend::Auto)?, &rows)?;
    let spaces = |features: &[Features]| -> Vec<Vec<f32>> {
        features
            .iter()
            .map(|f| text_space_vector(f).unwrap_or_default())
            .collect()
    };
    let truth = neighbours(&spaces(&reference));

    println!(
        "{} demo items, {} texts; neighbours by exact search, k = {K}\n",
        rows.len(),
        reference.iter().map(|f| f.text.len()).sum::<usize>()
    );
    println!("| precision | min cosine to f32 | mean cosine | recall@{K} (text space) |");
    println!("|---|---:|---:|---:|");
    for (name, backend) in [("bf16", Backend::FusedBf16), ("int8", Backend::FusedInt8)] {
        let tower = match TextTower::load_with(&folder, &cpu, backend) {
            Ok(tower) => tower,
            Err(e) => {
                println!("| {name} | not on this CPU: {e} | | |");
                continue;
            }
        };
        let features = embed(&tower, &rows)?;
        let cosines: Vec<f32> = features
            .iter()
            .zip(&reference)
            .flat_map(|(f, r)| {
                let pairs: BTreeMap<_, _> = f.text.iter().collect();
                r.text
                    .iter()
                    .filter_map(move |(field, v)| pairs.get(field).map(|w| dot(v, w)))
            })
            .collect();
        let min = cosines.iter().copied().fold(1.0, f32::min);
        let mean = cosines.iter().sum::<f32>() / cosines.len().max(1) as f32;
        let found = neighbours(&spaces(&features));
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(f, t)| f.iter().filter(|j| t.contains(j)).count())
            .sum();
        let recall = hits as f64 / (K * truth.len()) as f64;
        println!("| {name} | {min:.5} | {mean:.5} | {recall:.4} |");
    }
    Ok(())
}
