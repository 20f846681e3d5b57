//! `--finetune-image`: the image tower's top cut out, trained and served (needs `$TRIO_HOME`
//! with the towers, the test photos and the demo catalogue, as `trio fetch` leaves it).
//!
//! 1. The cut is exact: the top run on the bottom's activations gives the network's features,
//!    its trainable copy (device-generic operations) agrees with the fast CPU kernels, and its
//!    weights survive a store-and-load round trip.
//! 2. End to end on a slice of the demo: a model trained with a fine-tuned top stores it, and
//!    every path that computes image features afterwards (classification, fused search, items
//!    ingested after training) reads them through the same tuned top that training used.

use std::collections::HashMap;

use common::demo::{self, emoji_key, home};
use trio_engine::catalog::{ClassifyInput, Space, TrainOptions};
use trio_engine::fetch::LiteVariant;
use trio_engine::ingest::manifest::ManifestRow;
use trio_engine::towers::image::{ImageTower, ImageTowerConfig};
use trio_engine::train::{FinetuneConfig, TrainConfig, TrainedModel};
use trio_engine::{DeviceChoice, NoProgress};
use trio_lab::Markdown;

mod common;

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn the_top_reproduces_the_network_and_round_trips() -> anyhow::Result<()> {
    let home = home();
    let device = DeviceChoice::Cpu.resolve()?;
    let tower = ImageTower::load(
        &home.image_model_path(LiteVariant::Lite0),
        &ImageTowerConfig::lite0(),
        &device,
    )?;
    let prep = tower.preprocessor();
    let images = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| prep.prepare_path(&home.photos_dir().join(f)))
        .collect::<trio_engine::Result<Vec<_>>>()?;
    let frozen = tower.embed(&images)?.features;
    let model = tower.model();
    assert_eq!(model.block_count(), 16);

    for first in [15, 8] {
        let top = model.top(first)?;
        assert_eq!(top.first_block(), first);
        let acts = tower.activations(&images, first)?;
        let via_top = top.forward(&acts)?.to_vec2::<f32>()?;
        assert!(max_diff(&via_top, &frozen) < 1e-3, "top from block {first}");
        assert_eq!(tower.tuned_features(&images, &top)?, via_top);

        let (trainable, vars) = top.trainable()?;
        // Per block: expand, depthwise and project, each a weight and a bias; then the head.
        assert_eq!(vars.len(), (16 - first) * 6 + 2);
        let generic = trainable.forward(&acts)?.to_vec2::<f32>()?;
        assert!(
            max_diff(&generic, &via_top) < 1e-3,
            "generic ops, block {first}"
        );

        let named: HashMap<_, _> = top.tensors()?.into_iter().collect();
        let reloaded = model.top(first)?.with_tensors(&named)?;
        assert_eq!(reloaded.forward(&acts)?.to_vec2::<f32>()?, via_top);
    }
    // A top stored for other blocks does not fit.
    let named: HashMap<_, _> = model.top(15)?.tensors()?.into_iter().collect();
    assert!(model.top(14)?.with_tensors(&named).is_err());
    assert!(model.top(17).is_err());
    Ok(())
}

const CLASSES: [&str; 4] = ["animal-mammal", "transport-ground", "clothing", "heart"];
const EMOJI_PER_CLASS: usize = 12;

/// The first emoji of each class (both vendors), and one more emoji's rows kept back to be
/// ingested after training.
fn slice(rows: Vec<ManifestRow>) -> (Vec<ManifestRow>, Vec<ManifestRow>) {
    let (mut catalogue, mut later) = (Vec::new(), Vec::new());
    for class in CLASSES {
        let keys = demo::emoji_of(&rows, class);
        for r in rows.iter().filter(|r| r.label.as_deref() == Some(class)) {
            match keys.iter().position(|k| *k == emoji_key(r)) {
                Some(i) if i < EMOJI_PER_CLASS => catalogue.push(r.clone()),
                Some(i) if i == EMOJI_PER_CLASS && class == CLASSES[0] => later.push(r.clone()),
                _ => {}
            }
        }
    }
    (catalogue, later)
}

fn input_of(row: &ManifestRow) -> ClassifyInput {
    ClassifyInput {
        image_path: row.image.clone(),
        title: row.title.clone(),
        description: row.description.clone(),
        ..Default::default()
    }
}

