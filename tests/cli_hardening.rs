//! Defects found by probing `trio` the way a careless user or an attacker would, one regression
//! test each: a bad row never takes the good ones with it, nothing the CLI reads can hang it or
//! flood its memory, and the tool behaves as Unix tools do.
//!
//! Most tests run the `trio` binary of this build with the real towers from `$TRIO_HOME` (see
//! `tests/store_crash.rs`); the file-reading checks call the engine directly.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::items::{has_image, trio_command, write_manifest};
use serde_json::Value;
use trio_engine::catalog::{Catalog, ItemFault, Space};
use trio_engine::progress::NoProgress;
use trio_engine::store::{Features, NewItem, PutMode, Store};
use trio_engine::towers::image::{ImageProblem, Preprocessor, DEFAULT_MAX_PIXELS};

/// How long a command may run before the test calls it hung. Not a speed target: the commands
/// here finish in seconds, and the bugs they guard against never finish at all.
const HANG: Duration = Duration::from_secs(300);

fn trio(args: &[&str]) -> Command {
    trio_command(args)
}

/// Runs to the end, or fails the test if the command hangs.
fn finish(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trio");
    wait_or_kill(child)
}

fn wait_or_kill(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll trio").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "trio hung for {HANG:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn error_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("errors file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("errors file line is JSON"))
        .collect()
}

/// Rewrites the manifest's rows through `edit` (row index, parsed object).
fn edit_manifest(manifest: &Path, mut edit: impl FnMut(usize, &mut Value)) {
    let text = std::fs::read_to_string(manifest).expect("read manifest");
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: Value = serde_json::from_str(l).expect("manifest row");
            edit(i, &mut v);
            v.to_string()
        })
        .collect();
    std::fs::write(manifest, lines.join("\n") + "\n").expect("write manifest");
}

fn stored_ids(db: &Path) -> Vec<String> {
    let catalog = Catalog::open_existing(db).expect("open the database");
    catalog
        .list(0, 10_000)
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect()
}

fn ingest(manifest: &Path, db: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["ingest", path_str(manifest), "--db", path_str(db)];
    args.extend_from_slice(extra);
    finish(trio(&args))
}

