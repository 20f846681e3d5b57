//! The fused model: small trainable layers on top of the frozen towers' features.
//!
//! # Shape
//!
//! ```text
//!  image features (1280) ─ Linear+ReLU+dropout ─ h_img ─┬─ presence gate ─┐
//!  title  (384)          ─ Linear+ReLU+dropout ─ h_ti  ─┼─ presence gate ─┼─ concat ─ Linear ─ logits
//!  description (384)     ─ Linear+ReLU+dropout ─ h_de  ─┼─ presence gate ─┘  ("concatenation layer")
//!                                                       │
//!  L2-normalised features ─ joint heads (image head, one text head shared by the fields)
//!                          ─ L2-norm ─ ĝ_img, ĝ_ti, ĝ_de ─ search vector
//! ```
//!
//! This is the study's design (WebVision: CNN features and one frozen sentence embedding per text
//! field, each through a small dense "tuning" layer, concatenated, softmax on top), with three
//! additions a catalogue with gaps and cross-modal search needs:
//!
//! - **Absent is not zero.** Every branch output passes a presence gate:
//!   `present · h + (1 − present) · m`, where `m` is a learned "missing" embedding per branch. A
//!   missing description therefore reaches the classifier as a value that means *missing*, not as
//!   the tuning layer's response to an all-zero embedding (which would be `ReLU(bias)`, a value
//!   indistinguishable from data).
//! - **Modality dropout.** During training, each example's image, each of its text fields, and
//!   all of its text at once are hidden at random (never everything), so one model classifies
//!   image-only, text-only and partial items well.
//! - **A joint space for search.** The concatenation layer is what the classifier consumes, but
//!   it cannot compare an image-only item with a text-only query: their non-missing parts occupy
//!   disjoint coordinates. So the model also has *joint heads* into one shared space, trained
//!   with a symmetric InfoNCE loss that pulls an item's image towards its own text and away from
//!   other items' text (see `train::align`). The heads read the **L2-normalised frozen
//!   features** (`joint_input = features`, the default): an image head, and one text head that
//!   every field shares, so a query is not forced to be "a title" or "a description". The
//!   tuning layers are trained to tell classes apart, so heads on their outputs (`joint_input =
//!   branch_outputs`, the design of models stored before this field existed: one linear head per
//!   branch, InfoNCE beside the classifier with weight `contrastive_weight`) only knew an item's
//!   class, and a name query landed among every image of its class. An item's text vector is
//!   the normalised mean of its present fields' joint vectors; its **search vector** is the
//!   normalised sum of its (unit) image vector and (unit) text vector, over the modalities it
//!   has. A text-only query and an image-only item thus land in the same space, and a full item
//!   sits between the two. Models with one modality (the image-only and text-only baselines)
//!   have no contrastive signal, so they have no joint heads and their search vector is the
//!   normalised concatenation.
//! - **Branch heads (late fusion).** With `branch_heads`, the image projection and the text
//!   part of the concatenation layer each get a small classification head whose logits are
//!   added to the joint classifier's wherever that input is visible (a product of experts), and
//!   each text tuning layer gets a head of its own. While training, every head's cross-entropy
//!   on the rows where its input is visible is added to the fused loss (weight `aux_weight`),
//!   so each single-input path classifies alone and no modality carries the others. With the
//!   image withheld, the prediction is the text expert's plus the joint classifier's, which is
//!   what makes the fused model usable on text-only items.
//!
//! The model takes a `VarBuilder` (weights come from training or from a stored model);
//! training-time randomness comes in through [`TrainNoise`], drawn from a seeded generator by the
//! caller, because candle's CPU random generator cannot be seeded.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, Init, Linear, VarBuilder};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::frozen_input::linear_on_frozen;
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
    /// What the joint heads read. Models stored before this field existed read the branch
    /// outputs, hence the field's own serde default.
    #[serde(default = "JointInput::branch_outputs")]
    pub joint_input: JointInput,
    /// Hidden width of the joint heads on frozen features (`Linear+ReLU` before the output
    /// layer); 0 makes each head one linear layer. Unused with `joint_input = branch_outputs`.
    pub joint_hidden: usize,
    /// Dropout on each branch output while training.
    pub dropout: f32,
    /// Probability of hiding the image, each text field, and all text, per training example.
    pub modality_dropout: f32,
    /// Weight of the image–text InfoNCE loss beside the classification loss; only heads on the
    /// branch outputs train there (heads on frozen features are aligned after the classifier).
    pub contrastive_weight: f32,
    /// Softmax temperature of the InfoNCE loss (beside the classifier and in `train::align`).
    pub temperature: f32,
    /// Whether the InfoNCE gradient also reaches the tuning layers. Off by default: on
    /// synthetic catalogues, letting instance-level alignment shape the branches cost the
    /// classifier several points of top-1, while alignment through the joint heads alone
    /// still puts a title near the images of its class.
    pub align_branches: bool,
    /// Number of classes; 0 until the trainer fills it in from the label map.
    pub num_classes: usize,
    /// Late fusion: a small classification head on the image projection and one on the text
    /// part of the concatenation layer, whose logits are added to the joint classifier's
    /// wherever that input is visible (a product of experts). With the image missing, the
    /// prediction is then the text expert's plus the joint classifier's, not the joint
    /// classifier alone reading a "missing" embedding it rarely saw in training. Absent from
    /// models stored before it existed, which load as `false`.
    #[serde(default)]
    pub branch_heads: bool,
    /// Weight of the auxiliary losses: each branch (the image projection, each text tuning
    /// layer, all text together) classifies alone through its own head, and its cross-entropy
    /// on the rows where that input is visible is added to the fused loss. Makes every
    /// single-input path discriminative, so one modality cannot carry the others. Needs
    /// `branch_heads`; 0 turns the auxiliary losses off.
    #[serde(default)]
    pub aux_weight: f32,
    /// Probability of hiding the image per training example; `None` uses `modality_dropout`.
    /// A higher rate trains the text-only path of the fused model more often.
    #[serde(default)]
    pub image_modality_dropout: Option<f32>,
    /// Dropout on the image projection's output; `None` uses `dropout`. The 1280-d image
    /// features let the projection memorise training items, so it may need more than the text.
    #[serde(default)]
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
    /// the catalogues are thousands, not millions, of items. The branch-head, auxiliary-loss
    /// and image-dropout settings were chosen on the demo protocol's validation split (never
    /// its test split) among a handful of candidates (BENCHMARKS.md, "Demo protocol").
    pub fn trio(text_fields: Vec<String>, num_classes: usize) -> Self {
        Self {
            use_image: true,
            image_dim: 1280,
            text_dim: 384,
            text_fields,
            image_proj_dim: 128,
            text_tuning_dim: 128,
            joint_dim: 128,
            joint_input: JointInput::Features,
            joint_hidden: JOINT_HIDDEN,
            dropout: 0.2,
            modality_dropout: 0.3,
            contrastive_weight: 0.5,
            temperature: TEMPERATURE,
            align_branches: false,
            num_classes,
            branch_heads: true,
            aux_weight: 0.5,
            image_modality_dropout: Some(0.3),
            image_dropout: Some(0.5),
        }
    }

    /// The rate at which training hides the image.
    pub fn image_hide_rate(&self) -> f32 {
        self.image_modality_dropout.unwrap_or(self.modality_dropout)
    }

    /// The dropout rate on the image projection's output.
    pub fn image_dropout_rate(&self) -> f32 {
        self.image_dropout.unwrap_or(self.dropout)
    }

    /// Whether the model has joint heads: only when it sees both an image and some text.
    pub fn has_joint(&self) -> bool {
        self.use_image && !self.text_fields.is_empty()
    }

    /// Whether the InfoNCE loss is added to the classification loss (heads on branch outputs
    /// with a positive weight); heads on frozen features are aligned on their own afterwards.
    pub fn aligns_with_classifier(&self) -> bool {
        self.has_joint()
            && self.joint_input == JointInput::BranchOutputs
            && self.contrastive_weight > 0.0
    }

    /// Whether the variable `name` belongs to the joint heads (what `train::align` trains).
    pub fn is_joint_var(&self, name: &str) -> bool {
        match self.joint_input {
            JointInput::BranchOutputs => name.contains(".joint."),
            JointInput::Features => name.starts_with("joint."),
        }
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
        if !(0.0..1.0).contains(&self.modality_dropout) {
            return bad("modality_dropout", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.image_hide_rate()) {
            return bad("image_modality_dropout", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.image_dropout_rate()) {
            return bad("image_dropout", "must be in [0, 1)");
        }
        if !(self.aux_weight >= 0.0 && self.aux_weight.is_finite()) {
            return bad("aux_weight", "must be a non-negative number");
        }
        if self.aux_weight > 0.0 && !self.branch_heads {
            return bad("aux_weight", "the auxiliary losses need `branch_heads`");
        }
        if self.contrastive_weight < 0.0 {
            return bad("contrastive_weight", "must not be negative");
        }
        if self.temperature <= 0.0 {
            return bad("temperature", "must be positive");
        }
        Ok(())
    }
}

/// What the joint (search) heads read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JointInput {
    /// One linear head per branch on its tuning-layer output (models stored before
    /// `joint_input` existed).
    BranchOutputs,
    /// An image head and one shared text head on the L2-normalised frozen features.
    Features,
}

