//! Writes N synthetic items as feature files, fingerprinted with the fetched towers, so a bulk
//! `trio ingest --features` can be measured at a scale the towers would take hours to embed.
//! Vectors are clustered (128 centres plus noise, unit length) like real features, so the
//! index build does realistic work; texts are short and distinct.
//!
//! ```sh
//! cargo run --release -p trio-lab --example synthetic_features -- OUT_DIR N [--rows-per-file R] [--f16]
//! ```

use anyhow::Context;
use rand::{Rng, SeedableRng};
use trio_engine::exchange::{ExchangeRow, FeatureFileWriter, Precision};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::store::{Features, NewItem};
use trio_engine::towers::service::TowerSettings;

const CLUSTERS: usize = 128;

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: synthetic_features OUT_DIR N [--rows-per-file R] [--f16]";
    let out = std::path::PathBuf::from(args.first().context(usage)?);
    let n: usize = args.get(1).context(usage)?.parse().context(usage)?;
    let flag = |name: &str| args.iter().position(|a| a == name);
    let per_file: usize = match flag("--rows-per-file") {
        Some(i) => args.get(i + 1).context(usage)?.parse().context(usage)?,
        None => 100_000,
    };
    let precision = if flag("--f16").is_some() {
        Precision::F16
    } else {
        Precision::F32
    };
    let towers =
        TowerSettings::from_home(&Home::resolve(None)?, LiteVariant::Lite0).fingerprint()?;
    std::fs::create_dir_all(&out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let centres = |dim: usize, rng: &mut rand::rngs::StdRng| -> Vec<Vec<f32>> {
        (0..CLUSTERS)
            .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect()
    };
    let (image_c, text_c) = (
        centres(towers.image_dim, &mut rng),
        centres(towers.text_dim, &mut rng),
    );
    let near = |c: &[f32], rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.5f32..0.5)).collect();
        unit(&mut v);
        v
    };
    let mut written = 0;
    let mut file = 0;
    while written < n {
        let path = out.join(format!("part-{file:05}.parquet"));
        let mut w = FeatureFileWriter::create(&path, &towers, precision)?;
        let rows_here = per_file.min(n - written);
        let mut batch = Vec::with_capacity(1024);
        for i in written..written + rows_here {
            let k = rng.gen_range(0..CLUSTERS);
            let mut text = std::collections::BTreeMap::new();
            text.insert("title".to_string(), near(&text_c[k], &mut rng));
            if i % 3 != 0 {
                text.insert("description".to_string(), near(&text_c[k], &mut rng));
            }
            batch.push(ExchangeRow {
                source_row: Some(i as u64 + 1),
                item: NewItem {
                    id: format!("syn-{i:08}"),
                    title: format!("synthetic item {i} of cluster {k}"),
                    description: (i % 3 != 0).then(|| format!("cluster {k} item {i}")),
                    label: Some(format!("c{}", k % 16)),
                    content_hash: format!("{i:064x}"),
                    image_phash: Some(rng.gen()),
                    ..NewItem::default()
                },
                features: Features {
                    image: Some(near(&image_c[k], &mut rng)),
                    text,
                },
            });
            if batch.len() == 1024 {
                w.write(&batch)?;
                batch.clear();
            }
        }
        w.write(&batch)?;
        w.finish()?;
        written += rows_here;
        file += 1;
    }
    println!("{n} rows in {file} file(s) under {}", out.display());
    Ok(())
}
