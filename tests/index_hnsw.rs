//! The HNSW index checked against brute force (FlatIndex), the way redb's fuzzer checks itself
//! against a BTreeMap: recall, filters, tombstones, single inserts, compaction.

mod common;

use std::collections::HashSet;

use common::clustered::Clustered;
use trio_engine::index::{FlatIndex, Hit, HnswIndex, HnswParams, VectorIndex};

const DIM: usize = 384;

fn keyed(points: &[Vec<f32>], first_key: u64) -> Vec<(u64, Vec<f32>)> {
    points
        .iter()
        .enumerate()
        .map(|(i, v)| (first_key + i as u64, v.clone()))
        .collect()
}

fn keys(hits: &[Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.key).collect()
}

/// Mean fraction of the exact top-k that the approximate top-k found.
fn recall(exact: &[Vec<Hit>], approx: &[Vec<Hit>]) -> f64 {
    let mut found = 0usize;
    let mut wanted = 0usize;
    for (e, a) in exact.iter().zip(approx) {
        let truth: HashSet<u64> = keys(e).into_iter().collect();
        wanted += truth.len();
        found += a.iter().filter(|h| truth.contains(&h.key)).count();
    }
    found as f64 / wanted.max(1) as f64
}

fn both(
    n: usize,
    seed: u64,
    params: HnswParams,
) -> anyhow::Result<(HnswIndex, FlatIndex, Clustered)> {
    let mut data = Clustered::new(DIM, 50, 1.0, seed);
    let points = keyed(&data.points(n), 0);
    let hnsw = HnswIndex::build(DIM, params, &points)?;
    let flat = FlatIndex::new(DIM)?;
    flat.insert_batch(&points)?;
    Ok((hnsw, flat, data))
}

#[test]
fn recall_at_10_matches_brute_force() -> anyhow::Result<()> {
    let (hnsw, flat, mut data) = both(5_000, 7, HnswParams::default())?;
    assert_eq!(hnsw.len(), 5_000);
    let queries = data.points(200);
    let mut exact = Vec::new();
    let mut approx = Vec::new();
    for q in &queries {
        exact.push(flat.search(q, 10, None)?);
        let hits = hnsw.search(q, 10, None)?;
        assert_eq!(hits.len(), 10);
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "best first"
        );
        approx.push(hits);
    }
    let r = recall(&exact, &approx);
    eprintln!("recall@10 on 5000 x {DIM}: {r:.4}");
    assert!(r >= 0.95, "recall@10 = {r:.4}");
    // Scores are cosine similarities and agree with the exact ones.
    let (e, a) = (&exact[0][0], &approx[0][0]);
    if e.key == a.key {
        assert!((e.score - a.score).abs() < 1e-4);
    }
    Ok(())
}

#[test]
fn filtered_search_returns_k_allowed_results() -> anyhow::Result<()> {
    // Graph search for filters expected to allow more than 100 points, exact scan below; and an
    // index that always walks the graph, however selective the filter.
    for brute_force_max in [100, 1] {
        let params = HnswParams {
            brute_force_max,
            ..HnswParams::default()
        };
        let (hnsw, flat, mut data) = both(4_000, 11, params)?;
        let queries = data.points(40);
        // From permissive to very selective: every 3rd, every 50th (80 points), 6 points.
        type Filter = Box<dyn Fn(u64) -> bool>;
        let filters: [(&str, usize, Filter); 3] = [
            ("third", 10, Box::new(|k| k % 3 == 0)),
            ("fiftieth", 10, Box::new(|k| k % 50 == 0)),
            ("six", 6, Box::new(|k| k < 6)),
        ];
        for (name, want, filter) in &filters {
            let mut exact = Vec::new();
            let mut approx = Vec::new();
            for q in &queries {
                let hits = hnsw.search(q, 10, Some(filter.as_ref()))?;
                assert_eq!(hits.len(), *want, "filter {name}");
                assert!(hits.iter().all(|h| filter(h.key)), "filter {name} leaked");
                exact.push(flat.search(q, 10, Some(filter.as_ref()))?);
                approx.push(hits);
            }
            let r = recall(&exact, &approx);
            eprintln!("brute_force_max {brute_force_max}, filter {name}: recall@10 = {r:.4}");
            assert!(r >= 0.95, "filter {name}: recall@10 = {r:.4}");
        }
    }
    Ok(())
}

