//! The HTTP API's request and response bodies. The server crate owns this shape: the engine's
//! facade implements [`crate::Backend`] in these terms, and `/openapi.json` is generated from
//! them.
//!
//! Requests reject unknown fields (`deny_unknown_fields`), so a misspelt option is a 400 that
//! names the field rather than a silently ignored setting. Images travel as base64 strings in
//! JSON (a `data:` URL prefix is accepted) and as raw file parts in multipart bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How many labels `/v1/classify` returns when the request does not say.
pub const DEFAULT_TOP_K: usize = 5;
/// How many hits `/v1/search` returns when the request does not say.
pub const DEFAULT_K: usize = 10;
/// Page size of `GET /v1/items` when the request does not say.
pub const DEFAULT_PAGE_LIMIT: usize = 50;
/// Issues `/v1/noise` returns when the request does not say, as `trio noise`.
pub const DEFAULT_NOISE_LIMIT: usize = 20;
/// The space `/v1/duplicates` compares in when the request does not say, as `trio duplicates`.
pub const DEFAULT_DUPLICATES_SPACE: Space = Space::Image;

// ---------------------------------------------------------------------------------------------
// Items

/// A new item. Every field is optional except that an item needs at least an image, a title or
/// a description to be searchable; the backend decides whether what it got is enough.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Caller-chosen id; the backend assigns one when absent. An existing id is a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The item's class label, used for training and as a search filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Free-form string fields; searchable through `filters`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The image file's bytes (base64 in JSON).
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Byte)]
    pub image: Option<Vec<u8>>,
}

/// A stored item as clients see it. When `has_image` is true its image is served at
/// `GET /v1/items/{id}/image`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ItemView {
    pub id: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub label: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub has_image: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub offset: usize,
    pub limit: usize,
    /// How many there are in all, across pages.
    pub total: u64,
}

/// Query string of `GET /v1/items`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// How many items to skip (default 0).
    pub offset: Option<usize>,
    /// Page size (default 50; at most the server's `max_page_limit`).
    pub limit: Option<usize>,
}

/// A stored image file and the content type it is served with.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemImage {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

// ---------------------------------------------------------------------------------------------
// Classification

/// What to classify: an image, a title, a description, or any mix of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Byte)]
    pub image: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How many labels to return, most probable first (default 5).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// A label someone claims for this input; the answer then says whether the model agrees.
    /// A label the model does not know is a 422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<String>,
}

fn default_top_k() -> usize {
    DEFAULT_TOP_K
}

/// An empty request with the documented defaults (an empty body means this).
impl Default for ClassifyRequest {
    fn default() -> Self {
        ClassifyRequest {
            image: None,
            title: None,
            description: None,
            top_k: DEFAULT_TOP_K,
            claimed: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Classification {
    /// The `top_k` most probable labels, most probable first.
    pub labels: Vec<LabelScore>,
    /// Present when the request named a `claimed` label.
    pub claimed: Option<ClaimCheck>,
}

/// The model's view of a claimed label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimCheck {
    pub label: String,
    /// The model's probability for the claimed label.
    pub probability: f32,
    /// Whether the claimed label is the model's first choice.
    pub agrees: bool,
    /// The model's most probable label.
    pub model_choice: String,
    /// Stored items nearest to the input, with their labels: why the model thinks what it does.
    pub evidence: Vec<Evidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    pub id: String,
    pub title: Option<String>,
    pub label: Option<String>,
    /// Similarity to the input (higher is closer).
    pub score: f32,
}

// ---------------------------------------------------------------------------------------------
// Search

/// Which vector space a search runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The fused model's concatenation layer: image and text together.
    #[default]
    Fused,
    /// The image tower's embedding alone.
    Image,
    /// The text tower's embeddings alone.
    Text,
}

impl Space {
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Fused => "fused",
            Space::Image => "image",
            Space::Text => "text",
        }
    }
}

impl From<Space> for trio_engine::catalog::Space {
    fn from(space: Space) -> Self {
        match space {
            Space::Fused => Self::Fused,
            Space::Image => Self::Image,
            Space::Text => Self::Text,
        }
    }
}

/// A search as sent over the wire: exactly one of `text`, `image` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Byte)]
    pub image: Option<Vec<u8>>,
    /// Find items like this stored item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub space: Space,
    /// How many hits (default 10; at most the server's `max_k`).
    #[serde(default = "default_k")]
    pub k: usize,
    /// How many of the best hits to skip, for paging.
    #[serde(default)]
    pub offset: usize,
    /// Exact-match filters: `label`, `tag`, or a metadata field, each to a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, String>,
}

fn default_k() -> usize {
    DEFAULT_K
}

/// An empty request with the documented defaults (an empty body means this).
impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            text: None,
            image: None,
            id: None,
            space: Space::default(),
            k: DEFAULT_K,
            offset: 0,
            filters: BTreeMap::new(),
        }
    }
}

/// What a search looks for. The server builds it from a [`SearchRequest`] after checking that
/// exactly one kind of query was given, so the backend never sees an impossible mix.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Text(String),
    Image(Vec<u8>),
    /// Items like the stored item with this id.
    Item(String),
}

