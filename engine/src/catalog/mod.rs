//! The catalogue: one database with its derived indexes and the towers that feed it. This is
//! the Rust API the CLI and the HTTP server both use.
//!
//! The store is the source of truth. Each vector space (image, text, fused) has an HNSW index
//! derived from it, persisted beside the database in `<db>.index/<space>/` (`fused-<version>`
//! per model) with the store generation it was built at. On first use an index is loaded if its dump matches the store,
//! and rebuilt from the store otherwise; a corrupt or stale dump is never trusted. Writes made
//! through the catalogue update live indexes in place, so a long-running server never rebuilds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::{HnswIndex, HnswParams, VectorIndex};
use crate::ingest::manifest::{ManifestRow, RowError};
use crate::ingest::pipeline::{self, Committed, IngestOptions, IngestReport};
use crate::progress::Progress;
use crate::store::{Features, Item, Store};
use crate::towers::service::{EmbeddingService, TowerSettings};

/// A vector space items can be searched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The active model's search vectors: the joint image–text space when the model reads
    /// both (a text query finds image-only items), else the normalised concatenation layer
    /// (needs a trained model; see `models::fusion`).
    #[default]
    Fused,
    /// Frozen image-tower features.
    Image,
    /// Frozen text-tower features, averaged over the item's text fields.
    Text,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Fused, Space::Image, Space::Text];

    pub fn as_str(self) -> &'static str {
        match self {
            Space::Fused => "fused",
            Space::Image => "image",
            Space::Text => "text",
        }
    }
}

impl std::str::FromStr for Space {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fused" => Ok(Space::Fused),
            "image" => Ok(Space::Image),
            "text" => Ok(Space::Text),
            other => Err(Error::InvalidArgument(format!(
                "unknown space `{other}`: expected fused, image or text"
            ))),
        }
    }
}

/// The text-space vector of an item: the normalised mean of its text fields' embeddings.
pub fn text_space_vector(features: &Features) -> Option<Vec<f32>> {
    let mut fields = features.text.values();
    let first = fields.next()?;
    let mut sum = first.clone();
    for v in fields {
        for (s, x) in sum.iter_mut().zip(v) {
            *s += x;
        }
    }
    crate::kernels::vector::normalize(&mut sum);
    Some(sum)
}

/// An empty title means "no title" (the store keeps titles as plain strings).
pub fn non_empty(s: String) -> Option<String> {
    if s.trim().is_empty() {
        None
    } else {
        Some(s)
    }
}

struct BuiltIndex {
    index: Arc<HnswIndex>,
    /// The store generation the index is up to date with.
    generation: u64,
    /// The model version the fused index was built from (0 for the tower spaces).
    model_version: u32,
}

/// A catalogue database with its indexes and (lazily loaded) towers.
pub struct Catalog {
    store: Store,
    index_dir: Option<PathBuf>,
    towers: Option<TowerSettings>,
    device: Device,
    service: OnceLock<Arc<EmbeddingService>>,
    indexes: RwLock<HashMap<Space, Arc<BuiltIndex>>>,
    active: RwLock<Option<Arc<model::ActiveModel>>>,
    hnsw: HnswParams,
    /// Writes through this catalogue (ingest, delete) under way: the store may have committed
    /// them before the in-memory indexes took them in. While one is, a search keeps the index it
    /// has (consistent, just without the items being written) instead of taking the store's new
    /// generation for staleness and rebuilding the whole index from the store.
    writes_in_flight: AtomicUsize,
    /// The towers' fingerprint, hashed from their files on first use.
    fingerprint: OnceLock<crate::towers::service::TowerFingerprint>,
}

/// Counts a write as in flight until dropped.
struct WriteInFlight<'a>(&'a AtomicUsize);

