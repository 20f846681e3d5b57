//! Trio's HTTP service (actix-web) over the engine.
//!
//! The service is written against the [`Backend`] trait, which the engine's facade implements;
//! the request and response bodies live in [`api`]. Handlers never run backend work on the
//! async executor: single calls go to the blocking pool through a bounded work queue, and
//! classify/search requests go through [`batcher`]s that gather concurrent requests into one
//! backend call. Full queues answer 503 instead of growing.
//!
//! - [`configure`] registers every route on an actix `ServiceConfig` (tests drive it with
//!   `actix_web::test::init_service`, no socket); [`routes`] lists them.
//! - [`run`] binds, serves and shuts down gracefully on SIGINT/SIGTERM; [`serve`] does the same
//!   on a listener the caller bound.
//! - [`error`] is the one place engine errors become HTTP statuses.

pub mod api;
pub mod backend;
pub mod batcher;
mod body;
pub mod config;
pub mod engine_backend;
pub mod error;
mod metrics;
mod openapi;
mod reports;
mod routes;
mod server;
mod state;

pub use backend::{Backend, ImageLimits, ReportState};
pub use batcher::{BatchConfig, BatchError, Batcher};
pub use config::{ApiKey, ConfigError, Limits, ServerConfig, API_KEY_ENV};
pub use engine_backend::{uploads_dir_for, EngineBackend};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use routes::{configure, routes, RouteInfo};
pub use server::{run, serve};
pub use state::{Access, AppState};
pub use trio_engine;