#[test]
fn a_fine_tuned_model_reads_its_own_image_features_everywhere() -> anyhow::Result<()> {
    let (catalogue, later) = slice(demo::rows());
    assert!(!later.is_empty());
    let catalog = demo::catalog_of(&catalogue);

    let tuning = FinetuneConfig {
        blocks: Some(1),
        epochs: 2,
        probe_epochs: 5,
        batch_size: 16,
        ..FinetuneConfig::default()
    };
    let opts = TrainOptions {
        config: TrainConfig {
            seed: 3,
            holdout: 0.25,
            batch_size: 32,
            epochs: 30,
            align_epochs: 0,
            finetune_image: Some(tuning),
            ..TrainConfig::default()
        },
        group_field: Some("emoji_key".into()),
        keep_active: false,
    };
    let trained = catalog.train(&opts, &NoProgress)?;
    let report = trained.image_tuning.as_ref().expect("a fine-tuning report");
    eprintln!("{}\n{}", report.summary(), trained.report.to_markdown());
    assert_eq!((report.first_block, report.blocks), (15, 1));
    assert!(report.train_images > 0 && report.val_images > 0);
    assert!(report.val_top1.len() >= 2 && report.val_top1.len() <= 3);
    assert!(report.best_epoch < report.val_top1.len());
    assert!(report.train_loss.iter().all(|l| l.is_finite() && *l > 0.0));

    // The stored model carries the tuned top, and reads back equal.
    let active = catalog.active_model()?.expect("an active model");
    assert!(active.image_top.is_some());
    let tower = active.trained.image_tower.as_ref().expect("stored top");
    assert_eq!(tower.network, "efficientnet-lite0");
    let bytes = active.trained.to_bytes()?;
    assert_eq!(TrainedModel::from_bytes(&bytes)?, active.trained);

    // Fine-tuning moved the features, so reading the frozen ones by mistake would show below.
    let service = catalog.service()?;
    let image = service
        .image
        .preprocessor()
        .prepare_path(catalogue[0].image.as_deref().expect("an image"))?;
    let frozen = service.image.embed(std::slice::from_ref(&image))?.features;
    let tuned = active.image_features(&service.image, std::slice::from_ref(&image))?;
    assert!(
        max_diff(&frozen, &tuned) > 1e-2,
        "fine-tuning left the features unchanged"
    );

    // A stored item's fused vector was computed from the tuned features at training time; the
    // same inputs given as a query must land on it. With the frozen tower's features instead,
    // the image branch would see other numbers and the vectors would differ.
    let version = active.version;
    let check = |row: &ManifestRow| -> anyhow::Result<f32> {
        let id = row.id.as_deref().expect("demo rows have ids");
        let key = catalog.store().key_of(id)?.expect("stored");
        let stored = catalog
            .vector_of(Space::Fused, key, version)?
            .expect("a fused vector");
        let query = catalog.fusion_input(&input_of(row))?;
        let fresh = active.model().fused_vectors(std::slice::from_ref(&query))?;
        Ok(max_diff(&[stored], &fresh))
    };
    for row in catalogue.iter().step_by(17) {
        let d = check(row)?;
        assert!(
            d < 1e-3,
            "{:?}: stored and recomputed fused vectors differ by {d}",
            row.id
        );
    }

    // Items ingested after training get fused vectors through the same tuned top, computed
    // in the same pass through the tower's bottom as the frozen features the store keeps.
    let top = active.image_top.as_ref().expect("a tuned top");
    let one_pass = service
        .image
        .embed_with_tuned(std::slice::from_ref(&image), top)?;
    // Same network, two code paths (the fused blocks for `embed`, layer by layer under a tuned
    // top): equal up to the order of float additions.
    let drift = max_diff(&one_pass.frozen, &frozen);
    assert!(
        drift < 1e-4,
        "the frozen half is the tower's own features (largest difference {drift})"
    );
    assert!(max_diff(&one_pass.tuned, &tuned) < 1e-5);
    demo::ingest(&catalog, &later);
    for row in &later {
        let d = check(row)?;
        assert!(d < 1e-3, "{:?} (ingested later): differs by {d}", row.id);
        let id = row.id.as_deref().expect("demo rows have ids");
        let key = catalog.store().key_of(id)?.expect("stored");
        let stored = catalog.store().get_features(key)?.and_then(|f| f.image);
        let path = row.image.as_deref().expect("an image");
        let own = service
            .image
            .embed(&[service.image.preprocessor().prepare_path(path)?])?
            .features;
        // Equal up to the order of float additions (see the one-pass check above).
        let drift = max_diff(&[stored.expect("stored image features")], &own[..1]);
        assert!(
            drift < 1e-4,
            "{id}: stored features are the frozen tower's (largest difference {drift})"
        );
    }

    // Classification reads the tuned features too, with any subset of inputs.
    let image_only = ClassifyInput {
        image_path: later[0].image.clone(),
        ..Default::default()
    };
    let c = catalog.classify(&image_only, 3, None)?;
    assert_eq!(c.labels.len(), 3);
    let total: f32 = c.labels.iter().map(|l| l.probability).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-4);

    // The answer is the active model's own prediction.
    let query = catalog.fusion_input(&image_only)?;
    let pooled = active.classifier.predict(std::slice::from_ref(&query))?;
    let best = pooled[0].iter().copied().fold(f32::MIN, f32::max);
    assert!((c.labels[0].probability - best).abs() < 1e-5);
    Ok(())
}
