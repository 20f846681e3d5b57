//! The input branches (tuning layer, presence gate) and the two experts' heads on them.

use candle_core::{Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use super::FusionConfig;
use crate::error::Result;
use crate::models::frozen_input::linear_on_frozen;

/// One input branch: the tuning layer on a frozen input.
#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub(super) tuning: Linear,
    pub(super) span: tracing::Span,
}

impl Branch {
    pub(super) fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, name: &str) -> Result<Self> {
        let tuning = linear(in_dim, out_dim, vb.pp("tuning"))?;
        Ok(Self {
            tuning,
            span: tracing::trace_span!("fusion.branch", name = name),
        })
    }

    /// The tuning layer's output, with training dropout when a mask is given.
    pub(super) fn hidden(&self, features: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = linear_on_frozen(&self.tuning, features)?.relu()?;
        Ok(match dropout {
            Some(mask) => (h * mask)?,
            None => h,
        })
    }

    /// `visible · h`: an absent (or hidden) input contributes zeros, which the expert's head
    /// reads as "no evidence" (a learned "missing" vector measured no better: BENCHMARKS.md).
    pub(super) fn gate(&self, h: &Tensor, visible: &Tensor) -> Result<Tensor> {
        Ok(h.broadcast_mul(visible)?)
    }
}

/// The experts' classification heads: one on the image projection, one on each text field's
/// tuning layer. Each trains with its own loss on the rows where its input is present, so no
/// expert leans on another and any subset of inputs is a model trained for it (see the module
/// documentation).
#[derive(Debug, Clone)]
pub(super) struct ExpertHeads {
    pub(super) image: Option<Linear>,
    pub(super) fields: Vec<Linear>,
}

impl ExpertHeads {
    /// Variables `image.{weight,bias}` and `text.<field>.{weight,bias}` under `vb`.
    pub(super) fn load(vb: VarBuilder, cfg: &FusionConfig) -> Result<Self> {
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
        Ok(Self { image, fields })
    }
}

/// Scales each row to unit length; all-zero rows stay zero.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
