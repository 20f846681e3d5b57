//! Readers searching while a writer inserts and deletes: no errors, no blocking on the writer,
//! and every search sees one consistent snapshot.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::clustered::Clustered;
use trio_engine::index::{HnswIndex, HnswParams, VectorIndex};

const DIM: usize = 96;
const BATCH: u64 = 200;

#[test]
fn readers_see_consistent_snapshots_while_writing() -> anyhow::Result<()> {
    let mut data = Clustered::new(DIM, 12, 1.0, 9);
    let index = Arc::new(HnswIndex::new(
        DIM,
        HnswParams {
            pending_limit: 32,
            ..HnswParams::default()
        },
    )?);
    let queries = Arc::new(data.points(16));
    let done = Arc::new(AtomicBool::new(false));
    // Keys are written in batches 0..BATCH, BATCH..2*BATCH, ...; a reader may see any number
    // of whole batches, never part of one (each batch is published as one snapshot).
    let searches = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (index, queries, done, searches) = (
                index.clone(),
                queries.clone(),
                done.clone(),
                searches.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut i = r;
                while !done.load(Ordering::Acquire) {
                    let before = index.len();
                    let hits = index.search(&queries[i % queries.len()], 10, None)?;
                    assert!(
                        hits.len() >= before.min(10),
                        "{} hits, {before} live",
                        hits.len()
                    );
                    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                    assert!(
                        index.len() >= before,
                        "nothing is deleted, so len never drops"
                    );
                    // One batch, all of it: a snapshot holds the whole batch or none of it.
                    let b = (i as u64) % 8;
                    let in_batch = move |k: u64| k / BATCH == b;
                    let hits = index.search(&queries[0], BATCH as usize, Some(&in_batch))?;
                    assert!(
                        hits.is_empty() || hits.len() == BATCH as usize,
                        "saw {} of batch {b}",
                        hits.len()
                    );
                    assert!(hits.iter().all(|h| in_batch(h.key)));
                    i += 1;
                    searches.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();

    for b in 0..8u64 {
        let batch: Vec<(u64, Vec<f32>)> = (b * BATCH..(b + 1) * BATCH)
            .map(|k| (k, data.point()))
            .collect();
        index.insert_batch(&batch)?;
        for s in 0..40u64 {
            index.insert(1_000_000 + b * 100 + s, &data.point())?;
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().expect("reader thread panicked")?;
    }
    assert_eq!(index.len(), 8 * (BATCH as usize + 40));
    assert!(searches.load(Ordering::Relaxed) > 0);
    Ok(())
}
