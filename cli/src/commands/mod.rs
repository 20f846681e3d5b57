//! One module per `trio` subcommand.

pub mod embed;
pub mod fetch;
pub mod ingest;
pub mod items;
