//! Search: by text, by image, or by a stored item ("more like this"), in any space, with
//! filters applied inside the index search so `k` results come back whenever they exist.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Catalog, ClassifyInput, Space};
use crate::error::{Error, Result};
use crate::index::VectorIndex;
use crate::models::fusion::FusionInput;
use crate::progress::NoProgress;

/// What to search with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Text(String),
    ImagePath(PathBuf),
    ImageBytes(Vec<u8>),
    /// A stored item's own vector.
    Id(String),
}

/// `field=value`: `label`, `id`, a tag (`tag=x`) or any metadata field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub field: String,
    pub value: String,
}

impl std::str::FromStr for Filter {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('=') {
            Some((f, v)) if !f.trim().is_empty() => Ok(Filter {
                field: f.trim().into(),
                value: v.trim().into(),
            }),
            _ => Err(Error::InvalidArgument(format!(
                "filter `{s}` is not of the form field=value"
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    pub query: Query,
    pub space: Space,
    pub k: usize,
    pub offset: usize,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    pub title: Option<String>,
    pub label: Option<String>,
    pub image_path: Option<String>,
}

impl Catalog {
    /// Runs a search; results are best first, `offset` skips the first ones (pagination).
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<SearchHit>> {
        if req.k == 0 {
            return Ok(Vec::new());
        }
        let (vector, exclude) = self.query_vector(&req.query, req.space)?;
        let index = self.index(req.space, &NoProgress)?;
        let allowed = if req.filters.is_empty() {
            None
        } else {
            Some(self.keys_matching(&req.filters)?)
        };
        let filter =
            |key: u64| Some(key) != exclude && allowed.as_ref().is_none_or(|a| a.contains(&key));
        let want = req.k + req.offset;
        let hits = index.search(&vector, want, Some(&filter))?;
        let mut out = Vec::with_capacity(req.k);
        for hit in hits.into_iter().skip(req.offset) {
            if let Some(item) = self.store.get_by_key(hit.key)? {
                out.push(SearchHit {
                    id: item.id,
                    score: hit.score,
                    title: super::non_empty(item.title),
                    label: item.label,
                    image_path: item.image_path,
                });
            }
        }
        Ok(out)
    }

    /// The query's vector in `space`, and the item key to leave out (an item is not its own
    /// neighbour).
    fn query_vector(&self, query: &Query, space: Space) -> Result<(Vec<f32>, Option<u64>)> {
        let input = match query {
            Query::Id(id) => return self.stored_vector(id, space),
            Query::Text(t) => ClassifyInput {
                title: Some(t.clone()),
                ..Default::default()
            },
            Query::ImagePath(p) => ClassifyInput {
                image_path: Some(p.clone()),
                ..Default::default()
            },
            Query::ImageBytes(b) => ClassifyInput {
                image_bytes: Some(b.clone()),
                ..Default::default()
            },
        };
        // The image and text spaces hold the frozen towers' features; the fused space reads
        // them as the active model does.
        let active = match space {
            Space::Fused => Some(self.require_model()?),
            _ => None,
        };
        let features = self.tower_input(&input, active.as_deref())?;
        let v = match space {
            Space::Image => features.image.ok_or_else(|| {
                Error::InvalidArgument("the image space is searched with an image (or --id); use --space fused for text".into())
            })?,
            Space::Text => {
                let f = crate::store::Features { image: None, text: features.text };
                super::text_space_vector(&f).ok_or_else(|| {
                    Error::InvalidArgument("the text space is searched with text (or --id); use --space fused for images".into())
                })?
            }
            Space::Fused => {
                let active = self.require_model()?;
                // A text query fills every text field the model knows, so it lands where items'
                // text does in the joint space, whichever field carries their words.
                let text = match (query, features.text.get("title")) {
                    (Query::Text(_), Some(v)) => {
                        crate::models::fusion::FusionInput::text_query(&active.trained.config.text_fields, v).text
                    }
                    _ => features.text,
                };
                let input = FusionInput { image: features.image, text };
                active.model().fused_vectors(std::slice::from_ref(&input))?.into_iter().next().unwrap_or_default()
            }
        };
        Ok((v, None))
    }

    fn stored_vector(&self, id: &str, space: Space) -> Result<(Vec<f32>, Option<u64>)> {
        let key = self.store.key_of(id)?.ok_or_else(|| Error::NotFound {
            what: "item".into(),
            id: id.to_string(),
        })?;
        let version = match space {
            Space::Fused => self.require_model()?.version,
            _ => 0,
        };
        let v = self.vector_of(space, key, version)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "item `{id}` has no vector in the {} space",
                space.as_str()
            ))
        })?;
        Ok((v, Some(key)))
    }

    /// Keys of the items every filter accepts.
    pub fn keys_matching(&self, filters: &[Filter]) -> Result<HashSet<u64>> {
        let mut out = HashSet::new();
        let total = self.store.count()? as usize;
        for item in self.store.list(0, total.max(1))? {
            let ok = filters.iter().all(|f| match f.field.as_str() {
                "label" => item.label.as_deref() == Some(f.value.as_str()),
                "id" => item.id == f.value,
                "tag" | "tags" => item.tags.iter().any(|t| t == &f.value),
                field => item.metadata.get(field).is_some_and(|v| match v {
                    serde_json::Value::String(s) => s == &f.value,
                    // A number or boolean matches its JSON text (`year=2020`, `ok=true`);
                    // comparing the `Value` itself would match strings only.
                    other => f.value.as_str() == other.to_string().as_str(),
                }),
            });
            if ok {
                out.insert(item.key);
            }
        }
        Ok(out)
    }
}
