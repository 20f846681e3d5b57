//! The catalogue store (redb): the source of truth for items, features, fused vectors and models.
//!
//! Everything else (vector indexes, caches) is derived from the store and can be rebuilt from it.
//! No redb type appears in this module's public API: callers see [`Store`] and plain serde types.
//!
//! # Durability
//! Every write method runs as one redb write transaction and returns after it has committed with
//! redb's default durability (the commit is fsync'd). A commit is the unit of "nothing committed
//! is ever lost": once a write method returns `Ok`, its effect survives a crash or power loss;
//! a crash during the call loses the whole call, never part of it. Batch ingestion therefore
//! calls [`Store::put_items`] once per batch.
//!
//! # Staleness of derived data
//! The store keeps a write generation that grows by one with every commit that changes items,
//! features, fused vectors or review records (see `review`). A derived index records the generation it was built at
//! ([`Store::set_index_state`]) and is stale when [`Store::generation`] has moved on.
//!
//! # Tables
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | name | `u64` (magic, schema version, counters, active model, vector sizes) |
//! | `items` | item key | item JSON |
//! | `ids` | user id | item key |
//! | `features` | item key | framed little-endian `f32` vectors (see `codec`) |
//! | `fused` | (model version, item key) | little-endian `f32` vector |
//! | `models` | model version | [`ModelInfo`] JSON |
//! | `model_weights` | model version | safetensors bytes |
//! | `index_state` | index name | [`IndexState`] JSON |
//! | `dismissed_pairs` | (item key, item key) | `()`: a pair reviewed as not duplicates |
//! | `kept_labels` | (item key, label field) | a label reviewed as right |
//!
//! One file, past 600 lines: every table is written in the same transactions, so the schema, the
//! transactions and the generation counter are read together (the codec and the files beside the
//! database are in their own modules).

mod codec;
mod iter;
mod review;
mod thumbnails;
mod types;

use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    backends::InMemoryBackend, Database, DatabaseError, ReadOnlyDatabase, ReadTransaction,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError, TableDefinition,
    TableError, WriteTransaction,
};

use crate::error::{Error, Result};

pub use iter::{FeaturesIter, FusedIter};
pub use types::{
    Features, IndexState, Item, ModelBlob, ModelInfo, NewItem, PutMode, PutReport, StoredModel,
};

/// The schema this build reads and writes. A store of another version is refused on open, never
/// reinterpreted.
pub const SCHEMA_VERSION: u64 = 1;

/// Marks a redb file as a Trio store ("TRIOSTOR" in ASCII).
const MAGIC: u64 = u64::from_be_bytes(*b"TRIOSTOR");

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("items");
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
const FEATURES: TableDefinition<u64, &[u8]> = TableDefinition::new("features");
const FUSED: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("fused");
const MODELS: TableDefinition<u32, &[u8]> = TableDefinition::new("models");
const MODEL_WEIGHTS: TableDefinition<u32, &[u8]> = TableDefinition::new("model_weights");
const INDEX_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("index_state");

mod meta_key {
    pub const MAGIC: &str = "magic";
    pub const SCHEMA: &str = "schema_version";
    /// The key the next new item gets.
    pub const NEXT_KEY: &str = "next_key";
    pub const GENERATION: &str = "generation";
    pub const NEXT_MODEL: &str = "next_model_version";
    pub const ACTIVE_MODEL: &str = "active_model";
    /// Vector sizes, fixed by the first write of each kind so later writes are checked.
    pub const IMAGE_DIM: &str = "dim.image";
    pub const TEXT_DIM: &str = "dim.text";
    pub const FUSED_DIM_PREFIX: &str = "dim.fused.";
}

/// Longest user id accepted (bytes); ids are keys of the `ids` table.
pub const MAX_ID_BYTES: usize = 1024;

/// Maps any redb error into [`Error::Storage`] with the table and what was being done.
trait AtTable<T> {
    fn at(self, table: &'static str, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<redb::Error>> AtTable<T> for std::result::Result<T, E> {
    fn at(self, table: &'static str, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Storage {
            table,
            context: context(),
            source: Box::new(e.into()),
        })
    }
}

