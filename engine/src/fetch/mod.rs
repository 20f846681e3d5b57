//! Getting pinned, verified model weights and the demo catalogue into `TRIO_HOME`.
