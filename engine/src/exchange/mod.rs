//! Feature files: items with their tower features as Parquet, the format Ray, Spark, pandas,
//! DuckDB and Polars read. `trio embed --out` writes them (one file per shard of a manifest, on
//! any machine), `trio ingest --features` loads them into a catalogue without running the towers,
//! and `trio items export` writes a catalogue back out in the same schema.
//!
//! One row per item. Columns (see [`schema`] for the exact types):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `id` | string | the item id |
//! | `source_row` | uint64, null | the manifest row it came from (null in exports) |
//! | `content_hash` | string | sha256 over the image bytes and every field |
//! | `title`, `description`, `label`, `image_path` | string, null | as in the manifest |
//! | `tags` | list of string | |
//! | `metadata` | string | the other manifest fields, as a JSON object |
//! | `image_phash` | uint64, null | 64-bit perceptual hash of the image |
//! | `has_image`, `has_title`, `has_description` | bool | which inputs the item has |
//! | `image_vector` | fixed-size list of float (1280), null | image-tower features |
//! | `title_vector`, `description_vector` | fixed-size list of float (384), null | text-tower features |
//!
//! Floats are `float32`, or `float16` when written with [`Precision::F16`]. The file's key-value
//! metadata holds `trio.format` (the schema version) and `trio.towers`, the JSON
//! [`TowerFingerprint`] of the towers that computed the vectors: features from other weights or
//! another preprocessing are refused, never mixed into a catalogue.
//!
//! Files are written to a temporary name beside the target and renamed when complete, so a
//! killed writer never leaves a file that looks finished.

mod read;
pub mod schema;
mod write;

pub use read::{feature_files, FeatureFileReader};
pub use schema::{ExchangeRow, Precision, FORMAT_VERSION};
pub use write::FeatureFileWriter;

#[cfg(test)]
mod tests;
