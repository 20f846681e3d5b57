//! Questions about the catalogue: classify, search, near-duplicates, label noise.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use std::sync::Arc;

use serde_json::Value;

use super::review;
use crate::api::{
    Classification, ClassifyRequest, DuplicatesQuery, ErrorBody, NoiseQuery, Query, Search,
    SearchRequest, SearchResults, Space, DEFAULT_NOISE_LIMIT,
};
use crate::body::{self, check_id, check_map, check_optional_text, JsonBody};
use crate::config::Limits;
use crate::error::ApiError;
use crate::reports::Report;
use crate::state::AppState;

/// Classify an image and/or text: JSON with a base64 `image`, or a multipart form with an
/// `image` file part and `title`, `description`, `top_k`, `claimed` (or `fields`) text parts.
/// Concurrent requests are batched.
#[utoipa::path(
    post, path = "/v1/classify", tag = "query",
    request_body(content(
        (ClassifyRequest = "application/json"),
        (ClassifyRequest = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = Classification),
        (status = 400, description = "Bad body, or nothing to classify", body = ErrorBody),
        (status = 413, description = "Body, text or image too large", body = ErrorBody),
        (status = 409, description = "No model is trained yet", body = ErrorBody),
        (status = 415, description = "The image does not decode", body = ErrorBody),
        (status = 422, description = "The claimed label is unknown to the model", body = ErrorBody),
        (status = 503, description = "Overloaded or not ready", body = ErrorBody),
        (status = 504, description = "Timed out", body = ErrorBody),
    )
)]
pub(crate) async fn classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request = body::classify_request(&req, payload.into_inner()).await?;
    validate_classify(&request, &state.config.limits)?;
    let answer = state.classify(request).await?;
    Ok(HttpResponse::Ok().json(answer))
}

fn validate_classify(request: &ClassifyRequest, limits: &Limits) -> Result<(), ApiError> {
    check_optional_text("title", request.title.as_deref(), limits)?;
    check_optional_text("description", request.description.as_deref(), limits)?;
    check_optional_text("claimed", request.claimed.as_deref(), limits)?;
    check_count("top_k", request.top_k, limits.max_k)?;
    if request.image.is_none() && request.title.is_none() && request.description.is_none() {
        return Err(ApiError::missing_input(
            "nothing to classify: give at least one of `image`, `title`, `description`",
        ));
    }
    Ok(())
}

fn check_count(field: &str, value: usize, max: usize) -> Result<(), ApiError> {
    if value == 0 || value > max {
        return Err(ApiError::invalid_argument(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(())
}

/// Search by text, by image (base64) or by a stored item's id, in the fused, image or text
/// space, with exact-match filters. Concurrent requests are batched.
#[utoipa::path(
    post, path = "/v1/search", tag = "query",
    request_body = SearchRequest,
    responses(
        (status = 200, body = SearchResults),
        (status = 400, description = "Bad body; not exactly one of text, image, id", body = ErrorBody),
        (status = 404, description = "The query item does not exist", body = ErrorBody),
        (status = 413, description = "Body, text or image too large", body = ErrorBody),
        (status = 415, description = "The image does not decode", body = ErrorBody),
        (status = 503, description = "Overloaded or not ready", body = ErrorBody),
        (status = 504, description = "Timed out", body = ErrorBody),
    )
)]
pub(crate) async fn search(
    state: web::Data<AppState>,
    body: JsonBody<SearchRequest>,
) -> Result<HttpResponse, ApiError> {
    let search = validate_search(body.0, &state.config.limits)?;
    let results = state.search(search).await?;
    Ok(HttpResponse::Ok().json(results))
}

/// Turns the wire request into a [`Search`] with exactly one query.
fn validate_search(request: SearchRequest, limits: &Limits) -> Result<Search, ApiError> {
    check_optional_text("text", request.text.as_deref(), limits)?;
    check_map("filters", &request.filters, limits)?;
    check_count("k", request.k, limits.max_k)?;
    if request.offset.saturating_add(request.k) > limits.max_k {
        return Err(ApiError::invalid_argument(
            "offset",
            format!("`offset + k` must be at most {}", limits.max_k),
        ));
    }
    let query = match (request.text, request.image, request.id) {
        (Some(text), None, None) => {
            if text.trim().is_empty() {
                return Err(ApiError::invalid_argument("text", "must not be blank"));
            }
            Query::Text(text)
        }
        (None, Some(image), None) => Query::Image(image),
        (None, None, Some(id)) => {
            check_id("id", &id, limits)?;
            Query::Item(id)
        }
        (None, None, None) => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::BAD_REQUEST,
                "missing_query",
                "give one of `text`, `image`, `id` to search for",
            ))
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "text/image/id",
                "give only one of `text`, `image`, `id`",
            ))
        }
    };
    Ok(Search {
        query,
        space: request.space,
        k: request.k,
        offset: request.offset,
        filters: request.filters,
    })
}

/// Groups of near-duplicate items. Options in the query string.
#[utoipa::path(
    get, path = "/v1/duplicates", tag = "query",
    params(DuplicatesQuery),
    responses(
        (status = 200, description = "Duplicate report (stored per catalogue state), with `generation`, `model_version`, `computed_at` and `age_s`", body = Object),
        (status = 400, description = "Bad query string", body = ErrorBody),
    )
)]
pub(crate) async fn duplicates_get(
    state: web::Data<AppState>,
    query: web::Query<DuplicatesQuery>,
) -> Result<HttpResponse, ApiError> {
    duplicates(state, query.into_inner()).await
}

