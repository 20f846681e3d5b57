//! The store on disk: persistence across reopen, and clear errors (never a panic, never damage)
//! for files that are missing, already there, or not Trio stores.

use std::collections::BTreeMap;

use trio_engine::store::{Features, NewItem, PutMode, Store};
use trio_engine::Error;

fn one_item(id: &str) -> (NewItem, Features) {
    let mut text = BTreeMap::new();
    text.insert("title".to_string(), vec![0.25; 3]);
    (
        NewItem {
            id: id.into(),
            title: id.into(),
            content_hash: "h".into(),
            ..NewItem::default()
        },
        Features {
            image: Some(vec![0.5; 5]),
            text,
        },
    )
}

#[test]
fn committed_writes_survive_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested").join("catalogue.redb");
    {
        let store = Store::open_or_create(&path)?;
        store.put_items(&[one_item("a"), one_item("b")], PutMode::Skip)?;
        store.delete("a")?;
    }
    let store = Store::open(&path)?;
    assert_eq!(store.count()?, 1);
    assert_eq!(store.get("b")?.expect("b survives").key, 1);
    assert_eq!(store.generation()?, 2);
    // The key counter survives too: a new item does not get a deleted key back.
    store.put_items(&[one_item("c")], PutMode::Skip)?;
    assert_eq!(store.get("c")?.expect("c").key, 2);
    drop(store);
    assert_eq!(Store::open_or_create(&path)?.count()?, 2);
    Ok(())
}

#[test]
fn open_needs_an_existing_file_and_create_a_new_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.redb");
    assert!(matches!(
        Store::open(&path),
        Err(Error::StoreMissing { .. })
    ));
    drop(Store::create(&path)?);
    assert!(matches!(
        Store::create(&path),
        Err(Error::StoreExists { .. })
    ));
    Store::open(&path)?;
    Ok(())
}

#[test]
fn foreign_files_are_refused_and_left_untouched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, Vec<u8>); 3] = [
        ("text.txt", b"id,title\n1,hello\n".to_vec()),
        ("zeros.bin", vec![0u8; 8192]),
        (
            "noise.bin",
            (0..20_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes)?;
        for result in [Store::open(&path), Store::open_or_create(&path)] {
            match result {
                Err(Error::NotAStore { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(!reason.is_empty());
                }
                other => panic!("{name}: expected NotAStore, got {other:?}"),
            }
        }
        assert_eq!(std::fs::read(&path)?, bytes, "{name} was modified");
    }
    Ok(())
}

#[test]
fn a_truncated_store_is_an_error_not_a_panic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.redb");
    {
        let store = Store::create(&path)?;
        let batch: Vec<_> = (0..200).map(|i| one_item(&format!("id{i}"))).collect();
        store.put_items(&batch, PutMode::Skip)?;
    }
    let full = std::fs::read(&path)?;
    for keep in [full.len() / 2, 600, 10] {
        std::fs::write(&path, &full[..keep])?;
        assert!(
            Store::open(&path).is_err(),
            "a store cut to {keep} of {} bytes opened",
            full.len()
        );
    }
    Ok(())
}
