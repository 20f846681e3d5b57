//! The HNSW index: hnsw_rs builds the graph, a frozen copy of it serves searches.
//!
//! hnsw_rs has three limits this type designs around:
//! - it cannot delete: deleted keys become tombstones, hidden from results at query time, and
//!   [`HnswIndex::needs_rebuild`] says when they pass [`HnswParams::rebuild_ratio`];
//! - it cannot be searched while inserting: readers never touch it. They search an immutable
//!   [`View`] (frozen graph + points inserted since the last freeze + tombstones) that writers
//!   replace atomically. A reader holds an `Arc` to one view, so it never blocks on a writer and
//!   never sees a half-built graph;
//! - its dumps have generated names and trust their input: see `persist`.
//!
//! Single inserts are added to hnsw_rs at once and to the view's small "pending" list, scanned
//! exactly at query time; once it holds [`HnswParams::pending_limit`] points (or after any batch)
//! the graph is frozen again.
//!
//! One file, past 600 lines: the snapshot, its freezing, the pending list and the dump hooks share
//! one locking discipline that is easier to check in one place.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::{Hnsw, Point};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::graph::{select_diverse, with_scratch, Allow, Frozen, Incoming, NodeLists, Scored};
use super::refine::relink;
use super::vectors::{Arena, Padded};
use super::{Hit, VectorIndex};
use crate::error::{Error, Result};
use crate::kernels::vector::{normalized, Dot};

/// hnsw_rs's upper bound on levels (its `NB_LAYER_MAX`).
const MAX_LEVELS: usize = 16;

/// Cosine distance between unit vectors, `1 - a·b`, for hnsw_rs. Ours rather than anndists'
/// `DistDot`, which asserts `a·b <= 1` and so can panic on rounding, and whose kernel is slower.
#[derive(Default, Clone, Copy)]
pub(crate) struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - Dot::best().dot(a, b)).max(0.0)
    }
}

pub(crate) type Graph = Hnsw<'static, f32, UnitCosine>;

/// HNSW settings. Recall depends on the data: `benches/index.rs` measures it per `ef_search`
/// against exact search (at 5k clustered 384-d points the defaults give recall@10 1.0; at 100k
/// the sweep there shows which `ef_search` a target recall needs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per point on upper levels; level 0 keeps `2 m`. Fixed when the graph is built.
    pub m: usize,
    /// Beam width while inserting: higher builds slower and finds better links.
    pub ef_construction: usize,
    /// Beam width while searching (raised to `k` when smaller): the recall/speed knob.
    pub ef_search: usize,
    /// Points inserted one at a time are scanned exactly until this many accumulate; then the
    /// graph is frozen again.
    pub pending_limit: usize,
    /// A filter expected to allow at most this many points is answered by an exact scan of the
    /// allowed points instead of a graph search.
    pub brute_force_max: usize,
    /// Tombstones over this fraction of all points make [`HnswIndex::needs_rebuild`] true.
    pub rebuild_ratio: f32,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            pending_limit: 256,
            brute_force_max: 4096,
            rebuild_ratio: 0.2,
        }
    }
}

impl HnswParams {
    fn validate(&self) -> Result<()> {
        // hnsw_rs exits the process for more than 256 links; level 0 holds 2 m.
        if !(2..=128).contains(&self.m) {
            return Err(Error::InvalidArgument(format!(
                "HNSW m must be 2..=128, got {}",
                self.m
            )));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(Error::InvalidArgument(
                "HNSW ef_construction and ef_search must be positive".into(),
            ));
        }
        if !(self.rebuild_ratio > 0.0 && self.rebuild_ratio <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "HNSW rebuild_ratio must be in (0, 1], got {}",
                self.rebuild_ratio
            )));
        }
        Ok(())
    }
}

/// Points inserted since the graph was last frozen: ids `frozen.len()..`, scanned exactly.
#[derive(Clone, Default)]
struct Pending {
    keys: Vec<u64>,
    /// Unit vectors, `dim` values each.
    vectors: Vec<f32>,
}

/// Deleted point ids.
#[derive(Clone, Default)]
pub(crate) struct Tombstones {
    words: Vec<u64>,
}

impl Tombstones {
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 64)
            .is_some_and(|w| (w >> (id % 64)) & 1 == 1)
    }

    pub(crate) fn insert(&mut self, id: u32) {
        let word = id as usize / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (id % 64);
    }

    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    pub(crate) fn from_words(words: Vec<u64>) -> Self {
        Tombstones { words }
    }
}