/// Groups of near-duplicate items. Options in a JSON body (may be empty).
#[utoipa::path(
    post, path = "/v1/duplicates", tag = "query",
    request_body = DuplicatesQuery,
    responses(
        (status = 200, description = "Duplicate report (stored per catalogue state), with `generation`, `model_version`, `computed_at` and `age_s`", body = Object),
        (status = 400, description = "Bad body", body = ErrorBody),
    )
)]
pub(crate) async fn duplicates_post(
    state: web::Data<AppState>,
    body: JsonBody<DuplicatesQuery>,
) -> Result<HttpResponse, ApiError> {
    duplicates(state, body.0).await
}

async fn duplicates(
    state: web::Data<AppState>,
    query: DuplicatesQuery,
) -> Result<HttpResponse, ApiError> {
    if let Some(limit) = query.limit {
        check_count("limit", limit, state.config.limits.max_page_limit)?;
    }
    check_optional_text("label", query.label.as_deref(), &state.config.limits)?;
    let report = duplicates_report(&state, query.space, query.threshold).await?;
    let label = query.label;
    let page = Paging {
        list: "groups",
        offset: query.offset.unwrap_or(0),
        limit: query.limit,
    };
    Ok(page.respond(&report, |group| {
        label.as_ref().is_none_or(|label| {
            group["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["label"] == label.as_str()))
        })
    }))
}

/// The duplicates report of these options, stored per catalogue state, with each group's id
/// and its members' titles, labels and image URLs (see [`review::annotate_duplicates`]).
pub(crate) async fn duplicates_report(
    state: &AppState,
    space: Option<Space>,
    threshold: Option<f32>,
) -> Result<Arc<Report>, ApiError> {
    if threshold.is_some_and(|t| !t.is_finite()) {
        return Err(ApiError::invalid_argument("threshold", "must be a number"));
    }
    let options = DuplicatesQuery {
        space,
        threshold,
        ..DuplicatesQuery::default()
    };
    let params = canonical(&options)?;
    state
        .report("the duplicates report", params, move |backend| {
            let outcome = backend.duplicates(options)?;
            review::annotate_duplicates(backend, &outcome)
        })
        .await
}

/// The cache key of a report's options: their JSON, in the struct's fixed field order.
fn canonical(query: &impl serde::Serialize) -> Result<String, ApiError> {
    serde_json::to_string(query).map_err(|e| ApiError::internal("encoding report options", e))
}

/// A page of a stored report's list (`groups`, `issues`): the entries `keep` accepts, from
/// `offset`, at most `limit` of them. The answer has the report's other fields, its freshness,
/// `total` (entries accepted, over all pages) and `offset`, and its age in the `Age` header.
struct Paging {
    list: &'static str,
    offset: usize,
    limit: Option<usize>,
}

impl Paging {
    fn respond(&self, report: &Report, keep: impl Fn(&Value) -> bool) -> HttpResponse {
        let mut body = report.to_json();
        if let Value::Object(map) = &mut body {
            let entries = match map.remove(self.list) {
                Some(Value::Array(entries)) => entries,
                _ => Vec::new(),
            };
            let kept: Vec<Value> = entries.into_iter().filter(|e| keep(e)).collect();
            map.insert("total".into(), kept.len().into());
            map.insert("offset".into(), self.offset.into());
            let page = kept
                .into_iter()
                .skip(self.offset)
                .take(self.limit.unwrap_or(usize::MAX));
            map.insert(self.list.into(), Value::Array(page.collect()));
        }
        HttpResponse::Ok()
            .insert_header((header::AGE, (report.age_s() as u64).to_string()))
            .json(body)
    }
}

/// Items whose stored label the model doubts.
#[utoipa::path(
    get, path = "/v1/noise", tag = "query",
    params(NoiseQuery),
    responses(
        (status = 200, description = "Label-noise report (stored per catalogue state), with `generation`, `model_version`, `computed_at` and `age_s`", body = Object),
        (status = 400, description = "Bad query string", body = ErrorBody),
    )
)]
pub(crate) async fn noise(
    state: web::Data<AppState>,
    query: web::Query<NoiseQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limits = &state.config.limits;
    if let Some(limit) = query.limit {
        check_count("limit", limit, limits.max_page_limit)?;
    }
    check_optional_text("label", query.label.as_deref(), limits)?;
    let min_confidence = query.min_confidence.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_confidence) {
        return Err(ApiError::invalid_argument(
            "min_confidence",
            "must be between 0 and 1",
        ));
    }
    let options = NoiseQuery::default();
    let params = canonical(&options)?;
    let report = state
        .report("the label-noise report", params, move |backend| {
            let outcome = backend.noise(options)?;
            review::annotate_noise(backend, &outcome)
        })
        .await?;
    let label = query.label;
    let page = Paging {
        list: "issues",
        offset: query.offset.unwrap_or(0),
        limit: Some(query.limit.unwrap_or(DEFAULT_NOISE_LIMIT)),
    };
    Ok(page.respond(&report, |issue| {
        let labelled = label.as_ref().is_none_or(|label| {
            issue["given_label"] == label.as_str() || issue["suggested_label"] == label.as_str()
        });
        labelled && issue["score"].as_f64().unwrap_or(0.0) >= f64::from(min_confidence)
    }))
}
