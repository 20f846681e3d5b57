//! A frozen HNSW graph: an immutable, compact copy of the graph hnsw_rs built, searched by our
//! own beam search.
//!
//! Why not search with hnsw_rs directly: its points are `Arc`s behind `RwLock`s, its visited set
//! is a `HashMap` and each step allocates, which makes it ~3x slower than hnswlib per query; and
//! it cannot be searched while it is being inserted into. Here each layer's neighbour lists are
//! flat `u32` arrays, vectors sit in one cache-aligned arena (see `vectors`), the visited set is
//! an epoch-stamped array reused per thread, and the dot product is SIMD. A frozen graph never
//! changes, so any number of threads search it without locks.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::simd::{prefetch, Dot};
use super::vectors::Arena;

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

/// The graph's layers as flat arrays.
pub(crate) struct Frozen {
    pub vectors: Arena,
    /// Level-0 lists: `m0 + 1` slots per point, `[count, neighbour ids...]`.
    level0: Vec<u32>,
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
        Frozen {
            vectors: Arena::new(dim),
            level0: Vec::new(),
            m0: 2 * m,
            upper: Vec::new(),
            upper_start: Vec::new(),
            m,
            levels: Vec::new(),
            entry: None,
            max_level: 0,
        }
    }

    /// Builds a frozen graph from per-point lists (index = point id) and the vectors of all points.
    /// Lists longer than the slots (`2m` at level 0, `m` above) keep their first entries, which
    /// hnsw_rs sorts nearest first; ids out of range are dropped.
    pub(crate) fn build(vectors: Arena, nodes: &[NodeLists], m: usize) -> Self {
        let n = vectors.len();
        let m0 = 2 * m;
        let mut level0 = vec![0u32; n * (m0 + 1)];
        let mut upper = Vec::new();
        let mut upper_start = vec![u32::MAX; n];
        let mut levels = vec![0u8; n];
        let mut entry = None;
        let mut max_level = 0u8;
        let write = |slots: &mut [u32], ids: &[u32], own: usize| {
            let mut count = 0;
            for &id in ids {
                if (id as usize) < n && id as usize != own && count + 1 < slots.len() {
                    count += 1;
                    slots[count] = id;
                }
            }
            slots[0] = count as u32;
        };
        for (id, node) in nodes.iter().enumerate().take(n) {
            let level = node.lists.len().saturating_sub(1).min(u8::MAX as usize);
            levels[id] = level as u8;
            if let Some(l0) = node.lists.first() {
                write(&mut level0[id * (m0 + 1)..(id + 1) * (m0 + 1)], l0, id);
            }
            if level > 0 {
                upper_start[id] = upper.len() as u32;
                for l in 1..=level {
                    let start = upper.len();
                    upper.resize(start + m + 1, 0);
                    write(&mut upper[start..], &node.lists[l], id);
                }
            }
            if entry.is_none() || level as u8 > max_level {
                entry = Some(id as u32);
                max_level = level as u8;
            }
        }
        Frozen {
            vectors,
            level0,
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

    /// Bytes held by the graph and its vectors.
    pub(crate) fn bytes(&self) -> usize {
        self.vectors.bytes()
            + 4 * (self.level0.len() + self.upper.len() + self.upper_start.len())
            + self.levels.len()
    }

    /// All level-0 lists as stored, `2m + 1` slots per point (`[count, ids...]`): what a dump
    /// saves so that loading need not relink.
    pub(crate) fn level0_slots(&self) -> &[u32] {
        &self.level0
    }

    #[inline]
    pub(crate) fn level0_of(&self, id: u32) -> &[u32] {
        let start = id as usize * (self.m0 + 1);
        let count = self.level0[start] as usize;
        &self.level0[start + 1..start + 1 + count]
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
    /// nearest first.
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
        let dist = |id: u32| -dot.dot(query, self.vectors.get(id as usize));

        // Greedy descent through the upper levels.
        let mut cur = entry;
        let mut cur_dist = dist(cur);
        for level in (1..=self.max_level).rev() {
            loop {
                let mut moved = false;
                for &nb in self.upper_of(cur, level) {
                    let d = dist(nb);
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

        // Beam search at level 0.
        let ef = ef.max(1);
        let all = allow.all();
        scratch.begin(self.len());
        let Scratch {
            visited,
            epoch,
            candidates,
            top,
            fresh,
        } = scratch;
        let epoch = *epoch;
        visited[cur as usize] = epoch;
        candidates.push(Reverse(Scored {
            dist: cur_dist,
            id: cur,
        }));
        if all || allow.allows(cur) {
            top.push(Scored {
                dist: cur_dist,
                id: cur,
            });
        }
        let lines = (self.vectors.stride() / 16).min(8);
        while let Some(Reverse(c)) = candidates.pop() {
            if top.len() >= ef && top.peek().is_some_and(|w| c.dist > w.dist) {
                break;
            }
            fresh.clear();
            for &nb in self.level0_of(c.id) {
                let mark = &mut visited[nb as usize];
                if *mark != epoch {
                    *mark = epoch;
                    fresh.push(nb);
                }
            }
            if let Some(&first) = fresh.first() {
                prefetch(self.vectors.get(first as usize).as_ptr(), lines);
            }
            for i in 0..fresh.len() {
                let nb = fresh[i];
                if let Some(&next) = fresh.get(i + 1) {
                    prefetch(self.vectors.get(next as usize).as_ptr(), lines);
                }
                let d = dist(nb);
                let worst = top.peek().map_or(f32::INFINITY, |w| w.dist);
                if top.len() < ef || d < worst {
                    // Its links are read when it is popped; start fetching them now.
                    prefetch(
                        self.level0[nb as usize * (self.m0 + 1)..].as_ptr().cast(),
                        1,
                    );
                    candidates.push(Reverse(Scored { dist: d, id: nb }));
                    if all || allow.allows(nb) {
                        top.push(Scored { dist: d, id: nb });
                        if top.len() > ef {
                            top.pop();
                        }
                    }
                }
            }
        }
        candidates.clear();
        let mut out: Vec<Scored> = top.drain().collect();
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
    /// `visited[id] == epoch` marks a point seen by the current search; bumping the epoch clears
    /// the whole set in O(1).
    visited: Vec<u16>,
    epoch: u16,
    candidates: BinaryHeap<Reverse<Scored>>,
    top: BinaryHeap<Scored>,
    fresh: Vec<u32>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Scratch {
            visited: Vec::new(),
            epoch: 0,
            candidates: BinaryHeap::new(),
            top: BinaryHeap::new(),
            fresh: Vec::new(),
        }
    }

    fn begin(&mut self, n: usize) {
        if self.visited.len() < n {
            self.visited.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.top.clear();
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