#[test]
fn deleted_keys_never_come_back() -> anyhow::Result<()> {
    let params = HnswParams {
        rebuild_ratio: 0.2,
        ..HnswParams::default()
    };
    let mut data = Clustered::new(DIM, 20, 1.0, 3);
    let points = keyed(&data.points(2_000), 0);
    let hnsw = HnswIndex::build(DIM, params, &points)?;
    let deleted: HashSet<u64> = (0..2_000).filter(|k| k % 4 != 0).take(700).collect();
    for &k in &deleted {
        assert!(hnsw.delete(k)?);
    }
    assert!(!hnsw.delete(1)?, "already deleted");
    assert_eq!(hnsw.len(), 1_300);
    assert_eq!(hnsw.tombstones(), 700);
    assert!(
        hnsw.needs_rebuild(),
        "35% tombstones is past the 20% threshold"
    );

    let queries = data.points(30);
    // A deleted point's own vector must not find it.
    let own = &points[1].1;
    let check = |index: &HnswIndex| -> anyhow::Result<()> {
        assert!(index.search(own, 10, None)?.iter().all(|h| h.key != 1));
        for q in &queries {
            let hits = index.search(q, 10, None)?;
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| !deleted.contains(&h.key)));
        }
        Ok(())
    };
    check(&hnsw)?;
    hnsw.compact()?;
    assert_eq!((hnsw.len(), hnsw.tombstones()), (1_300, 0));
    assert!(!hnsw.needs_rebuild());
    check(&hnsw)?;
    Ok(())
}

#[test]
fn single_inserts_are_searchable_at_once_and_replace_by_key() -> anyhow::Result<()> {
    let params = HnswParams {
        pending_limit: 16,
        ..HnswParams::default()
    };
    let mut data = Clustered::new(DIM, 10, 1.0, 5);
    let hnsw = HnswIndex::new(DIM, params)?;
    assert!(hnsw.search(&data.point(), 5, None)?.is_empty());
    let points = data.points(100);
    // 100 single inserts cross the pending limit several times.
    for (i, v) in points.iter().enumerate() {
        hnsw.insert(i as u64, v)?;
        let hits = hnsw.search(v, 1, None)?;
        assert_eq!(hits[0].key, i as u64, "point {i} finds itself");
        assert!(hits[0].score > 0.999);
    }
    assert_eq!(hnsw.len(), 100);
    // Re-inserting a key replaces its vector.
    hnsw.insert(5, &points[70])?;
    assert_eq!(hnsw.len(), 100);
    assert_eq!(hnsw.tombstones(), 1);
    let hits = hnsw.search(&points[5], 100, None)?;
    assert_eq!(hits.iter().filter(|h| h.key == 5).count(), 1);
    assert!(hits
        .iter()
        .find(|h| h.key == 5)
        .is_some_and(|h| h.score < 0.999));
    Ok(())
}

#[test]
fn bad_vectors_are_errors() -> anyhow::Result<()> {
    let hnsw = HnswIndex::new(4, HnswParams::default())?;
    assert!(hnsw.insert(1, &[1.0, 2.0]).is_err(), "wrong length");
    assert!(hnsw.insert(1, &[0.0; 4]).is_err(), "no direction");
    assert!(hnsw.insert(1, &[f32::NAN, 0.0, 0.0, 1.0]).is_err());
    assert!(hnsw.search(&[1.0; 3], 1, None).is_err());
    assert!(HnswIndex::new(
        4,
        HnswParams {
            m: 1000,
            ..HnswParams::default()
        }
    )
    .is_err());
    Ok(())
}

#[test]
fn flat_index_is_exact_and_deletes_in_place() -> anyhow::Result<()> {
    let flat = FlatIndex::new(3)?;
    flat.insert_batch(&[
        (10, vec![1.0, 0.0, 0.0]),
        (11, vec![0.9, 0.1, 0.0]),
        (12, vec![0.0, 1.0, 0.0]),
        (13, vec![-1.0, 0.0, 0.0]),
    ])?;
    let hits = flat.search(&[2.0, 0.0, 0.0], 4, None)?;
    assert_eq!(keys(&hits), [10, 11, 12, 13]);
    assert!((hits[0].score - 1.0).abs() < 1e-6 && (hits[3].score + 1.0).abs() < 1e-6);
    assert!(flat.delete(10)?);
    assert!(!flat.delete(10)?);
    assert_eq!(keys(&flat.search(&[1.0, 0.0, 0.0], 4, None)?), [11, 12, 13]);
    assert_eq!(
        keys(&flat.search(&[1.0, 0.0, 0.0], 4, Some(&|k| k != 11))?),
        [12, 13]
    );
    flat.insert(13, &[1.0, 0.0, 0.0])?;
    assert_eq!(flat.len(), 3);
    assert_eq!(flat.search(&[1.0, 0.0, 0.0], 1, None)?[0].key, 13);
    Ok(())
}
