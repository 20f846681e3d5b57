//! The alignment's loss: a symmetric InfoNCE over image–text pairs where pairs of one group
//! (renders of one emoji) are each other's positives.
//!
//! Written with candle's tensor operations, the loss and its gradient cost some forty passes
//! over the step's `n × n` similarity matrix, each allocating, and candle's backward pass also
//! fills and adds a zero gradient for every operand that needs none, which made it most of the
//! alignment's time on the full demo. On the CPU [`grouped_info_nce`] therefore computes the loss from the similarity matrix as one
//! custom operation with a hand-written gradient: four passes forward, one backward. The
//! tensor version stays for other devices and as the reference the tests check it against.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};

use crate::error::Result;

/// Symmetric InfoNCE between unit image and unit text vectors, one pair per row, where
/// `groups[i]` names row `i`'s group: each pair's positives are the pairs of its group,
/// weighted equally; a pair without a group is its own only positive.
pub(crate) fn grouped_info_nce(
    image: &Tensor,
    text: &Tensor,
    groups: &[Option<&str>],
    temperature: f32,
) -> Result<Tensor> {
    if !image.device().is_cpu() {
        let targets = group_targets(groups, image.device())?;
        return grouped_info_nce_tensors(image, text, &targets, temperature);
    }
    let sim = (image.matmul(&text.t()?)? / f64::from(temperature))?;
    let op = GroupedInfoNce {
        groups: group_ids(groups),
        cache: Mutex::new(None),
    };
    Ok(sim.contiguous()?.apply_op1(op)?)
}

/// The same loss from candle's tensor operations, with `targets[i][j]` the weight of pair `j` as
/// a positive for row `i` (rows sum to 1; the identity gives plain InfoNCE). `targets` must be
/// symmetric.
pub(crate) fn grouped_info_nce_tensors(
    image: &Tensor,
    text: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<Tensor> {
    let n = image.dim(0)? as f64;
    let sim = (image.matmul(&text.t()?)? / f64::from(temperature))?;
    let image_to_text = candle_nn::ops::log_softmax(&sim, D::Minus1)?;
    let text_to_image = candle_nn::ops::log_softmax(&sim.t()?.contiguous()?, D::Minus1)?;
    let a = (image_to_text * targets)?.sum_all()?;
    let b = (text_to_image * targets)?.sum_all()?;
    Ok(((a + b)? * (-0.5 / n))?)
}

/// The positive weights of rows in `groups` (see [`grouped_info_nce_tensors`]).
fn group_targets(groups: &[Option<&str>], device: &candle_core::Device) -> Result<Tensor> {
    let ids = group_ids(groups);
    let n = groups.len();
    let mut t = vec![0f32; n * n];
    for members in group_members(&ids) {
        let w = 1.0 / members.len() as f32;
        for &i in &members {
            for &j in &members {
                t[i * n + j] = w;
            }
        }
    }
    Ok(Tensor::from_vec(t, (n, n), device)?)
}

/// A small integer per row naming its group; rows without a group get one each.
fn group_ids(groups: &[Option<&str>]) -> Vec<usize> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut next = 0;
    groups
        .iter()
        .map(|g| {
            let mut fresh = || {
                next += 1;
                next - 1
            };
            match g {
                Some(g) => *ids.entry(g).or_insert_with(fresh),
                None => fresh(),
            }
        })
        .collect()
}

/// The rows of each group id, in row order.
fn group_members(ids: &[usize]) -> Vec<Vec<usize>> {
    let mut members = vec![Vec::new(); ids.iter().max().map_or(0, |m| m + 1)];
    for (i, &g) in ids.iter().enumerate() {
        members[g].push(i);
    }
    members
}

