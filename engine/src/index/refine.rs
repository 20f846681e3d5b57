//! Level-0 refinement at freeze: relinks points the way hnswlib inserts them, over the graph
//! hnsw_rs built.
//!
//! hnsw_rs's graph is connected but its level-0 lists are poor: on a reverse update it appends
//! the new point to a full list and drops the farthest entry, so lists drift towards "nearest
//! points only" and lose the long links that let a search cross between clusters. hnswlib
//! instead (1) gives each new point the diverse subset ([`select_diverse`]) of an
//! `ef_construction` beam search, and (2) on a neighbour's overflowing list re-runs the same
//! heuristic rather than dropping the farthest. Refinement does both, for every point of a fresh
//! build or only the new points (and the neighbours they link to) of a later batch:
//!
//! 1. for each point to relink, in parallel: beam search the current graph with its own vector,
//!    and keep the diverse subset of the hits plus its current candidates;
//! 2. reverse links: each point named by some new list gets the namer added to its list; a list
//!    that overflows is re-selected with the heuristic over the old entries plus the newcomers.
//!
//! Both phases read an immutable graph and write disjoint outputs, so they need no locks and
//! the result does not depend on thread timing.

use rayon::prelude::*;

use super::graph::{select_diverse, with_scratch, Allow, Frozen, Incoming};
use crate::kernels::vector::Dot;

/// Every point may be returned.
struct Everyone;

impl Allow for Everyone {
    fn all(&self) -> bool {
        true
    }

    fn allows(&self, _id: u32) -> bool {
        true
    }
}

/// New level-0 lists for all points of `graph`: points in `todo` are relinked from a beam
/// search of width `ef` plus `current[u]` and `hints(u)` as extra candidates; every other point
/// keeps `current[v]` plus reverse links from the relinked points, re-selected when more than
/// `m0`. `current` holds one list per point of `graph`.
pub(crate) fn relink(
    graph: &Frozen,
    current: &[Vec<u32>],
    todo: &[u32],
    hints: &(dyn Fn(u32) -> Vec<u32> + Sync),
    ef: usize,
    m0: usize,
    dot: Dot,
) -> Vec<Vec<u32>> {
    let n = graph.len();
    let vectors = &graph.vectors;
    let forward: Vec<Vec<u32>> = todo
        .par_iter()
        .map(|&u| {
            let hits =
                with_scratch(|s| graph.search(vectors.get(u as usize), ef, &Everyone, dot, s));
            let candidates = hits
                .iter()
                .map(|h| h.id)
                .chain(current[u as usize].iter().copied())
                .chain(hints(u));
            select_diverse(vectors, u as usize, candidates, m0, dot)
        })
        .collect();

    // Phase 2 reads the forward lists by point id.
    let mut relinked: Vec<Option<usize>> = vec![None; n];
    for (i, &u) in todo.iter().enumerate() {
        if let Some(slot) = relinked.get_mut(u as usize) {
            *slot = Some(i);
        }
    }
    let by_id: Vec<&[u32]> = (0..n)
        .map(|v| relinked[v].map_or(&[][..], |i| forward[i].as_slice()))
        .collect();
    let incoming = Incoming::new(&by_id);
    (0..n)
        .into_par_iter()
        .map(|v| {
            let own: &[u32] = match relinked[v] {
                Some(i) => &forward[i],
                None => &current[v],
            };
            let newcomers = incoming.of(v);
            if newcomers.is_empty() {
                return own.to_vec();
            }
            let mut union: Vec<u32> = own
                .iter()
                .chain(newcomers)
                .copied()
                .filter(|&c| c as usize != v && (c as usize) < n)
                .collect();
            union.sort_unstable();
            union.dedup();
            if union.len() <= m0 {
                union
            } else {
                select_diverse(vectors, v, union.into_iter(), m0, dot)
            }
        })
        .collect()
}