impl<'a> WriteInFlight<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        WriteInFlight(counter)
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Catalog {
    /// Opens a database, creating it if needed; `towers` says where the towers' weights are
    /// (loaded only when something needs them).
    pub fn open_or_create(db: &Path, towers: TowerSettings, device: Device) -> Result<Self> {
        let store = Store::open_or_create(db)?;
        Ok(Self::with_store(
            store,
            Some(index_dir_for(db)),
            Some(towers),
            device,
        ))
    }

    /// Opens an existing database for reading and deleting; no towers.
    pub fn open_existing(db: &Path) -> Result<Self> {
        let store = Store::open(db)?;
        Ok(Self::with_store(
            store,
            Some(index_dir_for(db)),
            None,
            Device::Cpu,
        ))
    }

    /// Opens an existing database with towers (queries that embed inputs need them).
    pub fn open(db: &Path, towers: TowerSettings, device: Device) -> Result<Self> {
        let store = Store::open(db)?;
        Ok(Self::with_store(
            store,
            Some(index_dir_for(db)),
            Some(towers),
            device,
        ))
    }

    /// A catalogue held in memory (tests, throwaway runs): indexes are never written to disk.
    pub fn in_memory(towers: Option<TowerSettings>, device: Device) -> Result<Self> {
        Ok(Self::with_store(Store::in_memory()?, None, towers, device))
    }

    fn with_store(
        store: Store,
        index_dir: Option<PathBuf>,
        towers: Option<TowerSettings>,
        device: Device,
    ) -> Self {
        Self {
            store,
            index_dir,
            towers,
            device,
            service: OnceLock::new(),
            indexes: RwLock::new(HashMap::new()),
            active: RwLock::new(None),
            hnsw: HnswParams::default(),
            writes_in_flight: AtomicUsize::new(0),
            fingerprint: OnceLock::new(),
        }
    }

    /// Uses an already loaded embedding service (shared between catalogues, or preloaded by a
    /// server before it starts answering).
    pub fn with_service(self, service: Arc<EmbeddingService>) -> Self {
        let _ = self.service.set(service);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The towers, loaded on first use and then shared.
    pub fn service(&self) -> Result<Arc<EmbeddingService>> {
        if let Some(s) = self.service.get() {
            return Ok(s.clone());
        }
        let settings = self.towers.as_ref().ok_or(Error::NoTowers {
            what: "embedding items and queries",
        })?;
        let service = Arc::new(EmbeddingService::load(settings, &self.device)?);
        Ok(self.service.get_or_init(|| service).clone())
    }

    // ----- items -----

    /// Ingests rows; as each chunk commits it gets fused vectors (when a model is active) and
    /// goes into every index already in memory, so searches running meanwhile find it.
    pub fn ingest(
        &self,
        rows: impl Iterator<Item = std::result::Result<ManifestRow, RowError>>,
        opts: &IngestOptions,
        progress: &dyn Progress,
        on_commit: &mut dyn FnMut(&[String]),
    ) -> Result<IngestReport> {
        let service = self.service()?;
        let _writing = WriteInFlight::start(&self.writes_in_flight);
        self.fuse_missing()?;
        // The active model's fine-tuned image top, if it has one, runs in the same pass as the
        // frozen tower; its features are used only while that model is still the active one.
        let active = self.active_model()?;
        let tuned = active
            .as_ref()
            .and_then(|m| Some((m.version, m.image_top.as_ref()?)));
        // After a failed index update the indexes stay at their older generation (so the next
        // search rebuilds them from the store); the ingest itself goes on, and the error is
        // returned once it is done.
        let mut index_error = None;
        let mut record = |chunk: &Committed<'_>| {
            if index_error.is_none() {
                let tuned_images = tuned.map(|(version, _)| (version, &chunk.tuned_images));
                if let Err(e) = self.after_write(chunk.ids, tuned_images) {
                    index_error = Some(e);
                }
            }
            on_commit(chunk.ids);
        };
        let top = tuned.map(|(_, top)| top);
        let report = pipeline::ingest(
            rows,
            &self.store,
            &service,
            top,
            opts,
            progress,
            &mut record,
        )?;
        match index_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Fuses items stored without a vector of the active model: an ingest killed between a
    /// chunk's commit and its fusing leaves such items, and a re-run skips them as stored.
    fn fuse_missing(&self) -> Result<()> {
        let Some(active) = self.active_model()? else {
            return Ok(());
        };
        let mut missing = Vec::new();
        for entry in self.store.iter_features()? {
            let (key, _) = entry?;
            if self.store.get_fused(active.version, key)?.is_none() {
                missing.push(key);
            }
        }
        for keys in missing.chunks(256) {
            self.fuse_new_items(keys, &HashMap::new())?;
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Item>> {
        self.store.get(id)
    }

    pub fn count(&self) -> Result<u64> {
        self.store.count()
    }

    pub fn list(&self, offset: usize, limit: usize) -> Result<Vec<Item>> {
        self.store.list(offset, limit)
    }

    /// Deletes an item from the store and from every index in memory.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let Some(key) = self.store.key_of(id)? else {
            return Ok(false);
        };
        let _writing = WriteInFlight::start(&self.writes_in_flight);
        let deleted = self.store.delete(id)?;
        if deleted {
            let generation = self.store.generation()?;
            let mut indexes = self.write_indexes()?;
            for built in indexes.values_mut() {
                built.index.delete(key)?;
                *built = Arc::new(BuiltIndex {
                    index: built.index.clone(),
                    generation,
                    model_version: built.model_version,
                });
            }
        }
        Ok(deleted)
    }

    /// Brings in-memory indexes up to date with items just written through this catalogue.
    /// `tuned_images`: image features by id from the fine-tuned top of model version `.0`
    /// (see [`pipeline::Committed`]).
    pub(crate) fn after_write(
        &self,
        ids: &[String],
        tuned_images: Option<(u32, &HashMap<&str, Vec<f32>>)>,
    ) -> Result<()> {
        let mut keys = Vec::with_capacity(ids.len());
        let mut tuned = HashMap::new();
        for id in ids {
            if let Some(key) = self.store.key_of(id)? {
                keys.push(key);
                if let Some((version, features)) = tuned_images {
                    if let Some(f) = features.get(id.as_str()) {
                        tuned.insert(key, (version, f.clone()));
                    }
                }
            }
        }
        self.fuse_new_items(&keys, &tuned)?;
        let generation = self.store.generation()?;
        let mut indexes = self.write_indexes()?;
        for (space, built) in indexes.iter_mut() {
            let mut points = Vec::new();
            for &key in &keys {
                if let Some(v) = self.vector_of(*space, key, built.model_version)? {
                    points.push((key, v));
                }
            }
            built.index.insert_batch(&points)?;
            *built = Arc::new(BuiltIndex {
                index: built.index.clone(),
                generation,
                model_version: built.model_version,
            });
        }
        Ok(())
    }

    // ----- indexes -----

    /// The stored vector of one item in a space, if it has one.
    pub fn vector_of(
        &self,
        space: Space,
        key: u64,
        model_version: u32,
    ) -> Result<Option<Vec<f32>>> {
        Ok(match space {
            Space::Fused => self.store.get_fused(model_version, key)?,
            Space::Image => self.store.get_features(key)?.and_then(|f| f.image),
            Space::Text => self
                .store
                .get_features(key)?
                .and_then(|f| text_space_vector(&f)),
        })
    }

    /// Every stored vector of a space, in key order.
    pub fn vectors(&self, space: Space, model_version: u32) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut out = Vec::new();
        match space {
            Space::Fused => {
                for entry in self.store.iter_fused(model_version)? {
                    out.push(entry?);
                }
            }
            Space::Image | Space::Text => {
                for entry in self.store.iter_features()? {
                    let (key, f) = entry?;
                    let v = if space == Space::Image {
                        f.image
                    } else {
                        text_space_vector(&f)
                    };
                    if let Some(v) = v {
                        out.push((key, v));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The index of a space, loaded from its dump or rebuilt from the store when the dump is
    /// missing, stale or damaged.
    pub fn index(&self, space: Space, progress: &dyn Progress) -> Result<Arc<HnswIndex>> {
        let generation = self.store.generation()?;
        let model_version = match space {
            Space::Fused => self.store.active_version()?.ok_or_else(|| Error::NoModel {
                reason: "the fused space needs a trained model: run `trio train` first".into(),
            })?,
            _ => 0,
        };
        // Read in this order (generation, writes in flight, index): a write that committed
        // before `generation` was read is either still counted, or its items are in the index.
        let writing = self.writes_in_flight.load(Ordering::SeqCst) > 0;
        if let Some(built) = self.read_indexes()?.get(&space) {
            if built.model_version == model_version && (built.generation >= generation || writing) {
                return Ok(built.index.clone());
            }
        }
        let index = Arc::new(self.load_or_build(space, model_version, generation, progress)?);
        self.write_indexes()?.insert(
            space,
            Arc::new(BuiltIndex {
                index: index.clone(),
                generation,
                model_version,
            }),
        );
        Ok(index)
    }

    fn load_or_build(
        &self,
        space: Space,
        model_version: u32,
        generation: u64,
        progress: &dyn Progress,
    ) -> Result<HnswIndex> {
        // A dump built at this store generation (every write bumps it) for this space and model
        // version is the store's state exactly: it loads without reading the stored vectors.
        let dir = self
            .index_dir
            .as_ref()
            .map(|d| d.join(dump_name(space, model_version)));
        if let (Some(dir), Some(dim)) = (&dir, self.space_dim(space, model_version)?) {
            match HnswIndex::load(dir, dim, self.hnsw.clone(), generation) {
                Ok(index) => return Ok(index),
                Err(e) => tracing::info!(space = space.as_str(), "rebuilding index: {e}"),
            }
        }
        let vectors = self.vectors(space, model_version)?;
        let dim = vectors.first().map(|(_, v)| v.len()).unwrap_or(1);
        progress.start(
            &format!("index {}", space.as_str()),
            Some(vectors.len() as u64),
        );
        let index = HnswIndex::build(dim, self.hnsw.clone(), &vectors)?;
        progress.advance(vectors.len() as u64);
        progress.finish();
        if let Some(dir) = &dir {
            // A failed dump costs only a rebuild next time; the search still works.
            if let Err(e) = index.dump(dir, generation) {
                tracing::warn!(space = space.as_str(), "could not save the index: {e}");
            }
        }
        Ok(index)
    }

    /// The size of a space's vectors, without reading them: the tower spaces' sizes are recorded
    /// in the store, a fused space's is its first vector's. `None` while the space is empty.
    fn space_dim(&self, space: Space, model_version: u32) -> Result<Option<usize>> {
        let (image, text) = self.store.feature_dims()?;
        Ok(match space {
            Space::Image => image,
            Space::Text => text,
            Space::Fused => match self.store.iter_fused(model_version)?.next() {
                Some(entry) => Some(entry?.1.len()),
                None => None,
            },
        })
    }

    /// Size of a space's index if it is in memory (the server's stats).
    pub fn loaded_index_len(&self, space: Space) -> Option<usize> {
        self.indexes.read().ok()?.get(&space).map(|b| b.index.len())
    }

    /// Forgets in-memory indexes (after a model change, for example).
    pub fn drop_indexes(&self) -> Result<()> {
        self.write_indexes()?.clear();
        Ok(())
    }

    fn read_indexes(
        &self,
    ) -> Result<std::sync::RwLockReadGuard<'_, HashMap<Space, Arc<BuiltIndex>>>> {
        self.indexes
            .read()
            .map_err(|_| Error::Internal("index table lock poisoned".into()))
    }

    fn write_indexes(
        &self,
    ) -> Result<std::sync::RwLockWriteGuard<'_, HashMap<Space, Arc<BuiltIndex>>>> {
        self.indexes
            .write()
            .map_err(|_| Error::Internal("index table lock poisoned".into()))
    }
}

/// The folder of a space's dump: `image`, `text`, and `fused-<version>` per model version, since
/// activating another model changes the fused vectors without a write to the store.
fn dump_name(space: Space, model_version: u32) -> String {
    match space {
        Space::Fused => format!("fused-{model_version}"),
        _ => space.as_str().to_string(),
    }
}

/// Index dumps live beside the database: `catalog.trio` → `catalog.trio.index/`.
fn index_dir_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".index");
    db.with_file_name(name)
}

mod active;
mod bulk;
mod check;
mod evaluate;
mod image_tuning;
mod model;
mod quality;
mod review;
mod search;

pub use bulk::{ExportReport, DEFAULT_LOAD_BATCH};
pub use check::{CheckReport, ItemFault, ItemProblem};
pub use evaluate::{EvalOptions, ManifestEvaluation};
pub use model::{
    ActiveModel, ClaimCheck, Classification, ClassifyInput, Evidence, LabelScore, TrainOptions,
    TrainOutcome,
};
pub use quality::{
    DuplicateGroupView, DuplicatePairView, DuplicatesOutcome, LabelIssueView, MapOptions, MapPoint,
    NoiseOptions, NoiseOutcome, OutOfFoldView,
};
pub use review::{group_id, label_in};
pub use search::{Filter, Query, SearchHit, SearchRequest};
