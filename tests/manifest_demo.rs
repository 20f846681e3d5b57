//! The emoji demo catalogue over the real files in `$TRIO_HOME` (placed by `trio fetch`).

use std::collections::{HashMap, HashSet};

use trio_engine::fetch::Home;
use trio_engine::ingest::demo::{self, Vendor};

fn emoji_dir() -> std::path::PathBuf {
    let Some(home) = std::env::var_os("TRIO_HOME") else {
        panic!("TRIO_HOME is not set: run `trio fetch` and point TRIO_HOME at its home");
    };
    let dir = Home::new(home).emoji_dir();
    assert!(
        dir.join(demo::EMOJI_FILE).is_file(),
        "{} is missing: run `trio fetch` (group demo) with this TRIO_HOME",
        dir.join(demo::EMOJI_FILE).display()
    );
    dir
}

#[test]
fn real_catalogue_has_plausible_rows() {
    let rows = demo::load(&emoji_dir(), &Vendor::ALL).unwrap();
    let mut per_vendor: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    let mut labels = HashSet::new();
    let mut keys_by_vendor: HashMap<String, HashSet<String>> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.row, i + 1);
        let id = row.id.clone().unwrap();
        assert!(ids.insert(id.clone()), "duplicate id {id}");
        assert!(row.image.as_ref().unwrap().is_file(), "{id}");
        assert!(
            !row.title.as_deref().unwrap_or("").is_empty(),
            "{id} has no title"
        );
        assert!(row.description.is_some(), "{id} has no description");
        let label = row.label.clone().unwrap();
        labels.insert(label);
        for key in ["category", "vendor", "codepoints", "emoji", "emoji_key"] {
            assert!(row.metadata.contains_key(key), "{id} lacks metadata.{key}");
        }
        let vendor = row.metadata["vendor"].as_str().unwrap().to_string();
        assert!(id.starts_with(&format!("{vendor}:")));
        *per_vendor.entry(vendor.clone()).or_default() += 1;
        keys_by_vendor
            .entry(vendor)
            .or_default()
            .insert(row.metadata["emoji_key"].as_str().unwrap().to_string());
    }
    for v in Vendor::ALL {
        let n = per_vendor.get(v.as_str()).copied().unwrap_or(0);
        assert!(n > 3000, "{v}: only {n} rows");
    }
    // Labels are subcategories: dozens of them, not a handful and not one per item.
    assert!((50..200).contains(&labels.len()), "{} labels", labels.len());
    // The same emoji_key set across vendors (minus the few a vendor lacks art for).
    let g = &keys_by_vendor["google"];
    let t = &keys_by_vendor["twitter"];
    assert!(g.intersection(t).count() > 1800);
    // Most rows got emojibase tags through the FE0F-insensitive join.
    let tagged = rows.iter().filter(|r| !r.tags.is_empty()).count();
    assert!(
        tagged * 100 > rows.len() * 95,
        "{tagged} of {} tagged",
        rows.len()
    );
}

#[test]
fn real_catalogue_without_skin_tones() {
    let rows = demo::load_with(
        &emoji_dir(),
        &[Vendor::Google],
        &demo::DemoOptions { skin_tones: false },
    )
    .unwrap();
    assert!((1800..2000).contains(&rows.len()), "{} rows", rows.len());
    assert!(rows.iter().all(|r| !r.metadata.contains_key("skin_tone")));
}