fn corrupt(table: &'static str, key: impl Display, reason: impl Display) -> Error {
    Error::CorruptRecord {
        table,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The catalogue database. Cheap to share behind an `Arc`: reads run concurrently with each other
/// and with the one writer redb allows at a time.
pub struct Store {
    db: Database,
    /// Where the store lives, for error messages; `None` for an in-memory store.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens an existing store. Fails without touching the file if it is missing, is not a redb
    /// database, is a redb database that is not a Trio store, or has another schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::StoreMissing {
                path: path.to_path_buf(),
            });
        }
        // Check the file through a read-only handle first: opening for writing updates redb's
        // header, and a file that is not ours must be left exactly as it was. A redb file that was
        // not shut down cleanly cannot be opened read-only; it is checked after redb's recovery.
        match guarded_open(path, || ReadOnlyDatabase::open(path)) {
            Ok(read_only) => verify(&read_only, path)?,
            Err(Error::Storage { source, .. })
                if matches!(
                    source.downcast_ref::<redb::Error>(),
                    Some(redb::Error::RepairAborted)
                ) => {}
            Err(e) => return Err(e),
        }
        let db = guarded_open(path, || Database::open(path))?;
        verify(&db, path)?;
        Ok(Store {
            db,
            path: Some(path.to_path_buf()),
        })
    }

    /// Creates a new, empty store. Refuses to reuse an existing file.
    pub fn create(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::StoreExists {
                path: path.to_path_buf(),
            });
        }
        Self::create_at(path)
    }

    /// Opens the store at `path`, creating it if the file does not exist (or is empty).
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let empty = match std::fs::metadata(path) {
            Ok(m) => m.len() == 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(path, e)),
        };
        if empty {
            Self::create_at(path)
        } else {
            Self::open(path)
        }
    }

    /// A store that lives in memory only, for tests and throwaway runs.
    pub fn in_memory() -> Result<Store> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .at("meta", || "creating an in-memory store".to_string())?;
        let store = Store { db, path: None };
        store.initialise()?;
        Ok(store)
    }

    /// The file the store lives in (`None` for an in-memory store).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn create_at(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let db = guarded_open(path, || Database::create(path))?;
        let store = Store {
            db,
            path: Some(path.to_path_buf()),
        };
        store.initialise()?;
        Ok(store)
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "in-memory store".to_string(),
        }
    }

    /// Creates every table and the meta counters in one transaction.
    fn initialise(&self) -> Result<()> {
        let txn = self.write_txn()?;
        {
            let mut meta = txn.open_table(META).at("meta", || "creating".into())?;
            for (name, value) in [
                (meta_key::MAGIC, MAGIC),
                (meta_key::SCHEMA, SCHEMA_VERSION),
                (meta_key::NEXT_KEY, 0),
                (meta_key::GENERATION, 0),
                (meta_key::NEXT_MODEL, 1),
            ] {
                meta.insert(name, value)
                    .at("meta", || format!("writing {name}"))?;
            }
            txn.open_table(ITEMS).at("items", || "creating".into())?;
            txn.open_table(IDS).at("ids", || "creating".into())?;
            txn.open_table(FEATURES)
                .at("features", || "creating".into())?;
            txn.open_table(FUSED).at("fused", || "creating".into())?;
            txn.open_table(MODELS).at("models", || "creating".into())?;
            txn.open_table(MODEL_WEIGHTS)
                .at("model_weights", || "creating".into())?;
            txn.open_table(INDEX_STATE)
                .at("index_state", || "creating".into())?;
            txn.open_table(thumbnails::THUMBNAILS)
                .at("thumbnails", || "creating".into())?;
        }
        txn.commit().at("meta", || "committing a new store".into())
    }

    fn write_txn(&self) -> Result<WriteTransaction> {
        self.db.begin_write().at("meta", || {
            format!("starting a write on {}", self.describe())
        })
    }

    fn read_txn(&self) -> Result<ReadTransaction> {
        self.db
            .begin_read()
            .at("meta", || format!("starting a read on {}", self.describe()))
    }

    // ---------------------------------------------------------------------------------------
    // Items and features

    /// Stores a batch of items with their features in ONE transaction: all of it is committed or
    /// none. An id already stored with the same content hash is skipped; with a different hash
    /// it is skipped in [`PutMode::Skip`] and replaced (same key) in [`PutMode::Update`].
    /// An id repeated within the batch is handled in order, as if put one after the other.
    pub fn put_items(&self, batch: &[(NewItem, Features)], mode: PutMode) -> Result<PutReport> {
        let mut report = PutReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let now = now_ms();
        let txn = self.write_txn()?;
        {
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            let mut items = txn.open_table(ITEMS).at("items", || "opening".into())?;
            let mut ids = txn.open_table(IDS).at("ids", || "opening".into())?;
            let mut features = txn
                .open_table(FEATURES)
                .at("features", || "opening".into())?;
            let mut fused = txn.open_table(FUSED).at("fused", || "opening".into())?;
            let mut thumbs = txn
                .open_table(thumbnails::THUMBNAILS)
                .at("thumbnails", || "opening".into())?;
            let versions = model_versions(&txn)?;

            let mut next_key = meta_u64(&meta, meta_key::NEXT_KEY)?.unwrap_or(0);
            let mut image_dim = meta_u64(&meta, meta_key::IMAGE_DIM)?;
            let mut text_dim = meta_u64(&meta, meta_key::TEXT_DIM)?;

            for (new, feats) in batch {
                check_id(&new.id)?;
                check_features(&new.id, feats, &mut image_dim, &mut text_dim)?;
                let existing = ids
                    .get(new.id.as_str())
                    .at("ids", || format!("looking up item {:?}", new.id))?
                    .map(|k| k.value());
                let item = match existing {
                    Some(key) => {
                        let old = read_item(&items, key)?.ok_or_else(|| {
                            corrupt("ids", &new.id, format!("points at missing item key {key}"))
                        })?;
                        if old.content_hash == new.content_hash || mode == PutMode::Skip {
                            report.skipped += 1;
                            continue;
                        }
                        for &v in &versions {
                            fused
                                .remove((v, key))
                                .at("fused", || format!("dropping stale vector of {:?}", new.id))?;
                        }
                        report.updated += 1;
                        Item::from_new(new, key, old.added_at)
                    }
                    None => {
                        let key = next_key;
                        next_key += 1;
                        ids.insert(new.id.as_str(), key)
                            .at("ids", || format!("adding item {:?}", new.id))?;
                        report.inserted += 1;
                        Item::from_new(new, key, now)
                    }
                };
                let json = serde_json::to_vec(&item).map_err(|source| Error::Json {
                    context: format!("encoding item {:?}", item.id),
                    source,
                })?;
                items
                    .insert(item.key, json.as_slice())
                    .at("items", || format!("writing item {:?}", item.id))?;
                features
                    .insert(item.key, codec::encode_features(feats).as_slice())
                    .at("features", || format!("writing features of {:?}", item.id))?;
                // An updated item's old thumbnail shows its old image.
                match &new.image_thumbnail {
                    Some(bytes) => thumbs.insert(item.key, bytes.as_slice()),
                    None => thumbs.remove(item.key),
                }
                .at("thumbnails", || {
                    format!("writing thumbnail of {:?}", item.id)
                })?;
            }

            let mut set = |name: &str, value: u64| {
                meta.insert(name, value)
                    .at("meta", || format!("writing {name}"))
                    .map(|_| ())
            };
            set(meta_key::NEXT_KEY, next_key)?;
            if let Some(d) = image_dim {
                set(meta_key::IMAGE_DIM, d)?;
            }
            if let Some(d) = text_dim {
                set(meta_key::TEXT_DIM, d)?;
            }
            if report.inserted + report.updated > 0 {
                bump_generation(&mut meta)?;
            }
        }
        txn.commit()
            .at("items", || format!("committing a batch of {}", batch.len()))?;
        Ok(report)
    }

    /// Deletes an item, its features and its fused vectors. Returns whether it existed. Its key
    /// is never given to another item.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let txn = self.write_txn()?;
        let existed = {
            let mut ids = txn.open_table(IDS).at("ids", || "opening".into())?;
            let key = ids
                .remove(id)
                .at("ids", || format!("removing item {id:?}"))?
                .map(|k| k.value());
            if let Some(key) = key {
                let versions = model_versions(&txn)?;
                txn.open_table(ITEMS)
                    .at("items", || "opening".into())?
                    .remove(key)
                    .at("items", || format!("removing item {id:?}"))?;
                txn.open_table(FEATURES)
                    .at("features", || "opening".into())?
                    .remove(key)
                    .at("features", || format!("removing features of {id:?}"))?;
                txn.open_table(thumbnails::THUMBNAILS)
                    .at("thumbnails", || "opening".into())?
                    .remove(key)
                    .at("thumbnails", || format!("removing thumbnail of {id:?}"))?;
                let mut fused = txn.open_table(FUSED).at("fused", || "opening".into())?;
                for v in versions {
                    fused
                        .remove((v, key))
                        .at("fused", || format!("removing vectors of {id:?}"))?;
                }
                let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
                bump_generation(&mut meta)?;
            }
            key.is_some()
        };
        txn.commit()
            .at("items", || format!("committing delete of {id:?}"))?;
        Ok(existed)
    }

    /// The item with this user id.
    pub fn get(&self, id: &str) -> Result<Option<Item>> {
        match self.key_of(id)? {
            Some(key) => self.get_by_key(key),
            None => Ok(None),
        }
    }

    /// The internal key of this user id.
    pub fn key_of(&self, id: &str) -> Result<Option<u64>> {
        let txn = self.read_txn()?;
        let ids = txn.open_table(IDS).at("ids", || "opening".into())?;
        Ok(ids
            .get(id)
            .at("ids", || format!("looking up item {id:?}"))?
            .map(|k| k.value()))
    }

    /// The item with this internal key.
    pub fn get_by_key(&self, key: u64) -> Result<Option<Item>> {
        let txn = self.read_txn()?;
        let items = txn.open_table(ITEMS).at("items", || "opening".into())?;
        read_item(&items, key)
    }

    /// The features of the item with this internal key.
    pub fn get_features(&self, key: u64) -> Result<Option<Features>> {
        let txn = self.read_txn()?;
        let table = txn
            .open_table(FEATURES)
            .at("features", || "opening".into())?;
        let Some(bytes) = table
            .get(key)
            .at("features", || format!("reading key {key}"))?
        else {
            return Ok(None);
        };
        codec::decode_features(bytes.value())
            .map(Some)
            .map_err(|reason| corrupt("features", key, reason))
    }

    /// Up to `limit` items in key order (which is insertion order), skipping the first `offset`.
    pub fn list(&self, offset: usize, limit: usize) -> Result<Vec<Item>> {
        let txn = self.read_txn()?;
        let items = txn.open_table(ITEMS).at("items", || "opening".into())?;
        let range = items.range::<u64>(..).at("items", || "listing".into())?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in range.skip(offset).take(limit) {
            let (key, value) = entry.at("items", || "listing".into())?;
            out.push(decode_item(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Rewrites the file without the pages earlier transactions freed, returning the bytes it
    /// had and has. Needs the store to itself (no reader or writer open).
    pub fn compact(&mut self) -> Result<(u64, u64)> {
        let size = |s: &Store| {
            s.path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len())
        };
        let before = size(self);
        self.db.compact().map_err(|e| Error::Storage {
            table: "*",
            context: "compacting the database".into(),
            source: Box::new(e),
        })?;
        Ok((before, size(self)))
    }

    /// Number of items.
    pub fn count(&self) -> Result<u64> {
        let txn = self.read_txn()?;
        let items = txn.open_table(ITEMS).at("items", || "opening".into())?;
        items.len().at("items", || "counting".into())
    }

    /// Streams `(key, features)` in key order from one consistent snapshot of the store, without
    /// loading them all: for training and index rebuilds. Writes may go on meanwhile; the stream
    /// does not see them.
    pub fn iter_features(&self) -> Result<FeaturesIter> {
        let txn = self.read_txn()?;
        let table = txn
            .open_table(FEATURES)
            .at("features", || "opening".into())?;
        let range = table
            .range::<u64>(..)
            .at("features", || "iterating".into())?;
        Ok(FeaturesIter::new(range))
    }

    /// The sizes fixed by the first stored vectors: (image, text). `None` until one is stored.
    pub fn feature_dims(&self) -> Result<(Option<usize>, Option<usize>)> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).at("meta", || "opening".into())?;
        Ok((
            meta_u64(&meta, meta_key::IMAGE_DIM)?.map(|d| d as usize),
            meta_u64(&meta, meta_key::TEXT_DIM)?.map(|d| d as usize),
        ))
    }

    // ---------------------------------------------------------------------------------------
    // Fused vectors

    /// Stores fused vectors computed by model `version`, in one transaction. Every key must be a
    /// stored item, and every vector must have the same size as the version's earlier ones.
    pub fn put_fused(&self, version: u32, vectors: &[(u64, Vec<f32>)]) -> Result<()> {
        self.write_fused(version, vectors, false).map(|_| ())
    }

    /// Like [`Store::put_fused`], but vectors of items deleted since they were read are
    /// skipped instead of failing the batch: training and catch-up run beside writers, and an
    /// item deleted meanwhile simply has no vector. Returns how many were written.
    pub fn put_fused_skipping_deleted(
        &self,
        version: u32,
        vectors: &[(u64, Vec<f32>)],
    ) -> Result<usize> {
        self.write_fused(version, vectors, true)
    }

    fn write_fused(
        &self,
        version: u32,
        vectors: &[(u64, Vec<f32>)],
        skip_deleted: bool,
    ) -> Result<usize> {
        if vectors.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let txn = self.write_txn()?;
        {
            let models = txn.open_table(MODELS).at("models", || "opening".into())?;
            if models
                .get(version)
                .at("models", || format!("looking up version {version}"))?
                .is_none()
            {
                return Err(Error::UnknownModel { version });
            }
            let items = txn.open_table(ITEMS).at("items", || "opening".into())?;
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            let dim_key = format!("{}{version}", meta_key::FUSED_DIM_PREFIX);
            let mut dim = meta_u64(&meta, &dim_key)?;
            let mut fused = txn.open_table(FUSED).at("fused", || "opening".into())?;
            for (key, vector) in vectors {
                if items
                    .get(*key)
                    .at("items", || format!("looking up key {key}"))?
                    .is_none()
                {
                    if skip_deleted {
                        continue;
                    }
                    return Err(Error::UnknownItemKey { key: *key });
                }
                check_vector(&format!("key {key}"), "fused", vector, &mut dim)?;
                written += 1;
                fused
                    .insert((version, *key), codec::f32s_to_bytes(vector).as_slice())
                    .at("fused", || {
                        format!("writing vector of key {key} for model {version}")
                    })?;
            }
            if let Some(d) = dim {
                meta.insert(dim_key.as_str(), d)
                    .at("meta", || format!("writing {dim_key}"))?;
            }
            bump_generation(&mut meta)?;
        }
        txn.commit().at("fused", || {
            format!("committing vectors for model {version}")
        })?;
        Ok(written)
    }

    /// The fused vector of one item under model `version`.
    pub fn get_fused(&self, version: u32, key: u64) -> Result<Option<Vec<f32>>> {
        let txn = self.read_txn()?;
        let fused = txn.open_table(FUSED).at("fused", || "opening".into())?;
        let Some(bytes) = fused
            .get((version, key))
            .at("fused", || format!("reading key {key} of model {version}"))?
        else {
            return Ok(None);
        };
        codec::bytes_to_f32s(bytes.value())
            .map(Some)
            .map_err(|reason| corrupt("fused", format!("({version}, {key})"), reason))
    }

    /// Streams `(key, fused vector)` of model `version` in key order from one snapshot.
    pub fn iter_fused(&self, version: u32) -> Result<FusedIter> {
        let txn = self.read_txn()?;
        let fused = txn.open_table(FUSED).at("fused", || "opening".into())?;
        let range = fused
            .range((version, 0u64)..=(version, u64::MAX))
            .at("fused", || format!("iterating model {version}"))?;
        Ok(FusedIter::new(range, version))
    }

    // ---------------------------------------------------------------------------------------
    // Models

    /// Stores a trained model and returns its new version number. Does not activate it.
    pub fn put_model(&self, blob: &ModelBlob) -> Result<u32> {
        let txn = self.write_txn()?;
        let version = {
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            let next = meta_u64(&meta, meta_key::NEXT_MODEL)?.unwrap_or(1);
            let version = u32::try_from(next).map_err(|_| {
                corrupt(
                    "meta",
                    meta_key::NEXT_MODEL,
                    format!("{next} overflows u32"),
                )
            })?;
            let info = ModelInfo {
                version,
                config: blob.config.clone(),
                metrics: blob.metrics.clone(),
                created_at: now_ms(),
                weights_bytes: blob.safetensors.len() as u64,
            };
            let json = serde_json::to_vec(&info).map_err(|source| Error::Json {
                context: format!("encoding model {version}"),
                source,
            })?;
            txn.open_table(MODELS)
                .at("models", || "opening".into())?
                .insert(version, json.as_slice())
                .at("models", || format!("writing model {version}"))?;
            txn.open_table(MODEL_WEIGHTS)
                .at("model_weights", || "opening".into())?
                .insert(version, blob.safetensors.as_slice())
                .at("model_weights", || {
                    format!("writing weights of model {version}")
                })?;
            meta.insert(meta_key::NEXT_MODEL, next + 1)
                .at("meta", || "writing next model version".into())?;
            version
        };
        txn.commit()
            .at("models", || format!("committing model {version}"))?;
        Ok(version)
    }

    /// Every stored model, oldest first, without weights.
    pub fn list_models(&self) -> Result<Vec<ModelInfo>> {
        let txn = self.read_txn()?;
        let models = txn.open_table(MODELS).at("models", || "opening".into())?;
        let mut out = Vec::new();
        for entry in models.range::<u32>(..).at("models", || "listing".into())? {
            let (version, json) = entry.at("models", || "listing".into())?;
            out.push(decode_model_info(version.value(), json.value())?);
        }
        Ok(out)
    }

    /// A stored model with its weights.
    pub fn get_model(&self, version: u32) -> Result<Option<StoredModel>> {
        let txn = self.read_txn()?;
        read_model(&txn, version)
    }

    /// Makes `version` the model that classification and fused search use.
    pub fn activate(&self, version: u32) -> Result<()> {
        let txn = self.write_txn()?;
        {
            let models = txn.open_table(MODELS).at("models", || "opening".into())?;
            if models
                .get(version)
                .at("models", || format!("looking up version {version}"))?
                .is_none()
            {
                return Err(Error::UnknownModel { version });
            }
            txn.open_table(META)
                .at("meta", || "opening".into())?
                .insert(meta_key::ACTIVE_MODEL, u64::from(version))
                .at("meta", || "writing active model".into())?;
        }
        txn.commit().at("meta", || {
            format!("committing activation of model {version}")
        })
    }

    /// The active model's version, if one was activated.
    pub fn active_version(&self) -> Result<Option<u32>> {
        let txn = self.read_txn()?;
        active_version(&txn)
    }

    /// The active model with its weights, if one was activated.
    pub fn active_model(&self) -> Result<Option<StoredModel>> {
        let txn = self.read_txn()?;
        match active_version(&txn)? {
            Some(version) => read_model(&txn, version),
            None => Ok(None),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Generation and derived-index bookkeeping

    /// The write generation: grows with every commit that changes items, features, fused
    /// vectors or review records.
    pub fn generation(&self) -> Result<u64> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).at("meta", || "opening".into())?;
        Ok(meta_u64(&meta, meta_key::GENERATION)?.unwrap_or(0))
    }

    /// Records the store state a derived index (by name) was built from.
    pub fn set_index_state(&self, name: &str, state: &IndexState) -> Result<()> {
        let json = serde_json::to_vec(state).map_err(|source| Error::Json {
            context: format!("encoding state of index {name:?}"),
            source,
        })?;
        let txn = self.write_txn()?;
        txn.open_table(INDEX_STATE)
            .at("index_state", || "opening".into())?
            .insert(name, json.as_slice())
            .at("index_state", || format!("writing index {name:?}"))?;
        txn.commit()
            .at("index_state", || format!("committing index {name:?}"))
    }

    /// The recorded state of a derived index, if any.
    pub fn index_state(&self, name: &str) -> Result<Option<IndexState>> {
        let txn = self.read_txn()?;
        let table = txn
            .open_table(INDEX_STATE)
            .at("index_state", || "opening".into())?;
        let Some(json) = table
            .get(name)
            .at("index_state", || format!("reading index {name:?}"))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(json.value())
            .map(Some)
            .map_err(|e| corrupt("index_state", name, e))
    }
}

