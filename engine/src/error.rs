//! The engine's one error type. Variants carry the context a user needs to act: which item,
//! which file, which field.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("JSON error in {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("device {requested} is not available: {reason}")]
    DeviceUnavailable { requested: String, reason: String },
    // -- fetch (assets, archives) --

    // -- weights and models --

    // -- towers (image decode, tokenizer) --

    // -- store --
    /// The file is not a Trio store (not a redb database, or a redb database without Trio's
    /// tables). Nothing was written to it.
    #[error("{path} is not a Trio store: {reason}")]
    NotAStore { path: PathBuf, reason: String },

    /// The store was written by a different schema version of Trio.
    #[error("store {path} has schema version {found}, this build reads version {expected}")]
    StoreSchemaMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    /// `Store::create` refuses to reuse an existing file.
    #[error("store {path} already exists")]
    StoreExists { path: PathBuf },

    /// `Store::open` needs an existing file.
    #[error("store {path} does not exist")]
    StoreMissing { path: PathBuf },

    /// The database layer failed; `table` and `context` say where.
    #[error("store error in table `{table}` ({context}): {source}")]
    Storage {
        table: &'static str,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored record could not be decoded.
    #[error("corrupt record in table `{table}` at {key}: {reason}")]
    CorruptRecord {
        table: &'static str,
        key: String,
        reason: String,
    },

    #[error("model version {version} is not in the store")]
    UnknownModel { version: u32 },

    #[error("no item with key {key} in the store")]
    UnknownItemKey { key: u64 },

    /// A vector is unusable where it is going: wrong length, empty, or holding NaN/infinity.
    #[error("vector `{field}` of {item} is unusable: {reason}")]
    BadVector {
        item: String,
        field: String,
        reason: String,
    },

    /// A user id that the store cannot accept (empty, or too long to be a key).
    #[error("item id {id:?} is invalid: {reason}")]
    BadItemId { id: String, reason: String },

    // -- index --
    /// A persisted index cannot be used (missing, corrupt, or built from another state of the
    /// store); the caller rebuilds it from the store.
    #[error("index {path} must be rebuilt: {reason}")]
    IndexRebuildNeeded { path: PathBuf, reason: String },

    /// Writing an index dump failed.
    #[error("could not write index dump {path}: {reason}")]
    IndexDump { path: PathBuf, reason: String },
    // -- ingest --

    // -- train --

    // -- query --
}

impl Error {
    /// Wraps an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
