//! A frozen HNSW graph: an immutable, compact copy of the graph hnsw_rs built, searched by our
//! own beam search.
//!
//! Why not search with hnsw_rs directly: its points are `Arc`s behind `RwLock`s, its visited set
//! is a `HashMap` and each step allocates, which makes it ~3x slower than hnswlib per query; and
//! it cannot be searched while it is being inserted into. Here level 0, where a search spends
//! nearly all its time, is one array of fixed-size records, one per point, laid out as hnswlib
//! does: the point's neighbour ids, then its one-byte-per-value code (see `quant`), so expanding
//! a point and scoring its neighbours reads a few whole cache lines each. The walk ranks by the
//! codes' integer dot product; its final beam is re-ranked with exact `f32` dot products on the
//! vectors, which sit in a cache-aligned arena (see `vectors`). The visited set is a bitset
//! reused per thread, and the beam's heaps hold packed `u64` keys. A frozen graph never
//! changes, so any number of threads search it without locks.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::quant::Quantizer;
use super::vectors::Arena;
use crate::kernels::vector::{prefetch, CodeDot, Dot};

/// A point and its distance to the query (`-dot`: smaller is nearer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scored {
    pub dist: f32,
    pub id: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.id.cmp(&other.id))
    }
}

/// Which points may be returned. Navigation goes through every point; only allowed ones enter
/// the result set, which is what makes filtered search return `k` results when they exist.
pub(crate) trait Allow {
    /// True when every point is allowed (lets the search skip the per-point check).
    fn all(&self) -> bool;
    fn allows(&self, id: u32) -> bool;
}

/// One cache line of bytes: the unit of the level-0 records.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

/// Marks the end of a level-0 list shorter than `m0`.
const NO_LINK: u32 = u32::MAX;

fn line_bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is `repr(C)` around `[u8; 64]` with no padding, so `n` lines are `64 n`
    // consecutive initialised bytes.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 64) }
}

fn line_words(lines: &[Line]) -> &[u32] {
    // SAFETY: as `line_bytes`; a line is 64-byte aligned, so its bytes are 16 aligned `u32`s,
    // and every bit pattern is a valid `u32`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u32>(), lines.len() * 16) }
}

fn line_words_mut(lines: &mut [Line]) -> &mut [u32] {
    // SAFETY: as `line_words`, through the unique borrow.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u32>(), lines.len() * 16) }
}

fn line_bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: as `line_bytes`, through the unique borrow.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) }
}

fn line_weights_mut(lines: &mut [Line]) -> &mut [i8] {
    // SAFETY: as `line_bytes`; `i8` has the size and alignment of `u8` and no invalid values.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<i8>(), lines.len() * 64) }
}

/// A beam entry: the walk's integer distance in the high half (sign-flipped so unsigned order is
/// signed order), the point id in the low half. Comparing keys compares by distance, then id.
#[inline]
fn key(dist: i32, id: u32) -> u64 {
    (u64::from(dist as u32 ^ 0x8000_0000) << 32) | u64::from(id)
}

#[inline]
fn key_id(key: u64) -> u32 {
    key as u32
}

/// The graph's layers as flat arrays.
pub(crate) struct Frozen {
    pub vectors: Arena,
    quantizer: Quantizer,
    codes: CodeDot,
    /// Level 0, `record_lines` lines per point: `m0` neighbour ids (`u32`, a short list ends at
    /// `NO_LINK`) in the first `link_lines`, then the point's code.
    level0: Vec<Line>,
    record_lines: usize,
    link_lines: usize,
    m0: usize,
    /// Upper-level lists of points above level 0: per point, for each level 1..=its level,
    /// `m + 1` slots `[count, ids...]`, starting at `upper_start[id]`.
    upper: Vec<u32>,
    upper_start: Vec<u32>,
    m: usize,
    levels: Vec<u8>,
    entry: Option<u32>,
    max_level: u8,
}

/// One point's lists, as read from hnsw_rs: `lists[l]` are its neighbours at level `l`.
pub(crate) struct NodeLists {
    pub lists: Vec<Vec<u32>>,
}

impl Frozen {
    pub(crate) fn empty(dim: usize, m: usize) -> Self {
        Self::build(Arena::new(dim), &[], m)
    }

