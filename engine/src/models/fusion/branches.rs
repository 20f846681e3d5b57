//! The input branches (tuning layer, presence gate, learned "missing" embedding) and the
//! late-fusion heads on them.

use candle_core::{Module, Tensor, D};
use candle_nn::{linear, Init, Linear, VarBuilder};

use super::FusionConfig;
use crate::error::Result;
use crate::models::frozen_input::linear_on_frozen;

/// One input branch: tuning layer, learned "missing" embedding, optional joint head.
#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub(super) tuning: Linear,
    pub(super) missing: Tensor,
    pub(super) joint: Option<Linear>,
    pub(super) span: tracing::Span,
}

impl Branch {
    pub(super) fn load(
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
    pub(super) fn hidden(&self, features: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = linear_on_frozen(&self.tuning, features)?.relu()?;
        Ok(match dropout {
            Some(mask) => (h * mask)?,
            None => h,
        })
    }

    /// `visible · h + (1 − visible) · missing`.
    pub(super) fn gate(&self, h: &Tensor, visible: &Tensor) -> Result<Tensor> {
        Ok(h.broadcast_sub(&self.missing)?
            .broadcast_mul(visible)?
            .broadcast_add(&self.missing)?)
    }

    /// The unit joint-space vector of `h` (a head on the branch output).
    pub(super) fn joint(&self, h: &Tensor) -> Result<Option<Tensor>> {
        match &self.joint {
            Some(j) => Ok(Some(l2_normalise(&j.forward(h)?)?)),
            None => Ok(None),
        }
    }
}

/// The late-fusion and auxiliary classification heads (`branch_heads`): one on the image
/// projection, one per text tuning layer (auxiliary loss only), one on all the text together.
#[derive(Debug, Clone)]
pub(super) struct BranchHeads {
    pub(super) image: Option<Linear>,
    pub(super) fields: Vec<Linear>,
    pub(super) all_text: Option<Linear>,
}

impl BranchHeads {
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

/// Scales each row to unit length; all-zero rows stay zero.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
