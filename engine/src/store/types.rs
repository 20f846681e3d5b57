//! The store's public data model. Plain serde types: nothing here knows about redb.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An item as the caller hands it in: everything but the fields the store assigns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    /// The user's id; unique in the store.
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub label: Option<String>,
    pub image_path: Option<String>,
    /// Hash of the item's content (image bytes and texts), computed by the caller. Re-ingesting an
    /// id with the same hash is a no-op; a different hash is a changed item.
    pub content_hash: String,
    /// 64-bit perceptual hash of the image, for near-duplicate detection.
    pub image_phash: Option<u64>,
    pub metadata: Map<String, Value>,
    /// The image's colour thumbnail (`quality::thumbnail`), kept in a table of its own rather
    /// than in the item, so it is not part of the item's serialised form.
    #[serde(skip)]
    pub image_thumbnail: Option<Vec<u8>>,
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Dense internal sequence number assigned by the store. Never reused, even after a delete,
    /// so derived indexes can use it as their point id.
    pub key: u64,
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub label: Option<String>,
    pub image_path: Option<String>,
    pub content_hash: String,
    pub image_phash: Option<u64>,
    pub metadata: Map<String, Value>,
    /// When the item was first added (unix milliseconds). An update keeps it.
    pub added_at: u64,
}

impl Item {
    pub(crate) fn from_new(new: &NewItem, key: u64, added_at: u64) -> Self {
        Item {
            key,
            id: new.id.clone(),
            title: new.title.clone(),
            description: new.description.clone(),
            tags: new.tags.clone(),
            label: new.label.clone(),
            image_path: new.image_path.clone(),
            content_hash: new.content_hash.clone(),
            image_phash: new.image_phash,
            metadata: new.metadata.clone(),
            added_at,
        }
    }
}

/// The frozen towers' outputs for one item. An input the item lacks (no image, no description)
/// is absent here, never a vector of zeros, so training and search can tell "missing" from data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Image-tower embedding (EfficientNet-Lite: 1280 values).
    pub image: Option<Vec<f32>>,
    /// Text-tower embedding per text field (`title`, `description`; MiniLM: 384 values each).
    pub text: BTreeMap<String, Vec<f32>>,
}

/// What `put_items` does with an id that is already stored with a different content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PutMode {
    /// Keep the stored item (the default: ingesting the same catalogue twice changes nothing).
    #[default]
    Skip,
    /// Replace the stored item and its features, keeping its key; its fused vectors are dropped
    /// because they were computed from the old features.
    Update,
}

/// Counts of what one `put_items` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReport {
    pub inserted: usize,
    pub updated: usize,
    pub skipped: usize,
}

/// A trained fused model as the trainer hands it to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelBlob {
    /// The model's configuration (what `models::fusion` needs to rebuild it).
    pub config: Value,
    /// Training and evaluation metrics.
    pub metrics: Value,
    /// The weights, as safetensors bytes.
    pub safetensors: Vec<u8>,
}

/// A stored model without its weights: cheap to list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Assigned by the store, counting up from 1.
    pub version: u32,
    pub config: Value,
    pub metrics: Value,
    /// Unix milliseconds.
    pub created_at: u64,
    pub weights_bytes: u64,
}

/// A stored model with its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub info: ModelInfo,
    pub safetensors: Vec<u8>,
}

/// What a derived index records about the store state it was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    /// The store's write generation when the index was last brought up to date.
    pub generation: u64,
    /// Number of live points in the index at that time.
    pub count: u64,
}
