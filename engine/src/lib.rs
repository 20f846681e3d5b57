//! Trio's engine: everything that classifies and searches image–title–description trios.
//!
//! The engine is a library with no HTTP or terminal types in it. The tree maps one folder to
//! one concept, listed here in the order data flows through them:
//!
//! - [`catalog`]: the facade the CLI, the server and Rust users call: one database with its
//!   indexes and towers (ingest, search, classify, train, quality, export).
//! - [`fetch`]: getting pinned, verified model weights and the demo catalogue into `TRIO_HOME`.
//! - [`ingest`]: manifests in, items out: parsing, the demo catalogue, the batched pipeline,
//!   shards of a manifest.
//! - [`weights`]: reading weight files (safetensors, legacy PyTorch `.pth`) into `VarBuilder`s.
//! - [`models`]: the networks (EfficientNet-Lite image tower, MiniLM text tower, fused model).
//! - `kernels` (crate-private): the hand-written CPU kernels the models and the index call.
//! - [`towers`]: the frozen feature extractors with their preprocessing (image decode, tokenise).
//! - [`store`]: the redb catalogue, the source of truth for items, features and models.
//! - [`exchange`]: feature files (Parquet) written by `trio embed` and loaded in bulk.
//! - [`train`]: training and evaluating the fused model and its baselines.
//! - [`index`]: vector indexes (HNSW) derived from the store.
//! - [`quality`]: duplicates, label noise and the catalogue map.

pub mod catalog;
pub mod device;
pub mod error;
pub mod exchange;
pub mod fetch;
pub mod index;
pub mod ingest;
pub(crate) mod kernels;
pub mod models;
pub mod progress;
pub mod quality;
pub mod store;
pub mod towers;
pub mod train;
pub mod weights;

pub use candle_core::Device;
pub use device::DeviceChoice;
pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};
