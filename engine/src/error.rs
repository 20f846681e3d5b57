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

    // -- index --

    // -- ingest --

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
