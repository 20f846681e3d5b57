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

    #[error("internal error: {0}")]
    Internal(String),

    #[error("no trained model: {reason}")]
    NoModel { reason: String },
    // -- fetch (assets, archives) --
    /// Getting an asset's archive failed (client missing, no network, file not in `--from`).
    #[error("could not fetch {asset}: {reason}\n{hint}")]
    Fetch {
        asset: String,
        reason: String,
        hint: String,
    },

    /// An archive is not the pinned file.
    #[error(
        "{file} (for {asset}) is not the pinned file: {found}; expected sha256 {expected_sha256}\n{hint}"
    )]
    FetchChecksum {
        asset: String,
        file: PathBuf,
        expected_sha256: String,
        found: String,
        hint: String,
    },

    /// A verified archive could not be unpacked as pinned.
    #[error("cannot unpack {file} (for {asset}): {reason}")]
    FetchArchive {
        asset: String,
        file: PathBuf,
        reason: String,
    },

    // -- weights and models --
    #[error("model {model}: unsupported configuration: {reason}")]
    ModelConfig { model: String, reason: String },

    // -- towers (image decode, tokenizer) --
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("text #{index} is empty: an empty or whitespace-only text is a missing field, not a text to embed")]
    EmptyText { index: usize },
    // -- store --

    // -- index --

    // -- ingest --
    /// A manifest as a whole cannot be read (per-row problems are `ingest::manifest::RowError`).
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    /// The emoji demo catalogue's files are missing or not in the expected shape.
    #[error("demo catalogue {path}: {reason}")]
    DemoCatalogue { path: PathBuf, reason: String },
    // -- train --
    #[error("{item}: {field} has {got} values, expected {expected}")]
    FeatureDim {
        item: String,
        field: String,
        expected: usize,
        got: usize,
    },

    #[error("{item} has no inputs: it needs an image or at least one text field")]
    NoInputs { item: String },

    #[error("cannot train: {reason}")]
    NotEnoughData { reason: String },

    #[error("invalid training setting `{field}`: {reason}")]
    InvalidTrainConfig { field: &'static str, reason: String },

    #[error("stored model is unreadable: {reason}")]
    ModelFormat { reason: String },
    // -- query --

    // -- service --
    // Conditions a caller of the engine's facade can act on; the server maps each to a status.
    #[error("{what} '{id}' not found")]
    NotFound { what: String, id: String },

    #[error("{what} '{id}' conflicts with the current state: {reason}")]
    Conflict {
        what: String,
        id: String,
        reason: String,
    },

    #[error("unknown label '{label}': the active model was not trained on it")]
    UnknownLabel { label: String },

    #[error("not ready: {reason}")]
    NotReady { reason: String },

    #[error("{what} is overloaded; retry later")]
    Overloaded { what: String },

    #[error("{what} is too large (limit {limit})")]
    TooLarge { what: String, limit: u64 },

    #[error("not a decodable image: {reason}")]
    NotAnImage { reason: String },
    #[error("{what}: item {index}: {reason}")]
    InvalidItem {
        what: String,
        index: usize,
        reason: String,
    },

    #[error("{what}: expected {expected} entries, got {got}")]
    LengthMismatch {
        what: String,
        expected: usize,
        got: usize,
    },

    #[error("cannot encode {what}: {source}")]
    ImageEncode {
        what: String,
        #[source]
        source: image::ImageError,
    },

    #[error("cannot draw the map into {path}: {reason}")]
    MapRender { path: PathBuf, reason: String },
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