impl JointInput {
    fn branch_outputs() -> Self {
        JointInput::BranchOutputs
    }
}

/// Default hidden width of the joint heads on frozen features: linear heads, the smallest that
/// can align. With them (and [`TEMPERATURE`]) the demo catalogue's validation emoji names found
/// their image in the top 10 for 0.35 of queries (BENCHMARKS.md, "Cross-modal search"); hidden
/// layers and other temperatures have not been compared there yet.
const JOINT_HIDDEN: usize = 0;
/// Default InfoNCE temperature: the value the earlier in-loop alignment used.
const TEMPERATURE: f32 = 0.1;

/// Anything that can hand the model its inputs: a catalogue item, a training example, a query.
pub trait ModalityInputs {
    /// The frozen image features, if the item has an image.
    fn image(&self) -> Option<&[f32]>;
    /// The frozen embedding of one text field, if the item has that field.
    fn text(&self, field: &str) -> Option<&[f32]>;
    /// How to name this input in an error message ("item 42", "query").
    fn describe(&self) -> String {
        "input".to_string()
    }
}

/// A free-standing input: a query or an item outside any catalogue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FusionInput {
    pub image: Option<Vec<f32>>,
    pub text: BTreeMap<String, Vec<f32>>,
}

impl FusionInput {
    /// How a text query reaches the fused model: the query's sentence embedding fills every
    /// text field the model reads (a query is not a title or a description, and items carry
    /// their words in either), and the image is absent.
    pub fn text_query(text_fields: &[String], embedding: &[f32]) -> Self {
        Self {
            image: None,
            text: text_fields
                .iter()
                .map(|f| (f.clone(), embedding.to_vec()))
                .collect(),
        }
    }
}

