//! Copies a catalogue with a fraction of its labels flipped at random, for the label-noise
//! measurement (lab/scripts/noise_eval.sh runs it; see BENCHMARKS.md).
//!
//! ```sh
//! cargo run -p trio-lab --example flip_labels -- --db demo.trio --out flipped.trio [--fraction 0.2] [--seed 0]
//! ```
//!
//! Every item is copied with its stored tower features (nothing is recomputed); a random
//! `fraction` of the labelled items get a different label, drawn uniformly from the other labels
//! in the catalogue. Writes `<out>.truth.json`: `{"flipped": N, "true_labels": {id: label}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use trio_engine::store::{NewItem, PutMode, Store};

fn main() -> anyhow::Result<()> {
    let (mut db, mut out, mut fraction, mut seed) = (None, None, 0.2f64, 0u64);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--db" => db = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--fraction" => fraction = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            other => bail!("unknown argument {other} (--db, --out, --fraction, --seed)"),
        }
    }
    let (db, out) = (
        db.context("give --db FILE")?,
        out.context("give --out FILE")?,
    );
    if !(0.0..1.0).contains(&fraction) {
        bail!("--fraction must be in [0, 1)");
    }
    if out.exists() {
        bail!("{} exists; give a new file", out.display());
    }
    let source = Store::open(&db)?;
    let target = Store::create(&out)?;
    let items = source.list(0, source.count()? as usize)?;
    let labels: Vec<String> = items
        .iter()
        .filter_map(|i| i.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        bail!("{} has fewer than two labels", db.display());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut labelled: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].label.is_some())
        .collect();
    labelled.shuffle(&mut rng);
    let n_flip = (labelled.len() as f64 * fraction).round() as usize;
    let flip: BTreeSet<usize> = labelled[..n_flip].iter().copied().collect();

    let mut truth = BTreeMap::new();
    let mut batch = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let features = source
            .get_features(item.key)?
            .with_context(|| format!("item {} has no stored features", item.id))?;
        let mut label = item.label.clone();
        if let Some(l) = &item.label {
            truth.insert(item.id.clone(), l.clone());
            if flip.contains(&i) {
                let others: Vec<&String> = labels.iter().filter(|o| *o != l).collect();
                label = Some(others[rng.gen_range(0..others.len())].clone());
            }
        }
        batch.push((
            NewItem {
                id: item.id.clone(),
                title: item.title.clone(),
                description: item.description.clone(),
                tags: item.tags.clone(),
                label,
                image_path: item.image_path.clone(),
                content_hash: item.content_hash.clone(),
                image_phash: item.image_phash,
                metadata: item.metadata.clone(),
                image_thumbnail: None,
            },
            features,
        ));
        if batch.len() == 512 {
            target.put_items(&batch, PutMode::Skip)?;
            batch.clear();
        }
    }
    target.put_items(&batch, PutMode::Skip)?;
    let mut truth_path = out.clone().into_os_string();
    truth_path.push(".truth.json");
    let truth_json = serde_json::json!({ "flipped": n_flip, "true_labels": truth });
    std::fs::write(&truth_path, serde_json::to_vec(&truth_json)?)
        .with_context(|| format!("writing {}", PathBuf::from(&truth_path).display()))?;
    println!(
        "{} items ({} labelled, {} labels), {n_flip} labels flipped, into {}",
        items.len(),
        truth.len(),
        labels.len(),
        out.display()
    );
    Ok(())
}
