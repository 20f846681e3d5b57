//! `/openapi.json`, generated from the handlers' `#[utoipa::path]` annotations and the
//! `api` types. `tests/http_api.rs` checks that it lists exactly the registered routes.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{items, jobs, ops, query, review, web_page};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trio",
        description = "Classify and search image–title–description items. Errors are \
            `{\"error\": {\"code\", \"message\"}}`; writes need `Authorization: Bearer <key>`."
    ),
    paths(
        web_page::index_page,
        web_page::app_js,
        web_page::style_css,
        ops::healthz,
        ops::metrics,
        ops::openapi_json,
        ops::stats,
        items::create_item,
        items::list_items,
        items::get_item,
        items::delete_item,
        review::update_item,
        items::item_image,
        query::classify,
        query::search,
        query::duplicates_get,
        query::duplicates_post,
        query::noise,
        review::dismiss_duplicates,
        jobs::train,
        jobs::job,
        jobs::models,
        jobs::activate_model,
    ),
    components(schemas(crate::api::ErrorBody, crate::api::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