/// What readers search: immutable once published.
pub(crate) struct View {
    frozen: Arc<Frozen>,
    /// Key of each frozen point id.
    frozen_keys: Arc<[u64]>,
    pending: Arc<Pending>,
    tombstones: Arc<Tombstones>,
    /// Live (not deleted) points.
    live: usize,
    /// Deleted points still in the graph.
    dead: usize,
}

impl View {
    fn key(&self, id: u32) -> u64 {
        let id = id as usize;
        match self.frozen_keys.get(id) {
            Some(k) => *k,
            None => self.pending.keys[id - self.frozen_keys.len()],
        }
    }

    fn total(&self) -> usize {
        self.frozen_keys.len() + self.pending.keys.len()
    }
}

/// `allows` for one search: not deleted, and passing the caller's filter.
struct ViewAllow<'a> {
    view: &'a View,
    filter: Option<&'a dyn Fn(u64) -> bool>,
}

impl Allow for ViewAllow<'_> {
    fn all(&self) -> bool {
        self.filter.is_none() && self.view.dead == 0
    }

    #[inline]
    fn allows(&self, id: u32) -> bool {
        !self.view.tombstones.contains(id) && self.filter.is_none_or(|f| f(self.view.key(id)))
    }
}

/// The mutable side, behind the writer lock: the hnsw_rs graph and the key maps.
pub(crate) struct Writer {
    pub(crate) graph: Graph,
    /// Key of each point id ever inserted (deleted ones included): hnsw_rs's data id is the index.
    pub(crate) keys: Vec<u64>,
    /// Point id of each live key.
    pub(crate) live: HashMap<u64, u32>,
    /// Set when hnsw_rs panicked mid-write: the graph may be inconsistent.
    broken: bool,
}

/// An HNSW vector index over unit vectors (cosine similarity), safe to share between threads.
pub struct HnswIndex {
    dim: usize,
    params: HnswParams,
    dot: Dot,
    writer: Mutex<Writer>,
    view: RwLock<Arc<View>>,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("len", &self.len())
            .finish()
    }
}

pub(crate) fn new_graph(params: &HnswParams, expected: usize) -> Graph {
    Hnsw::new(
        params.m,
        expected.max(1),
        MAX_LEVELS,
        params.ef_construction,
        UnitCosine,
    )
}

fn broken_error(reason: &str) -> Error {
    Error::IndexRebuildNeeded {
        path: PathBuf::from("(in-memory index)"),
        reason: reason.to_string(),
    }
}

impl HnswIndex {
    /// An empty index for vectors of `dim` values.
    pub fn new(dim: usize, params: HnswParams) -> Result<Self> {
        params.validate()?;
        if dim == 0 {
            return Err(Error::InvalidArgument(
                "index dimension must be positive".into(),
            ));
        }
        let writer = Writer {
            graph: new_graph(&params, 0),
            keys: Vec::new(),
            live: HashMap::new(),
            broken: false,
        };
        let view = View {
            frozen: Arc::new(Frozen::empty(dim, params.m)),
            frozen_keys: Arc::from(Vec::new()),
            pending: Arc::new(Pending::default()),
            tombstones: Arc::new(Tombstones::default()),
            live: 0,
            dead: 0,
        };
        Ok(HnswIndex {
            dim,
            dot: Dot::best(),
            params,
            writer: Mutex::new(writer),
            view: RwLock::new(Arc::new(view)),
        })
    }

    /// Builds an index from `points` (in parallel on the current rayon pool).
    pub fn build(dim: usize, params: HnswParams, points: &[(u64, Vec<f32>)]) -> Result<Self> {
        let index = HnswIndex::new(dim, params)?;
        index.insert_batch(points)?;
        Ok(index)
    }