impl ModalityInputs for FusionInput {
    fn image(&self) -> Option<&[f32]> {
        self.image.as_deref()
    }
    fn text(&self, field: &str) -> Option<&[f32]> {
        self.text.get(field).map(Vec::as_slice)
    }
    fn describe(&self) -> String {
        "query".to_string()
    }
}

/// One modality of a batch: its features (rows of zeros where absent, never read as data) and a
/// presence column of 1.0 / 0.0.
#[derive(Debug, Clone)]
pub struct Modality {
    /// `[batch, dim]`.
    pub features: Tensor,
    /// `[batch, 1]`, 1.0 where the item has this input.
    pub present: Tensor,
}

/// A batch in the model's input order: the image (when the model uses it), then one entry per
/// configured text field.
#[derive(Debug, Clone)]
pub struct FusionBatch {
    pub image: Option<Modality>,
    pub text: Vec<Modality>,
}

/// Training-time randomness, drawn by the caller from a seeded generator.
#[derive(Debug, Clone)]
pub struct TrainNoise {
    /// Scaled keep masks (`0` or `1/(1-p)`) for the image branch output, `[batch, proj]`.
    image_dropout: Option<Tensor>,
    /// Same, one per text field, `[batch, tuning]`.
    text_dropout: Vec<Tensor>,
    /// Modality dropout for the classifier path: 0.0 hides the image, `[batch, 1]`.
    image_visible: Option<Tensor>,
    /// Same, one per text field.
    text_visible: Vec<Tensor>,
}

impl TrainNoise {
    /// Draws dropout and modality-dropout masks for one batch. `image_present[i]` and
    /// `text_present[f][i]` say which inputs row `i` really has; modality dropout never hides
    /// every input of a row.
    pub fn sample<R: Rng>(
        cfg: &FusionConfig,
        image_present: &[bool],
        text_present: &[Vec<bool>],
        rng: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let rows = image_present.len();
        let p = cfg.modality_dropout;
        let p_image = cfg.image_hide_rate();
        let n_fields = cfg.text_fields.len();
        let mut image_visible = vec![1f32; rows];
        let mut text_visible = vec![vec![1f32; rows]; n_fields];
        for i in 0..rows {
            let has_image = cfg.use_image && image_present[i];
            let mut show_image = has_image;
            let mut show_text: Vec<bool> = (0..n_fields).map(|f| text_present[f][i]).collect();
            // The draws are made whatever the row holds, so one row's content never shifts the
            // random stream of the rows after it.
            let drop_image = rng.gen::<f32>() < p_image;
            let drop_all_text = rng.gen::<f32>() < p;
            let drop_field: Vec<bool> = (0..n_fields).map(|_| rng.gen::<f32>() < p).collect();
            if drop_image {
                show_image = false;
            }
            if drop_all_text {
                show_text.iter_mut().for_each(|s| *s = false);
            }
            for (s, d) in show_text.iter_mut().zip(&drop_field) {
                if *d {
                    *s = false;
                }
            }
            if !show_image && !show_text.iter().any(|s| *s) {
                // Never hide everything: the row would teach the classifier nothing.
                show_image = has_image;
                show_text = (0..n_fields).map(|f| text_present[f][i]).collect();
            }
            image_visible[i] = if show_image { 1.0 } else { 0.0 };
            for f in 0..n_fields {
                text_visible[f][i] = if show_text[f] { 1.0 } else { 0.0 };
            }
        }
        let column = |v: Vec<f32>| Tensor::from_vec(v, (rows, 1), device);
        let mut mask = |width: usize, rate: f32| -> Result<Tensor> {
            let keep = 1.0 - rate;
            let scale = 1.0 / keep;
            let v: Vec<f32> = (0..rows * width)
                .map(|_| if rng.gen::<f32>() < keep { scale } else { 0.0 })
                .collect();
            Ok(Tensor::from_vec(v, (rows, width), device)?)
        };
        let image_dropout = if cfg.use_image && cfg.image_dropout_rate() > 0.0 {
            Some(mask(cfg.image_proj_dim, cfg.image_dropout_rate())?)
        } else {
            None
        };
        let mut text_dropout = Vec::new();
        if cfg.dropout > 0.0 {
            for _ in 0..n_fields {
                text_dropout.push(mask(cfg.text_tuning_dim, cfg.dropout)?);
            }
        }
        Ok(Self {
            image_dropout,
            text_dropout,
            image_visible: if cfg.use_image {
                Some(column(image_visible)?)
            } else {
                None
            },
            text_visible: text_visible
                .into_iter()
                .map(column)
                .collect::<candle_core::Result<_>>()?,
        })
    }
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct FusionOutput {
    /// Class scores before softmax, `[batch, classes]`.
    pub logits: Tensor,
    /// The concatenation layer, `[batch, concat_dim]`: what the classifier reads.
    pub concat: Tensor,
    /// Unit image vectors in the joint space, `[batch, joint]`, when the model has joint heads
    /// (not computed while training heads on frozen features, which align on their own). Rows
    /// of items without an image are meaningless; mask them with the presence column.
    pub joint_image: Option<Tensor>,
    /// Unit text vectors in the joint space (normalised mean of the present fields), zero rows
    /// for items without text.
    pub joint_text: Option<Tensor>,
    /// The unit search vector, `[batch, search_dim]` (without training noise; while training
    /// heads on frozen features it is the normalised concatenation layer).
    pub search: Tensor,
    /// Each branch head's logits beside the rows where its input was visible (`[batch, 1]`),
    /// for the auxiliary losses: the image, each text field (only while training), then all
    /// text. Empty without `branch_heads`.
    pub branch_logits: Vec<(Tensor, Tensor)>,
}

/// One input branch: tuning layer, learned "missing" embedding, optional joint head.
#[derive(Debug, Clone)]
struct Branch {
    tuning: Linear,
    missing: Tensor,
    joint: Option<Linear>,
    span: tracing::Span,
}

impl Branch {
    fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        joint_dim: Option<usize>,
        name: &str,
    ) -> Result<Self> {
        let tuning = linear(in_dim, out_dim, vb.pp("tuning"))?;
        let missing = vb.get_with_hints(out_dim, "missing", Init::Const(0.0))?;
        let joint = match joint_dim {
            Some(j) => Some(linear(out_dim, j, vb.pp("joint"))?),
            None => None,
        };
        Ok(Self {
            tuning,
            missing,
            joint,
            span: tracing::trace_span!("fusion.branch", name = name),
        })
    }

