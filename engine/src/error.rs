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

    // -- query --
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