/// Runs a redb open, turning its errors, and any panic redb raises on a damaged file, into
/// errors that name the file. Nothing is written to a file that fails here.
fn guarded_open<D>(
    path: &Path,
    open: impl FnOnce() -> std::result::Result<D, DatabaseError>,
) -> Result<D> {
    let not_a_store = |reason: String| Error::NotAStore {
        path: path.to_path_buf(),
        reason,
    };
    match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::Storage(StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(not_a_store(format!("it is not a redb database ({e})")))
        }
        Ok(Err(DatabaseError::Storage(StorageError::Corrupted(reason)))) => {
            Err(not_a_store(format!("the database is damaged ({reason})")))
        }
        Ok(Err(DatabaseError::UpgradeRequired(format))) => Err(not_a_store(format!(
            "it uses the old redb file format {format}"
        ))),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Storage {
            table: "meta",
            context: format!("opening {} (another process holds it open)", path.display()),
            source: Box::new(redb::Error::DatabaseAlreadyOpen),
        }),
        Ok(Err(e)) => Err(e).at("meta", || format!("opening {}", path.display())),
        Err(_) => Err(not_a_store(
            "the database engine rejected the file as damaged".into(),
        )),
    }
}

/// Checks the magic number and schema version of an opened file.
fn verify(db: &impl ReadableDatabase, path: &Path) -> Result<()> {
    let not_a_store = |reason: String| Error::NotAStore {
        path: path.to_path_buf(),
        reason,
    };
    let txn = db
        .begin_read()
        .at("meta", || format!("starting a read on {}", path.display()))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(not_a_store(
                "it is a redb database without Trio's tables".into(),
            ))
        }
        Err(e @ TableError::TableTypeMismatch { .. }) => {
            return Err(not_a_store(format!("its `meta` table is foreign ({e})")))
        }
        Err(e) => return Err(e).at("meta", || format!("opening {}", path.display())),
    };
    if meta_u64(&meta, meta_key::MAGIC)? != Some(MAGIC) {
        return Err(not_a_store(
            "its `meta` table lacks Trio's magic number".into(),
        ));
    }
    match meta_u64(&meta, meta_key::SCHEMA)? {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(found) => Err(Error::StoreSchemaMismatch {
            path: path.to_path_buf(),
            found,
            expected: SCHEMA_VERSION,
        }),
        None => Err(not_a_store("its schema version is missing".into())),
    }
}

