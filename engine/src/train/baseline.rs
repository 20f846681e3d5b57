//! The obvious baseline: multinomial logistic regression on the frozen features laid side by
//! side, missing inputs as zeros. It shows what the tuning layers, presence handling and
//! modality dropout add.

use candle_core::Tensor;
use candle_nn::{linear, Linear, VarBuilder};

use crate::error::Result;
use crate::models::frozen_input::linear_on_frozen;

pub(crate) struct LogisticRegression {
    linear: Linear,
}

impl LogisticRegression {
    pub fn load(vb: VarBuilder, in_dim: usize, classes: usize) -> Result<Self> {
        Ok(Self {
            linear: linear(in_dim, classes, vb.pp("classifier"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear_on_frozen(&self.linear, x)
    }
}
