//! The store's contract: what goes in comes out, skip/update semantics, keys never reused,
//! generation counting, batches all-or-nothing, models and fused vectors.

use std::collections::BTreeMap;

use trio_engine::store::{Features, IndexState, ModelBlob, NewItem, PutMode, PutReport, Store};
use trio_engine::Error;

fn item(id: &str, hash: &str) -> NewItem {
    let mut metadata = serde_json::Map::new();
    metadata.insert("source".into(), serde_json::json!("test"));
    NewItem {
        id: id.into(),
        title: format!("title of {id}"),
        description: Some(format!("description of {id}")),
        tags: vec!["a".into(), "b".into()],
        label: Some("cat".into()),
        image_path: Some(format!("/img/{id}.png")),
        content_hash: hash.into(),
        image_phash: Some(0xdead_beef),
        metadata,
        image_thumbnail: None,
    }
}

/// Features with a recognisable first value; `image` absent when `seed` is odd.
fn features(seed: f32) -> Features {
    let mut text = BTreeMap::new();
    text.insert("title".to_string(), vec![seed; 4]);
    Features {
        image: if seed as i64 % 2 == 0 {
            Some(vec![seed; 6])
        } else {
            None
        },
        text,
    }
}

#[test]
fn put_get_list_count_and_iterate() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    assert_eq!(store.count()?, 0);
    let batch: Vec<_> = (0..5)
        .map(|i| (item(&format!("id{i}"), "h"), features(i as f32)))
        .collect();
    let report = store.put_items(&batch, PutMode::Skip)?;
    assert_eq!(
        report,
        PutReport {
            inserted: 5,
            updated: 0,
            skipped: 0
        }
    );
    assert_eq!(store.count()?, 5);

    let got = store.get("id3")?.expect("id3 stored");
    assert_eq!(got.key, 3);
    assert_eq!(got.title, "title of id3");
    assert_eq!(got.metadata["source"], serde_json::json!("test"));
    assert!(got.added_at > 0);
    assert_eq!(store.get_by_key(3)?.as_ref(), Some(&got));
    assert_eq!(store.key_of("id3")?, Some(3));
    assert!(store.get("nope")?.is_none());

    let page = store.list(1, 2)?;
    assert_eq!(
        page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["id1", "id2"]
    );

    let streamed: Vec<_> = store.iter_features()?.collect::<Result<_, _>>()?;
    assert_eq!(streamed.len(), 5);
    for (i, (key, f)) in streamed.iter().enumerate() {
        assert_eq!(*key, i as u64);
        assert_eq!(f, &features(i as f32), "features of key {key}");
    }
    // Absent image stays absent (odd seeds have none).
    assert!(store.get_features(1)?.expect("stored").image.is_none());
    assert_eq!(store.feature_dims()?, (Some(6), Some(4)));
    Ok(())
}

#[test]
fn same_hash_skips_and_update_mode_replaces_in_place() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    store.put_items(&[(item("a", "h1"), features(2.0))], PutMode::Skip)?;
    let first = store.get("a")?.expect("stored");
    let generation = store.generation()?;

    // Same hash: skipped in both modes, nothing committed changes the generation.
    for mode in [PutMode::Skip, PutMode::Update] {
        let r = store.put_items(&[(item("a", "h1"), features(4.0))], mode)?;
        assert_eq!(r.skipped, 1);
    }
    assert_eq!(store.generation()?, generation);
    assert_eq!(store.get_features(first.key)?, Some(features(2.0)));

    // Changed hash in skip mode: kept as is.
    let r = store.put_items(&[(item("a", "h2"), features(4.0))], PutMode::Skip)?;
    assert_eq!(r.skipped, 1);
    assert_eq!(store.get("a")?.expect("stored").content_hash, "h1");

    // Changed hash in update mode: replaced, same key, same added_at.
    let mut changed = item("a", "h2");
    changed.title = "new title".into();
    let r = store.put_items(&[(changed, features(4.0))], PutMode::Update)?;
    assert_eq!(r.updated, 1);
    let now = store.get("a")?.expect("stored");
    assert_eq!(now.key, first.key);
    assert_eq!(now.added_at, first.added_at);
    assert_eq!(now.title, "new title");
    assert_eq!(store.get_features(now.key)?, Some(features(4.0)));
    assert_eq!(store.count()?, 1);
    assert!(store.generation()? > generation);
    Ok(())
}

#[test]
fn repeated_id_in_one_batch_is_handled_in_order() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    let batch = [
        (item("a", "h1"), features(2.0)),
        (item("a", "h1"), features(2.0)),
        (item("a", "h2"), features(4.0)),
    ];
    let r = store.put_items(&batch, PutMode::Update)?;
    assert_eq!((r.inserted, r.skipped, r.updated), (1, 1, 1));
    assert_eq!(store.get("a")?.expect("stored").content_hash, "h2");
    Ok(())
}

#[test]
fn deleted_keys_are_never_reused() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    store.put_items(
        &[
            (item("a", "h"), features(2.0)),
            (item("b", "h"), features(2.0)),
        ],
        PutMode::Skip,
    )?;
    let g = store.generation()?;
    assert!(store.delete("b")?);
    assert!(!store.delete("b")?);
    assert!(store.generation()? > g);
    assert!(store.get("b")?.is_none());
    assert!(store.get_features(1)?.is_none());
    store.put_items(&[(item("b", "h"), features(2.0))], PutMode::Skip)?;
    assert_eq!(store.get("b")?.expect("re-added").key, 2);
    assert_eq!(store.count()?, 2);
    Ok(())
}

