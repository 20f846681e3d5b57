//! The browser page, bundled into the binary: no files to deploy, nothing fetched from a CDN.

use actix_web::HttpResponse;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

/// The search and classify page.
#[utoipa::path(
    get, path = "/", tag = "page",
    responses((status = 200, description = "The web page", content_type = "text/html", body = String))
)]
pub(crate) async fn index_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

#[utoipa::path(
    get, path = "/static/app.js", tag = "page",
    responses((status = 200, description = "The page's script", content_type = "text/javascript", body = String))
)]
pub(crate) async fn app_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(APP_JS)
}

#[utoipa::path(
    get, path = "/static/style.css", tag = "page",
    responses((status = 200, description = "The page's style sheet", content_type = "text/css", body = String))
)]
pub(crate) async fn style_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLE_CSS)
}
