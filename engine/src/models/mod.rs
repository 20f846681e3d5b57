//! The networks. One file per network; each takes a `VarBuilder`, never a path.

/// MiniLM and other BERT-layout sentence encoders (the text tower's network).
pub mod minilm;
