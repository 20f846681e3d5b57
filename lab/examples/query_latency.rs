//! Query latency at 100k items, split into tower time and index time, plus duplicate
//! detection and label-noise ranking at 100k synthetic items. Prints the figures BENCHMARKS.md
//! records.
//!
//! ```sh
//! trio ingest --demo --db demo.trio && trio train --db demo.trio --group-field emoji_key
//! TRIO_HOME=... cargo run -p trio-lab --example query_latency -- --db demo.trio [--n 100000] [--queries 200]
//! ```
//!
//! The index holds `n` fused (search) vectors: the demo catalogue's real ones, and jittered
//! copies of them (each a random real vector plus noise, renormalised) up to `n`, so neighbour
//! structure is the catalogue's, only denser. Per query kind, one query at a time:
//! - **text**: text tower on the query string + the fused head (image absent), then the index;
//! - **image**: decode, resize, image tower + the fused head (text absent), then the index;
//! - **id**: the stored fused vector read from the database, then the index (the item itself
//!   filtered out).
//!
//! Then `find_duplicates` over the `n` items with neighbours through that index (k = 10), and
//! label-noise ranking (confident learning plus a 10-neighbour vote through the index) on `n`
//! items with synthetic out-of-fold probabilities.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use trio_engine::catalog::{Catalog, Space};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::index::{HnswIndex, HnswParams, VectorIndex};
use trio_engine::models::fusion::FusionInput;
use trio_engine::quality::duplicates::{find_duplicates, DupItem, DuplicateOptions};
use trio_engine::quality::noise::{rank_label_issues, LabelNoiseOptions};
use trio_engine::towers::service::TowerSettings;

use trio_engine::{DeviceChoice, NoProgress};

