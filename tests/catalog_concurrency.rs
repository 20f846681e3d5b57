//! Searches through the catalogue while an ingest commits chunk after chunk (the index-level
//! twin is `index_concurrency.rs`): no search errors, every answer is well formed, and every item
//! committed before a search started is already findable by it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::items::{has_image, trio_home, write_manifest};
use trio_engine::catalog::{Catalog, Filter, Query, SearchRequest, Space};
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::index::VectorIndex;
use trio_engine::ingest::manifest::{self, ManifestOptions};
use trio_engine::ingest::pipeline::IngestOptions;
use trio_engine::towers::service::TowerSettings;
use trio_engine::{Device, NoProgress};

const ROWS: usize = 36;
/// Rows ingested before the readers start, so every search has neighbours to return.
const FIRST: usize = 12;
const K: usize = 5;

fn number(id: &str) -> usize {
    id["item-".len()..].parse().expect("numbered id")
}

/// One reader step: searches near item `id` in `space` and checks the answer against what had
/// been committed (`known` items, ids `item-000`.. in commit order) when it started.
fn check_search(catalog: &Catalog, id: &str, space: Space, known: usize) -> anyhow::Result<()> {
    let with_vector = (0..known)
        .filter(|&i| space == Space::Text || has_image(i))
        .count();
    let req = SearchRequest {
        query: Query::Id(id.to_string()),
        space,
        k: K,
        offset: 0,
        filters: Vec::new(),
    };
    let hits = catalog.search(&req)?;
    // The item itself is left out; everything else that was committed may be returned.
    assert!(
        hits.len() >= K.min(with_vector - 1) && hits.len() <= K,
        "{id} in {}: {} hits with {with_vector} items committed",
        space.as_str(),
        hits.len()
    );
    assert!(
        hits.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );
    for h in &hits {
        assert_ne!(h.id, id, "an item is not its own neighbour");
        assert!(catalog.get(&h.id)?.is_some(), "hit {} is stored", h.id);
        assert!((-1.0..=1.0).contains(&h.score));
    }

    // Filtered: only the label asked for, and K of them when K exist.
    let label = format!("group-{}", number(id) % 4);
    let same_label = (0..known)
        .filter(|&i| (space == Space::Text || has_image(i)) && i % 4 == number(id) % 4)
        .count();
    let filtered = catalog.search(&SearchRequest {
        filters: vec![Filter {
            field: "label".into(),
            value: label.clone(),
        }],
        ..req
    })?;
    assert!(filtered.len() >= K.min(same_label - 1));
    for h in &filtered {
        assert_eq!(
            catalog.get(&h.id)?.and_then(|i| i.label).as_deref(),
            Some(label.as_str())
        );
    }

    // The item's own vector finds the item first: it is in the index the search used.
    let key = catalog
        .store()
        .key_of(id)?
        .expect("committed item has a key");
    let v = catalog
        .vector_of(space, key, 0)?
        .expect("committed item has its vector");
    let top = catalog.index(space, &NoProgress)?.search(&v, 1, None)?;
    assert_eq!(top.first().map(|h| h.key), Some(key), "{id} is findable");
    Ok(())
}

#[test]
fn searches_during_an_ingest_are_consistent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let manifest_path = write_manifest(dir.path(), ROWS, 5);
    let towers = TowerSettings::from_home(&Home::new(trio_home()), LiteVariant::Lite0);
    let catalog = Arc::new(Catalog::in_memory(Some(towers), Device::Cpu)?);
    let rows = || -> anyhow::Result<_> {
        Ok(manifest::open(&manifest_path, &ManifestOptions::default())?)
    };
    let opts = IngestOptions {
        batch_size: 3,
        ..IngestOptions::default()
    };

    let committed: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = |ids: &[String]| {
        committed
            .lock()
            .expect("committed list")
            .extend_from_slice(ids)
    };
    let first = catalog.ingest(
        rows()?.take(FIRST),
        &IngestOptions {
            limit: Some(FIRST),
            ..opts.clone()
        },
        &NoProgress,
        &mut { record },
    )?;
    assert_eq!(first.inserted, FIRST);
    // Load both indexes, so the ingest below updates them chunk by chunk.
    for space in [Space::Image, Space::Text] {
        catalog.index(space, &NoProgress)?;
    }

    let done = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (catalog, committed, done, searches) = (
                catalog.clone(),
                committed.clone(),
                done.clone(),
                searches.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut step = r;
                loop {
                    // Read `done` first: a pass after it was set still checks the final state.
                    let last = done.load(Ordering::Acquire);
                    let known: Vec<String> = committed.lock().expect("committed list").clone();
                    // Ids commit in manifest order, so `known` is item-000..item-(len-1).
                    assert!(known.iter().enumerate().all(|(i, id)| number(id) == i));
                    let id = &known[(step * 7) % known.len()];
                    let space = if step % 2 == 0 || !has_image(number(id)) {
                        Space::Text
                    } else {
                        Space::Image
                    };
                    check_search(&catalog, id, space, known.len())?;
                    searches.fetch_add(1, Ordering::Relaxed);
                    step += 1;
                    if last {
                        return Ok(());
                    }
                }
            })
        })
        .collect();

    let rest = catalog.ingest(
        rows()?.skip(FIRST),
        &opts,
        &NoProgress,
        &mut |ids: &[String]| {
            committed
                .lock()
                .expect("committed list")
                .extend_from_slice(ids)
        },
    )?;
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().expect("reader thread panicked")?;
    }
    assert_eq!(rest.inserted, ROWS - FIRST);
    assert_eq!(catalog.count()?, ROWS as u64);
    assert_eq!(
        catalog.index(Space::Text, &NoProgress)?.len(),
        ROWS,
        "the live index caught every chunk"
    );
    eprintln!(
        "{} searches during the ingest",
        searches.load(Ordering::Relaxed)
    );
    assert!(searches.load(Ordering::Relaxed) >= 2);
    Ok(())
}
