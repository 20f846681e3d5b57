//! Dump and reload of the HNSW index, and refusal of every dump that does not match: the caller
//! gets a typed "rebuild needed", never a panic and never a wrong index.

mod common;

use std::path::Path;

use common::clustered::Clustered;
use trio_engine::index::{HnswIndex, HnswParams, VectorIndex};
use trio_engine::Error;

const DIM: usize = 64;

fn built(n: usize) -> anyhow::Result<(HnswIndex, Vec<Vec<f32>>)> {
    let mut data = Clustered::new(DIM, 8, 1.0, 21);
    let points: Vec<(u64, Vec<f32>)> = data
        .points(n)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (1000 + i as u64, v))
        .collect();
    let index = HnswIndex::build(DIM, HnswParams::default(), &points)?;
    Ok((index, data.points(20)))
}

fn expect_rebuild(result: trio_engine::Result<HnswIndex>, what: &str) {
    match result {
        Err(Error::IndexRebuildNeeded { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("{what}: expected IndexRebuildNeeded, got {other}"),
        Ok(_) => panic!("{what}: a bad dump was loaded"),
    }
}

fn graph_file(dir: &Path, suffix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .expect("dump dir readable")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .expect("dump has the file")
}

#[test]
fn dump_and_reload_give_the_same_answers() -> anyhow::Result<()> {
    let (index, queries) = built(1_500)?;
    index.delete(1003)?;
    index.insert(99_999, &queries[0])?; // still pending, not yet frozen
    let dir = tempfile::tempdir()?;
    let manifest = index.dump(dir.path(), 42)?;
    assert_eq!(
        (manifest.points, manifest.live, manifest.store_generation),
        (1_501, 1_500, 42)
    );

    let loaded = HnswIndex::load(dir.path(), DIM, HnswParams::default(), 42)?;
    assert_eq!((loaded.len(), loaded.tombstones()), (1_500, 1));
    for q in &queries {
        assert_eq!(index.search(q, 10, None)?, loaded.search(q, 10, None)?);
    }
    assert_eq!(loaded.search(&queries[0], 1, None)?[0].key, 99_999);
    // The reloaded index keeps accepting writes, and a second dump replaces the first.
    loaded.insert(77, &queries[1])?;
    loaded.dump(dir.path(), 43)?;
    let files = std::fs::read_dir(dir.path())?.count();
    assert_eq!(
        files, 6,
        "manifest + 2 graph files + keys + tombstones + links, old dump removed"
    );
    let again = HnswIndex::load(dir.path(), DIM, HnswParams::default(), 43)?;
    assert_eq!(again.search(&queries[1], 1, None)?[0].key, 77);
    Ok(())
}

#[test]
fn an_empty_index_roundtrips() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    HnswIndex::new(DIM, HnswParams::default())?.dump(dir.path(), 0)?;
    let loaded = HnswIndex::load(dir.path(), DIM, HnswParams::default(), 0)?;
    assert!(loaded.is_empty());
    loaded.insert(1, &vec![1.0; DIM])?;
    assert_eq!(loaded.search(&vec![1.0; DIM], 1, None)?[0].key, 1);
    Ok(())
}

#[test]
fn stale_corrupt_or_missing_dumps_need_a_rebuild() -> anyhow::Result<()> {
    let (index, _) = built(500)?;
    let params = HnswParams::default;

    let empty = tempfile::tempdir()?;
    expect_rebuild(
        HnswIndex::load(empty.path(), DIM, params(), 1),
        "no dump at all",
    );

    let dir = tempfile::tempdir()?;
    index.dump(dir.path(), 1)?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 2),
        "store moved on",
    );
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM + 1, params(), 1),
        "other dimension",
    );
    let other_m = HnswParams { m: 8, ..params() };
    expect_rebuild(HnswIndex::load(dir.path(), DIM, other_m, 1), "other m");

    // One flipped byte in the graph data.
    let data = graph_file(dir.path(), ".hnsw.data");
    let original = std::fs::read(&data)?;
    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    std::fs::write(&data, &flipped)?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 1),
        "flipped byte",
    );
    // Truncated.
    std::fs::write(&data, &original[..original.len() - 9])?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 1),
        "truncated data",
    );
    std::fs::write(&data, &original)?;
    HnswIndex::load(dir.path(), DIM, params(), 1)?;

    // Missing graph file.
    let graph = graph_file(dir.path(), ".hnsw.graph");
    let saved = std::fs::read(&graph)?;
    std::fs::remove_file(&graph)?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 1),
        "missing graph",
    );
    std::fs::write(&graph, &saved)?;

    // A manifest that is not JSON, or lies about its files.
    let manifest = dir.path().join("manifest.json");
    let good = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, "{ not json")?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 1),
        "garbage manifest",
    );
    std::fs::write(
        &manifest,
        good.replace("\"points\": 500", "\"points\": 501"),
    )?;
    expect_rebuild(
        HnswIndex::load(dir.path(), DIM, params(), 1),
        "manifest miscounts",
    );
    std::fs::write(&manifest, &good)?;
    assert_eq!(HnswIndex::load(dir.path(), DIM, params(), 1)?.len(), 500);
    Ok(())
}
