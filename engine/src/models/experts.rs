//! The fused network's prediction pooled with single-modality experts (late fusion).
//!
//! The fused network reads the image and the text together, but trained jointly on a noisy
//! catalogue it leans on whichever modality fits the training items best. The image-only and
//! text-only models the study trains beside it on the same split are independent opinions,
//! each early-stopped on its own. Their log-probabilities are added to the fused network's (a
//! product of experts, equal weights), each expert only on the rows where it sees some of its
//! inputs: an item without an image gets no vote from the image expert, not the vote of its
//! "missing" embedding.
//!
//! On the demo protocol this is what lifted the fused model clear of text alone
//! (BENCHMARKS.md, "Demo protocol"); the weights are equal because the validation split, which
//! carries the catalogue's label noise, cannot choose finer weights reliably.

use candle_core::{Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};

use super::fusion::{
    batch_from_inputs, partial_batch_from_inputs, FusedModel, FusionBatch, FusionConfig,
    ModalityInputs,
};
use crate::error::Result;

/// The fused network and the experts pooled with it. With no experts it predicts as the fused
/// network alone.
#[derive(Debug, Clone)]
pub struct PooledClassifier {
    fused: FusedModel,
    experts: Vec<FusedModel>,
}

impl PooledClassifier {
    /// `experts` must share the fused network's label order.
    pub fn new(fused: FusedModel, experts: Vec<FusedModel>) -> Self {
        Self { fused, experts }
    }

    /// The fused network: its concatenation layer and search vectors are the model's.
    pub fn fused(&self) -> &FusedModel {
        &self.fused
    }

    /// How many experts vote beside the fused network.
    pub fn expert_count(&self) -> usize {
        self.experts.len()
    }

    /// Pooled log-probabilities, `[batch, classes]`, of one batch of items that `batch_for`
    /// shapes for each model's configuration (the models read different inputs). Usable as
    /// logits: their softmax is the pooled distribution.
    /// `batch_for(cfg, is_expert)` must accept rows without any input of an expert's.
    pub fn log_probs(
        &self,
        batch_for: impl Fn(&FusionConfig, bool) -> Result<FusionBatch>,
    ) -> Result<Tensor> {
        let fused = self
            .fused
            .forward(&batch_for(self.fused.config(), false)?, None)?;
        let mut pooled = log_softmax(&fused.logits, D::Minus1)?;
        for expert in &self.experts {
            let batch = batch_for(expert.config(), true)?;
            let votes = log_softmax(&expert.forward(&batch, None)?.logits, D::Minus1)?;
            pooled = (pooled + votes.broadcast_mul(&sees_any(&batch)?)?)?;
        }
        // Renormalise, so the rows are log-probabilities again.
        Ok(log_softmax(&pooled, D::Minus1)?)
    }

    /// Class probabilities, one row per input, in the label order of the stored model.
    pub fn predict<I: ModalityInputs>(&self, items: &[I]) -> Result<Vec<Vec<f32>>> {
        let device = self.fused.device();
        let log_probs = self.log_probs(|cfg, is_expert| {
            if is_expert {
                partial_batch_from_inputs(cfg, items, device)
            } else {
                batch_from_inputs(cfg, items, device)
            }
        })?;
        Ok(softmax_last_dim(&log_probs)?.to_vec2()?)
    }
}

/// `[batch, 1]`: 1.0 on the rows where the batch holds at least one input.
fn sees_any(batch: &FusionBatch) -> Result<Tensor> {
    let columns: Vec<&Tensor> = batch
        .image
        .iter()
        .chain(&batch.text)
        .map(|m| &m.present)
        .collect();
    let all = Tensor::cat(&columns, 1)?;
    Ok(all.max_keepdim(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fusion::FusionInput;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use std::collections::BTreeMap;

    fn model(use_image: bool, fields: &[&str], seed_scale: f64) -> FusedModel {
        let cfg = FusionConfig {
            use_image,
            image_dim: 6,
            text_dim: 4,
            text_fields: fields.iter().map(|f| f.to_string()).collect(),
            image_proj_dim: 5,
            num_classes: 3,
            ..FusionConfig::default()
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let m = FusedModel::load(vb, &cfg).unwrap();
        // Distinct weights per model, so the experts disagree with the fused network.
        for var in varmap.all_vars() {
            let scaled = (var.as_tensor() * seed_scale).unwrap();
            var.set(&scaled).unwrap();
        }
        m
    }

    fn input(image: bool, title: bool) -> FusionInput {
        let mut text = BTreeMap::new();
        if title {
            text.insert("title".to_string(), vec![0.3, -0.2, 0.5, 0.1]);
        }
        FusionInput {
            image: image.then(|| vec![0.4, 0.1, -0.3, 0.2, 0.9, -0.5]),
            text,
        }
    }

    fn log(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    /// Whether two log-probability rows agree up to a constant (a normalisation).
    fn assert_same_up_to_shift(a: &[f32], b: &[f32]) {
        let shift = a[0] - b[0];
        for (x, y) in a.iter().zip(b) {
            assert!((x - y - shift).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn experts_vote_only_where_they_see_an_input() {
        let fused = model(true, &["title"], 1.0);
        let image = model(true, &[], 3.0);
        let text = model(false, &["title"], -2.0);
        let pool = PooledClassifier::new(fused.clone(), vec![image.clone(), text.clone()]);
        let items = [input(true, true), input(false, true), input(true, false)];
        let pooled = pool.predict(&items).unwrap();
        let f = fused.predict(&items).unwrap();
        let with_image = [items[0].clone(), items[0].clone(), items[2].clone()];
        let with_text = [items[0].clone(), items[1].clone(), items[1].clone()];
        let i = image.predict(&with_image).unwrap();
        let t = text.predict(&with_text).unwrap();
        let sum = |rows: &[&Vec<f32>]| -> Vec<f32> {
            (0..3)
                .map(|c| rows.iter().map(|r| r[c].ln()).sum())
                .collect()
        };
        assert_same_up_to_shift(&log(&pooled[0]), &sum(&[&f[0], &i[0], &t[0]]));
        assert_same_up_to_shift(&log(&pooled[1]), &sum(&[&f[1], &t[1]]));
        assert_same_up_to_shift(&log(&pooled[2]), &sum(&[&f[2], &i[2]]));
        for row in &pooled {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn without_experts_the_fused_network_predicts_alone() {
        let fused = model(true, &["title"], 1.0);
        let pool = PooledClassifier::new(fused.clone(), Vec::new());
        let items = [input(true, true), input(false, true)];
        let (a, b) = (
            pool.predict(&items).unwrap(),
            fused.predict(&items).unwrap(),
        );
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}
