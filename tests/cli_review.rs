//! `trio label` and `trio duplicates --dismiss` on a store written directly (text vectors only,
//! no towers): the decisions are stored, and the next `trio duplicates` shows them.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::items::trio_command;
use serde_json::Value;
use trio_engine::store::{Features, NewItem, PutMode, Store};

/// Four labelled items; `twin-a` and `twin-b` have the same text vector (near duplicates in the
/// text space), the others are orthogonal to them and to each other.
fn store_with_twins(db: &Path) {
    let store = Store::create(db).unwrap();
    let items: Vec<(NewItem, Features)> = [
        ("twin-a", 0, "cat"),
        ("twin-b", 0, "cat"),
        ("other-1", 1, "dog"),
        ("other-2", 2, "dog"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (id, axis, label))| {
        let mut vector = vec![0.0f32; 4];
        vector[axis] = 1.0;
        let item = NewItem {
            id: id.into(),
            // Twins share their title: items whose texts differ are never duplicates.
            title: if id.starts_with("twin") {
                "the twin".into()
            } else {
                format!("the item {id}")
            },
            label: Some(label.into()),
            // Hex, as ingest writes it: exact duplicates are found by this hash.
            content_hash: format!("{:064x}", i + 1),
            ..NewItem::default()
        };
        let text = [("title".to_string(), vector)].into();
        (item, Features { image: None, text })
    })
    .collect();
    store.put_items(&items, PutMode::Skip).unwrap();
}

fn run(args: &[&str]) -> Output {
    trio_command(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn label_and_dismiss_are_stored_and_shown_by_the_next_report() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.trio");
    store_with_twins(&db);
    let db = db.to_str().unwrap();
    let duplicates = ["duplicates", "--space", "text", "--db", db, "--json"];

    let report = json(&run(&duplicates));
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{report}");
    assert_eq!(
        groups[0]["members"],
        serde_json::json!(["twin-a", "twin-b"])
    );
    let id = groups[0]["id"].as_str().unwrap().to_string();

    let out = run(&[&duplicates[..], &["--dismiss", "0123456789ab"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0123456789ab"));
    let dismissed = json(&run(&[&duplicates[..], &["--dismiss", &id]].concat()));
    assert_eq!(dismissed["dismissed"], id.as_str(), "{dismissed}");
    let report = json(&run(&duplicates));
    assert_eq!(report["groups"], serde_json::json!([]), "{report}");

    // A relabel guarded by the label the reviewer saw: refused when it is not the label now.
    let out = run(&["label", "twin-a", "dog", "--if-label", "bird", "--db", db]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`cat`, not `bird`"));
    let done = json(&run(&[
        "label",
        "twin-a",
        "dog",
        "--if-label",
        "cat",
        "--db",
        db,
        "--json",
    ]));
    assert_eq!(done["label"], "dog", "{done}");
    let kept = json(&run(&["label", "twin-b", "--keep", "--db", db, "--json"]));
    assert_eq!(
        (&kept["label"], &kept["kept"]),
        (&"cat".into(), &true.into())
    );
    let out = run(&["label", "twin-b", "--db", db]);
    assert!(!out.status.success(), "a label or --keep is required");

    let store = Store::open(db).unwrap();
    assert_eq!(
        store.get("twin-a").unwrap().unwrap().label.as_deref(),
        Some("dog")
    );
    let key = store.key_of("twin-b").unwrap().unwrap();
    assert_eq!(
        store
            .kept_labels("label")
            .unwrap()
            .get(&key)
            .map(String::as_str),
        Some("cat")
    );
}
