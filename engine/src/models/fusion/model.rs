//! The fused model: load from a `VarBuilder`, the forward pass, prediction and vectors.

use candle_core::{Device, Module, Tensor, D};
use candle_nn::ops::log_softmax;
use candle_nn::VarBuilder;

use super::branches::{l2_normalise, Branch, ExpertHeads};
use super::inputs::{batch_from_inputs, FusionBatch, ModalityInputs, TrainNoise};
use super::joint::{FeatureHeads, JointHead};
use super::FusionConfig;
use crate::error::{Error, Result};

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct FusionOutput {
    /// The pooled experts' weighted mean log-probabilities, `[batch, classes]` (unnormalised:
    /// their softmax is the prediction).
    pub logits: Tensor,
    /// The concatenation layer, `[batch, concat_dim]`: what the experts' heads read.
    pub concat: Tensor,
    /// Unit image vectors in the joint space, `[batch, joint]`, when the model has joint heads
    /// (not computed while training: the heads align on their own, `train::align`). Rows
    /// of items without an image are meaningless; mask them with the presence column.
    pub joint_image: Option<Tensor>,
    /// Unit text vectors in the joint space (normalised mean of the present fields), zero rows
    /// for items without text.
    pub joint_text: Option<Tensor>,
    /// The unit search vector, `[batch, search_dim]` (without training noise; while training it
    /// is the normalised concatenation layer).
    pub search: Tensor,
    /// Each expert's logits beside the rows where its input was visible (`[batch, 1]`), for
    /// the experts' own losses: the image expert, then the text expert.
    pub expert_logits: Vec<(Tensor, Tensor)>,
}

/// The fused classifier and search encoder. See the module documentation for the design.
#[derive(Debug, Clone)]
pub struct FusedModel {
    pub(super) cfg: FusionConfig,
    pub(super) image: Option<Branch>,
    pub(super) text: Vec<Branch>,
    /// The joint (search) heads, on a model with both modalities.
    pub(super) feature_heads: Option<FeatureHeads>,
    pub(super) heads: ExpertHeads,
    pub(super) device: Device,
    pub(super) span: tracing::Span,
}

impl FusedModel {
    /// Builds the model from `vb`. Variable names: `image.tuning.{weight,bias}`,
    /// `text.<field>.tuning.…`, the experts' heads `heads.image.…` and `heads.text.<field>.…`;
    /// the joint heads `joint.{image,text}.{hidden,out}.…`.
    pub fn load(vb: VarBuilder, cfg: &FusionConfig) -> Result<Self> {
        cfg.validate()?;
        let feature_heads = if cfg.has_joint() {
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
                "image",
            )?)
        } else {
            None
        };
        let text = cfg
            .text_fields
            .iter()
            .map(|f| Branch::load(vb.pp("text").pp(f), cfg.text_dim, cfg.text_tuning_dim, f))
            .collect::<Result<Vec<_>>>()?;
        let heads = ExpertHeads::load(vb.pp("heads"), cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            image,
            text,
            feature_heads,
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
        // The joint heads read the frozen features.
        let mut image_in = None;
        // Each branch's output and the rows where its input is present, for the experts.
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
            let visible = m.present.clone();
            parts.push(branch.gate(&h, &visible)?);
            image_in = Some(m.features.clone());
            image_present = Some(m.present.clone());
            image_seen = Some((h, visible));
        }
        let mut text_in = Vec::with_capacity(self.text.len());
        for (f, (branch, m)) in self.text.iter().zip(&batch.text).enumerate() {
            let dropout = noise.and_then(|n| n.text_dropout.get(f));
            let h = branch.hidden(&m.features, dropout)?;
            let visible = m.present.clone();
            parts.push(branch.gate(&h, &visible)?);
            text_in.push(m.features.clone());
            text_seen.push((h, visible));
        }
        let concat = Tensor::cat(&parts, 1)?;
        // Late fusion: each expert's log-probabilities where its input is present, the
        // image's weighted by `image_weight` where some text votes too (a product of experts).
        let mut expert_logits = Vec::with_capacity(1 + self.text.len());
        let mut votes: Option<(Tensor, Tensor)> = None;
        let mut add = |log_p: Tensor, weight: &Tensor| -> Result<()> {
            let vote = log_p.broadcast_mul(weight)?;
            votes = Some(match votes.take() {
                Some((v, w)) => ((v + vote)?, (w + weight)?),
                None => (vote, weight.clone()),
            });
            Ok(())
        };
        let mut any_text: Option<Tensor> = None;
        for (head, (h, visible)) in self.heads.fields.iter().zip(&text_seen) {
            let z = head.forward(h)?;
            add(log_softmax(&z, D::Minus1)?, visible)?;
            any_text = Some(match any_text {
                Some(a) => a.maximum(visible)?,
                None => visible.clone(),
            });
            expert_logits.push((z, visible.clone()));
        }
        if let (Some(head), Some((h, visible))) = (&self.heads.image, &image_seen) {
            let z = head.forward(h)?;
            let weight = match &any_text {
                // 1 where the image votes alone, `image_weight` where some text votes too.
                Some(any) => ((any * f64::from(self.cfg.image_weight - 1.0))? + 1.0)?
                    .broadcast_mul(visible)?,
                None => visible.clone(),
            };
            add(log_softmax(&z, D::Minus1)?, &weight)?;
            expert_logits.insert(0, (z, visible.clone()));
        }
        let (votes, weights) = votes.ok_or_else(|| {
            Error::InvalidArgument("a fused model needs the image or some text".into())
        })?;
        // Divided by the votes' total weight: a weighted geometric mean of the experts, as sure
        // as one expert rather than as sure as their product, so probabilities stay calibrated
        // for label-noise ranking and confidences; the ranking of classes is the product's.
        let logits = votes.broadcast_div(&weights.clamp(1f32, f32::MAX)?)?;
        let text_present: Vec<Tensor> = batch.text.iter().map(|m| m.present.clone()).collect();
        // The joint heads are aligned on their own (`train::align`): training the classifier
        // has no use for them.
        let (joint_image, joint_text) = if self.cfg.has_joint() && noise.is_none() {
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
            expert_logits,
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
}
