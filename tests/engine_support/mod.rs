//! A small real catalogue for the HTTP tests that run against the engine backend: a few demo
//! emoji from `$TRIO_HOME` (Google renders of four subcategories, no skin tones), embedded by
//! the real towers, optionally with a trained model. Small on purpose: it is built once per
//! test binary, in seconds, in the debug profile.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use tempfile::TempDir;
use trio_engine::catalog::{Catalog, TrainOptions};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::ingest::demo::{self, DemoOptions, Vendor};
use trio_engine::ingest::manifest::ManifestRow;
use trio_engine::ingest::pipeline::IngestOptions;
use trio_engine::towers::service::TowerSettings;
use trio_engine::train::TrainConfig;
use trio_engine::{Device, NoProgress};
use trio_server::EngineBackend;

/// The demo subcategories the catalogue holds (the demo's labels).
pub const LABELS: [&str; 4] = [
    "animal-mammal",
    "food-fruit",
    "transport-ground",
    "sky & weather",
];
/// Items per label in the catalogue; the next demo emoji of each label are left out, for
/// queries the catalogue has not seen.
pub const PER_LABEL: usize = 8;

/// Where `trio fetch` puts its files: `$TRIO_HOME`, else `~/.cache/trio`.
pub fn trio_home() -> PathBuf {
    std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trio")))
        .unwrap_or_else(|| PathBuf::from(".cache/trio"))
}

/// The demo rows of [`LABELS`] in demo order: the first [`PER_LABEL`] of each label go into the
/// catalogue, the rest are `unseen`.
pub struct DemoRows {
    pub catalogue: Vec<ManifestRow>,
    pub unseen: Vec<ManifestRow>,
}

pub fn demo_rows() -> DemoRows {
    let home = Home::new(trio_home());
    let rows = demo::load_with(
        &home.emoji_dir(),
        &[Vendor::Google],
        &DemoOptions { skin_tones: false },
    )
    .unwrap_or_else(|e| {
        panic!(
            "this test needs the demo catalogue and the towers: {e}. Run `trio fetch --all` \
             and point TRIO_HOME at its home"
        )
    });
    let mut out = DemoRows {
        catalogue: Vec::new(),
        unseen: Vec::new(),
    };
    for label in LABELS {
        let of_label = rows
            .iter()
            .filter(|r| r.label.as_deref() == Some(label))
            .cloned();
        for (i, row) in of_label.enumerate() {
            if i < PER_LABEL {
                out.catalogue.push(row);
            } else {
                out.unseen.push(row);
            }
        }
    }
    assert_eq!(out.catalogue.len(), LABELS.len() * PER_LABEL);
    out
}

/// A catalogue in memory over the real towers (EfficientNet-Lite0 and MiniLM), and the folder
/// its backend keeps uploads in.
pub struct EngineCatalogue {
    pub catalog: Arc<Catalog>,
    pub rows: DemoRows,
    pub dir: TempDir,
}

impl EngineCatalogue {
    /// The HTTP backend over this catalogue.
    pub fn backend(&self) -> Arc<EngineBackend> {
        Arc::new(EngineBackend::new(
            self.catalog.clone(),
            self.dir.path().join("uploads"),
        ))
    }
}

/// Ingests the demo rows; with `train`, trains and activates a fused model on them (so the
/// fused space and classification work).
pub fn engine_catalogue(train: bool) -> EngineCatalogue {
    let home = Home::new(trio_home());
    let towers = TowerSettings::from_home(&home, LiteVariant::Lite0);
    let catalog = Catalog::in_memory(Some(towers), Device::Cpu).unwrap();
    let rows = demo_rows();
    let report = catalog
        .ingest(
            rows.catalogue.iter().cloned().map(Ok),
            &IngestOptions::default(),
            &NoProgress,
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("ingesting the demo rows: {e} (run `trio fetch --all`?)"));
    assert_eq!(report.stored(), rows.catalogue.len(), "{:?}", report.errors);
    if train {
        let opts = TrainOptions {
            config: TrainConfig {
                epochs: 30,
                batch_size: 32,
                holdout: 0.25,
                seed: 7,
                ..TrainConfig::default()
            },
            group_field: None,
            keep_active: false,
        };
        catalog.train(&opts, &NoProgress).unwrap();
    }
    EngineCatalogue {
        catalog: Arc::new(catalog),
        rows,
        // Under target/: a catalogue kept in a static is never dropped.
        dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
    }
}
