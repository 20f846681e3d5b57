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
        problem: crate::towers::image::ImageProblem,
    },
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