    /// The tuning layer's output, with training dropout when a mask is given.
    fn hidden(&self, features: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = linear_on_frozen(&self.tuning, features)?.relu()?;
        Ok(match dropout {
            Some(mask) => (h * mask)?,
            None => h,
        })
    }

    /// `visible · h + (1 − visible) · missing`.
    fn gate(&self, h: &Tensor, visible: &Tensor) -> Result<Tensor> {
        Ok(h.broadcast_sub(&self.missing)?
            .broadcast_mul(visible)?
            .broadcast_add(&self.missing)?)
    }

    /// The unit joint-space vector of `h` (a head on the branch output).
    fn joint(&self, h: &Tensor) -> Result<Option<Tensor>> {
        match &self.joint {
            Some(j) => Ok(Some(l2_normalise(&j.forward(h)?)?)),
            None => Ok(None),
        }
    }
}

/// A joint head on frozen features: L2-normalise, optional `Linear+ReLU`, `Linear`, L2-normalise.
/// Normalising the input puts image features (unbounded activations) and sentence embeddings on
/// one scale, so one learning rate suits both heads.
#[derive(Debug, Clone)]
struct JointHead {
    hidden: Option<Linear>,
    out: Linear,
    span: tracing::Span,
}

impl JointHead {
    fn load(vb: VarBuilder, in_dim: usize, cfg: &FusionConfig, name: &str) -> Result<Self> {
        let (hidden, out_in) = if cfg.joint_hidden > 0 {
            (
                Some(linear(in_dim, cfg.joint_hidden, vb.pp("hidden"))?),
                cfg.joint_hidden,
            )
        } else {
            (None, in_dim)
        };
        Ok(Self {
            hidden,
            out: linear(out_in, cfg.joint_dim, vb.pp("out"))?,
            span: tracing::trace_span!("fusion.joint_head", name = name),
        })
    }

    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        // The first layer reads frozen features: its backward needs only the weight's gradient.
        let x = l2_normalise(features)?;
        let y = match &self.hidden {
            Some(h) => self.out.forward(&linear_on_frozen(h, &x)?.relu()?)?,
            None => linear_on_frozen(&self.out, &x)?,
        };
        l2_normalise(&y)
    }
}

/// The joint heads on frozen features: variables `joint.image.…` and `joint.text.…`.
#[derive(Debug, Clone)]
struct FeatureHeads {
    image: JointHead,
    text: JointHead,
}

/// Scales each row to unit length; all-zero rows stay zero.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// The late-fusion and auxiliary classification heads (`branch_heads`): one on the image
/// projection, one per text tuning layer (auxiliary loss only), one on all the text together.
#[derive(Debug, Clone)]
struct BranchHeads {
    image: Option<Linear>,
    fields: Vec<Linear>,
    all_text: Option<Linear>,
}

