//! Progress reporting without terminal types: the CLI plugs in progress bars, the server
//! job counters, tests nothing.

/// Receives progress from long-running engine work (fetch, ingest, train, index builds).
/// Implementations must be cheap and thread-safe; the engine calls them from worker threads.
pub trait Progress: Send + Sync {
    /// A new stage begins, with `total` units of work (bytes, items, epochs) if known.
    fn start(&self, stage: &str, total: Option<u64>);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
    /// A short status line for the current stage (loss, accuracy, file name).
    fn message(&self, _msg: &str) {}
    /// The current stage is over.
    fn finish(&self) {}
    /// A non-fatal problem worth telling the user about (a truncated text, a skipped row).
    fn warn(&self, _msg: &str) {}
}

/// Discards all progress; for tests and library callers that do not care.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _stage: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
}