    /// Reassembles an index from a graph hnsw_rs reloaded (see `persist`) and, when the dump
    /// kept them, the relinked level-0 lists of its first points (`2m + 1` slots per point, see
    /// `Frozen::level0_slots`); points without saved lists are relinked now.
    pub(crate) fn from_parts(
        dim: usize,
        params: HnswParams,
        graph: Graph,
        keys: Vec<u64>,
        tombstones: Tombstones,
        level0: Option<Vec<u32>>,
    ) -> Result<Self> {
        params.validate()?;
        let n = keys.len();
        if let Some(slots) = &level0 {
            check_slots(slots, 2 * params.m, n).map_err(|reason| broken_error(&reason))?;
        }
        let points = collect_points(&graph, n).map_err(|reason| broken_error(&reason))?;
        if let Some(p) = points.iter().find(|p| p.get_v().len() != dim) {
            return Err(broken_error(&format!(
                "point {} has {} values, expected {dim}",
                p.get_origin_id(),
                p.get_v().len()
            )));
        }
        let arena = Arena::new(dim).extended(points.iter().map(|p| p.get_v()));
        let dot = Dot::best();
        let frozen = freeze_graph(arena, &points, &params, dot, level0.as_deref());
        let mut live = HashMap::with_capacity(n);
        let mut dead = 0;
        for (id, &key) in keys.iter().enumerate() {
            if tombstones.contains(id as u32) {
                dead += 1;
            } else if live.insert(key, id as u32).is_some() {
                return Err(broken_error(&format!("key {key} is live twice")));
            }
        }
        let view = View {
            frozen: Arc::new(frozen),
            frozen_keys: Arc::from(keys.clone()),
            pending: Arc::new(Pending::default()),
            tombstones: Arc::new(tombstones),
            live: live.len(),
            dead,
        };
        Ok(HnswIndex {
            dim,
            dot,
            params,
            writer: Mutex::new(Writer {
                graph,
                keys,
                live,
                broken: false,
            }),
            view: RwLock::new(Arc::new(view)),
        })
    }

    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    fn view(&self) -> Arc<View> {
        // A poisoned lock still holds a complete view: views are swapped whole.
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, view: View) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    /// Runs `f` on the writer; refuses once hnsw_rs has panicked mid-write.
    pub(crate) fn with_writer<R>(&self, f: impl FnOnce(&mut Writer) -> Result<R>) -> Result<R> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if writer.broken {
            return Err(broken_error(
                "an earlier insert failed inside hnsw_rs; rebuild the index",
            ));
        }
        f(&mut writer)
    }

    fn unit(&self, what: &str, vector: &[f32]) -> Result<Vec<f32>> {
        if vector.len() != self.dim {
            return Err(Error::BadVector {
                item: what.to_string(),
                field: "vector".into(),
                reason: format!("{} values, the index holds {}", vector.len(), self.dim),
            });
        }
        normalized(vector).ok_or_else(|| Error::BadVector {
            item: what.to_string(),
            field: "vector".into(),
            reason: "zero or non-finite vectors have no direction".into(),
        })
    }

    /// Searches with an explicit beam width instead of [`HnswParams::ef_search`].
    pub fn search_with_ef(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        let q = Padded::new(&self.unit("query", query)?);
        let view = self.view();
        if k == 0 || view.live == 0 {
            return Ok(Vec::new());
        }
        let allow = ViewAllow {
            view: &view,
            filter,
        };
        let frozen = &view.frozen;
        let mut found = if frozen.len() == 0 {
            Vec::new()
        } else if filter.is_some() && self.filter_is_selective(&view, &allow) {
            frozen.brute_force(q.as_slice(), k, &allow, self.dot)
        } else {
            let mut hits =
                with_scratch(|s| frozen.search(q.as_slice(), ef.max(k), &allow, self.dot, s));
            // The graph search can miss allowed points behind many disallowed ones; an exact scan
            // then guarantees k results whenever k exist.
            if hits.len() < k && hits.len() < frozen.len() - view.dead.min(frozen.len()) {
                hits = frozen.brute_force(q.as_slice(), k, &allow, self.dot);
            }
            hits
        };
        // Points not yet frozen into the graph: exact scan.
        let base = frozen.len() as u32;
        for (i, v) in view.pending.vectors.chunks_exact(self.dim).enumerate() {
            let id = base + i as u32;
            if allow.allows(id) {
                found.push(Scored {
                    dist: -self.dot.dot(&q.as_slice()[..self.dim], v),
                    id,
                });
            }
        }
        found.sort_unstable();
        found.dedup_by_key(|s| s.id);
        Ok(found
            .into_iter()
            .take(k)
            .map(|s| Hit {
                key: view.key(s.id),
                score: (-s.dist).clamp(-1.0, 1.0),
            })
            .collect())
    }

    /// Estimates from an even sample whether the filter allows so few points that scanning them
    /// beats walking the graph.
    fn filter_is_selective(&self, view: &View, allow: &ViewAllow) -> bool {
        let n = view.frozen.len();
        if n <= self.params.brute_force_max {
            return true;
        }
        const SAMPLE: usize = 256;
        let step = (n / SAMPLE).max(1);
        let (mut seen, mut allowed) = (0usize, 0usize);
        for id in (0..n).step_by(step) {
            seen += 1;
            allowed += allow.allows(id as u32) as usize;
        }
        (allowed as f64 / seen as f64) * n as f64 <= self.params.brute_force_max as f64
    }

    /// True when tombstones exceed [`HnswParams::rebuild_ratio`] of the points in the graph.
    pub fn needs_rebuild(&self) -> bool {
        let view = self.view();
        let total = view.total();
        total > 0 && view.dead as f32 > self.params.rebuild_ratio * total as f32
    }

    /// Rebuilds the graph from the live points, dropping tombstones. Searches keep being served
    /// from the old view until the new one is published.
    pub fn compact(&self) -> Result<()> {
        self.with_writer(|w| {
            let view = self.view();
            let mut points = Vec::with_capacity(view.live);
            for id in 0..view.total() as u32 {
                if !view.tombstones.contains(id) {
                    points.push((view.key(id), self.vector_of(&view, id)));
                }
            }
            let mut fresh = Writer {
                graph: new_graph(&self.params, points.len()),
                keys: Vec::new(),
                live: HashMap::new(),
                broken: false,
            };
            let empty = View {
                frozen: Arc::new(Frozen::empty(self.dim, self.params.m)),
                frozen_keys: Arc::from(Vec::new()),
                pending: Arc::new(Pending::default()),
                tombstones: Arc::new(Tombstones::default()),
                live: 0,
                dead: 0,
            };
            let view = self.add_batch(&mut fresh, &empty, points)?;
            *w = fresh;
            self.publish(view);
            Ok(())
        })
    }

    /// The unit vector of point `id` in `view`.
    fn vector_of(&self, view: &View, id: u32) -> Vec<f32> {
        let frozen = &view.frozen;
        if (id as usize) < frozen.len() {
            frozen.vectors.get(id as usize)[..self.dim].to_vec()
        } else {
            let i = id as usize - frozen.len();
            view.pending.vectors[i * self.dim..(i + 1) * self.dim].to_vec()
        }
    }

    /// Inserts unit vectors into `w` and returns the refrozen view that follows `view`.
    fn add_batch(&self, w: &mut Writer, view: &View, points: Vec<(u64, Vec<f32>)>) -> Result<View> {
        let mut tombstones = (*view.tombstones).clone();
        let mut dead = view.dead;
        let first = w.keys.len();
        for (key, _) in &points {
            let id = w.keys.len() as u32;
            if let Some(old) = w.live.insert(*key, id) {
                tombstones.insert(old);
                dead += 1;
            }
            w.keys.push(*key);
        }
        let data: Vec<(&[f32], usize)> = points
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (v.as_slice(), first + i))
            .collect();
        let graph = &w.graph;
        if catch_unwind(AssertUnwindSafe(|| graph.parallel_insert_slice(&data))).is_err() {
            w.broken = true;
            return Err(broken_error("hnsw_rs panicked while inserting"));
        }
        let pending_vectors = view
            .pending
            .vectors
            .chunks_exact(self.dim)
            .chain(points.iter().map(|(_, v)| v.as_slice()));
        self.freeze(w, view, pending_vectors, tombstones, dead)
    }

    /// Copies hnsw_rs's current graph into a new frozen view. `new_vectors` are the vectors of
    /// the ids after the current frozen graph, in id order.
    fn freeze<'a>(
        &self,
        w: &mut Writer,
        view: &View,
        new_vectors: impl Iterator<Item = &'a [f32]>,
        tombstones: Tombstones,
        dead: usize,
    ) -> Result<View> {
        let n = w.keys.len();
        let arena = view.frozen.vectors.extended(new_vectors);
        if arena.len() != n {
            return Err(broken_error(&format!(
                "{} vectors for {n} points",
                arena.len()
            )));
        }
        let points = collect_points(&w.graph, n).map_err(|reason| broken_error(&reason))?;
        let frozen = freeze_graph(
            arena,
            &points,
            &self.params,
            self.dot,
            Some(&view.frozen.level0_slots()),
        );
        Ok(View {
            frozen: Arc::new(frozen),
            frozen_keys: Arc::from(w.keys.clone()),
            pending: Arc::new(Pending::default()),
            tombstones: Arc::new(tombstones),
            live: w.live.len(),
            dead,
        })
    }

    /// Bytes held by the searchable snapshot (graph and vectors; hnsw_rs's own copy not counted).
    pub fn snapshot_bytes(&self) -> usize {
        let view = self.view();
        view.frozen.bytes() + view.pending.vectors.len() * 4 + view.frozen_keys.len() * 8
    }

    /// The dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub(crate) fn tombstone_words(&self) -> Vec<u64> {
        self.view().tombstones.words().to_vec()
    }

    /// The frozen graph's level-0 lists (see `Frozen::level0_slots`).
    pub(crate) fn level0_slots(&self) -> Vec<u32> {
        self.view().frozen.level0_slots()
    }
}

