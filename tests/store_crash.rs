//! Crash consistency of ingest: a real `trio ingest` process is SIGKILLed at random moments and
//! re-run until the manifest is done. Every id it reported committed (`--report-commits`) must
//! then be in the database, and every row of the manifest must be there exactly once, with all
//! its vectors, and be found by a search. (A kill between a commit and its report line is
//! allowed to leave stored rows unreported; the last run skips them as already stored.)
//!
//! The test runs the `trio` binary built next to this test executable (`target/<profile>/trio`;
//! `scripts/test.sh` builds it with `cargo build --workspace --all-targets` first) with the real
//! towers from `$TRIO_HOME`. Kill moments come from a seeded generator: after a random number of
//! reported commits (0 means while the towers are still loading), plus a random delay, so kills
//! land before, during and after commits.

#![cfg(unix)]

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::items::{has_description, has_image, trio_binary, trio_home, write_manifest};
use rand::{Rng, SeedableRng};
use trio_engine::catalog::{Catalog, Space};
use trio_engine::index::VectorIndex;
use trio_engine::progress::NoProgress;

const ROWS: usize = 48;
const KILLS: usize = 20;
const SEED: u64 = 20_261_126;

fn spawn_ingest(bin: &Path, db: &Path, manifest: &Path) -> Child {
    Command::new(bin)
        .arg("ingest")
        .arg(manifest)
        .arg("--db")
        .arg(db)
        .args([
            "--batch-size",
            "3",
            "--report-commits",
            "--quiet",
            "--device",
            "cpu",
        ])
        .env("TRIO_HOME", trio_home())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trio ingest")
}

/// Forwards each `committed <id>` line of the child's stderr; other lines go to `other`.
fn watch(child: &mut Child) -> (mpsc::Receiver<String>, std::thread::JoinHandle<Vec<String>>) {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut other = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            match line.strip_prefix("committed ") {
                Some(id) => {
                    let _ = tx.send(id.to_string());
                }
                None => other.push(line),
            }
        }
        other
    });
    (rx, reader)
}

#[test]
fn killed_ingest_keeps_every_reported_commit() {
    let bin = trio_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = write_manifest(dir.path(), ROWS, SEED);
    let db = dir.path().join("crash.trio");
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);

    let mut reported: Vec<String> = Vec::new();
    let mut kills = 0;
    let mut finished = false;
    // Kill, re-run, kill again; once KILLS kills are done, let the last run finish.
    while !finished {
        let mut child = spawn_ingest(&bin, &db, &manifest);
        let (commits, reader) = watch(&mut child);
        if kills < KILLS {
            // Wait for 0..=2 commits of this run, then a random delay, then SIGKILL.
            let wait_for = rng.gen_range(0..=2);
            let mut seen = 0;
            while seen < wait_for {
                match commits.recv() {
                    Ok(id) => {
                        reported.push(id);
                        seen += 1;
                    }
                    Err(_) => break, // the run ended (nothing left to ingest)
                }
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
            // Already exited is fine: the kill then has nothing to hit.
            let _ = child.kill();
            kills += 1;
        }
        let status = child.wait().expect("wait for trio ingest");
        let other = reader.join().expect("stderr reader");
        reported.extend(commits.try_iter());
        if status.success() {
            finished = kills >= KILLS;
        } else {
            assert!(
                status.code().is_none(),
                "trio ingest failed on its own ({status}): {}",
                other.join("\n")
            );
        }
    }
    assert!(kills >= KILLS);

    // Every reported id once (a re-run skips what is stored, so it never reports an id again).
    // Not every stored id need have been reported: a kill can land after a batch commits and
    // before its report line is written; the final run then skips those rows as stored.
    let unique: BTreeSet<&String> = reported.iter().collect();
    assert_eq!(unique.len(), reported.len(), "an id was committed twice");

    let catalog = Catalog::open_existing(&db).expect("reopen the database");
    assert_eq!(
        catalog.count().expect("count"),
        ROWS as u64,
        "no item stored twice"
    );
    let listed = catalog.list(0, 10 * ROWS).expect("list");
    let listed_ids: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        listed_ids.len(),
        listed.len(),
        "ids are unique in the store"
    );
    // The runs together stored every row of the manifest, reported or not.
    let all_ids: BTreeSet<String> = (0..ROWS).map(|i| format!("item-{i:03}")).collect();
    let stored_ids: BTreeSet<String> = listed_ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(stored_ids, all_ids, "the runs together stored every row");
    for id in &reported {
        assert!(
            stored_ids.contains(id),
            "{id} was reported committed but is missing"
        );
    }
    let image_index = catalog
        .index(Space::Image, &NoProgress)
        .expect("image index");
    let text_index = catalog.index(Space::Text, &NoProgress).expect("text index");
    // Every stored row, reported or not, is whole and searchable.
    for id in &stored_ids {
        let item = catalog
            .get(id)
            .expect("read item")
            .unwrap_or_else(|| panic!("{id} was reported committed but is missing"));
        let i: usize = id["item-".len()..].parse().expect("numbered id");
        let features = catalog
            .store()
            .get_features(item.key)
            .expect("read features")
            .unwrap_or_else(|| panic!("{id} has no features"));
        assert_eq!(features.image.is_some(), has_image(i), "{id}: image vector");
        let want_fields: BTreeSet<&str> = if has_description(i) {
            ["description", "title"].into()
        } else {
            ["title"].into()
        };
        let got_fields: BTreeSet<&str> = features.text.keys().map(|k| k.as_str()).collect();
        assert_eq!(got_fields, want_fields, "{id}: text vectors");
        for (space, index) in [(Space::Image, &image_index), (Space::Text, &text_index)] {
            let Some(v) = catalog.vector_of(space, item.key, 0).expect("vector") else {
                continue;
            };
            let hits = index.search(&v, 1, None).expect("search");
            assert_eq!(
                hits.first().map(|h| h.key),
                Some(item.key),
                "{id}: a search with its own {} vector finds it first",
                space.as_str()
            );
        }
    }
    assert_eq!(image_index.len(), ROWS - ROWS / 4);
    assert_eq!(text_index.len(), ROWS);
}
