//! Training and evaluating the fused model and its baselines.
//!
//! Everything here works on in-memory feature sets: a slice of [`Example`]s, each holding the
//! frozen towers' outputs for one catalogue item. Reading them from the store and writing the
//! trained model back is the caller's job.
//!
//! - [`split`]: per-class train / validation / test splits that keep groups together, and
//!   stratified group folds.
//! - [`trainer`]: [`Trainer`] runs the study (logistic regression, image-only, text-only, fused)
//!   and returns a [`Report`] shaped like the study's table plus the trained models.
//!
//! The evaluation protocols, robustness tables and synthetic catalogues built on these live in
//! the `trio-lab` crate.
//! - [`model_file`]: [`TrainedModel`], the storable result (config, labels, weights, metrics).
//! - [`evaluate`]: a stored model (and its stored baselines) scored on an external labelled
//!   set, intact and with each input removed.
//! - [`finetune`]: fine-tuning the image tower's top on the catalogue's labels.
//! - [`crossval`]: out-of-fold class probabilities for label-noise detection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::fusion::ModalityInputs;

mod align;
mod baseline;
mod config;
mod contrastive;
pub mod crossval;
mod data;
pub mod evaluate;
pub mod finetune;
mod metrics;
pub mod model_file;
mod optim;
pub mod split;
pub mod trainer;

pub use config::FinetuneConfig;
pub use config::{Input, InputSet, TrainConfig};
pub use crossval::{cross_val_probabilities, OutOfFold, OutOfFoldRow};
pub use evaluate::{evaluate_model, Evaluation, EvaluationRow};
pub use finetune::{finetune_top, FinetuneReport, Finetuned, ImageActivations};
pub use metrics::SplitMetrics;
pub use model_file::{ModelMetrics, TrainedModel, TunedImageTower, WidthTrial};
pub use split::Split;
pub use trainer::{Report, ReportRow, Study, Trainer};

/// One catalogue item as the trainer sees it: frozen features, an optional label, an optional
/// group. An absent input is `None` / missing from `text`, never a zero vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The item's key in the store; names the item in errors and out-of-fold results.
    pub key: u64,
    /// Frozen image features (EfficientNet-Lite0: 1280 values).
    pub image: Option<Vec<f32>>,
    /// Frozen, L2-normalised sentence embedding per text field (MiniLM: 384 values).
    pub text: BTreeMap<String, Vec<f32>>,
    /// The class, if the item is labelled. Unlabelled items are ignored by training.
    pub label: Option<String>,
    /// Items sharing a group (e.g. one emoji drawn by several vendors) always land in the same
    /// split, so near-duplicates never straddle train and test.
    pub group: Option<String>,
}

impl ModalityInputs for Example {
    fn image(&self) -> Option<&[f32]> {
        self.image.as_deref()
    }
    fn text(&self, field: &str) -> Option<&[f32]> {
        self.text.get(field).map(Vec::as_slice)
    }
    fn describe(&self) -> String {
        format!("item {}", self.key)
    }
}

/// A hash of the labelled examples' keys and labels (order-independent), recorded in trained
/// models so a caller can tell whether the catalogue changed since training.
pub fn fingerprint(examples: &[Example]) -> String {
    let mut pairs: Vec<(u64, &str)> = examples
        .iter()
        .filter_map(|e| e.label.as_deref().map(|l| (e.key, l)))
        .collect();
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (key, label) in pairs {
        hasher.update(key.to_le_bytes());
        hasher.update((label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
    }
    hex::encode(hasher.finalize())
}
