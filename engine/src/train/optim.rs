//! AdamW with its state on the host: one pass over each parameter per step.
//!
//! candle-nn's `AdamW` spends about fourteen tensor operations per parameter per step, each
//! allocating a new tensor, and every operation on 64k or more elements goes through candle's
//! CPU thread barrier, which spin-waits for its workers. On the fused model's small heads that
//! overhead, not arithmetic, dominated a training step. This version keeps the weights' master
//! copy and both moments as host vectors, updates them in one loop, and writes each parameter
//! back once. The update is the same decoupled-weight-decay Adam (Loshchilov & Hutter), so it
//! trains the same way; it is deterministic because the loop is sequential.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW's hyper-parameters (PyTorch's defaults for the betas and epsilon).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWParams {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamWParams {
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Slot {
    var: Var,
    theta: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW over `vars`, state on the host.
pub(crate) struct HostAdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    step: i32,
}

impl HostAdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let n = theta.len();
                Ok(Slot {
                    var,
                    theta,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            params,
            step: 0,
        })
    }

    /// Backpropagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// One step from gradients already computed (several optimisers can share one backward).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let (b1, b2) = (p.beta1 as f32, p.beta2 as f32);
        let scale_m = (1.0 / (1.0 - p.beta1.powi(self.step))) as f32;
        let scale_v = (1.0 / (1.0 - p.beta2.powi(self.step))) as f32;
        let decay = (1.0 - p.lr * p.weight_decay) as f32;
        let (lr, eps) = (p.lr as f32, p.eps as f32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            for (((theta, m), v), g) in slot
                .theta
                .iter_mut()
                .zip(&mut slot.m)
                .zip(&mut slot.v)
                .zip(&g)
            {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let update = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                *theta = *theta * decay - lr * update;
            }
            let t = Tensor::from_slice(&slot.theta, slot.var.shape(), slot.var.device())?;
            slot.var.set(&t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One step from zero moments moves every weight by about `lr` against its gradient's sign
    /// (Adam's first step is sign descent), after weight decay.
    #[test]
    fn first_step_is_sign_descent_with_decay() -> Result<()> {
        let var = Var::from_vec(vec![1.0f32, -2.0, 0.5], 3, &Device::Cpu)?;
        let mut opt = HostAdamW::new(vec![var.clone()], AdamWParams::new(0.1, 0.5))?;
        // loss = sum(w * c) has gradient c.
        let c = Tensor::new(&[3.0f32, -1.0, 0.25], &Device::Cpu)?;
        opt.backward_step(&(var.as_tensor() * &c)?.sum_all()?)?;
        let got = var.as_tensor().to_vec1::<f32>()?;
        let decay = 1.0 - 0.1 * 0.5;
        let want = [1.0 * decay - 0.1, -2.0 * decay + 0.1, 0.5 * decay - 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        Ok(())
    }
}