impl BranchHeads {
    fn load(vb: VarBuilder, cfg: &FusionConfig) -> Result<Self> {
        let image = if cfg.use_image {
            Some(linear(cfg.image_proj_dim, cfg.num_classes, vb.pp("image"))?)
        } else {
            None
        };
        let fields = cfg
            .text_fields
            .iter()
            .map(|f| linear(cfg.text_tuning_dim, cfg.num_classes, vb.pp("text").pp(f)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let all_text = if cfg.text_fields.is_empty() {
            None
        } else {
            Some(linear(
                cfg.text_fields.len() * cfg.text_tuning_dim,
                cfg.num_classes,
                vb.pp("all_text"),
            )?)
        };
        Ok(Self {
            image,
            fields,
            all_text,
        })
    }
}

/// The fused classifier and search encoder. See the module documentation for the design.
#[derive(Debug, Clone)]
pub struct FusedModel {
    cfg: FusionConfig,
    image: Option<Branch>,
    text: Vec<Branch>,
    /// Present with `joint_input = features` on a model with both modalities.
    feature_heads: Option<FeatureHeads>,
    classifier: Linear,
    heads: Option<BranchHeads>,
    device: Device,
    span: tracing::Span,
}

impl FusedModel {
    /// Builds the model from `vb`. Variable names: `image.tuning.{weight,bias}`,
    /// `image.missing`, `text.<field>.…`, `classifier.{weight,bias}`; the joint heads:
    /// `joint.{image,text}.{hidden,out}.…` on features, or `image.joint.…`, `text.<field>.joint.…`
    /// on branch outputs; and with `branch_heads`, `heads.{image,all_text,text.<field>}.{weight,bias}`.
    pub fn load(vb: VarBuilder, cfg: &FusionConfig) -> Result<Self> {
        cfg.validate()?;
        let joint = (cfg.has_joint() && cfg.joint_input == JointInput::BranchOutputs)
            .then_some(cfg.joint_dim);
        let feature_heads = if cfg.has_joint() && cfg.joint_input == JointInput::Features {
            Some(FeatureHeads {
                image: JointHead::load(vb.pp("joint").pp("image"), cfg.image_dim, cfg, "image")?,
                text: JointHead::load(vb.pp("joint").pp("text"), cfg.text_dim, cfg, "text")?,
            })
        } else {
            None
        };
        let image = if cfg.use_image {
            Some(Branch::load(
                vb.pp("image"),
                cfg.image_dim,
                cfg.image_proj_dim,
                joint,
                "image",
            )?)
        } else {
            None
        };
        let text = cfg
            .text_fields
            .iter()
            .map(|f| {
                Branch::load(
                    vb.pp("text").pp(f),
                    cfg.text_dim,
                    cfg.text_tuning_dim,
                    joint,
                    f,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let classifier = linear(cfg.concat_dim(), cfg.num_classes, vb.pp("classifier"))?;
        let heads = if cfg.branch_heads {
            Some(BranchHeads::load(vb.pp("heads"), cfg)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            image,
            text,
            feature_heads,
            classifier,
            heads,
            device: vb.device().clone(),
            span: tracing::trace_span!("fusion.forward"),
        })
    }

    pub fn config(&self) -> &FusionConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One forward pass. `noise` is `Some` only while training.
    pub fn forward(&self, batch: &FusionBatch, noise: Option<&TrainNoise>) -> Result<FusionOutput> {
        let _enter = self.span.enter();
        if batch.text.len() != self.text.len() {
            return Err(Error::InvalidArgument(format!(
                "batch has {} text fields, the model reads {}",
                batch.text.len(),
                self.text.len()
            )));
        }
        let mut parts = Vec::with_capacity(1 + self.text.len());
        // The joint heads' inputs: frozen features, or branch outputs (detached unless
        // `align_branches`, so the InfoNCE loss does not reshape the classifier's layers).
        let on_features = self.cfg.joint_input == JointInput::Features;
        let joint_in = |features: &Tensor, h: &Tensor| -> Tensor {
            if on_features {
                features.clone()
            } else if self.cfg.align_branches {
                h.clone()
            } else {
                h.detach()
            }
        };
        let mut image_in = None;
        // Each branch's output and the rows where it is visible, for the branch heads.
        let mut image_seen = None;
        let mut text_seen = Vec::with_capacity(self.text.len());
        let mut image_present = None;
        if let Some(branch) = &self.image {
            let m = batch.image.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "batch has no image column but the model reads images".into(),
                )
            })?;
            let h = branch.hidden(&m.features, noise.and_then(|n| n.image_dropout.as_ref()))?;
            let visible = match noise.and_then(|n| n.image_visible.as_ref()) {
                Some(v) => (&m.present * v)?,
                None => m.present.clone(),
            };
            parts.push(branch.gate(&h, &visible)?);
            image_in = Some(joint_in(&m.features, &h));
            image_present = Some(m.present.clone());
            image_seen = Some((h, visible));
        }
        let mut text_in = Vec::with_capacity(self.text.len());
        for (f, (branch, m)) in self.text.iter().zip(&batch.text).enumerate() {
            let dropout = noise.and_then(|n| n.text_dropout.get(f));
            let h = branch.hidden(&m.features, dropout)?;
            let visible = match noise.and_then(|n| n.text_visible.get(f)) {
                Some(v) => (&m.present * v)?,
                None => m.present.clone(),
            };
            parts.push(branch.gate(&h, &visible)?);
            text_in.push(joint_in(&m.features, &h));
            text_seen.push((h, visible));
        }
        let concat = Tensor::cat(&parts, 1)?;
        let mut logits = self.classifier.forward(&concat)?;
        let mut branch_logits = Vec::new();
        if let Some(heads) = &self.heads {
            // Late fusion: a visible input's expert adds its logits (a product of experts).
            if let (Some(head), Some((h, visible))) = (&heads.image, &image_seen) {
                let z = head.forward(h)?;
                logits = (logits + z.broadcast_mul(visible)?)?;
                branch_logits.push((z, visible.clone()));
            }
            if noise.is_some() {
                // The per-field heads only train their tuning layers (auxiliary losses).
                for (head, (h, visible)) in heads.fields.iter().zip(&text_seen) {
                    branch_logits.push((head.forward(h)?, visible.clone()));
                }
            }
            if let Some(head) = &heads.all_text {
                let first_text = usize::from(image_seen.is_some());
                let z = head.forward(&Tensor::cat(&parts[first_text..], 1)?)?;
                let mut any: Option<Tensor> = None;
                for (_, visible) in &text_seen {
                    any = Some(match any {
                        Some(a) => a.maximum(visible)?,
                        None => visible.clone(),
                    });
                }
                if let Some(any) = any {
                    logits = (logits + z.broadcast_mul(&any)?)?;
                    branch_logits.push((z, any));
                }
            }
        }
        let text_present: Vec<Tensor> = batch.text.iter().map(|m| m.present.clone()).collect();
        // Heads on frozen features are aligned on their own (`train::align`): training the
        // classifier has no use for them.
        let joint_wanted = noise.is_none() || self.cfg.aligns_with_classifier();
        let (joint_image, joint_text) = if self.cfg.has_joint() && joint_wanted {
            match &image_in {
                Some(i) => {
                    let (ji, jt) = self.joint_from_inputs(i, &text_in, &text_present)?;
                    (Some(ji), Some(jt))
                }
                None => (None, None),
            }
        } else {
            (None, None)
        };
        let search = match (&joint_image, &joint_text, &image_present) {
            (Some(i), Some(t), Some(p)) => l2_normalise(&(i.broadcast_mul(p)? + t)?)?,
            _ => l2_normalise(&concat)?,
        };
        Ok(FusionOutput {
            logits,
            concat,
            joint_image,
            joint_text,
            search,
            branch_logits,
        })
    }

    /// Packs inputs into a batch on the model's device, checking widths. Fields the model does
    /// not read are ignored; an input with none of the model's inputs is an error.
    pub fn batch<I: ModalityInputs>(&self, items: &[I]) -> Result<FusionBatch> {
        batch_from_inputs(&self.cfg, items, &self.device)
    }

    /// Class probabilities, one row per input, in the label order of the stored model.
    pub fn predict<I: ModalityInputs>(&self, items: &[I]) -> Result<Vec<Vec<f32>>> {
        let out = self.forward(&self.batch(items)?, None)?;
        Ok(candle_nn::ops::softmax_last_dim(&out.logits)?.to_vec2()?)
    }

    /// Unit search vectors (see the module documentation): comparable across image-only,
    /// text-only and full inputs when the model has both modalities.
    pub fn fused_vectors<I: ModalityInputs>(&self, items: &[I]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward(&self.batch(items)?, None)?.search.to_vec2()?)
    }

    /// The concatenation layer (the study's "fused embedding"), unnormalised.
    pub fn concat_vectors<I: ModalityInputs>(&self, items: &[I]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward(&self.batch(items)?, None)?.concat.to_vec2()?)
    }

