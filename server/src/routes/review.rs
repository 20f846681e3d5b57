//! Reviewing the quality reports: relabel an item or confirm its label, dismiss a duplicate
//! group. The reports the review page reads carry what it shows (group ids, the members'
//! titles, labels and image URLs), added here once per stored report, not per page load.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use trio_engine::catalog::{group_id, DuplicatesOutcome, NoiseOutcome};
use trio_engine::{Error, Result};

use super::query::duplicates_report;
use crate::api::{DismissQuery, Dismissed, ErrorBody, ItemPatch, ItemView};
use crate::backend::Backend;
use crate::body::{check_optional_text, check_text, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

/// Relabel an item, or confirm its label so label-noise reports leave it out.
#[utoipa::path(
    patch, path = "/v1/items/{id}", tag = "review",
    params(("id" = String, Path, description = "Item id")),
    request_body = ItemPatch,
    responses(
        (status = 200, description = "The item as it is now", body = ItemView),
        (status = 400, description = "Not exactly one of `label` and `keep_label: true`, a blank label, an unknown field, or no label to keep", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no API key configured)", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 409, description = "The item's label is not `if_label` any more: someone changed it meanwhile; nothing was written", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_item(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<ItemPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let patch = body.0;
    let limits = &state.config.limits;
    check_optional_text("if_label", patch.if_label.as_deref(), limits)?;
    let if_label = patch.if_label;
    let view = match (patch.label, patch.keep_label) {
        (Some(label), None | Some(false)) => {
            check_text("label", &label, limits)?;
            if label.trim().is_empty() {
                return Err(ApiError::invalid_argument("label", "must not be blank"));
            }
            state
                .blocking("relabelling an item", move |backend| {
                    backend.set_label(&id, &label, if_label.as_deref())
                })
                .await?
        }
        (None, Some(true)) => {
            state
                .blocking("confirming a label", move |backend| {
                    backend.keep_label(&id, if_label.as_deref())
                })
                .await?
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "label/keep_label",
                "give either `label` or `keep_label: true`",
            ))
        }
    };
    Ok(HttpResponse::Ok().json(view))
}

/// Say that a duplicate group's members are not duplicates: every pair among them is
/// remembered, and later reports do not show them together again.
#[utoipa::path(
    post, path = "/v1/duplicates/{group}/dismiss", tag = "review",
    params(
        ("group" = String, Path, description = "The group's `id` in the duplicates report"),
        DismissQuery,
    ),
    responses(
        (status = 200, description = "Dismissed", body = Dismissed),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no API key configured)", body = ErrorBody),
        (status = 404, description = "No group with this id in the current report of these options", body = ErrorBody),
        (status = 409, description = "The group is not in the current report, and the catalogue has changed since `generation`: reload the report", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn dismiss_duplicates(
    state: web::Data<AppState>,
    group: web::Path<String>,
    query: web::Query<DismissQuery>,
) -> Result<HttpResponse, ApiError> {
    let group = group.into_inner();
    let query = query.into_inner();
    let report = duplicates_report(&state, query.space, query.threshold).await?;
    let found = report.value["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["id"] == group.as_str()))
        .map(|g| strings(&g["members"]));
    let Some(members) = found else {
        let now = report.state.as_ref().map(|s| s.generation);
        let error = match (query.generation, now) {
            (Some(seen), Some(now)) if seen != now => Error::Conflict {
                what: "duplicate group".into(),
                id: group,
                reason: format!(
                    "it is not in the current report: the catalogue changed since generation \
                     {seen} (now {now}); reload the report"
                ),
            },
            _ => Error::NotFound {
                what: "duplicate group".into(),
                id: group,
            },
        };
        return Err(error.into());
    };
    let dismissed = members.clone();
    state
        .blocking("dismissing duplicates", move |backend| {
            backend.dismiss_duplicates(&dismissed)
        })
        .await?;
    Ok(HttpResponse::Ok().json(Dismissed { group, members }))
}

/// A report entry's member as the review page shows it.
#[derive(Serialize)]
struct ReviewItem {
    id: String,
    title: Option<String>,
    label: Option<String>,
    /// Where its thumbnail is served, when it has an image.
    image: Option<String>,
}

impl ReviewItem {
    /// The item as stored; one deleted since the report ran shows its id alone.
    fn of(backend: &dyn Backend, id: &str) -> Result<ReviewItem> {
        match backend.get_item(id) {
            Ok(item) => Ok(ReviewItem::from(item)),
            Err(Error::NotFound { .. }) => Ok(ReviewItem {
                id: id.to_string(),
                title: None,
                label: None,
                image: None,
            }),
            Err(e) => Err(e),
        }
    }
}

impl From<ItemView> for ReviewItem {
    fn from(item: ItemView) -> Self {
        ReviewItem {
            image: item.has_image.then(|| image_url(&item.id)),
            id: item.id,
            title: item.title,
            label: item.label,
        }
    }
}

/// The duplicates report as served: each group also has its `id` (see
/// [`trio_engine::catalog::group_id`]) and `items`, its members as [`ReviewItem`]s. The group's
/// other fields are passed on whatever they are, so new evidence reaches the page unchanged.
pub(crate) fn annotate_duplicates(
    backend: &dyn Backend,
    outcome: &DuplicatesOutcome,
) -> Result<Value> {
    let mut value = to_json(outcome)?;
    if let Some(groups) = value.get_mut("groups").and_then(Value::as_array_mut) {
        for group in groups {
            let members = strings(&group["members"]);
            let items = members
                .iter()
                .map(|id| ReviewItem::of(backend, id))
                .collect::<Result<Vec<_>>>()?;
            if let Value::Object(map) = group {
                map.insert("id".into(), group_id(&members).into());
                map.insert("items".into(), to_json(&items)?);
            }
        }
    }
    Ok(value)
}

/// The label-noise report as served: each issue also has its item's `image` URL (or null).
pub(crate) fn annotate_noise(backend: &dyn Backend, outcome: &NoiseOutcome) -> Result<Value> {
    let mut value = to_json(outcome)?;
    if let Some(issues) = value.get_mut("issues").and_then(Value::as_array_mut) {
        for issue in issues {
            let id = issue["id"].as_str().unwrap_or_default().to_string();
            let image = ReviewItem::of(backend, &id)?.image;
            if let Value::Object(map) = issue {
                map.insert("image".into(), image.into());
            }
        }
    }
    Ok(value)
}

fn to_json(value: &impl Serialize) -> Result<Value> {
    serde_json::to_value(value).map_err(|source| Error::Json {
        context: "encoding a report for review".into(),
        source,
    })
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /v1/items/{id}/image` for `id`, the id percent-encoded as a path segment.
fn image_url(id: &str) -> String {
    let mut segment = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("/v1/items/{segment}/image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_encode_the_id_as_one_path_segment() {
        assert_eq!(image_url("a-1_b.c~"), "/v1/items/a-1_b.c~/image");
        assert_eq!(image_url("a/b c"), "/v1/items/a%2Fb%20c/image");
        assert_eq!(image_url("é"), "/v1/items/%C3%A9/image");
    }
}