    /// Builds a frozen graph from per-point lists (index = point id) and the vectors of all points.
    /// Lists longer than the slots (`2m` at level 0, `m` above) keep their first entries, which
    /// hnsw_rs sorts nearest first; ids out of range are dropped. The codes are fitted to
    /// `vectors` here, so a graph loaded from a dump gets them without a format change.
    pub(crate) fn build(vectors: Arena, nodes: &[NodeLists], m: usize) -> Self {
        let n = vectors.len();
        let m0 = 2 * m;
        let quantizer = Quantizer::fit(&vectors);
        let link_lines = (m0 * 4).div_ceil(64);
        let record_lines = link_lines + quantizer.code_len() / 64;
        let mut level0 = vec![ZERO_LINE; n * record_lines];
        level0
            .par_chunks_mut(record_lines)
            .enumerate()
            .for_each(|(id, record)| {
                let (links, code) = record.split_at_mut(link_lines);
                let links = &mut line_words_mut(links)[..m0];
                links.fill(NO_LINK);
                let list = nodes.get(id).and_then(|node| node.lists.first());
                let mut count = 0;
                for &nb in list.into_iter().flatten() {
                    if (nb as usize) < n && nb as usize != id && count < m0 {
                        links[count] = nb;
                        count += 1;
                    }
                }
                quantizer.encode(vectors.get(id), line_bytes_mut(code));
            });
        let mut upper = Vec::new();
        let mut upper_start = vec![u32::MAX; n];
        let mut levels = vec![0u8; n];
        let mut entry = None;
        let mut max_level = 0u8;
        for (id, node) in nodes.iter().enumerate().take(n) {
            let level = node.lists.len().saturating_sub(1).min(u8::MAX as usize);
            levels[id] = level as u8;
            if level > 0 {
                upper_start[id] = upper.len() as u32;
                for l in 1..=level {
                    let start = upper.len();
                    upper.resize(start + m + 1, 0);
                    let slots = &mut upper[start..];
                    let mut count = 0;
                    for &nb in &node.lists[l] {
                        if (nb as usize) < n && nb as usize != id && count + 1 < slots.len() {
                            count += 1;
                            slots[count] = nb;
                        }
                    }
                    slots[0] = count as u32;
                }
            }
            if entry.is_none() || level as u8 > max_level {
                entry = Some(id as u32);
                max_level = level as u8;
            }
        }
        Frozen {
            vectors,
            quantizer,
            codes: CodeDot::best(),
            level0,
            record_lines,
            link_lines,
            m0,
            upper,
            upper_start,
            m,
            levels,
            entry,
            max_level,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Bytes held by the graph, its codes and its vectors.
    pub(crate) fn bytes(&self) -> usize {
        self.vectors.bytes()
            + 64 * self.level0.len()
            + 4 * (self.upper.len() + self.upper_start.len())
            + self.levels.len()
    }

    /// All level-0 lists, `2m + 1` slots per point (`[count, ids...]`): what a dump saves so
    /// that loading need not relink.
    pub(crate) fn level0_slots(&self) -> Vec<u32> {
        let mut slots = Vec::with_capacity(self.len() * (self.m0 + 1));
        for id in 0..self.len() as u32 {
            let links = self.level0_of(id);
            slots.push(links.len() as u32);
            slots.extend_from_slice(links);
            slots.resize(slots.len() + self.m0 - links.len(), 0);
        }
        slots
    }

    /// The record of point `id` (`id < len`).
    #[inline]
    fn record(&self, id: u32) -> &[Line] {
        let start = id as usize * self.record_lines;
        &self.level0[start..start + self.record_lines]
    }

    /// Level-0 slots of `id`, `m0` of them, `NO_LINK` after the last neighbour.
    #[inline]
    fn links(&self, id: u32) -> &[u32] {
        &line_words(&self.record(id)[..self.link_lines])[..self.m0]
    }

    /// Level-0 neighbours of `id`.
    pub(crate) fn level0_of(&self, id: u32) -> &[u32] {
        let links = self.links(id);
        let count = links
            .iter()
            .position(|&v| v == NO_LINK)
            .unwrap_or(links.len());
        &links[..count]
    }

    #[inline]
    fn code(&self, id: u32) -> &[u8] {
        line_bytes(&self.record(id)[self.link_lines..])
    }

    fn upper_of(&self, id: u32, level: u8) -> &[u32] {
        let start = self.upper_start[id as usize];
        if start == u32::MAX || level == 0 || level > self.levels[id as usize] {
            return &[];
        }
        let at = start as usize + (level as usize - 1) * (self.m + 1);
        let count = self.upper[at] as usize;
        &self.upper[at + 1..at + 1 + count]
    }

    /// Approximate nearest neighbours of the padded unit `query`: up to `ef` allowed points,
    /// nearest first, with exact distances.
    ///
    /// The whole beam is re-ranked, not just its best `k` by code: at 100k clustered points
    /// re-ranking only the best 20 gave the same recall@10 and no measurable speed-up, and the
    /// margin protects data whose codes rank less faithfully.
    pub(crate) fn search(
        &self,
        query: &[f32],
        ef: usize,
        allow: &dyn Allow,
        dot: Dot,
        scratch: &mut Scratch,
    ) -> Vec<Scored> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let exact = |id: u32| -dot.dot(query, self.vectors.get(id as usize));

        // Greedy descent through the upper levels, on exact distances (few points).
        let mut cur = entry;
        let mut cur_dist = exact(cur);
        for level in (1..=self.max_level).rev() {
            loop {
                let mut moved = false;
                for &nb in self.upper_of(cur, level) {
                    let d = exact(nb);
                    if d < cur_dist {
                        cur_dist = d;
                        cur = nb;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        // Beam search at level 0 on the codes.
        let ef = ef.max(1);
        let all = allow.all();
        let code_len = self.quantizer.code_len();
        scratch.begin(self.len(), 2 * code_len / 64);
        let Scratch {
            visited,
            candidates,
            top,
            fresh,
            weights,
        } = scratch;
        let (hi, lo) = line_weights_mut(weights).split_at_mut(code_len);
        self.quantizer.weights(query, hi, lo);
        let (hi, lo): (&[i8], &[i8]) = (hi, lo);
        let codes = self.codes;
        let approx = |id: u32| key(-codes.dot(self.code(id), hi, lo), id);
        let code_lines = self.record_lines - self.link_lines;
        visited[cur as usize / 64] |= 1 << (cur % 64);
        let first = approx(cur);
        candidates.push(Reverse(first));
        if all || allow.allows(cur) {
            top.push(first);
        }
        while let Some(Reverse(c)) = candidates.pop() {
            if top.len() >= ef && top.peek().is_some_and(|&w| c > w) {
                break;
            }
            fresh.clear();
            for &nb in self.links(key_id(c)) {
                if nb == NO_LINK {
                    break;
                }
                let (word, bit) = (&mut visited[nb as usize / 64], 1u64 << (nb % 64));
                if *word & bit == 0 {
                    *word |= bit;
                    fresh.push(nb);
                }
            }
            if let Some(&nb) = fresh.first() {
                prefetch(self.code(nb).as_ptr(), code_lines);
            }
            for i in 0..fresh.len() {
                let nb = fresh[i];
                if let Some(&next) = fresh.get(i + 1) {
                    prefetch(self.code(next).as_ptr(), code_lines);
                }
                let k = approx(nb);
                if top.len() < ef || top.peek().is_some_and(|&w| k < w) {
                    // Its links are read when it is popped; start fetching them now.
                    prefetch(self.record(nb).as_ptr(), self.link_lines);
                    candidates.push(Reverse(k));
                    if all || allow.allows(nb) {
                        top.push(k);
                        if top.len() > ef {
                            top.pop();
                        }
                    }
                }
            }
        }
        candidates.clear();

        // Exact re-rank of the beam.
        fresh.clear();
        fresh.extend(top.drain().map(key_id));
        let vector_lines = self.vectors.stride() / 16;
        let mut out = Vec::with_capacity(fresh.len());
        for i in 0..fresh.len() {
            if let Some(&next) = fresh.get(i + 1) {
                prefetch(self.vectors.get(next as usize).as_ptr(), vector_lines);
            }
            out.push(Scored {
                dist: exact(fresh[i]),
                id: fresh[i],
            });
        }
        out.sort_unstable();
        out
    }

    /// Exact search over allowed points: the fallback for very selective filters.
    pub(crate) fn brute_force(
        &self,
        query: &[f32],
        k: usize,
        allow: &dyn Allow,
        dot: Dot,
    ) -> Vec<Scored> {
        let mut top = BinaryHeap::with_capacity(k + 1);
        for id in 0..self.len() as u32 {
            if allow.allows(id) {
                push_bounded(
                    &mut top,
                    Scored {
                        dist: -dot.dot(query, self.vectors.get(id as usize)),
                        id,
                    },
                    k,
                );
            }
        }
        let mut out = top.into_vec();
        out.sort_unstable();
        out
    }
}

/// Keeps the `k` nearest in a max-heap.
pub(crate) fn push_bounded(top: &mut BinaryHeap<Scored>, s: Scored, k: usize) {
    if top.len() < k {
        top.push(s);
    } else if top.peek().is_some_and(|w| s < *w) {
        top.pop();
        top.push(s);
    }
}

/// Per-thread search buffers, reused across queries so a search allocates only its result.
pub(crate) struct Scratch {
    /// Points seen by the current search, one bit each: small enough to stay in the L1 cache
    /// (12.5 KiB per 100k points), so a check rarely misses, and cleared per search.
    visited: Vec<u64>,
    /// The beam's frontier (nearest first) and its best `ef` (farthest on top), as `key`s.
    candidates: BinaryHeap<Reverse<u64>>,
    top: BinaryHeap<u64>,
    fresh: Vec<u32>,
    /// The query's weights (see `quant`), their `hi` then their `lo` halves, each in whole
    /// lines like the codes.
    weights: Vec<Line>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Scratch {
            visited: Vec::new(),
            candidates: BinaryHeap::new(),
            top: BinaryHeap::new(),
            fresh: Vec::new(),
            weights: Vec::new(),
        }
    }

    fn begin(&mut self, n: usize, weight_lines: usize) {
        self.visited.clear();
        self.visited.resize(n.div_ceil(64), 0);
        self.candidates.clear();
        self.top.clear();
        self.weights.resize(weight_lines, ZERO_LINE);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Runs `f` with this thread's scratch buffers (or fresh ones if a filter re-entered a search).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// Who links to whom, reversed: `of(v)` are the points whose list holds `v`.
pub(crate) struct Incoming {
    starts: Vec<u32>,
    ids: Vec<u32>,
}

impl Incoming {
    /// Reverses `lists` (index = point id); ids out of range are ignored.
    pub(crate) fn new(lists: &[&[u32]]) -> Self {
        let n = lists.len();
        let mut starts = vec![0u32; n + 1];
        for list in lists {
            for &v in *list {
                if (v as usize) < n {
                    starts[v as usize + 1] += 1;
                }
            }
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut ids = vec![0u32; starts[n] as usize];
        for (u, list) in lists.iter().enumerate() {
            for &v in *list {
                if (v as usize) < n {
                    ids[fill[v as usize] as usize] = u as u32;
                    fill[v as usize] += 1;
                }
            }
        }
        Incoming { starts, ids }
    }

    pub(crate) fn of(&self, v: usize) -> &[u32] {
        &self.ids[self.starts[v] as usize..self.starts[v + 1] as usize]
    }
}

/// HNSW's neighbour-selection heuristic over `candidates` of point `u`: nearest first, a
/// candidate is kept only if it is nearer to `u` than to every point kept before it, up to
/// `max` links. Keeping "directions" rather than merely the nearest points is what lets a
/// search leave a cluster.
pub(crate) fn select_diverse(
    vectors: &Arena,
    u: usize,
    candidates: impl Iterator<Item = u32>,
    max: usize,
    dot: Dot,
) -> Vec<u32> {
    let n = vectors.len();
    let mut ids: Vec<u32> = candidates
        .filter(|&c| (c as usize) < n && c as usize != u)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let vu = vectors.get(u);
    let mut scored: Vec<(f32, u32)> = ids
        .iter()
        .map(|&c| (dot.dot(vu, vectors.get(c as usize)), c))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept: Vec<u32> = Vec::with_capacity(max);
    for &(sim, c) in &scored {
        if kept.len() == max {
            break;
        }
        let vc = vectors.get(c as usize);
        if kept
            .iter()
            .all(|&k| dot.dot(vc, vectors.get(k as usize)) < sim)
        {
            kept.push(c);
        }
    }
    kept
}