/// The loss of an `n × n` similarity matrix `s` (already divided by the temperature), with
/// `t[i][j] = 1/|group(i)|` for `j` in row `i`'s group:
///
/// `L = (1 / 2n) · (Σᵢ lse(sᵢ.) + Σⱼ lse(s.ⱼ) − 2 Σᵢⱼ tᵢⱼ sᵢⱼ)`, since `t` is symmetric and its
/// rows sum to 1, and `∂L/∂sᵢⱼ = (1 / 2n) · (pᵢⱼ + cᵢⱼ − 2 tᵢⱼ)` with `p` the row-wise and `c`
/// the column-wise softmax of `s`.
struct GroupedInfoNce {
    groups: Vec<usize>,
    /// `p` and `c` from the forward pass, for the gradient.
    cache: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl GroupedInfoNce {
    fn softmaxes(&self, s: &[f32], n: usize) -> (Vec<f32>, Vec<f32>, f64) {
        let mut lse_sum = 0f64;
        // Row-wise.
        let mut p = vec![0f32; n * n];
        for (row, out) in s.chunks_exact(n).zip(p.chunks_exact_mut(n)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
            lse_sum += f64::from(max) + f64::from(sum).ln();
        }
        // Column-wise, walking rows so memory is read in order.
        let mut max = vec![f32::NEG_INFINITY; n];
        for row in s.chunks_exact(n) {
            for (m, &x) in max.iter_mut().zip(row) {
                *m = m.max(x);
            }
        }
        let mut c = vec![0f32; n * n];
        let mut sum = vec![0f32; n];
        for (row, out) in s.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
            for (((o, &x), m), acc) in out.iter_mut().zip(row).zip(&max).zip(&mut sum) {
                *o = (x - m).exp();
                *acc += *o;
            }
        }
        let inv: Vec<f32> = sum.iter().map(|s| 1.0 / s).collect();
        for out in c.chunks_exact_mut(n) {
            for (o, i) in out.iter_mut().zip(&inv) {
                *o *= i;
            }
        }
        lse_sum += max
            .iter()
            .zip(&sum)
            .map(|(&m, &s)| f64::from(m) + f64::from(s).ln())
            .sum::<f64>();
        (p, c, lse_sum)
    }
}

