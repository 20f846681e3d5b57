//! The joint image–text space: heads on the frozen features and the model's joint embeddings
//! (aligned by `train::align`).

use candle_core::{Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::branches::l2_normalise;
use super::inputs::FusionBatch;
use super::{FusedModel, FusionConfig};
use crate::error::{Error, Result};
use crate::models::frozen_input::linear_on_frozen;

/// A joint head on frozen features: L2-normalise, optional `Linear+ReLU`, `Linear`, L2-normalise.
/// Normalising the input puts image features (unbounded activations) and sentence embeddings on
/// one scale, so one learning rate suits both heads.
#[derive(Debug, Clone)]
pub(super) struct JointHead {
    pub(super) hidden: Option<Linear>,
    pub(super) out: Linear,
    pub(super) span: tracing::Span,
}

impl JointHead {
    pub(super) fn load(
        vb: VarBuilder,
        in_dim: usize,
        cfg: &FusionConfig,
        name: &str,
    ) -> Result<Self> {
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

    pub(super) fn forward(&self, features: &Tensor) -> Result<Tensor> {
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
pub(super) struct FeatureHeads {
    pub(super) image: JointHead,
    pub(super) text: JointHead,
}

impl FusedModel {
    /// The joint heads' inputs for `batch`, detached from the graph: the frozen features of the
    /// inputs the model reads. `train::align` caches them once and trains the heads on the cache.
    pub fn joint_inputs(&self, batch: &FusionBatch) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        let image = match (&self.image, &batch.image) {
            (Some(_), Some(m)) => Some(m.features.detach()),
            _ => None,
        };
        let text = batch.text.iter().map(|m| m.features.detach()).collect();
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
        for (x, p) in text.iter().zip(text_present) {
            let g = self.joint_text_from_input(x)?.broadcast_mul(p)?;
            sum = Some(match sum {
                Some(s) => (s + g)?,
                None => g,
            });
        }
        let sum = sum.ok_or_else(|| no_joint(&self.cfg))?;
        Ok((ji, l2_normalise(&sum)?))
    }

    fn heads(&self) -> Result<&FeatureHeads> {
        self.feature_heads
            .as_ref()
            .ok_or_else(|| no_joint(&self.cfg))
    }

    fn joint_image_from_input(&self, x: &Tensor) -> Result<Tensor> {
        self.heads()?.image.forward(x)
    }

    /// The unit joint vector of a text field's features (one head serves every field).
    fn joint_text_from_input(&self, x: &Tensor) -> Result<Tensor> {
        self.heads()?.text.forward(x)
    }

    /// Unit joint-space vectors of image features `[batch, image_dim]`.
    pub fn embed_joint_image(&self, features: &Tensor) -> Result<Tensor> {
        self.joint_image_from_input(features)
    }

    /// Unit joint-space vectors of text: `fields` pairs a configured field name with its
    /// embeddings `[batch, text_dim]`; the result is the normalised mean over the given fields.
    pub fn embed_joint_text(&self, fields: &[(&str, &Tensor)]) -> Result<Tensor> {
        if !self.cfg.has_joint() {
            return Err(no_joint(&self.cfg));
        }
        let mut sum: Option<Tensor> = None;
        for (name, x) in fields {
            if !self.cfg.text_fields.iter().any(|c| c == name) {
                return Err(Error::InvalidArgument(format!(
                    "the model has no text field `{name}`"
                )));
            }
            let g = self.joint_text_from_input(x)?;
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

pub(super) fn no_joint(cfg: &FusionConfig) -> Error {
    Error::InvalidArgument(format!(
        "this model has no joint image–text space (image: {}, text fields: {:?}); it was trained on one modality",
        cfg.use_image, cfg.text_fields
    ))
}
