//! Training and evaluating the fused model and its baselines.
