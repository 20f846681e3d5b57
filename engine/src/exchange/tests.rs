#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;
use crate::store::{Features, NewItem};
use crate::towers::service::TowerFingerprint;

fn towers() -> TowerFingerprint {
    TowerFingerprint {
        image_model: "efficientnet-lite0".into(),
        image_weights_sha256: "aa".into(),
        image_dim: 4,
        text_model: "mini".into(),
        text_weights_sha256: "bb".into(),
        text_dim: 3,
        preprocessing: 1,
    }
}

fn row(i: u64, image: bool, description: bool) -> ExchangeRow {
    let mut text = BTreeMap::new();
    text.insert("title".to_string(), vec![i as f32, 0.5, -0.25]);
    if description {
        text.insert("description".to_string(), vec![0.125, i as f32, 1.0]);
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("shelf".into(), serde_json::json!(i));
    ExchangeRow {
        source_row: Some(i + 1),
        item: NewItem {
            id: format!("item-{i}"),
            title: format!("title {i}"),
            description: description.then(|| format!("description {i}")),
            tags: vec!["a".into(), format!("t{i}")],
            label: i.is_multiple_of(2).then(|| "even".to_string()),
            image_path: image.then(|| format!("/img/{i}.png")),
            content_hash: format!("hash{i}"),
            image_phash: image.then_some(0xdead_beef_0000 + i),
            metadata,
            image_thumbnail: None,
        },
        features: Features {
            image: image.then(|| vec![1.0, 2.0, i as f32, -3.5]),
            text,
        },
    }
}

fn read_all(path: &std::path::Path) -> Vec<ExchangeRow> {
    FeatureFileReader::open(path)
        .unwrap()
        .map(|r| r.unwrap().unwrap())
        .collect()
}

#[test]
fn rows_round_trip_with_absent_inputs_absent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part-0.parquet");
    let rows: Vec<ExchangeRow> = (0..5).map(|i| row(i, i != 2, i % 2 == 0)).collect();
    let mut w = FeatureFileWriter::create(&path, &towers(), Precision::F32).unwrap();
    w.write(&rows[..2]).unwrap();
    w.write(&rows[2..]).unwrap();
    assert_eq!(w.finish().unwrap(), 5);
    let reader = FeatureFileReader::open(&path).unwrap();
    assert_eq!(reader.towers(), &towers());
    assert_eq!(reader.rows(), 5);
    assert_eq!(read_all(&path), rows);
}

#[test]
fn f16_files_are_half_precision_and_read_back_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.parquet");
    let rows: Vec<ExchangeRow> = (0..3).map(|i| row(i, true, true)).collect();
    let mut w = FeatureFileWriter::create(&path, &towers(), Precision::F16).unwrap();
    w.write(&rows).unwrap();
    w.finish().unwrap();
    let back = read_all(&path);
    for (a, b) in rows.iter().zip(&back) {
        assert_eq!(a.item, b.item);
        let (x, y) = (
            a.features.image.as_ref().unwrap(),
            b.features.image.as_ref().unwrap(),
        );
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
    }
}

#[test]
fn an_unfinished_writer_leaves_no_file_that_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part-1.parquet");
    let mut w = FeatureFileWriter::create(&path, &towers(), Precision::F32).unwrap();
    w.write(&[row(0, true, true)]).unwrap();
    // While it is being written, the file lives under a name readers skip.
    let listed = feature_files(&[dir.path().to_path_buf()]).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn wrong_sizes_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let mut w = FeatureFileWriter::create(&path, &towers(), Precision::F32).unwrap();
    let mut bad = row(0, true, false);
    bad.features.image = Some(vec![1.0; 5]);
    assert!(matches!(
        w.write(&[bad]),
        Err(crate::Error::FeatureDim { .. })
    ));

    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"PAR1 not really").unwrap();
    let err = FeatureFileReader::open(&junk).err().unwrap().to_string();
    assert!(err.contains("junk.parquet"), "{err}");
}

#[test]
fn a_bad_row_is_that_rows_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.parquet");
    let mut rows: Vec<ExchangeRow> = (0..3).map(|i| row(i, true, true)).collect();
    rows[1].features.image = Some(vec![f32::NAN, 0.0, 0.0, 0.0]);
    let mut w = FeatureFileWriter::create(&path, &towers(), Precision::F32).unwrap();
    w.write(&rows).unwrap();
    w.finish().unwrap();
    let got: Vec<_> = FeatureFileReader::open(&path)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(got[0].is_ok() && got[2].is_ok());
    let e = got[1].as_ref().unwrap_err();
    assert_eq!((e.row, e.id.as_deref()), (2, Some("item-1")));
    assert!(e.reason.contains("NaN"), "{}", e.reason);
}
