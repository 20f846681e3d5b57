//! The real emoji demo from `$TRIO_HOME` (as `trio fetch` leaves it), for tests that train on
//! slices of it.

use trio_engine::catalog::Catalog;
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::ingest::demo::{self, DemoOptions, Vendor};
use trio_engine::ingest::manifest::ManifestRow;
use trio_engine::ingest::pipeline::IngestOptions;
use trio_engine::towers::service::TowerSettings;
use trio_engine::{DeviceChoice, NoProgress};

pub fn home() -> Home {
    let Some(home) = std::env::var_os("TRIO_HOME") else {
        panic!("TRIO_HOME is not set: run `trio fetch` and point TRIO_HOME at its home");
    };
    Home::new(home)
}

/// Every demo row of both vendors, skin-tone variants left out.
pub fn rows() -> Vec<ManifestRow> {
    demo::load_with(
        &home().emoji_dir(),
        &[Vendor::Google, Vendor::Twitter],
        &DemoOptions { skin_tones: false },
    )
    .expect("the demo catalogue (run `trio fetch --all`)")
}

/// The row's `emoji_key`: both vendors' renders of one emoji share it.
pub fn emoji_key(row: &ManifestRow) -> String {
    row.metadata
        .get("emoji_key")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The distinct emoji of `label` in demo order.
pub fn emoji_of(rows: &[ManifestRow], label: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.label.as_deref() == Some(label)) {
        let k = emoji_key(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// A catalogue in memory over the real Lite0 and MiniLM towers holding `rows`, every one
/// ingested.
pub fn catalog_of(rows: &[ManifestRow]) -> Catalog {
    let towers = TowerSettings::from_home(&home(), LiteVariant::Lite0);
    let catalog = Catalog::in_memory(Some(towers), DeviceChoice::Cpu.resolve().unwrap()).unwrap();
    ingest(&catalog, rows);
    catalog
}

/// Ingests `rows`, which must all succeed.
pub fn ingest(catalog: &Catalog, rows: &[ManifestRow]) {
    let report = catalog
        .ingest(
            rows.iter().cloned().map(Ok),
            &IngestOptions::default(),
            &NoProgress,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}
