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
