//! The engine's one error type. Variants carry the context a user needs to act: which item,
//! which file, which field.

use std::fmt;
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

    /// An archive is not the pinned file (boxed: the rare error should not make every
    /// `Result` of the engine wider).
    #[error("{0}")]
    FetchChecksum(Box<ChecksumMismatch>),

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

    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("{path}: not a weights file ({reason})")]
    NotWeightsFile { path: PathBuf, reason: String },

    #[error("{path}: truncated weights file ({reason})")]
    TruncatedWeights { path: PathBuf, reason: String },

    #[error("{path}: malformed weights file ({reason})")]
    MalformedWeights { path: PathBuf, reason: String },

    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedWeightDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("weights do not fit model {model}: {reason}")]
    ModelWeights { model: String, reason: String },

    // -- towers (image decode, tokenizer) --
    #[error("image {image}: {problem}")]
    Image {
        image: String,
        problem: ImageProblem,
    },

    #[error("text #{index} is empty: an empty or whitespace-only text is a missing field, not a text to embed")]
    EmptyText { index: usize },

    /// The catalogue was opened without tower settings (`Catalog::open_existing`), and `what`
    /// needs the towers.
    #[error("{what} needs the towers, but this catalogue was opened without them")]
    NoTowers { what: &'static str },
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

    /// A stored record could not be decoded: the database file is damaged.
    #[error(
        "the database is damaged: table `{table}`, record {key}: {reason}; {}",
        recovery(table)
    )]
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
    /// A manifest as a whole cannot be read (per-row problems are `ingest::manifest::RowError`).
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    /// A feature file (Parquet) cannot be used as a whole: unreadable, not Trio's schema, or
    /// computed by other towers than the catalogue's.
    #[error("feature file {path}: {reason}")]
    FeatureFile { path: PathBuf, reason: String },

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

    #[error("{what} is too large (limit {limit})")]
    TooLarge { what: String, limit: u64 },

    #[error("not a decodable image: {reason}")]
    NotAnImage { reason: String },

    /// The item names an image file that is no longer on disk (removed outside Trio).
    #[error("the image file of item '{id}' is missing")]
    ImageMissing { id: String },
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
}

/// What a user can do about a damaged record, by the table it is in.
fn recovery(table: &str) -> &'static str {
    match table {
        "features" | "items" | "ids" => {
            "`trio items check` lists the damaged items: delete them (`trio items delete ID`) and \
             ingest them again (a re-run of the manifest adds only what is missing)"
        }
        "fused" => {
            "`trio items check` lists the damaged items; `trio train` recomputes every fused vector"
        }
        _ => "restore the database from a backup, or ingest the catalogue into a new database",
    }
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

/// What [`Error::FetchChecksum`] reports: which archive differs from its pin, and how.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file} (for {asset}) is not the pinned file: {found}; expected sha256 {expected_sha256}\n{hint}"
)]
pub struct ChecksumMismatch {
    pub asset: String,
    pub file: PathBuf,
    pub expected_sha256: String,
    pub found: String,
    pub hint: String,
}

/// What is wrong with an image that could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageProblem {
    /// Zero bytes.
    Empty,
    /// The bytes are not in a format Trio decodes (PNG, JPEG, GIF, WebP, BMP).
    NotAnImage,
    /// The data ends before the image does.
    Truncated { detail: String },
    /// The data is damaged or uses an unsupported variant of its format.
    Corrupt { detail: String },
    /// Larger than the configured pixel limit; refused before decoding.
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// Zero width or height.
    NoPixels,
    /// The path names a FIFO, a device, a folder or a socket: reading it could block forever
    /// or never end, so it is refused before it is opened.
    NotARegularFile { kind: &'static str },
    /// The file is larger than the configured byte limit; refused before it is read.
    FileTooLarge { bytes: u64, limit: u64 },
    /// The file could not be read (missing, no permission, I/O error).
    Unreadable { detail: String },
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageProblem::Empty => write!(f, "the file is empty (0 bytes)"),
            ImageProblem::NotAnImage => {
                write!(f, "not an image (expected PNG, JPEG, GIF, WebP or BMP)")
            }
            ImageProblem::Truncated { detail } => write!(f, "truncated image data ({detail})"),
            ImageProblem::Corrupt { detail } => write!(f, "cannot decode ({detail})"),
            ImageProblem::TooManyPixels {
                width,
                height,
                limit,
            } => write!(
                f,
                "{width}x{height} is {} pixels, over the limit of {limit}",
                *width as u64 * *height as u64
            ),
            ImageProblem::NoPixels => write!(f, "the image has no pixels"),
            ImageProblem::NotARegularFile { kind } => {
                write!(f, "not a regular file (it is {kind})")
            }
            ImageProblem::FileTooLarge { bytes, limit } => write!(
                f,
                "the file has {bytes} bytes, over the limit of {limit} (--max-file-bytes)"
            ),
            ImageProblem::Unreadable { detail } => write!(f, "cannot read the file: {detail}"),
        }
    }
}