    /// The joint heads' inputs for `batch`, detached from the graph: the frozen features, or the
    /// branches' tuning-layer outputs (no dropout, no presence gate) for heads on branch outputs.
    /// `train::align` caches them once and trains the heads on the cache.
    pub fn joint_inputs(&self, batch: &FusionBatch) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        let on_features = self.cfg.joint_input == JointInput::Features;
        let input = |b: &Branch, m: &Modality| -> Result<Tensor> {
            Ok(if on_features {
                m.features.detach()
            } else {
                b.hidden(&m.features, None)?.detach()
            })
        };
        let image = match (&self.image, &batch.image) {
            (Some(b), Some(m)) => Some(input(b, m)?),
            _ => None,
        };
        let text = self
            .text
            .iter()
            .zip(&batch.text)
            .map(|(b, m)| input(b, m))
            .collect::<Result<Vec<_>>>()?;
        Ok((image, text))
    }

    /// Unit joint vectors from the heads' inputs (see [`FusedModel::joint_inputs`]): the
    /// image's, and the normalised mean of the text fields where `text_present[f]` (`[batch, 1]`)
    /// is 1 (a zero row when none is).
    pub fn joint_from_inputs(
        &self,
        image: &Tensor,
        text: &[Tensor],
        text_present: &[Tensor],
    ) -> Result<(Tensor, Tensor)> {
        let ji = self.joint_image_from_input(image)?;
        let mut sum: Option<Tensor> = None;
        for (f, (x, p)) in text.iter().zip(text_present).enumerate() {
            let g = self.joint_text_from_input(f, x)?.broadcast_mul(p)?;
            sum = Some(match sum {
                Some(s) => (s + g)?,
                None => g,
            });
        }
        let sum = sum.ok_or_else(|| no_joint(&self.cfg))?;
        Ok((ji, l2_normalise(&sum)?))
    }

    fn joint_image_from_input(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(heads) = &self.feature_heads {
            return heads.image.forward(x);
        }
        self.image
            .as_ref()
            .map(|b| b.joint(x))
            .transpose()?
            .flatten()
            .ok_or_else(|| no_joint(&self.cfg))
    }

    /// The unit joint vector of text field number `field`'s head input.
    fn joint_text_from_input(&self, field: usize, x: &Tensor) -> Result<Tensor> {
        if let Some(heads) = &self.feature_heads {
            return heads.text.forward(x);
        }
        self.text
            .get(field)
            .map(|b| b.joint(x))
            .transpose()?
            .flatten()
            .ok_or_else(|| no_joint(&self.cfg))
    }

    /// Unit joint-space vectors of image features `[batch, image_dim]`.
    pub fn embed_joint_image(&self, features: &Tensor) -> Result<Tensor> {
        if self.feature_heads.is_some() {
            return self.joint_image_from_input(features);
        }
        let branch = self.image.as_ref().ok_or_else(|| no_joint(&self.cfg))?;
        self.joint_image_from_input(&branch.hidden(features, None)?)
    }

    /// Unit joint-space vectors of text: `fields` pairs a configured field name with its
    /// embeddings `[batch, text_dim]`; the result is the normalised mean over the given fields.
    pub fn embed_joint_text(&self, fields: &[(&str, &Tensor)]) -> Result<Tensor> {
        if !self.cfg.has_joint() {
            return Err(no_joint(&self.cfg));
        }
        let mut sum: Option<Tensor> = None;
        for (name, x) in fields {
            let f = self
                .cfg
                .text_fields
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("the model has no text field `{name}`"))
                })?;
            let g = if self.feature_heads.is_some() {
                self.joint_text_from_input(f, x)?
            } else {
                self.joint_text_from_input(f, &self.text[f].hidden(x, None)?)?
            };
            sum = Some(match sum {
                Some(s) => (s + g)?,
                None => g,
            });
        }
        let sum = sum.ok_or_else(|| {
            Error::InvalidArgument("embed_joint_text needs at least one field".into())
        })?;
        l2_normalise(&sum)
    }
}

