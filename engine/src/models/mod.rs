//! The networks. One file per network; each takes a `VarBuilder`, never a path.

pub mod fusion;
