//! Reading request bodies within the configured limits: JSON (the [`JsonBody`] extractor),
//! multipart forms for routes that take an image file, and the text-length checks every text
//! field goes through.

use std::collections::BTreeMap;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderMap};
use actix_web::web::{self, BytesMut};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use trio_engine::store::MAX_ID_BYTES;

use crate::api::{ClassifyRequest, NewItem};
use crate::config::Limits;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body parsed into `T` within the body-size limit. An empty body is `T::default()`, so
/// requests whose every field is optional need no body at all; a non-empty body must be JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Default + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let limit = AppState::of(&req)?.config.limits.max_body_bytes;
            let body = read_body(&req, &mut payload, limit).await?;
            parse_json(&req, &body).map(JsonBody)
        })
    }
}

/// Runs a body read within the configured body timeout (408 when it runs out).
async fn within_body_timeout<T>(
    req: &HttpRequest,
    read: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let after = AppState::of(req)?.config.body_timeout;
    actix_web::rt::time::timeout(after, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(after)))
}

/// Reads the whole body within the body timeout, refusing it as soon as it is known to exceed
/// `limit`.
pub async fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    if declared_length(req.headers()).is_some_and(|len| len > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    within_body_timeout(req, read_all(payload, limit)).await
}

async fn read_all(payload: &mut Payload, limit: usize) -> Result<BytesMut, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_body(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Parses a JSON body, telling malformed JSON (`invalid_json`) from JSON of the wrong shape
/// (`invalid_body`, which names the unknown, missing or mistyped field).
pub fn parse_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let content_type = req.content_type();
    if !content_type.is_empty() && !is_json(content_type) {
        return Err(ApiError::unsupported_media_type(
            content_type,
            "application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::invalid_json(e)
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            ApiError::invalid_body(e)
        }
    })
}

fn is_json(content_type: &str) -> bool {
    content_type == "application/json" || content_type.ends_with("+json")
}

fn is_multipart(req: &HttpRequest) -> bool {
    req.content_type() == "multipart/form-data"
}

/// A new item from JSON (base64 `image`) or from a multipart form.
///
/// Multipart parts: `image` (the file), `fields` (a JSON object with any [`NewItem`] fields),
/// or individual text parts `id`, `title`, `description`, `label`, `tags` (repeat the part for
/// several tags) and `metadata.<key>`. A field given twice is refused.
pub async fn new_item(req: &HttpRequest, payload: Payload) -> Result<NewItem, ApiError> {
    let limits = AppState::of(req)?.config.limits;
    if !is_multipart(req) {
        let mut payload = payload;
        let body = read_body(req, &mut payload, limits.max_body_bytes).await?;
        return parse_json(req, &body);
    }
    let form = read_form(req, payload, limits.max_body_bytes).await?;
    let mut item: NewItem = form.fields_json()?;
    let mut tags_from_parts = Vec::new();
    for (name, value) in form.texts {
        let slot = match name.as_str() {
            "id" => &mut item.id,
            "title" => &mut item.title,
            "description" => &mut item.description,
            "label" => &mut item.label,
            "tags" => {
                tags_from_parts.push(value);
                continue;
            }
            other => match other.strip_prefix("metadata.") {
                Some(key) if !key.is_empty() => {
                    if item.metadata.insert(key.to_string(), value).is_some() {
                        return Err(given_twice(other));
                    }
                    continue;
                }
                _ => {
                    return Err(unknown_part(
                        other,
                        "image, fields, id, title, description, label, tags, metadata.<key>",
                    ))
                }
            },
        };
        set_once(slot, &name, value)?;
    }
    if !tags_from_parts.is_empty() {
        if !item.tags.is_empty() {
            return Err(given_twice("tags"));
        }
        item.tags = tags_from_parts;
    }
    if let Some(image) = form.image {
        set_once(&mut item.image, "image", image)?;
    }
    Ok(item)
}

/// A classification request from JSON or from a multipart form with parts `image`, `fields`,
/// `title`, `description`, `top_k` and `claimed`.
pub async fn classify_request(
    req: &HttpRequest,
    payload: Payload,
) -> Result<ClassifyRequest, ApiError> {
    let limits = AppState::of(req)?.config.limits;
    if !is_multipart(req) {
        let mut payload = payload;
        let body = read_body(req, &mut payload, limits.max_body_bytes).await?;
        return parse_json(req, &body);
    }
    let form = read_form(req, payload, limits.max_body_bytes).await?;
    let has_fields = form.fields.is_some();
    let mut request: ClassifyRequest = form.fields_json()?;
    let mut top_k_seen = has_fields;
    for (name, value) in form.texts {
        match name.as_str() {
            "title" => set_once(&mut request.title, &name, value)?,
            "description" => set_once(&mut request.description, &name, value)?,
            "claimed" => set_once(&mut request.claimed, &name, value)?,
            "top_k" => {
                if top_k_seen {
                    return Err(given_twice("top_k"));
                }
                top_k_seen = true;
                request.top_k = value.trim().parse().map_err(|_| {
                    ApiError::invalid_argument("top_k", format!("`{value}` is not a count"))
                })?;
            }
            other => {
                return Err(unknown_part(
                    other,
                    "image, fields, title, description, top_k, claimed",
                ))
            }
        }
    }
    if let Some(image) = form.image {
        set_once(&mut request.image, "image", image)?;
    }
    Ok(request)
}