/// hnsw_rs's points by data id; fails unless ids are exactly `0..n`.
fn collect_points(
    graph: &Graph,
    n: usize,
) -> std::result::Result<Vec<Arc<Point<'static, f32>>>, String> {
    if graph.get_nb_point() != n {
        return Err(format!(
            "hnsw_rs holds {} points, expected {n}",
            graph.get_nb_point()
        ));
    }
    let mut by_id: Vec<Option<Arc<Point<'static, f32>>>> = vec![None; n];
    let indexation = graph.get_point_indexation();
    if n > 0 {
        for level in 0..=graph.get_max_level_observed() as usize {
            for p in indexation.get_layer_iterator(level) {
                let id = p.get_origin_id();
                match by_id.get_mut(id) {
                    Some(slot @ None) => *slot = Some(p),
                    Some(Some(_)) => return Err(format!("data id {id} appears twice")),
                    None => return Err(format!("data id {id} is out of range 0..{n}")),
                }
            }
        }
    }
    by_id
        .into_iter()
        .enumerate()
        .map(|(id, p)| p.ok_or_else(|| format!("data id {id} is missing")))
        .collect()
}

/// Freezes hnsw_rs's graph: upper levels as hnsw_rs built them, level 0 relinked the way
/// hnswlib inserts (see `refine`).
///
/// Points already in `previous` (the level-0 slots of the last frozen graph, `2m + 1` per
/// point) keep their refined lists, gaining only reverse links from the new points, so a freeze
/// after a small batch relinks just that batch.
/// New points start from hnsw_rs's links re-selected by [`select_diverse`] over their own list
/// and the lists naming them (this is the graph the relinking searches), then are relinked from
/// an `ef_construction` beam search. At 100k clustered points hnsw_rs's raw graph needed ef 256
/// for recall@10 0.95, the re-selected one 128; relinked, it matches hnswlib's.
fn freeze_graph(
    arena: Arena,
    points: &[Arc<Point<'static, f32>>],
    params: &HnswParams,
    dot: Dot,
    previous: Option<&[u32]>,
) -> Frozen {
    let m = params.m;
    let m0 = 2 * m;
    let mut nodes = node_lists(points);
    let n = nodes.len();
    let stride = m0 + 1;
    let old_n = previous.map_or(0, |slots| (slots.len() / stride).min(n));
    let raw: Vec<Vec<u32>> = nodes
        .iter()
        .map(|node| {
            node.lists
                .first()
                .map_or(Vec::new(), |l| l[..l.len().min(m0)].to_vec())
        })
        .collect();
    let reverse = Incoming::new(&raw.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let hints = |u: u32| -> Vec<u32> {
        let u = u as usize;
        raw[u].iter().chain(reverse.of(u)).copied().collect()
    };
    let start: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|u| match previous {
            Some(slots) if u < old_n => {
                let count = slots[u * stride] as usize;
                slots[u * stride + 1..u * stride + 1 + count.min(m0)].to_vec()
            }
            _ => select_diverse(&arena, u, hints(u as u32).into_iter(), m0, dot),
        })
        .collect();
    let set_level0 = |nodes: &mut [NodeLists], lists: &[Vec<u32>]| {
        for (node, list) in nodes.iter_mut().zip(lists) {
            match node.lists.first_mut() {
                Some(l0) => l0.clone_from(list),
                None => node.lists.push(list.clone()),
            }
        }
    };
    set_level0(&mut nodes, &start);
    let todo: Vec<u32> = (old_n as u32..n as u32).collect();
    let level0 = {
        let search_graph = Frozen::build(arena.clone(), &nodes, m);
        relink(
            &search_graph,
            &start,
            &todo,
            &hints,
            params.ef_construction,
            m0,
            dot,
        )
    };
    set_level0(&mut nodes, &level0);
    Frozen::build(arena, &nodes, m)
}

/// Checks level-0 slots read from a dump: whole lists of `m0 + 1` slots for at most `n`
/// points, each count at most `m0`, every id below `n`.
fn check_slots(slots: &[u32], m0: usize, n: usize) -> std::result::Result<(), String> {
    let stride = m0 + 1;
    if !slots.len().is_multiple_of(stride) || slots.len() / stride > n {
        return Err(format!(
            "{} level-0 slots are not whole lists of {stride} for at most {n} points",
            slots.len()
        ));
    }
    for (id, list) in slots.chunks_exact(stride).enumerate() {
        let count = list[0] as usize;
        if count > m0 || list[1..=count].iter().any(|&v| v as usize >= n) {
            return Err(format!("point {id}'s level-0 list is malformed"));
        }
    }
    Ok(())
}

/// Each point's neighbour lists at levels 0..=its level, read in parallel.
fn node_lists(points: &[Arc<Point<'static, f32>>]) -> Vec<NodeLists> {
    points
        .par_iter()
        .map(|p| {
            let level = p.get_point_id().0 as usize;
            let lists = p
                .get_neighborhood_id()
                .into_iter()
                .take(level + 1)
                .map(|l| l.iter().map(|nb| nb.get_origin_id() as u32).collect())
                .collect();
            NodeLists { lists }
        })
        .collect()
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn insert(&self, key: u64, vector: &[f32]) -> Result<()> {
        let unit = self.unit(&format!("key {key}"), vector)?;
        self.with_writer(|w| {
            let view = self.view();
            if view.pending.keys.len() + 1 >= self.params.pending_limit {
                let next = self.add_batch(w, &view, vec![(key, unit)])?;
                self.publish(next);
                return Ok(());
            }
            let id = w.keys.len() as u32;
            let graph = &w.graph;
            let inserted = catch_unwind(AssertUnwindSafe(|| {
                graph.insert_slice((unit.as_slice(), id as usize))
            }));
            if inserted.is_err() {
                w.broken = true;
                return Err(broken_error("hnsw_rs panicked while inserting"));
            }
            let mut tombstones = view.tombstones.clone();
            let mut dead = view.dead;
            if let Some(old) = w.live.insert(key, id) {
                Arc::make_mut(&mut tombstones).insert(old);
                dead += 1;
            }
            w.keys.push(key);
            let mut pending = (*view.pending).clone();
            pending.keys.push(key);
            pending.vectors.extend_from_slice(&unit);
            self.publish(View {
                frozen: view.frozen.clone(),
                frozen_keys: view.frozen_keys.clone(),
                pending: Arc::new(pending),
                tombstones,
                live: w.live.len(),
                dead,
            });
            Ok(())
        })
    }

    fn insert_batch(&self, points: &[(u64, Vec<f32>)]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let units: Vec<(u64, Vec<f32>)> = points
            .par_iter()
            .map(|(key, v)| Ok((*key, self.unit(&format!("key {key}"), v)?)))
            .collect::<Result<_>>()?;
        self.with_writer(|w| {
            let view = self.view();
            let next = self.add_batch(w, &view, units)?;
            self.publish(next);
            Ok(())
        })
    }

    fn delete(&self, key: u64) -> Result<bool> {
        self.with_writer(|w| {
            let Some(id) = w.live.remove(&key) else {
                return Ok(false);
            };
            let view = self.view();
            let mut tombstones = (*view.tombstones).clone();
            tombstones.insert(id);
            self.publish(View {
                frozen: view.frozen.clone(),
                frozen_keys: view.frozen_keys.clone(),
                pending: view.pending.clone(),
                tombstones: Arc::new(tombstones),
                live: w.live.len(),
                dead: view.dead + 1,
            });
            Ok(true)
        })
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        self.search_with_ef(query, k, self.params.ef_search, filter)
    }

    fn len(&self) -> usize {
        self.view().live
    }

    fn tombstones(&self) -> usize {
        self.view().dead
    }

    fn needs_rebuild(&self) -> bool {
        HnswIndex::needs_rebuild(self)
    }
}