fn no_joint(cfg: &FusionConfig) -> Error {
    Error::InvalidArgument(format!(
        "this model has no joint image–text space (image: {}, text fields: {:?}); it was trained on one modality",
        cfg.use_image, cfg.text_fields
    ))
}

/// Packs inputs into a [`FusionBatch`] for `cfg`, checking every width.
pub fn batch_from_inputs<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<FusionBatch> {
    let (batch, any) = batch_with_presence(cfg, items, device)?;
    if let Some(i) = any.iter().position(|a| !a) {
        return Err(Error::NoInputs {
            item: items[i].describe(),
        });
    }
    Ok(batch)
}

/// [`batch_from_inputs`] that lets rows lack every input `cfg` reads (their presence columns
/// are all zero): how a single-modality expert reads items it has nothing to say about.
pub fn partial_batch_from_inputs<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<FusionBatch> {
    Ok(batch_with_presence(cfg, items, device)?.0)
}

/// The batch, and per row whether it holds any input `cfg` reads.
fn batch_with_presence<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<(FusionBatch, Vec<bool>)> {
    let rows = items.len();
    let column = |dim: usize,
                  field: &str,
                  get: &dyn Fn(&I) -> Option<&[f32]>|
     -> Result<(Vec<f32>, Vec<f32>)> {
        let mut data = vec![0f32; rows * dim];
        let mut present = vec![0f32; rows];
        for (i, item) in items.iter().enumerate() {
            if let Some(v) = get(item) {
                if v.len() != dim {
                    return Err(Error::FeatureDim {
                        item: item.describe(),
                        field: field.to_string(),
                        expected: dim,
                        got: v.len(),
                    });
                }
                data[i * dim..(i + 1) * dim].copy_from_slice(v);
                present[i] = 1.0;
            }
        }
        Ok((data, present))
    };
    let to_modality = |(data, present): (Vec<f32>, Vec<f32>), dim: usize| -> Result<Modality> {
        Ok(Modality {
            features: Tensor::from_vec(data, (rows, dim), device)?,
            present: Tensor::from_vec(present, (rows, 1), device)?,
        })
    };
    let mut any = vec![false; rows];
    let image = if cfg.use_image {
        let col = column(cfg.image_dim, "image", &|it: &I| it.image())?;
        for (a, p) in any.iter_mut().zip(&col.1) {
            *a |= *p > 0.0;
        }
        Some(to_modality(col, cfg.image_dim)?)
    } else {
        None
    };
    let mut text = Vec::with_capacity(cfg.text_fields.len());
    for field in &cfg.text_fields {
        let col = column(cfg.text_dim, field, &|it: &I| it.text(field))?;
        for (a, p) in any.iter_mut().zip(&col.1) {
            *a |= *p > 0.0;
        }
        text.push(to_modality(col, cfg.text_dim)?);
    }
    Ok((FusionBatch { image, text }, any))
}

