//! The fused model's settings: everything that shapes its weights or its training objective,
//! stored with every model.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Hyper-parameters of the fused model. Everything that shapes the weights or the training
/// objective is here, so a stored model records how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FusionConfig {
    /// Whether the model has an image branch at all (false for the text-only baseline).
    pub use_image: bool,
    /// Width of the frozen image features (EfficientNet-Lite0's pooled features: 1280).
    pub image_dim: usize,
    /// Width of one text field's frozen sentence embedding (all-MiniLM-L6-v2: 384).
    pub text_dim: usize,
    /// The text fields the model reads, in the order their branches are concatenated.
    pub text_fields: Vec<String>,
    /// Output width of the image projection.
    pub image_proj_dim: usize,
    /// Output width of each text field's tuning layer.
    pub text_tuning_dim: usize,
    /// Width of the shared image–text search space.
    pub joint_dim: usize,
    /// Hidden width of the joint heads (`Linear+ReLU` before the output layer); 0 makes each
    /// head one linear layer.
    pub joint_hidden: usize,
    /// Dropout on each branch output while training.
    pub dropout: f32,
    /// Softmax temperature of the InfoNCE loss that aligns the joint heads (`train::align`).
    pub temperature: f32,
    /// Number of classes; 0 until the trainer fills it in from the label map.
    pub num_classes: usize,
    /// Weight of the image expert's log-probabilities beside the text expert's where an item
    /// has both (see the module documentation of `models::fusion`). Below 1 because image
    /// features transfer worse than text to pictures of another style; chosen on validation
    /// splits of both evaluation protocols (BENCHMARKS.md, "Fused model: ablation").
    pub image_weight: f32,
    /// Dropout on the image projection's output; `None` uses `dropout`. The 1280-d image
    /// features let the projection memorise training items, so it may need more than the text.
    pub image_dropout: Option<f32>,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self::trio(vec!["title".into(), "description".into()], 0)
    }
}

impl FusionConfig {
    /// The preset for Trio's towers: EfficientNet-Lite0 image features and MiniLM text
    /// embeddings. Layer widths are small because the towers already did the heavy lifting and
    /// the catalogues are thousands, not millions, of items. The image weight and dropouts were
    /// chosen on validation splits (never a test split) among a handful of candidates.
    pub fn trio(text_fields: Vec<String>, num_classes: usize) -> Self {
        Self {
            use_image: true,
            image_dim: 1280,
            text_dim: 384,
            text_fields,
            image_proj_dim: 128,
            text_tuning_dim: 128,
            joint_dim: 128,
            joint_hidden: JOINT_HIDDEN,
            dropout: 0.2,
            temperature: TEMPERATURE,
            num_classes,
            image_weight: IMAGE_WEIGHT,
            image_dropout: Some(0.5),
        }
    }

    /// The dropout rate on the image projection's output.
    pub fn image_dropout_rate(&self) -> f32 {
        self.image_dropout.unwrap_or(self.dropout)
    }

    /// Whether the model has joint heads: only when it sees both an image and some text.
    pub fn has_joint(&self) -> bool {
        self.use_image && !self.text_fields.is_empty()
    }

    /// Whether the variable `name` belongs to the joint heads (what `train::align` trains; the
    /// classifier's loss never reaches them).
    pub fn is_joint_var(name: &str) -> bool {
        name.starts_with("joint.")
    }

    /// Width of the concatenation layer.
    pub fn concat_dim(&self) -> usize {
        let image = if self.use_image {
            self.image_proj_dim
        } else {
            0
        };
        image + self.text_fields.len() * self.text_tuning_dim
    }

    /// Width of the search vector returned by [`FusedModel::fused_vectors`].
    pub fn search_dim(&self) -> usize {
        if self.has_joint() {
            self.joint_dim
        } else {
            self.concat_dim()
        }
    }

    /// Rejects configurations that cannot build a working model.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::InvalidTrainConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if !self.use_image && self.text_fields.is_empty() {
            return bad(
                "text_fields",
                "a model needs the image or at least one text field",
            );
        }
        if self.num_classes < 2 {
            return bad("num_classes", "a classifier needs at least two classes");
        }
        for (name, v) in [
            ("image_dim", self.image_dim),
            ("text_dim", self.text_dim),
            ("image_proj_dim", self.image_proj_dim),
            ("text_tuning_dim", self.text_tuning_dim),
            ("joint_dim", self.joint_dim),
        ] {
            if v == 0 {
                return bad(name, "must be positive");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.text_fields {
            if f.is_empty() || !seen.insert(f) {
                return bad(
                    "text_fields",
                    &format!("field names must be non-empty and unique, got `{f}`"),
                );
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.image_dropout_rate()) {
            return bad("image_dropout", "must be in [0, 1)");
        }
        if !(self.image_weight > 0.0 && self.image_weight.is_finite()) {
            return bad("image_weight", "must be a positive number");
        }
        if self.temperature <= 0.0 {
            return bad("temperature", "must be positive");
        }
        Ok(())
    }
}

/// Default hidden width of the joint heads on frozen features: linear heads, the smallest that
/// can align (what they reach on the demo: BENCHMARKS.md, "Cross-modal search").
const JOINT_HIDDEN: usize = 0;
/// Default weight of the image expert beside the text expert.
const IMAGE_WEIGHT: f32 = 0.5;
/// Default InfoNCE temperature on unit vectors, the usual choice for contrastive alignment.
const TEMPERATURE: f32 = 0.1;
