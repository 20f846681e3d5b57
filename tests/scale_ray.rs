//! Scale-out on a real Ray cluster: `scale/ray_embed.py` splits a manifest into 4 shards, runs
//! `trio embed --shard` as Ray tasks over a head node and a second worker node (1 CPU each), and
//! loads the result with one `trio ingest --features`. The catalogue must equal a one-machine
//! `trio ingest` of the same manifest, also when one task's process, or the whole worker node,
//! is SIGKILLed mid-shard (Ray retries), and the bad rows must come back with their row numbers.
//!
//! Each scenario runs `tests/scale/ray_cluster.sh` inside `unshare --net --pid`: only loopback
//! exists there, so nothing leaves the machine, and the cluster dies with the script. Ray comes
//! from `scale/install.sh` (pinned). The test skips, saying why, only where `unshare` is not
//! permitted.

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::catalogs::{assert_same_catalogue, contents};
use common::items::{trio_binary, trio_home, write_manifest};
use serde_json::Value;

const ROWS: usize = 300;
/// Rows made bad on purpose (1-based): a missing image, a line that is not JSON, a non-image.
const BAD_ROWS: [u64; 3] = [10, 150, 222];
/// A scenario that takes longer than this has hung (it takes well under a minute).
const HANG: Duration = Duration::from_secs(600);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unshare_permitted() -> Result<(), String> {
    let status = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("unshare --net --pid is not permitted here (it needs root or user namespaces)".into())
    }
}

fn ray_python() -> String {
    let out = Command::new(repo().join("scale/install.sh"))
        .output()
        .expect("run scale/install.sh");
    assert!(
        out.status.success(),
        "scale/install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn manifest(dir: &Path) -> std::path::PathBuf {
    let manifest = write_manifest(dir, ROWS, 11);
    std::fs::write(dir.join("not-an-image.png"), b"plain text, not a picture").expect("write");
    let mut lines: Vec<String> = std::fs::read_to_string(&manifest)
        .expect("manifest")
        .lines()
        .map(String::from)
        .collect();
    let mut edit = |row: u64, f: &dyn Fn(&mut Value)| {
        let i = row as usize - 1;
        let mut v: Value = serde_json::from_str(&lines[i]).expect("row");
        f(&mut v);
        lines[i] = v.to_string();
    };
    edit(BAD_ROWS[0], &|v| v["image"] = "missing.png".into());
    edit(BAD_ROWS[2], &|v| v["image"] = "not-an-image.png".into());
    lines[BAD_ROWS[1] as usize - 1] = "{\"id\": \"cut".into();
    std::fs::write(&manifest, lines.join("\n") + "\n").expect("write manifest");
    manifest
}

fn run_scenario(scenario: &str, python: &str, manifest: &Path, dir: &Path) -> (Value, String) {
    let out = dir.join(format!("{scenario}-features"));
    let db = dir.join(format!("{scenario}.trio"));
    let mut child = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount-proc", "bash"])
        .arg(repo().join("tests/scale/ray_cluster.sh"))
        .arg(scenario)
        .arg(python)
        .arg(trio_binary())
        .arg(manifest)
        .arg(&out)
        .arg(&db)
        .arg(trio_home())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cluster script");
    let started = Instant::now();
    while child.try_wait().expect("poll").is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            panic!("scenario {scenario} hung for {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "scenario {scenario} failed: {stderr}"
    );
    // Ray prints notices of its own (a killed raylet, say) on stdout around the summary line, so
    // the summary is read from the file the job writes.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = std::fs::read_to_string(dir.join(format!("{scenario}-features.json")))
        .unwrap_or_else(|e| panic!("{scenario}: no job summary ({e}): {stdout}\n{stderr}"));
    let job: Value = serde_json::from_str(&summary)
        .unwrap_or_else(|e| panic!("{scenario}: the summary is not JSON ({e}): {summary}"));
    (job, stderr)
}

#[test]
fn a_ray_job_over_two_nodes_builds_the_same_catalogue_as_one_machine() {
    if let Err(reason) = unshare_permitted() {
        eprintln!("skipped: {reason}");
        return;
    }
    let python = ray_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = manifest(dir.path());
    let single = dir.path().join("single.trio");
    let out = Command::new(trio_binary())
        .args(["ingest", "--quiet", "--device", "cpu", "--db"])
        .arg(&single)
        .arg(&manifest)
        .env("TRIO_HOME", trio_home())
        .output()
        .expect("trio ingest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = ROWS - BAD_ROWS.len();
    assert_eq!(contents(&single).len(), good);

    for scenario in ["plain", "kill-task", "kill-node"] {
        let (job, stderr) = run_scenario(scenario, &python, &manifest, dir.path());
        let shards = job["shards"].as_array().expect("shards");
        assert_eq!(shards.len(), 4, "{scenario}");
        if scenario == "plain" {
            let nodes: std::collections::BTreeSet<&str> =
                shards.iter().filter_map(|s| s["node"].as_str()).collect();
            assert_eq!(
                nodes.len(),
                2,
                "{scenario}: the shards ran on both nodes: {job}"
            );
        } else {
            assert!(
                stderr.contains("killed"),
                "{scenario}: nothing was killed: {stderr}"
            );
        }
        let errors = std::fs::read_to_string(job["errors"].as_str().expect("errors path"))
            .expect("errors file");
        let rows: Vec<u64> = errors
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("JSON")["row"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(
            rows, BAD_ROWS,
            "{scenario}: bad rows with their row numbers"
        );
        assert_eq!(
            job["ingest"]["inserted"], good,
            "{scenario}: every good row loaded"
        );
        let db = dir.path().join(format!("{scenario}.trio"));
        assert_same_catalogue(&single, &db, 1e-5);
    }
}
