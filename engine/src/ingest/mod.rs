//! Manifests in, items out: parsing rows, the demo catalogue, and the batched ingest pipeline.

pub mod demo;
pub mod manifest;
pub mod pipeline;