impl CustomOp1 for GroupedInfoNce {
    fn name(&self) -> &'static str {
        "grouped-info-nce"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.groups.len();
        let s = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((start, end))) if end - start == n * n => &v[start..end],
            _ => candle_core::bail!("grouped-info-nce wants a contiguous f32 {n} × {n} matrix"),
        };
        let (p, c, lse_sum) = self.softmaxes(s, n);
        let mut positive = 0f64;
        for members in group_members(&self.groups) {
            let w = 1.0 / members.len() as f64;
            for &i in &members {
                positive += w * members
                    .iter()
                    .map(|&j| f64::from(s[i * n + j]))
                    .sum::<f64>();
            }
        }
        let loss = (lse_sum - 2.0 * positive) / (2.0 * n as f64);
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((p, c));
        }
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let n = self.groups.len();
        let cached = self.cache.lock().ok().and_then(|mut c| c.take());
        let (mut p, c) = match cached {
            Some(pc) => pc,
            None => {
                let s = arg.flatten_all()?.to_vec1::<f32>()?;
                let (p, c, _) = self.softmaxes(&s, n);
                (p, c)
            }
        };
        let scale = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?
            / (2 * n) as f32;
        for (g, c) in p.iter_mut().zip(&c) {
            *g = (*g + c) * scale;
        }
        for members in group_members(&self.groups) {
            let w = 2.0 * scale / members.len() as f32;
            for &i in &members {
                for &j in &members {
                    p[i * n + j] -= w;
                }
            }
        }
        Ok(Some(Tensor::from_vec(p, (n, n), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn unit_rows(rows: &[[f32; 2]]) -> Result<Tensor> {
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect();
        Ok(Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu)?)
    }

    /// Plain symmetric InfoNCE, row `i` of each side the positive pair: the reference the
    /// grouped loss must reduce to.
    fn info_nce(image: &Tensor, text: &Tensor, temperature: f32) -> Result<Tensor> {
        let n = image.dim(0)?;
        let targets = Tensor::arange(0u32, n as u32, image.device())?;
        let sim = (image.matmul(&text.t()?)? / f64::from(temperature))?;
        let a = candle_nn::loss::cross_entropy(&sim, &targets)?;
        let b = candle_nn::loss::cross_entropy(&sim.t()?.contiguous()?, &targets)?;
        Ok(((a + b)? * 0.5)?)
    }

    #[test]
    fn identity_targets_give_plain_info_nce() -> Result<()> {
        let image = unit_rows(&[[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]])?;
        let text = unit_rows(&[[0.9, 0.1], [0.1, 1.0], [-0.7, -0.2]])?;
        let eye = Tensor::eye(3, candle_core::DType::F32, &Device::Cpu)?;
        let grouped = grouped_info_nce_tensors(&image, &text, &eye, 0.1)?.to_scalar::<f32>()?;
        let plain = info_nce(&image, &text, 0.1)?.to_scalar::<f32>()?;
        assert!((grouped - plain).abs() < 1e-5, "{grouped} vs {plain}");
        Ok(())
    }

    #[test]
    fn a_group_mate_is_not_a_negative() -> Result<()> {
        // Rows 0 and 1 are one thing drawn twice. Matching row 0's image with row 1's text (and
        // the reverse) is as right as matching each with its own: the grouped loss must not
        // change when the two texts swap, while plain InfoNCE must get worse.
        let image = unit_rows(&[[1.0, 0.0], [0.6, 0.8], [-1.0, 0.3]])?;
        let text = image.clone();
        let swapped = unit_rows(&[[0.6, 0.8], [1.0, 0.0], [-1.0, 0.3]])?;
        let eye = Tensor::eye(3, candle_core::DType::F32, &Device::Cpu)?;
        let groups = Tensor::from_vec(
            vec![0.5f32, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0],
            (3, 3),
            &Device::Cpu,
        )?;
        let loss = |t: &Tensor, targets: &Tensor| -> Result<f32> {
            Ok(grouped_info_nce_tensors(&image, t, targets, 0.1)?.to_scalar::<f32>()?)
        };
        assert!(loss(&swapped, &eye)? > loss(&text, &eye)? + 1.0);
        assert!((loss(&swapped, &groups)? - loss(&text, &groups)?).abs() < 1e-5);
        Ok(())
    }

    /// The one-pass CPU loss and its gradients agree with the tensor version on random unit
    /// vectors, groups of one to four rows and ungrouped rows.
    #[test]
    fn the_cpu_operation_matches_the_tensor_version() -> Result<()> {
        let (n, d) = (37, 8);
        let mut rng = StdRng::seed_from_u64(7);
        let groups: Vec<Option<String>> = (0..n)
            .map(|i| (i % 5 != 0).then(|| format!("g{}", rng.gen_range(0..12))))
            .collect();
        let groups: Vec<Option<&str>> = groups.iter().map(|g| g.as_deref()).collect();
        let unit = |rng: &mut StdRng| -> Result<Var> {
            let x: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
            let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
            Ok(Var::from_tensor(&x.broadcast_div(&norm)?)?)
        };
        let (image, text) = (unit(&mut rng)?, unit(&mut rng)?);
        let fast = grouped_info_nce(image.as_tensor(), text.as_tensor(), &groups, 0.1)?;
        let targets = group_targets(&groups, &Device::Cpu)?;
        let slow = grouped_info_nce_tensors(image.as_tensor(), text.as_tensor(), &targets, 0.1)?;
        let (a, b) = (fast.to_scalar::<f32>()?, slow.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "loss {a} vs {b}");
        let (gf, gs) = ((fast * 3.0)?.backward()?, (slow * 3.0)?.backward()?);
        for var in [&image, &text] {
            let missing = || crate::error::Error::InvalidArgument("no gradient".into());
            let f = gf.get(var.as_tensor()).ok_or_else(missing)?;
            let s = gs.get(var.as_tensor()).ok_or_else(missing)?;
            let diff = (f - s)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let size = s.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(size > 1e-3, "gradient too small to compare: {size}");
            assert!(
                diff < 1e-4 * size.max(1.0),
                "gradients differ by {diff} (size {size})"
            );
        }
        Ok(())
    }
}
