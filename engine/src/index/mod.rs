//! Vector indexes, derived from the store and always rebuildable from it.
//!
//! - [`VectorIndex`]: what the engine searches through; cosine similarity over any vectors.
//! - [`HnswIndex`]: approximate search for large collections. hnsw_rs builds the graph; searches
//!   run over a frozen, compact copy of it (`graph`): the walk on one-byte codes (`quant`), the
//!   final beam re-ranked on cache-aligned `f32` vectors (`vectors`), both with SIMD dot
//!   products (`simd`). It persists to a folder with a checked manifest
//!   (`persist`).
//! - [`FlatIndex`]: exact scan, for small collections and as the recall reference.
//!
//! No hnsw_rs type appears in this module's public API.

mod flat;
mod graph;
mod hnsw;
mod persist;
mod quant;
mod refine;
mod vectors;

use serde::{Deserialize, Serialize};

use crate::error::Result;

pub use flat::FlatIndex;
pub use hnsw::{HnswIndex, HnswParams};
pub use persist::{DumpFile, DumpManifest};

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The item key the vector was inserted under.
    pub key: u64,
    /// Cosine similarity to the query, in [-1, 1]; higher is nearer.
    pub score: f32,
}

/// A searchable set of vectors keyed by item key. Vectors are normalised on the way in, so the
/// score is cosine similarity whatever their length. All methods take `&self`: an index is
/// shared between threads (behind an `Arc`) and searches never wait for writes.
pub trait VectorIndex: Send + Sync {
    /// Length of the vectors this index holds.
    fn dim(&self) -> usize;

    /// Adds or replaces the vector of `key`.
    fn insert(&self, key: u64, vector: &[f32]) -> Result<()>;

    /// Adds or replaces many vectors; faster than one at a time (uses the rayon pool).
    fn insert_batch(&self, points: &[(u64, Vec<f32>)]) -> Result<()>;

    /// Removes `key`; returns whether it was present.
    fn delete(&self, key: u64) -> Result<bool>;

    /// The `k` nearest vectors to `query`, best first. With a filter, only keys it accepts are
    /// returned, and `k` of them whenever the index holds `k` such keys.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>>;

    /// Number of live vectors.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deleted vectors still occupying space until a rebuild.
    fn tombstones(&self) -> usize;

    /// Whether enough was deleted that rebuilding would pay off.
    fn needs_rebuild(&self) -> bool {
        false
    }
}
