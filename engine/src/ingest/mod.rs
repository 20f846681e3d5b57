//! Manifests in, items out: parsing rows, the demo catalogue, the batched ingest pipeline, and
//! deterministic shards of a manifest.

pub mod demo;
pub mod manifest;
pub mod pipeline;
pub mod shard;
