//! Feature files end to end through the `trio` binary: `trio embed --shard` on a manifest and
//! `trio ingest --features` build the same catalogue as `trio ingest`; `trio items export`
//! round-trips a catalogue; features from other towers are refused; a killed bulk load resumes
//! with nothing lost or doubled.

#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::catalogs::{assert_same_catalogue, contents};
use common::items::{trio_command, trio_home, write_manifest};
use serde_json::Value;
use trio_engine::exchange::{ExchangeRow, FeatureFileReader, FeatureFileWriter, Precision};
use trio_engine::store::{Features, NewItem};
use trio_engine::towers::service::TowerSettings;

fn trio(args: &[&str]) -> Command {
    trio_command(args)
}

fn run(args: &[&str]) -> Output {
    let out = trio(args).output().expect("run trio");
    assert!(
        out.status.success(),
        "trio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A manifest with `rows` good rows and bad ones at rows 4 (missing image) and 9 (not JSON).
fn manifest_with_bad_rows(dir: &Path, rows: usize) -> PathBuf {
    let manifest = write_manifest(dir, rows, 7);
    let mut lines: Vec<String> = std::fs::read_to_string(&manifest)
        .expect("manifest")
        .lines()
        .map(String::from)
        .collect();
    let mut bad: Value = serde_json::from_str(&lines[3]).expect("row");
    bad["image"] = "no-such-image.png".into();
    lines[3] = bad.to_string();
    lines[8] = "{not json".into();
    std::fs::write(&manifest, lines.join("\n") + "\n").expect("write manifest");
    manifest
}

fn error_rows(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .expect("errors file")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON")["row"]
                .as_u64()
                .expect("row number")
        })
        .collect()
}

#[test]
fn sharded_embed_and_bulk_load_equal_a_plain_ingest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = manifest_with_bad_rows(dir.path(), 40);
    let single = dir.path().join("single.trio");
    run(&["ingest", s(&manifest), "--db", s(&single)]);

    let out = dir.path().join("features");
    let mut errors = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = run(&[
            "embed",
            "--manifest",
            s(&manifest),
            "--out",
            s(&out),
            "--shard",
            &shard,
            "--json",
        ]);
        let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
        assert_eq!(report["shard"], shard.as_str());
        errors.extend(error_rows(Path::new(
            report["errors_file"].as_str().expect("errors path"),
        )));
    }
    errors.sort();
    assert_eq!(errors, [4, 9], "every bad row reported once, by its shard");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let loaded = dir.path().join("loaded.trio");
    let load = || -> Value {
        let o = run(&[
            "ingest",
            "--features",
            s(&out),
            "--db",
            s(&loaded),
            "--json",
        ]);
        serde_json::from_slice(&o.stdout).expect("JSON report")
    };
    assert_eq!(load()["inserted"], 38);
    assert_same_catalogue(&single, &loaded, 1e-5);

    // Loading again stores nothing twice.
    let report = load();
    assert_eq!(
        (report["inserted"].as_u64(), report["skipped"].as_u64()),
        (Some(0), Some(38))
    );
}

#[test]
fn export_then_load_gives_the_same_catalogue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 30, 8);
    let a = dir.path().join("a.trio");
    run(&["ingest", s(&manifest), "--db", s(&a)]);
    let out = dir.path().join("export");
    let o = run(&[
        "items",
        "export",
        "--db",
        s(&a),
        "--out",
        s(&out),
        "--rows-per-file",
        "12",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(report["items"], 30);
    assert_eq!(report["files"].as_array().map(Vec::len), Some(3));
    let b = dir.path().join("b.trio");
    run(&["ingest", "--features", s(&out), "--db", s(&b)]);
    assert_same_catalogue(&a, &b, 0.0);

    // f16 halves the vectors' bytes and keeps them within half precision.
    let half = dir.path().join("half");
    run(&[
        "items",
        "export",
        "--db",
        s(&a),
        "--out",
        s(&half),
        "--precision",
        "f16",
    ]);
    let size = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum()
    };
    assert!(
        size(&half) * 10 < size(&out) * 7,
        "{} vs {}",
        size(&half),
        size(&out)
    );
    let c = dir.path().join("c.trio");
    run(&["ingest", "--features", s(&half), "--db", s(&c)]);
    assert_same_catalogue(&a, &c, 2e-3);
}

#[test]
fn features_from_other_towers_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = TowerSettings::from_home(
        &trio_engine::fetch::Home::resolve(Some(&trio_home())).expect("home"),
        Default::default(),
    );
    let mut towers = settings.fingerprint().expect("fingerprint");
    towers.text_weights_sha256 = "0".repeat(64);
    towers.text_model = "some-other-encoder".into();
    let file = dir.path().join("foreign.parquet");
    let mut w = FeatureFileWriter::create(&file, &towers, Precision::F32).expect("writer");
    let mut text = std::collections::BTreeMap::new();
    text.insert("title".to_string(), vec![0.1; towers.text_dim]);
    w.write(&[ExchangeRow {
        source_row: Some(1),
        item: NewItem {
            id: "x".into(),
            title: "x".into(),
            content_hash: "h".into(),
            ..NewItem::default()
        },
        features: Features { image: None, text },
    }])
    .expect("write");
    w.finish().expect("finish");
    assert_eq!(FeatureFileReader::open(&file).expect("open").rows(), 1);

    let db = dir.path().join("c.trio");
    let out = trio(&["ingest", "--features", s(&file), "--db", s(&db)])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("foreign.parquet") && err.contains("other towers"),
        "{err}"
    );
    assert!(err.contains("text weights"), "{err}");
    assert_eq!(contents(&db).len(), 0, "nothing stored");
}

#[test]
fn a_killed_bulk_load_resumes_with_every_row_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 60, 9);
    let a = dir.path().join("a.trio");
    run(&["ingest", s(&manifest), "--db", s(&a)]);
    let out = dir.path().join("export");
    run(&["items", "export", "--db", s(&a), "--out", s(&out)]);

    let b = dir.path().join("b.trio");
    let mut reported = Vec::new();
    for kill_after in [1, 5, 12] {
        let mut child = trio(&[
            "ingest",
            "--features",
            s(&out),
            "--db",
            s(&b),
            "--batch-size",
            "1",
            "--report-commits",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
        let stderr = child.stderr.take().expect("stderr");
        let mut seen = 0;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("committed ") {
                reported.push(id.to_string());
                seen += 1;
                if seen == kill_after {
                    child.kill().expect("SIGKILL");
                    break;
                }
            }
        }
        let _ = child.wait();
    }
    run(&["ingest", "--features", s(&out), "--db", s(&b)]);
    let stored = contents(&b);
    let unique: BTreeSet<&String> = reported.iter().collect();
    assert_eq!(unique.len(), reported.len(), "no id committed twice");
    for id in &reported {
        assert!(
            stored.contains_key(id),
            "{id} was reported committed but is missing"
        );
    }
    assert_same_catalogue(&a, &b, 0.0);
}

#[test]
fn a_catalogue_opened_without_towers_names_what_needs_them() {
    let catalog = trio_engine::catalog::Catalog::in_memory(None, trio_engine::Device::Cpu)
        .expect("an in-memory catalogue");
    let Err(e) = catalog.ingest_features(&[], 1, &trio_engine::NoProgress, &mut |_| {}) else {
        panic!("loading features without towers succeeded");
    };
    assert!(matches!(e, trio_engine::Error::NoTowers { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "reading or writing feature files needs the towers, but this catalogue was opened without them"
    );
}