/// Whether the store can take `id` as an item id: callers check before any work on the item.
pub fn check_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty".to_string()
    } else if id.len() > MAX_ID_BYTES {
        format!(
            "it has {} bytes, over the limit of {MAX_ID_BYTES} bytes",
            id.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::BadItemId {
        id: short_id(id),
        reason,
    })
}

/// An id cut to a length an error message can carry.
pub fn short_id(id: &str) -> String {
    const SHOWN: usize = 64;
    if id.chars().count() <= SHOWN {
        id.to_string()
    } else {
        format!("{}…", id.chars().take(SHOWN).collect::<String>())
    }
}

fn check_features(
    id: &str,
    features: &Features,
    image_dim: &mut Option<u64>,
    text_dim: &mut Option<u64>,
) -> Result<()> {
    let item = format!("item {id:?}");
    if let Some(image) = &features.image {
        check_vector(&item, "image", image, image_dim)?;
    }
    if features.text.len() > 254 {
        return Err(Error::BadVector {
            item,
            field: "text".into(),
            reason: format!("{} text fields (at most 254)", features.text.len()),
        });
    }
    for (field, vector) in &features.text {
        if field.is_empty() || field.len() > 255 {
            return Err(Error::BadVector {
                item,
                field: field.clone(),
                reason: "text field names must have 1 to 255 bytes".into(),
            });
        }
        check_vector(&item, &format!("text.{field}"), vector, text_dim)?;
    }
    Ok(())
}