#[test]
fn an_overlong_id_fails_its_row_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 40, 1);
    let long = "x".repeat(1025);
    edit_manifest(&manifest, |i, row| {
        if i == 29 {
            row["id"] = long.clone().into();
        }
    });
    let db = dir.path().join("c.trio");
    let errors = dir.path().join("errors.jsonl");
    let out = ingest(
        &manifest,
        &db,
        &["--batch-size", "8", "--errors", path_str(&errors)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = stored_ids(&db);
    assert_eq!(stored.len(), 39, "every other row lands");
    let errors = error_rows(&errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["row"], 30);
    let reason = errors[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1024"),
        "the reason names the limit: {reason}"
    );
    let id = errors[0]["id"].as_str().unwrap_or_default();
    assert!(id.len() < 200, "the error does not echo a 1 KiB id: {id}");
}

#[test]
fn non_regular_and_oversized_image_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo.png");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // A 3 GB sparse file costs no disk; reading it whole would cost 3 GB of memory.
    let sparse = dir.path().join("sparse.png");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(3 << 30))
        .expect("sparse file");
    // Under the byte limit but no image: only the header is read before it is refused.
    let noise = dir.path().join("noise.png");
    std::fs::write(&noise, vec![0x5a; 1 << 20]).expect("noise file");

    let pre = Preprocessor::new(224, DEFAULT_MAX_PIXELS);
    assert_eq!(
        pre.read_file(&fifo),
        Err(ImageProblem::NotARegularFile { kind: "a FIFO" })
    );
    assert_eq!(
        pre.read_file(Path::new("/dev/zero")),
        Err(ImageProblem::NotARegularFile {
            kind: "a character device"
        })
    );
    assert_eq!(
        pre.read_file(dir.path()),
        Err(ImageProblem::NotARegularFile { kind: "a folder" })
    );
    assert!(matches!(
        pre.read_file(&sparse),
        Err(ImageProblem::FileTooLarge { bytes, .. }) if bytes == 3 << 30
    ));
    assert_eq!(pre.read_file(&noise), Err(ImageProblem::NotAnImage));
    let small = pre.with_max_file_bytes(1000);
    assert!(matches!(
        small.read_file(&noise),
        Err(ImageProblem::FileTooLarge { limit: 1000, .. })
    ));

    // Through the CLI: the bad rows are errors, the good rows land, nothing hangs.
    let manifest = write_manifest(dir.path(), 8, 2);
    edit_manifest(&manifest, |i, row| match i {
        1 => row["image"] = path_str(&fifo).into(),
        2 => row["image"] = "/dev/zero".into(),
        3 => row["image"] = path_str(&sparse).into(),
        _ => {}
    });
    let db = dir.path().join("c.trio");
    let errors = dir.path().join("errors.jsonl");
    let out = ingest(&manifest, &db, &["--errors", path_str(&errors)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored_ids(&db).len(), 5);
    let reasons: Vec<(u64, String)> = error_rows(&errors)
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap_or(0),
                e["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].1.contains("FIFO"), "{reasons:?}");
    assert!(reasons[1].1.contains("character device"), "{reasons:?}");
    assert!(reasons[2].1.contains("over the limit"), "{reasons:?}");
}

#[test]
fn errors_file_is_checked_first_and_lists_rows_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 6, 3);
    let db = dir.path().join("c.trio");

    // A folder that does not exist: refused before a single row is committed.
    let out = ingest(
        &manifest,
        &db,
        &[
            "--errors",
            path_str(&dir.path().join("missing/errors.jsonl")),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("errors file"), "{}", stderr(&out));
    assert!(!db.exists(), "nothing was written");

    // Row 2 fails in the pipeline (a missing image), row 5 in the reader (malformed JSON):
    // the file lists them in row order.
    edit_manifest(&manifest, |i, row| {
        if i == 1 {
            row["image"] = "gone.png".into();
        }
    });
    let mut lines: Vec<String> = std::fs::read_to_string(&manifest)
        .expect("manifest")
        .lines()
        .map(String::from)
        .collect();
    lines[4] = "{\"id\": \"broken\",".into();
    std::fs::write(&manifest, lines.join("\n") + "\n").expect("write manifest");
    let errors = dir.path().join("errors.jsonl");
    let out = ingest(&manifest, &db, &["--errors", path_str(&errors)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<u64> = error_rows(&errors)
        .iter()
        .map(|e| e["row"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(rows, [2, 5]);
}

#[test]
fn an_os_error_is_reported_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = ingest(
        &dir.path().join("no-such-manifest.jsonl"),
        &dir.path().join("c.trio"),
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn resuming_skips_stored_rows_before_reading_their_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), 12, 4);
    let db = dir.path().join("c.trio");
    let out = ingest(&manifest, &db, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // With the images gone, a re-run can only succeed if it never opens them: a stored id is
    // decided from the id before the image is read.
    for i in (0..12).filter(|&i| has_image(i)) {
        std::fs::remove_file(dir.path().join(format!("img-{i:03}.png"))).expect("remove");
    }
    let out = ingest(&manifest, &db, &["--json", "--strict"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        (report["skipped"].as_u64(), report["failed"].as_u64()),
        (Some(12), Some(0))
    );

    // `trio items check` names the items whose image is gone.
    let out = finish(trio(&["items", "check", "--db", path_str(&db), "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let check: Value = serde_json::from_slice(&out.stdout).expect("JSON check");
    let missing: Vec<&str> = check["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["fault"] == "image_missing")
        .map(|p| p["id"].as_str().unwrap_or_default())
        .collect();
    let want: Vec<String> = (0..12)
        .filter(|&i| has_image(i))
        .map(|i| format!("item-{i:03}"))
        .collect();
    assert_eq!(missing, want);
}

/// A store of `n` text-only items written directly (no towers): `trio items` only reads it.
fn store_with_items(db: &Path, n: usize) {
    let store = Store::create(db).expect("create store");
    let items: Vec<(NewItem, Features)> = (0..n)
        .map(|i| {
            let item = NewItem {
                id: format!("item-{i:04}"),
                title: format!("a listed item with a title long enough to fill a pipe {i}"),
                content_hash: format!("hash-{i}"),
                ..NewItem::default()
            };
            let text = [("title".to_string(), vec![1.0f32, i as f32])].into();
            (item, Features { image: None, text })
        })
        .collect();
    store.put_items(&items, PutMode::Skip).expect("put");
}

#[test]
fn global_flags_are_taken_after_the_subcommand_and_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("c.trio");
    // 300 items list to far more than a pipe buffers, so the writer meets the closed pipe.
    store_with_items(&db, 300);

    for args in [
        vec!["items", "list", "--db", path_str(&db), "--json"],
        vec!["items", "--db", path_str(&db), "list", "--json"],
        vec!["--json", "items", "list", "--db", path_str(&db)],
    ] {
        let out = finish(trio(&args));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON listing");
        assert_eq!(listing["total"], 300, "{args:?}");
    }

    // `trio items list --json | head -1`: the reader goes away after one line.
    let mut child = trio(&[
        "items",
        "list",
        "--db",
        path_str(&db),
        "--json",
        "--limit",
        "300",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start trio");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert_eq!(first.trim(), "{");
    let out = wait_or_kill(child);
    assert_ne!(out.status.code(), Some(101), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn serving_a_missing_database_needs_create() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("typo.trio");
    let out = finish(trio(&[
        "serve",
        "--db",
        path_str(&db),
        "--addr",
        "127.0.0.1:0",
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not exist") && err.contains("--create"),
        "{err}"
    );
    assert!(!db.exists(), "no empty catalogue was created");
    // Read-only commands refuse too.
    let out = finish(trio(&["search", "--db", path_str(&db), "--text", "cat"]));
    assert!(!out.status.success());
    assert!(!db.exists());
}

/// A byte pattern no real feature takes, so the test can find its bytes in the file.
const MARK: f32 = 1234.567;

#[test]
fn a_damaged_vector_is_reported_as_a_damaged_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("c.trio");
    {
        let store = Store::create(&db).expect("create store");
        let items: Vec<(NewItem, Features)> = (0..3)
            .map(|i| {
                let mut image = vec![0.5f32 + i as f32; 16];
                if i == 1 {
                    image[7] = MARK;
                }
                let item = NewItem {
                    id: format!("v{i}"),
                    title: format!("item {i}"),
                    content_hash: format!("h{i}"),
                    ..NewItem::default()
                };
                (
                    item,
                    Features {
                        image: Some(image),
                        text: Default::default(),
                    },
                )
            })
            .collect();
        store.put_items(&items, PutMode::Skip).expect("put");
    }
    // Flip the marked value into a NaN, as a damaged disk would.
    let mut bytes = std::fs::read(&db).expect("read db");
    let mark = MARK.to_le_bytes();
    let at = bytes
        .windows(4)
        .position(|w| w == mark)
        .expect("the marked value is in the file");
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&db, &bytes).expect("write db");

    let catalog = Catalog::open_existing(&db).expect("open");
    let err = catalog
        .index(Space::Image, &NoProgress)
        .expect_err("a damaged vector cannot be indexed")
        .to_string();
    assert!(
        err.contains("database is damaged") && err.contains("`features`"),
        "{err}"
    );
    assert!(
        err.contains("trio items check"),
        "the message says what to do: {err}"
    );
    let report = catalog.check_items(&NoProgress).expect("check");
    let damaged: Vec<(&str, &ItemFault)> = report
        .problems
        .iter()
        .map(|p| (p.id.as_str(), &p.fault))
        .collect();
    assert_eq!(damaged, [("v1", &ItemFault::FeaturesDamaged)]);
}
