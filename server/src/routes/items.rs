//! The catalogue: add, read, list and delete items, and serve their images.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::api::{ErrorBody, ItemView, NewItem, Page, PageQuery, DEFAULT_PAGE_LIMIT};
use crate::body::{self, check_id, check_map, check_optional_text, check_text};
use crate::error::ApiError;
use crate::state::AppState;

/// Add an item: JSON with a base64 `image`, or a multipart form with an `image` file part and
/// text parts (`fields` as a JSON object, or `id`, `title`, `description`, `label`, repeated
/// `tags`, `metadata.<key>`).
#[utoipa::path(
    post, path = "/v1/items", tag = "items",
    request_body(content(
        (NewItem = "application/json"),
        (NewItem = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored; `Location` names the new item", body = ItemView),
        (status = 400, description = "Bad JSON, unknown field, bad multipart", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no API key configured)", body = ErrorBody),
        (status = 409, description = "An item with this id exists", body = ErrorBody),
        (status = 413, description = "Body, text or image too large", body = ErrorBody),
        (status = 415, description = "Not JSON/multipart, or the image does not decode", body = ErrorBody),
        (status = 503, description = "Overloaded or not ready", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_item(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let item = body::new_item(&req, payload.into_inner()).await?;
    validate_new_item(&item, &state)?;
    let limits = state.image_limits();
    let view = state
        .blocking("adding an item", move |backend| {
            backend.add_item(item, &limits)
        })
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/items/{}", view.id)))
        .json(view))
}

fn validate_new_item(item: &NewItem, state: &AppState) -> Result<(), ApiError> {
    let limits = &state.config.limits;
    if let Some(id) = &item.id {
        check_id("id", id, limits)?;
    }
    check_optional_text("title", item.title.as_deref(), limits)?;
    check_optional_text("description", item.description.as_deref(), limits)?;
    check_optional_text("label", item.label.as_deref(), limits)?;
    for tag in &item.tags {
        check_text("tags", tag, limits)?;
    }
    check_map("metadata", &item.metadata, limits)?;
    if item.image.is_none() && item.title.is_none() && item.description.is_none() {
        return Err(ApiError::missing_input(
            "an item needs at least one of `image`, `title`, `description`",
        ));
    }
    Ok(())
}

#[utoipa::path(
    get, path = "/v1/items/{id}", tag = "items",
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 200, body = ItemView),
        (status = 404, description = "No such item", body = ErrorBody),
    )
)]
pub(crate) async fn get_item(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let view = state
        .blocking("reading an item", move |backend| backend.get_item(&id))
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// The item's stored image file, with its content type.
#[utoipa::path(
    get, path = "/v1/items/{id}/image", tag = "items",
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 200, description = "The image file", content_type = "image/*", body = [u8]),
        (status = 404, description = "No such item, it has no image (`not_found`), or its image file is gone (`image_missing`)", body = ErrorBody),
    )
)]
pub(crate) async fn item_image(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let image = state
        .blocking("reading an item's image", move |backend| {
            backend.item_image(&id)
        })
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, image.content_type))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(image.bytes))
}

#[utoipa::path(
    get, path = "/v1/items", tag = "items",
    params(PageQuery),
    responses(
        (status = 200, body = inline(Page<ItemView>)),
        (status = 400, description = "Bad query string or page too large", body = ErrorBody),
    )
)]
pub(crate) async fn list_items(
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    let max = state.config.limits.max_page_limit;
    if limit == 0 || limit > max {
        return Err(ApiError::invalid_argument(
            "limit",
            format!("must be between 1 and {max}"),
        ));
    }
    let page = state
        .blocking("listing items", move |backend| {
            backend.list_items(offset, limit)
        })
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(
    delete, path = "/v1/items/{id}", tag = "items",
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such item (or a concurrent delete won)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_item(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state
        .blocking("deleting an item", move |backend| backend.delete_item(&id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