/// Checks a vector is non-empty, finite and of the size fixed by earlier writes (`dim`, which it
/// fixes if unset).
fn check_vector(item: &str, field: &str, vector: &[f32], dim: &mut Option<u64>) -> Result<()> {
    let bad = |reason: String| Error::BadVector {
        item: item.to_string(),
        field: field.to_string(),
        reason,
    };
    if vector.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if vector.len() > u32::MAX as usize {
        return Err(bad(format!("{} values is too many", vector.len())));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is {}", vector[i])));
    }
    match dim {
        Some(d) if *d != vector.len() as u64 => Err(bad(format!(
            "{} values, but the store holds {d}-value vectors here",
            vector.len()
        ))),
        Some(_) => Ok(()),
        None => {
            *dim = Some(vector.len() as u64);
            Ok(())
        }
    }
}

fn meta_u64(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<Option<u64>> {
    Ok(meta
        .get(name)
        .at("meta", || format!("reading {name}"))?
        .map(|v| v.value()))
}

fn bump_generation(meta: &mut redb::Table<&'static str, u64>) -> Result<()> {
    let generation = meta_u64(meta, meta_key::GENERATION)?.unwrap_or(0);
    meta.insert(meta_key::GENERATION, generation + 1)
        .at("meta", || "writing generation".into())?;
    Ok(())
}

fn model_versions(txn: &WriteTransaction) -> Result<Vec<u32>> {
    let models = txn.open_table(MODELS).at("models", || "opening".into())?;
    let mut out = Vec::new();
    for entry in models.range::<u32>(..).at("models", || "listing".into())? {
        out.push(entry.at("models", || "listing".into())?.0.value());
    }
    Ok(out)
}

fn read_item(items: &impl ReadableTable<u64, &'static [u8]>, key: u64) -> Result<Option<Item>> {
    match items
        .get(key)
        .at("items", || format!("reading key {key}"))?
    {
        Some(json) => decode_item(key, json.value()).map(Some),
        None => Ok(None),
    }
}

fn decode_item(key: u64, json: &[u8]) -> Result<Item> {
    let item: Item = serde_json::from_slice(json).map_err(|e| corrupt("items", key, e))?;
    if item.key != key {
        return Err(corrupt(
            "items",
            key,
            format!("record says key {}", item.key),
        ));
    }
    Ok(item)
}

fn decode_model_info(version: u32, json: &[u8]) -> Result<ModelInfo> {
    let info: ModelInfo =
        serde_json::from_slice(json).map_err(|e| corrupt("models", version, e))?;
    if info.version != version {
        return Err(corrupt(
            "models",
            version,
            format!("record says version {}", info.version),
        ));
    }
    Ok(info)
}

fn active_version(txn: &ReadTransaction) -> Result<Option<u32>> {
    let meta = txn.open_table(META).at("meta", || "opening".into())?;
    match meta_u64(&meta, meta_key::ACTIVE_MODEL)? {
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| corrupt("meta", meta_key::ACTIVE_MODEL, format!("{v} overflows u32"))),
        None => Ok(None),
    }
}

fn read_model(txn: &ReadTransaction, version: u32) -> Result<Option<StoredModel>> {
    let models = txn.open_table(MODELS).at("models", || "opening".into())?;
    let Some(json) = models
        .get(version)
        .at("models", || format!("reading model {version}"))?
    else {
        return Ok(None);
    };
    let info = decode_model_info(version, json.value())?;
    let weights = txn
        .open_table(MODEL_WEIGHTS)
        .at("model_weights", || "opening".into())?;
    let safetensors = weights
        .get(version)
        .at("model_weights", || {
            format!("reading weights of model {version}")
        })?
        .ok_or_else(|| corrupt("model_weights", version, "weights are missing"))?
        .value()
        .to_vec();
    Ok(Some(StoredModel { info, safetensors }))
}

#[cfg(test)]
mod tests;