/// Symmetric InfoNCE between unit image and unit text vectors of the same rows: row `i` of each
/// is the positive pair, every other row a negative.
pub fn info_nce(image: &Tensor, text: &Tensor, temperature: f32) -> Result<Tensor> {
    let n = image.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, image.device())?;
    let sim = (image.matmul(&text.t()?)? / f64::from(temperature))?;
    let a = candle_nn::loss::cross_entropy(&sim, &targets)?;
    let b = candle_nn::loss::cross_entropy(&sim.t()?.contiguous()?, &targets)?;
    Ok(((a + b)? * 0.5)?)
}

/// The dtype every fused-model tensor uses.
pub const DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_query_fills_every_field() {
        let q = FusionInput::text_query(&["description".into(), "title".into()], &[0.5, 0.5]);
        assert!(q.image.is_none());
        assert_eq!(q.text.len(), 2);
        assert_eq!(q.text["title"], vec![0.5, 0.5]);
    }

    fn small_cfg() -> FusionConfig {
        FusionConfig {
            image_dim: 6,
            text_dim: 4,
            image_proj_dim: 5,
            text_tuning_dim: 3,
            joint_dim: 2,
            ..FusionConfig::trio(vec!["title".into(), "description".into()], 3)
        }
    }

    #[test]
    fn shapes_and_missing_inputs() -> Result<()> {
        let cfg = small_cfg();
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DTYPE, &dev);
        let model = FusedModel::load(vb, &cfg)?;
        let items = vec![
            FusionInput {
                image: Some(vec![1.0; 6]),
                text: BTreeMap::new(),
            },
            FusionInput {
                image: None,
                text: [("title".to_string(), vec![0.5; 4])].into_iter().collect(),
            },
        ];
        let out = model.forward(&model.batch(&items)?, None)?;
        assert_eq!(out.logits.dims(), &[2, 3]);
        assert_eq!(out.concat.dims(), &[2, cfg.concat_dim()]);
        assert_eq!(out.search.dims(), &[2, 2]);
        let probs = model.predict(&items)?;
        for row in probs {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_width_and_empty_input() -> Result<()> {
        let cfg = small_cfg();
        let model = FusedModel::load(VarBuilder::zeros(DTYPE, &Device::Cpu), &cfg)?;
        let wrong = FusionInput {
            image: Some(vec![1.0; 5]),
            text: BTreeMap::new(),
        };
        assert!(matches!(
            model.predict(&[wrong]),
            Err(Error::FeatureDim {
                expected: 6,
                got: 5,
                ..
            })
        ));
        let empty = FusionInput::default();
        assert!(matches!(
            model.predict(&[empty]),
            Err(Error::NoInputs { .. })
        ));
        Ok(())
    }

    #[test]
    fn configs_stored_before_joint_input_keep_heads_on_branch_outputs(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let mut stored = serde_json::to_value(small_cfg())?;
        if let Some(fields) = stored.as_object_mut() {
            fields.remove("joint_input");
            fields.remove("joint_hidden");
        }
        let cfg: FusionConfig = serde_json::from_value(stored)?;
        assert_eq!(cfg.joint_input, JointInput::BranchOutputs);
        assert_eq!(small_cfg().joint_input, JointInput::Features);
        let names =
            |cfg: &FusionConfig| -> std::result::Result<Vec<String>, Box<dyn std::error::Error>> {
                let varmap = candle_nn::VarMap::new();
                FusedModel::load(VarBuilder::from_varmap(&varmap, DTYPE, &Device::Cpu), cfg)?;
                let data = varmap.data().lock().map_err(|_| "poisoned")?;
                Ok(data.keys().cloned().collect())
            };
        let old = names(&cfg)?;
        assert!(old.iter().any(|n| n == "image.joint.weight"));
        assert!(old.iter().any(|n| n == "text.title.joint.weight"));
        assert!(!old.iter().any(|n| n.starts_with("joint.")));
        let new = names(&small_cfg())?;
        assert!(new.iter().any(|n| n == "joint.image.out.weight"));
        assert!(new.iter().any(|n| n == "joint.text.out.weight"));
        assert!(!new.iter().any(|n| n.contains(".joint.")));
        Ok(())
    }

    #[test]
    fn modality_dropout_never_hides_everything() -> Result<()> {
        use rand::SeedableRng;
        let cfg = FusionConfig {
            modality_dropout: 0.9,
            ..small_cfg()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rows = 200;
        let image_present: Vec<bool> = (0..rows).map(|i| i % 3 != 0).collect();
        let text_present = vec![
            (0..rows).map(|i| i % 2 == 0).collect::<Vec<_>>(),
            vec![true; rows],
        ];
        let noise =
            TrainNoise::sample(&cfg, &image_present, &text_present, &mut rng, &Device::Cpu)?;
        let img: Vec<f32> = noise
            .image_visible
            .as_ref()
            .map(|t| t.flatten_all()?.to_vec1())
            .transpose()?
            .unwrap_or_default();
        let t0: Vec<f32> = noise.text_visible[0].flatten_all()?.to_vec1()?;
        let t1: Vec<f32> = noise.text_visible[1].flatten_all()?.to_vec1()?;
        for i in 0..rows {
            let shown = (img[i] > 0.0 && image_present[i])
                || (t0[i] > 0.0 && text_present[0][i])
                || t1[i] > 0.0;
            assert!(shown, "row {i} lost every input");
        }
        Ok(())
    }
}
