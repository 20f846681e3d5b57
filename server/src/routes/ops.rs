//! Operating the service: health, metrics, statistics, the API description.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};

use crate::api::{ErrorBody, Health, Stats};
use crate::error::ApiError;
use crate::state::AppState;

/// 200 when the backend is ready to serve; 503 `not_ready` while it loads.
#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .unqueued("the health check", |backend| backend.ready())
        .await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".to_string(),
    }))
}

/// Prometheus text: request counts and latency by route and status, batch sizes, queue depths,
/// shed requests, catalogue and index sizes.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.record_queue_depths();
    // Sizes are best effort: a scrape during a backend stall still reports the rest.
    match state
        .unqueued("reading statistics", |backend| backend.stats())
        .await
    {
        Ok(stats) => state.metrics.set_stats(&stats),
        Err(e) => tracing::warn!(error = %e, "metrics scrape without backend statistics"),
    }
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::internal("rendering metrics", e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

#[utoipa::path(
    get, path = "/v1/stats", tag = "ops",
    responses((status = 200, body = Stats))
)]
pub(crate) async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state
        .blocking("reading statistics", |backend| backend.stats())
        .await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 description of every route", body = Object))
)]
pub(crate) async fn openapi_json() -> Result<HttpResponse, ApiError> {
    let json = crate::openapi::document()
        .to_json()
        .map_err(|e| ApiError::internal("rendering the API description", e))?;
    Ok(HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(json))
}
