//! Switching the active model: the fused index a catalogue serves is always the active model's,
//! also when another model's index was dumped at the same store generation (activating a
//! model writes no item, so the generation alone cannot tell the dumps apart).

use std::path::Path;

mod common;

use common::items::{trio_home, write_manifest};
use trio_engine::catalog::{Catalog, Space, TrainOptions};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::index::VectorIndex;
use trio_engine::ingest::manifest::{self, ManifestOptions};
use trio_engine::ingest::pipeline::IngestOptions;
use trio_engine::towers::service::TowerSettings;
use trio_engine::train::TrainConfig;
use trio_engine::{DeviceChoice, NoProgress};

fn open(db: &Path) -> Catalog {
    let home = Home::resolve(Some(&trio_home())).expect("home");
    let towers = TowerSettings::from_home(&home, LiteVariant::Lite0);
    Catalog::open_or_create(db, towers, DeviceChoice::Cpu.resolve().expect("cpu")).expect("open")
}

fn train(catalog: &Catalog, seed: u64, keep_active: bool) -> u32 {
    let opts = TrainOptions {
        config: TrainConfig {
            epochs: 4,
            seed,
            holdout: 0.25,
            ..TrainConfig::default()
        },
        group_field: None,
        keep_active,
    };
    catalog.train(&opts, &NoProgress).expect("train").version
}

/// Whether every sampled item's own fused vector (of the active model) finds the item first.
fn fused_index_is_the_active_models(catalog: &Catalog) -> bool {
    let version = catalog
        .store()
        .active_version()
        .expect("active")
        .expect("a model");
    let index = catalog
        .index(Space::Fused, &NoProgress)
        .expect("fused index");
    catalog
        .list(0, 48)
        .expect("list")
        .iter()
        .step_by(5)
        .all(|item| {
            let v = catalog
                .store()
                .get_fused(version, item.key)
                .expect("read")
                .expect("fused vector");
            let hits = index.search(&v, 1, None).expect("search");
            hits.first()
                .is_some_and(|h| h.key == item.key && h.score > 0.999)
        })
}

#[test]
fn activating_another_model_never_serves_the_old_models_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 48, 3);
    let db = dir.path().join("c.trio");
    {
        let catalog = open(&db);
        let rows = manifest::open(&manifest, &ManifestOptions::default()).expect("manifest");
        catalog
            .ingest(rows, &IngestOptions::default(), &NoProgress, &mut |_| {})
            .expect("ingest");
        let first = train(&catalog, 1, false);
        let second = train(&catalog, 2, true);
        assert_ne!(first, second);
        // The first model's fused index, dumped at the store's latest generation.
        assert!(fused_index_is_the_active_models(&catalog));
        catalog.store().activate(second).expect("activate");
        // The same catalogue, as a server would after `POST /v1/models/{v}/activate`.
        assert!(fused_index_is_the_active_models(&catalog));
    }
    // A fresh process, as `trio models activate` then `trio search` would be.
    let catalog = open(&db);
    assert!(fused_index_is_the_active_models(&catalog));
}