#[test]
fn a_bad_item_rolls_back_the_whole_batch() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    store.put_items(&[(item("a", "h"), features(2.0))], PutMode::Skip)?;
    let g = store.generation()?;

    let mut wrong_size = features(4.0);
    wrong_size.image = Some(vec![1.0; 7]);
    let err = store
        .put_items(
            &[
                (item("b", "h"), features(2.0)),
                (item("c", "h"), wrong_size),
            ],
            PutMode::Skip,
        )
        .expect_err("a 7-value image after 6-value ones is refused");
    match err {
        Error::BadVector { item, field, .. } => {
            assert!(item.contains("\"c\""), "{item}");
            assert_eq!(field, "image");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(store.get("b")?.is_none(), "nothing of the batch committed");
    assert_eq!(store.generation()?, g);

    let mut nan = features(2.0);
    nan.text
        .insert("description".into(), vec![0.0, f32::NAN, 0.0, 0.0]);
    assert!(matches!(
        store.put_items(&[(item("d", "h"), nan)], PutMode::Skip),
        Err(Error::BadVector { .. })
    ));
    assert!(matches!(
        store.put_items(&[(item("", "h"), features(2.0))], PutMode::Skip),
        Err(Error::BadItemId { .. })
    ));
    Ok(())
}

#[test]
fn feature_stream_is_a_snapshot() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    store.put_items(&[(item("a", "h"), features(2.0))], PutMode::Skip)?;
    let mut stream = store.iter_features()?;
    store.put_items(&[(item("b", "h"), features(2.0))], PutMode::Skip)?;
    assert!(store.delete("a")?);
    let first = stream.next().expect("one entry")?;
    assert_eq!(first.0, 0);
    assert!(
        stream.next().is_none(),
        "writes after the stream began are not seen"
    );
    Ok(())
}

#[test]
fn models_and_fused_vectors() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    store.put_items(
        &[
            (item("a", "h"), features(2.0)),
            (item("b", "h"), features(2.0)),
        ],
        PutMode::Skip,
    )?;
    assert!(store.active_model()?.is_none());
    assert!(matches!(
        store.put_fused(1, &[(0, vec![1.0])]),
        Err(Error::UnknownModel { version: 1 })
    ));

    let blob = ModelBlob {
        config: serde_json::json!({"hidden": 8}),
        metrics: serde_json::json!({"accuracy": 0.5}),
        safetensors: vec![1, 2, 3],
    };
    let v1 = store.put_model(&blob)?;
    let v2 = store.put_model(&blob)?;
    assert_eq!((v1, v2), (1, 2));
    let listed = store.list_models()?;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].weights_bytes, 3);
    assert!(matches!(
        store.activate(9),
        Err(Error::UnknownModel { version: 9 })
    ));
    store.activate(v2)?;
    assert_eq!(store.active_version()?, Some(2));
    let active = store.active_model()?.expect("active");
    assert_eq!(active.safetensors, vec![1, 2, 3]);
    assert_eq!(active.info.config, blob.config);

    assert!(matches!(
        store.put_fused(v1, &[(7, vec![1.0, 2.0])]),
        Err(Error::UnknownItemKey { key: 7 })
    ));
    let g = store.generation()?;
    store.put_fused(v1, &[(1, vec![1.0, 2.0]), (0, vec![3.0, 4.0])])?;
    store.put_fused(v2, &[(0, vec![5.0, 6.0, 7.0])])?;
    assert!(store.generation()? > g);
    assert!(matches!(
        store.put_fused(v1, &[(0, vec![1.0])]),
        Err(Error::BadVector { .. })
    ));
    assert_eq!(store.get_fused(v1, 0)?, Some(vec![3.0, 4.0]));
    // Training beside a writer: an item deleted meanwhile is skipped, the rest is written.
    assert_eq!(
        store.put_fused_skipping_deleted(v1, &[(7, vec![9.0, 9.0]), (0, vec![3.0, 4.0])])?,
        1
    );
    assert_eq!(store.get_fused(v1, 7)?, None);
    let v1_all: Vec<_> = store.iter_fused(v1)?.collect::<Result<_, _>>()?;
    assert_eq!(v1_all, vec![(0, vec![3.0, 4.0]), (1, vec![1.0, 2.0])]);

    // Updating an item drops its fused vectors (they came from the old features)...
    store.put_items(&[(item("a", "h2"), features(2.0))], PutMode::Update)?;
    assert_eq!(store.get_fused(v1, 0)?, None);
    assert_eq!(store.get_fused(v2, 0)?, None);
    // ...and so does deleting it.
    store.delete("b")?;
    assert_eq!(store.iter_fused(v1)?.count(), 0);
    Ok(())
}

#[test]
fn index_state_roundtrip() -> anyhow::Result<()> {
    let store = Store::in_memory()?;
    assert!(store.index_state("image")?.is_none());
    let state = IndexState {
        generation: 7,
        count: 3,
    };
    store.set_index_state("image", &state)?;
    assert_eq!(store.index_state("image")?, Some(state));
    Ok(())
}
