//! The trained model in use, as the catalogue holds it: shared by classification, search and
//! the image tuning that computes features for it.

use crate::models::efficientnet_lite::Top;
use crate::models::fusion::FusedModel;
use crate::train::TrainedModel;

/// The model in use, loaded once per version.
pub struct ActiveModel {
    pub version: u32,
    pub trained: TrainedModel,
    /// The fused network: classifies, and makes the concatenation layer and search vectors.
    pub classifier: FusedModel,
    /// The fine-tuned image tower top the model reads features from (`--finetune-image`).
    pub image_top: Option<Top>,
}

impl ActiveModel {
    /// The fused network: its concatenation layer and search vectors.
    pub fn model(&self) -> &FusedModel {
        &self.classifier
    }
}
