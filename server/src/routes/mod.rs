//! The route table and the middleware around it.
//!
//! Every route is one row of [`table`]: method, path, who may call it, handler. `configure`
//! registers exactly these rows, and [`routes`] lists them, so a test can hold the OpenAPI
//! document to the routes that really exist.

pub(crate) mod items;
pub(crate) mod jobs;
pub(crate) mod ops;
pub(crate) mod query;
pub(crate) mod review;
pub(crate) mod web_page;

use items::{create_item, delete_item, get_item, item_image, list_items};
use jobs::{activate_model, job, models, train};
use ops::{healthz, metrics, openapi_json, stats};
use query::{classify, duplicates_get, duplicates_post, noise, search};
use review::{dismiss_duplicates, update_item};
use web_page::{app_js, index_page, style_css};

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, Route};

use crate::body::query_config;
use crate::error::ApiError;
use crate::state::{Access, AppState};

/// One registered route, as [`routes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    /// In actix/OpenAPI template form, e.g. `/v1/items/{id}`.
    pub path: &'static str,
    pub access: Access,
}

struct RouteDef {
    info: RouteInfo,
    attach: fn(Route) -> Route,
}

fn row(method: Method, path: &'static str, access: Access, attach: fn(Route) -> Route) -> RouteDef {
    RouteDef {
        info: RouteInfo {
            method,
            path,
            access,
        },
        attach,
    }
}

fn table() -> Vec<RouteDef> {
    use Access::{Open, Read, Write};
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    let patch = Method::PATCH;
    vec![
        row(get.clone(), "/", Open, |r| r.to(index_page)),
        row(get.clone(), "/static/app.js", Open, |r| r.to(app_js)),
        row(get.clone(), "/static/style.css", Open, |r| r.to(style_css)),
        row(get.clone(), "/healthz", Open, |r| r.to(healthz)),
        row(get.clone(), "/metrics", Read, |r| r.to(metrics)),
        row(get.clone(), "/openapi.json", Open, |r| r.to(openapi_json)),
        row(get.clone(), "/v1/stats", Read, |r| r.to(stats)),
        row(post.clone(), "/v1/items", Write, |r| r.to(create_item)),
        row(get.clone(), "/v1/items", Read, |r| r.to(list_items)),
        row(get.clone(), "/v1/items/{id}", Read, |r| r.to(get_item)),
        row(patch, "/v1/items/{id}", Write, |r| r.to(update_item)),
        row(delete, "/v1/items/{id}", Write, |r| r.to(delete_item)),
        row(get.clone(), "/v1/items/{id}/image", Read, |r| {
            r.to(item_image)
        }),
        row(post.clone(), "/v1/classify", Read, |r| r.to(classify)),
        row(post.clone(), "/v1/search", Read, |r| r.to(search)),
        row(get.clone(), "/v1/duplicates", Read, |r| {
            r.to(duplicates_get)
        }),
        row(post.clone(), "/v1/duplicates", Read, |r| {
            r.to(duplicates_post)
        }),
        row(post.clone(), "/v1/duplicates/{group}/dismiss", Write, |r| {
            r.to(dismiss_duplicates)
        }),
        row(get.clone(), "/v1/noise", Read, |r| r.to(noise)),
        row(post.clone(), "/v1/train", Write, |r| r.to(train)),
        row(get.clone(), "/v1/jobs/{id}", Read, |r| r.to(job)),
        row(get, "/v1/models", Read, |r| r.to(models)),
        row(post, "/v1/models/{version}/activate", Write, |r| {
            r.to(activate_model)
        }),
    ]
}

/// Every route the server registers.
pub fn routes() -> Vec<RouteInfo> {
    table().into_iter().map(|def| def.info).collect()
}

/// Registers the whole service on `cfg`:
/// `App::new().configure(|cfg| trio_server::configure(cfg, &state))`.
pub fn configure(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    cfg.app_data(state.clone()).app_data(query_config());
    let mut scope = web::scope("")
        .wrap(from_fn(track))
        .default_service(web::to(route_not_found));
    let defs = table();
    let mut paths: Vec<&'static str> = Vec::new();
    for def in &defs {
        if !paths.contains(&def.info.path) {
            paths.push(def.info.path);
        }
    }
    for path in paths {
        let mut resource = web::resource(path).default_service(web::to(method_not_allowed));
        for def in defs.iter().filter(|d| d.info.path == path) {
            let route = (def.attach)(web::method(def.info.method.clone()));
            let route = match def.info.access {
                Access::Open => route,
                Access::Read => route.wrap(from_fn(require_read)),
                Access::Write => route.wrap(from_fn(require_write)),
            };
            resource = resource.route(route);
        }
        scope = scope.service(resource);
    }
    cfg.service(scope);
}

async fn require_read(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    check_access(req, next, Access::Read).await
}

async fn require_write(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    check_access(req, next, Access::Write).await
}

/// Answers an unauthorised request here, before any extractor reads its body.
async fn check_access(
    req: ServiceRequest,
    next: Next<BoxBody>,
    access: Access,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<AppState>>() {
        Some(state) => state.authorize(req.headers(), access),
        None => Err(ApiError::internal(
            "request setup",
            "AppState is not registered",
        )),
    };
    match verdict {
        Ok(()) => next.call(req).await,
        Err(e) => Ok(req.error_response(e)),
    }
}

/// Counts every response and its latency by method, route pattern and status.
async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().clone();
    let response = next.call(req).await;
    if let Some(state) = state {
        let (status, route) = match &response {
            Ok(r) => (r.status(), r.request().match_pattern()),
            Err(e) => (e.as_response_error().status_code(), None),
        };
        let route = route.unwrap_or_else(|| "unmatched".to_string());
        let seconds = started.elapsed().as_secs_f64();
        state
            .metrics
            .observe_request(method.as_str(), &route, status.as_u16(), seconds);
        tracing::debug!(%method, %route, status = status.as_u16(), ms = seconds * 1e3, "request");
    }
    response
}

async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::route_not_found(req.path()))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed(
        req.method().as_str(),
        req.path(),
    ))
}
