//! A linear layer applied to frozen tower features, whose backward pass computes only the
//! weight's gradient.
//!
//! candle's matrix-product backward computes the gradient of both operands, whether or not one
//! is a constant. For a layer reading frozen features (`[batch, 1280]` image features into a
//! 128-wide projection) the input's gradient is a product as large as the forward one, plus a
//! zero-filled `[batch, 1280]` buffer it is added to, all thrown away: a third of the fused
//! model's matrix work in training. Here the product is a custom operation on the weight that
//! holds the features as a constant, so backpropagation yields `grad_W = gradᵀ · x` and nothing
//! else. The forward product is candle's own (`x · Wᵀ`), so outputs are bit-identical to
//! `Linear::forward`. Off the CPU, or for another dtype, it is `Linear::forward` itself.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor};
use candle_nn::Linear;

use crate::error::Result;

/// `x · Wᵀ`, with `x` a constant.
struct ProductWithConstant {
    x: Tensor,
}

impl CustomOp1 for ProductWithConstant {
    fn name(&self) -> &'static str {
        "product-with-frozen-input"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("{}: the weight must be f32", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the weight must be contiguous", self.name())
        };
        let w = Tensor::from_slice(&values[start..end], layout.shape(), &Device::Cpu)?;
        let y = self.x.matmul(&w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        _weight: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.t()?.matmul(&self.x)?))
    }
}

/// `layer` applied to `x`, a `[batch, in]` matrix of frozen features (never a tensor that
/// needs its own gradient).
pub fn linear_on_frozen(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = layer.weight();
    let on_cpu_f32 = matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.rank() == 2;
    if !on_cpu_f32 {
        return Ok(layer.forward(x)?);
    }
    let x = x.contiguous()?.detach();
    let y = w.apply_op1(ProductWithConstant { x })?;
    Ok(match layer.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Same output as `Linear::forward` and the same weight and bias gradients.
    #[test]
    fn matches_linear_forward_and_weight_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(
            (0..12).map(|i| i as f32 * 0.1 - 0.5).collect(),
            (3, 4),
            &dev,
        )?;
        let b = Var::from_vec(vec![0.1f32, -0.2, 0.3], 3, &dev)?;
        let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let x = Tensor::from_vec((0..8).map(|i| i as f32 * 0.3 - 1.0).collect(), (2, 4), &dev)?;
        let ours = linear_on_frozen(&layer, &x)?;
        let theirs = layer.forward(&x)?;
        assert_eq!(ours.to_vec2::<f32>()?, theirs.to_vec2::<f32>()?);
        let weights = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.25, 1.0, -1.0]], &dev)?;
        let g_ours = (ours * &weights)?.sum_all()?.backward()?;
        let g_theirs = (theirs * &weights)?.sum_all()?.backward()?;
        for v in [&w, &b] {
            let a = g_ours
                .get(v.as_tensor())
                .map(|t| t.flatten_all()?.to_vec1::<f32>());
            let c = g_theirs
                .get(v.as_tensor())
                .map(|t| t.flatten_all()?.to_vec1::<f32>());
            let (a, c) = (a.transpose()?, c.transpose()?);
            let (a, c) = (a.unwrap_or_default(), c.unwrap_or_default());
            assert_eq!(a.len(), c.len());
            for (p, q) in a.iter().zip(&c) {
                assert!((p - q).abs() < 1e-5, "{a:?} vs {c:?}");
            }
            assert!(!a.is_empty());
        }
        Ok(())
    }
}
