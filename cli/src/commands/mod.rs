//! One module per `trio` subcommand.

pub mod bench;
pub mod classify;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod fetch;
pub mod ingest;
pub mod items;
pub mod models;
pub mod quality;
pub mod review;
pub mod search;
pub mod serve;
pub mod train;
