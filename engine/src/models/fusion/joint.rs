//! The joint image–text space: heads on the frozen features (or on the branch outputs), the
//! model's joint embeddings, and the InfoNCE loss that aligns them.

use candle_core::{Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::branches::{l2_normalise, Branch};
use super::inputs::{FusionBatch, Modality};
use super::{FusedModel, FusionConfig, JointInput};
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

pub(super) fn no_joint(cfg: &FusionConfig) -> Error {
    Error::InvalidArgument(format!(
        "this model has no joint image–text space (image: {}, text fields: {:?}); it was trained on one modality",
        cfg.use_image, cfg.text_fields
    ))
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