/// The parts of a multipart form, gathered within the body limit.
struct Form {
    image: Option<Vec<u8>>,
    fields: Option<Vec<u8>>,
    texts: Vec<(String, String)>,
}

impl Form {
    /// The `fields` JSON part parsed into `T`, or `T::default()` without one.
    fn fields_json<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        match &self.fields {
            None => Ok(T::default()),
            Some(json) => {
                if json.iter().all(u8::is_ascii_whitespace) {
                    return Ok(T::default());
                }
                serde_json::from_slice(json)
                    .map_err(|e| ApiError::invalid_body(format!("in the `fields` part: {e}")))
            }
        }
    }
}

async fn read_form(req: &HttpRequest, payload: Payload, limit: usize) -> Result<Form, ApiError> {
    if declared_length(req.headers()).is_some_and(|len| len > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    within_body_timeout(req, read_parts(req, payload, limit)).await
}

async fn read_parts(req: &HttpRequest, payload: Payload, limit: usize) -> Result<Form, ApiError> {
    let mut multipart = Multipart::new(req.headers(), payload);
    let mut form = Form {
        image: None,
        fields: None,
        texts: Vec::new(),
    };
    let mut total = 0usize;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field
            .name()
            .ok_or_else(|| ApiError::invalid_multipart("a part has no name"))?
            .to_string();
        let bytes = read_part(&mut field, &mut total, limit).await?;
        match name.as_str() {
            "image" => {
                if form.image.replace(bytes).is_some() {
                    return Err(given_twice("image"));
                }
            }
            "fields" => {
                if form.fields.replace(bytes).is_some() {
                    return Err(given_twice("fields"));
                }
            }
            _ => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    ApiError::invalid_multipart(format!("part `{name}` is not UTF-8 text"))
                })?;
                form.texts.push((name, text));
            }
        }
    }
    Ok(form)
}

async fn read_part(
    field: &mut Field,
    total: &mut usize,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(multipart_error)?;
        *total += chunk.len();
        if *total > limit {
            return Err(ApiError::body_too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn multipart_error(e: MultipartError) -> ApiError {
    ApiError::invalid_multipart(e)
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(given_twice(name));
    }
    Ok(())
}

fn given_twice(name: &str) -> ApiError {
    ApiError::invalid_multipart(format!("`{name}` is given twice"))
}

fn unknown_part(name: &str, expected: &str) -> ApiError {
    ApiError::invalid_multipart(format!("unknown part `{name}`; expected one of {expected}"))
}

// ---------------------------------------------------------------------------------------------
// Text limits

/// Refuses a text field longer than the limit, naming the field.
pub fn check_text(field: &str, value: &str, limits: &Limits) -> Result<(), ApiError> {
    // Bytes bound characters from above, so most texts need no count.
    if value.len() > limits.max_text_chars && value.chars().count() > limits.max_text_chars {
        return Err(ApiError::text_too_long(field, limits.max_text_chars));
    }
    Ok(())
}

pub fn check_optional_text(
    field: &str,
    value: Option<&str>,
    limits: &Limits,
) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| check_text(field, v, limits))
}

/// Every key and value of a string map, e.g. `metadata` or `filters`.
pub fn check_map(
    field: &str,
    map: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<(), ApiError> {
    for (key, value) in map {
        check_text(&format!("{field} key"), key, limits)?;
        check_text(&format!("{field}.{key}"), value, limits)?;
    }
    Ok(())
}

/// Ids appear in URL paths, so they must be non-empty and free of `/`; they are keys of the
/// store, which refuses ids longer than [`MAX_ID_BYTES`].
pub fn check_id(field: &str, id: &str, limits: &Limits) -> Result<(), ApiError> {
    check_text(field, id, limits)?;
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid_argument(
            field,
            format!("is longer than the limit of {MAX_ID_BYTES} bytes"),
        ));
    }
    if id.is_empty() || id.contains('/') || id.trim() != id {
        return Err(ApiError::invalid_argument(
            field,
            "must be non-empty, without `/` or surrounding spaces",
        ));
    }
    Ok(())
}

/// Query strings go through actix's `Query` extractor; its errors get the JSON error body.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, req| {
        // The parser does not say which parameter failed; showing the query string does.
        let query: String = req.query_string().chars().take(200).collect();
        ApiError::invalid_query(format!("`{query}`: {e}")).into()
    })
}
