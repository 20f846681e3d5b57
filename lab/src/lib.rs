//! Trio's research harness, apart from the product: what measures the engine rather than what
//! the engine does for a user. The engine does not depend on it; `trio eval --protocol`,
//! `trio bench`, the tests and the benches call it.
//!
//! - [`protocol`]: the demo evaluation protocol (unseen groups, injected label noise, dropped
//!   text), over one or several seeds, on examples or on a catalogue.
//! - [`robustness`]: the fused model with each input removed versus models trained without it.
//! - [`synthetic`]: synthetic catalogues for tests and benchmarks.
//! - [`crossmodal`]: how often a text query finds its images among image-only items.
//! - [`throughput`]: items per second of the towers and how far two devices' outputs drift.
//! - [`planted`]: the planted-duplicate benchmark (copies to plant, pair-level scores).
//! - [`report`]: the Markdown tables the CLI and the measurement drivers print.

pub mod crossmodal;
pub mod planted;
pub mod protocol;
pub mod report;
pub mod robustness;
pub mod synthetic;
pub mod throughput;

pub use report::Markdown;