/// A validated search, as the backend receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub query: Query,
    pub space: Space,
    pub k: usize,
    pub offset: usize,
    pub filters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    /// Best first.
    pub hits: Vec<SearchHit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub id: String,
    /// Similarity to the query (higher is closer).
    pub score: f32,
    pub title: Option<String>,
    pub label: Option<String>,
    /// When true the item's image is at `GET /v1/items/{id}/image`.
    pub has_image: bool,
}

// ---------------------------------------------------------------------------------------------
// Catalogue reports

/// Options of the near-duplicate report (query string of GET, or JSON body of POST).
///
/// `space` and `threshold` say which report; it is computed once per catalogue state. `label`,
/// `offset` and `limit` choose a page of it, so paging never recomputes it. The backend is
/// handed the report's options only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DuplicatesQuery {
    /// Space to compare in (default image).
    pub space: Option<Space>,
    /// Minimum similarity for two items to count as duplicates (backend default when absent).
    pub threshold: Option<f32>,
    /// At most this many groups (default all).
    pub limit: Option<usize>,
    /// Groups to skip, after the `label` filter (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// Only groups with a member carrying this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Options of the label-noise report. As for [`DuplicatesQuery`], `limit`, `offset`, `label` and
/// `min_confidence` choose a page of the one report per catalogue state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NoiseQuery {
    /// At most this many suspect items (default 20).
    pub limit: Option<usize>,
    /// Only items whose stored label the model rejects with at least this confidence.
    pub min_confidence: Option<f32>,
    /// Issues to skip, after the filters (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// Only issues whose given or suggested label is this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Review

/// Body of `PATCH /v1/items/{id}`: exactly one of `label` and `keep_label`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// The item's new label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `true`: the item's current label is right; label-noise reports leave the item out
    /// while it keeps that label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_label: Option<bool>,
    /// The label the reviewer saw: when the item's label is another one now, the change is a
    /// 409 and nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_label: Option<String>,
}

/// Query string of `POST /v1/duplicates/{group}/dismiss`: the report the group is from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DismissQuery {
    /// The report's space (default image).
    pub space: Option<Space>,
    /// The report's threshold (backend default when absent).
    pub threshold: Option<f32>,
    /// The `generation` of the report the reviewer saw. When the group is not in the current
    /// report and the catalogue has changed since that generation, the answer is a 409
    /// rather than a 404.
    pub generation: Option<u64>,
}

/// Answer to a dismissal: the group and the items no longer reported as duplicates of each
/// other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dismissed {
    pub group: String,
    pub members: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Training, jobs and models

/// Options of a training run; anything absent takes the engine's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub epochs: Option<u32>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    /// Fraction of labelled items held out for evaluation.
    pub validation_fraction: Option<f32>,
    /// Make the new model the active one when training succeeds.
    pub activate: Option<bool>,
    /// Fine-tune the top of the image tower on the labels first (meant for a GPU).
    pub finetune_image: Option<bool>,
    /// With `finetune_image`: image-tower blocks to fine-tune, from the top (default: half).
    pub finetune_blocks: Option<usize>,
}

/// Answer to `POST /v1/train`: poll `GET /v1/jobs/{job_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub id: String,
    /// What the job does, e.g. `train`.
    pub kind: String,
    pub state: JobState,
    /// From 0 to 1.
    pub progress: f32,
    pub message: Option<String>,
    /// The job's outcome once it succeeded (for training: the new model and its metrics).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    pub version: String,
    pub active: bool,
    /// When it was trained (RFC 3339).
    pub created_at: Option<String>,
    /// Evaluation metrics recorded at training time.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub items: u64,
    /// Vectors held by each index, by space name.
    pub indexes: BTreeMap<String, u64>,
    pub active_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the backend is ready.
    pub status: String,
}

/// Every error body: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code for programs, e.g. `not_found`, `text_too_long`.
    pub code: String,
    /// For people: names the field or item at fault.
    pub message: String,
}

/// Base64 (standard alphabet, padded) for optional byte fields. A `data:...;base64,` prefix is
/// stripped so a browser's `FileReader.readAsDataURL` result can be sent as is.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let data = match text.strip_prefix("data:") {
            Some(url) => match url.split_once(";base64,") {
                Some((_, data)) => data,
                None => {
                    return Err(serde::de::Error::custom(
                        "image data URL must be base64 (';base64,')",
                    ))
                }
            },
            None => text.as_str(),
        };
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("image is not valid base64: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_an_empty_json_object() {
        let search: SearchRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(search, SearchRequest::default());
        let classify: ClassifyRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(classify, ClassifyRequest::default());
    }

    #[test]
    fn images_round_trip_through_base64() {
        let request = ClassifyRequest {
            image: Some(vec![0, 1, 2, 255]),
            ..ClassifyRequest::default()
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.contains("\"AAEC/w==\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ClassifyRequest>(&json).unwrap(),
            request
        );
    }
}