fn main() -> anyhow::Result<()> {
    let (mut db, mut n, mut queries) = (PathBuf::from("demo.trio"), 100_000usize, 200usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--db" => db = value()?.into(),
            "--n" => n = value()?.parse()?,
            "--queries" => queries = value()?.parse()?,
            other => bail!("unknown argument {other} (--db FILE, --n N, --queries Q)"),
        }
    }
    let home = Home::resolve(None)?;
    let device = DeviceChoice::Cpu.resolve()?;
    let catalog = Catalog::open(
        &db,
        TowerSettings::from_home(&home, LiteVariant::Lite0),
        device,
    )?;
    let active = catalog
        .active_model()?
        .context("the database needs a trained model (`trio train`)")?;
    let service = catalog.service()?;
    let real = catalog.vectors(Space::Fused, active.version)?;
    if real.is_empty() {
        bail!("no fused vectors in {}", db.display());
    }
    let dim = real[0].1.len();
    let mut rng = StdRng::seed_from_u64(7);
    let mut points: Vec<(u64, Vec<f32>)> = real.clone();
    while points.len() < n {
        let base = &real[rng.gen_range(0..real.len())].1;
        let v: Vec<f32> = base
            .iter()
            .map(|x| x + 0.08 * (rng.gen::<f32>() - 0.5))
            .collect();
        let key = 1_000_000 + points.len() as u64;
        points.push((key, unit(v)));
    }
    points.truncate(n.max(real.len()));
    let started = Instant::now();
    let index = HnswIndex::build(dim, HnswParams::default(), &points)?;
    let build = started.elapsed();
    println!(
        "index: {} fused vectors of {dim} dims ({} real), built in {:.1} s",
        index.len(),
        real.len(),
        build.as_secs_f64()
    );

    // Query inputs, drawn from the catalogue.
    let total = catalog.count()? as usize;
    let mut items = catalog.list(0, total.max(1))?;
    items.shuffle(&mut rng);
    let texts: Vec<String> = items
        .iter()
        .filter(|i| !i.title.trim().is_empty())
        .take(queries)
        .map(|i| i.title.clone())
        .collect();
    let images: Vec<PathBuf> = items
        .iter()
        .filter_map(|i| i.image_path.clone())
        .take(queries)
        .map(PathBuf::from)
        .collect();
    let ids: Vec<u64> = items.iter().take(queries).map(|i| i.key).collect();
    let fields = active.trained.config.text_fields.clone();
    let search = |v: &[f32], exclude: Option<u64>| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let not_self = |k: u64| Some(k) != exclude;
        let hits = index.search(v, 10, Some(&not_self))?;
        let d = t.elapsed();
        if hits.is_empty() {
            bail!("empty search result");
        }
        Ok(d)
    };
    // Warm up: the towers allocate on their first call.
    service.text.embed(&["warm up"])?;
    if let Some(p) = images.first() {
        service.embed_image_path(p)?;
    }

    let mut rows = Vec::new();
    let (mut tower, mut idx) = (Vec::new(), Vec::new());
    for q in &texts {
        let t = Instant::now();
        let e = service.text.embed(&[q.as_str()])?;
        let input = FusionInput::text_query(&fields, &e[0]);
        let v = active.model().fused_vectors(std::slice::from_ref(&input))?;
        tower.push(t.elapsed());
        idx.push(search(&v[0], None)?);
    }
    rows.push(("text", tower, idx));
    let (mut tower, mut idx) = (Vec::new(), Vec::new());
    for p in &images {
        let t = Instant::now();
        let features = service.embed_image_path(p)?;
        let input = FusionInput {
            image: Some(features),
            text: Default::default(),
        };
        let v = active.model().fused_vectors(std::slice::from_ref(&input))?;
        tower.push(t.elapsed());
        idx.push(search(&v[0], None)?);
    }
    rows.push(("image", tower, idx));
    let (mut lookup, mut idx) = (Vec::new(), Vec::new());
    for &key in &ids {
        let t = Instant::now();
        let v = catalog
            .store()
            .get_fused(active.version, key)?
            .context("item without a fused vector")?;
        lookup.push(t.elapsed());
        idx.push(search(&v, Some(key))?);
    }
    rows.push(("id", lookup, idx));

    println!(
        "| query | n | tower p50 | tower p99 | index p50 | index p99 | total p50 | total p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, tower, index_times) in &rows {
        let total: Vec<Duration> = tower
            .iter()
            .zip(index_times)
            .map(|(a, b)| *a + *b)
            .collect();
        println!(
            "| {kind} | {} | {} | {} | {} | {} | {} | {} |",
            tower.len(),
            ms(pct(tower, 0.5)),
            ms(pct(tower, 0.99)),
            ms(pct(index_times, 0.5)),
            ms(pct(index_times, 0.99)),
            ms(pct(&total, 0.5)),
            ms(pct(&total, 0.99)),
        );
    }

    // Duplicates over all n items, neighbours through the index.
    let dup_items: Vec<DupItem> = points
        .iter()
        .map(|(key, _)| {
            let mut content_hash = [0u8; 32];
            content_hash[..8].copy_from_slice(&key.to_le_bytes());
            DupItem {
                key: *key,
                content_hash,
                phash: Some(rng.gen()),
                thumbnail: None,
                texts: Vec::new(),
            }
        })
        .collect();
    let vectors: std::collections::HashMap<u64, &Vec<f32>> =
        points.iter().map(|(k, v)| (*k, v)).collect();
    let knn = |key: u64, k: usize| -> Vec<(u64, f32)> {
        let Some(v) = vectors.get(&key) else {
            return Vec::new();
        };
        let not_self = |other: u64| other != key;
        index
            .search(v, k, Some(&not_self))
            .map(|hits| hits.into_iter().map(|h| (h.key, h.score)).collect())
            .unwrap_or_default()
    };
    let started = Instant::now();
    let report = find_duplicates(&dup_items, &knn, &DuplicateOptions::default(), &NoProgress)?;
    println!(
        "duplicates over {} items (kNN k=10 through the index): {:.1} s, {} groups",
        dup_items.len(),
        started.elapsed().as_secs_f64(),
        report.groups.len()
    );

    // Label-noise ranking over all n items: labels from the catalogue's items (copies inherit
    // their source's), probabilities a noisy one-hot, 10 neighbours through the index.
    let classes = 100usize;
    let started = Instant::now();
    let position: std::collections::HashMap<u64, usize> = points
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, i))
        .collect();
    let labels: Vec<usize> = (0..points.len())
        .map(|_| rng.gen_range(0..classes))
        .collect();
    let probs: Vec<Vec<f32>> = labels
        .iter()
        .map(|&l| {
            let mut p: Vec<f32> = (0..classes).map(|_| rng.gen::<f32>() * 0.2).collect();
            p[l] += 1.0;
            let s: f32 = p.iter().sum();
            p.into_iter().map(|x| x / s).collect()
        })
        .collect();
    let neighbours: Vec<Vec<(usize, f32)>> = points
        .iter()
        .map(|(key, _)| {
            knn(*key, 10)
                .into_iter()
                .filter_map(|(k, s)| position.get(&k).map(|&p| (p, s)))
                .collect()
        })
        .collect();
    let knn_time = started.elapsed();
    let issues = rank_label_issues(&labels, &probs, &neighbours, &LabelNoiseOptions::default())?;
    println!(
        "label-noise ranking over {} items, {classes} classes: neighbours {:.1} s + ranking {:.2} s ({} flagged)",
        points.len(),
        knn_time.as_secs_f64(),
        (started.elapsed() - knn_time).as_secs_f64(),
        issues.len()
    );
    Ok(())
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

fn pct(times: &[Duration], q: f64) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    if t.is_empty() {
        return Duration::ZERO;
    }
    let i = ((t.len() as f64 - 1.0) * q).round() as usize;
    t[i.min(t.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
