//! The fused model: small trainable layers on top of the frozen towers' features.
//!
//! ```text
//!  image features (1280) ─ Linear+ReLU+dropout ─ h_img ─ image head ───────┐ × image_weight
//!  title  (384)          ─ Linear+ReLU+dropout ─ h_ti  ─ title head ───────┤ (log-probabilities,
//!  description (384)     ─ Linear+ReLU+dropout ─ h_de  ─ description head ─┘  weighted mean: prediction)
//!         [h_img, h_ti, h_de] = the concatenation layer (zeros for an absent input)
//!  L2-normalised features ─ joint heads (image head, one text head shared by the fields)
//!                          ─ L2-norm ─ ĝ_img, ĝ_ti, ĝ_de ─ search vector
//! ```
//!
//! The study's branches (a tuning layer per input, concatenated), fused late: one expert per
//! input classifies from its own branch, each trained with its own loss on the rows where it
//! sees its input, and the prediction is the weighted mean of their log-probabilities (a
//! product of experts, as sure as one expert), the image's weighted by `image_weight` where
//! some text votes too. A dense classifier on the whole concatenation layer (early fusion)
//! learns how the modalities co-occur in the training pictures, and that does not carry to
//! pictures of another style; measured on both evaluation protocols, late fusion kept the lead
//! over text that early fusion lost (BENCHMARKS.md, "Fused model: ablation"). What a catalogue
//! with gaps needs:
//!
//! - an absent input is zeros in the concatenation layer and its expert does not vote, so an
//!   item with any subset of inputs is classified by exactly the experts trained for those
//!   inputs ([`branches`]);
//! - joint heads into one image–text space, aligned with InfoNCE (`train::align`), whose
//!   normalised sum is the item's search vector ([`joint`]).
//!
//! The model takes a `VarBuilder` (weights come from training or from a stored model);
//! training-time randomness comes in through [`TrainNoise`], drawn from a seeded generator by
//! the caller, because candle's CPU random generator cannot be seeded.

mod branches;
mod config;
mod inputs;
mod joint;
mod model;

use candle_core::DType;

pub use branches::l2_normalise;
pub use config::FusionConfig;
pub use inputs::{
    batch_from_inputs, partial_batch_from_inputs, FusionBatch, FusionInput, Modality,
    ModalityInputs, TrainNoise,
};
pub use model::{FusedModel, FusionOutput};

/// The dtype every fused-model tensor uses.
pub const DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::VarBuilder;

    use super::*;
    use std::collections::BTreeMap;

    use crate::error::{Error, Result};

    #[test]
    fn a_text_query_fills_every_field() {
        let q = FusionInput::text_query(&["description".into(), "title".into()], &[0.5, 0.5]);
        assert!(q.image.is_none());
        assert_eq!(q.text.len(), 2);
        assert_eq!(q.text["title"], vec![0.5, 0.5]);
    }

    fn small_cfg() -> FusionConfig {
        FusionConfig {
            image_dim: 6,
            text_dim: 4,
            image_proj_dim: 5,
            text_tuning_dim: 3,
            joint_dim: 2,
            ..FusionConfig::trio(vec!["title".into(), "description".into()], 3)
        }
    }

    #[test]
    fn shapes_and_missing_inputs() -> Result<()> {
        let cfg = small_cfg();
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DTYPE, &dev);
        let model = FusedModel::load(vb, &cfg)?;
        let items = vec![
            FusionInput {
                image: Some(vec![1.0; 6]),
                text: BTreeMap::new(),
            },
            FusionInput {
                image: None,
                text: [("title".to_string(), vec![0.5; 4])].into_iter().collect(),
            },
        ];
        let out = model.forward(&model.batch(&items)?, None)?;
        assert_eq!(out.logits.dims(), &[2, 3]);
        assert_eq!(out.concat.dims(), &[2, cfg.concat_dim()]);
        assert_eq!(out.search.dims(), &[2, 2]);
        let probs = model.predict(&items)?;
        for row in probs {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_width_and_empty_input() -> Result<()> {
        let cfg = small_cfg();
        let model = FusedModel::load(VarBuilder::zeros(DTYPE, &Device::Cpu), &cfg)?;
        let wrong = FusionInput {
            image: Some(vec![1.0; 5]),
            text: BTreeMap::new(),
        };
        assert!(matches!(
            model.predict(&[wrong]),
            Err(Error::FeatureDim {
                expected: 6,
                got: 5,
                ..
            })
        ));
        let empty = FusionInput::default();
        assert!(matches!(
            model.predict(&[empty]),
            Err(Error::NoInputs { .. })
        ));
        Ok(())
    }

    #[test]
    fn variables_are_named_by_branch_expert_and_joint_head(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let varmap = candle_nn::VarMap::new();
        FusedModel::load(
            VarBuilder::from_varmap(&varmap, DTYPE, &Device::Cpu),
            &small_cfg(),
        )?;
        let data = varmap.data().lock().map_err(|_| "poisoned")?;
        let names: Vec<&String> = data.keys().collect();
        for want in [
            "image.tuning.weight",
            "text.title.tuning.weight",
            "heads.image.weight",
            "heads.text.title.weight",
            "joint.image.out.weight",
            "joint.text.out.weight",
        ] {
            assert!(
                names.iter().any(|n| *n == want),
                "{want} missing: {names:?}"
            );
        }
        let joint = names
            .iter()
            .filter(|n| FusionConfig::is_joint_var(n))
            .count();
        assert_eq!(joint, 4, "two joint heads, weight and bias each: {names:?}");
        Ok(())
    }

    /// The prediction averages the experts' log-probabilities where their inputs are present,
    /// the image's weighted by `image_weight` where some text votes too; an item with one
    /// input gets that expert's prediction alone.
    #[test]
    fn the_prediction_pools_the_experts_of_the_inputs_present() -> Result<()> {
        let cfg = FusionConfig {
            image_weight: 0.4,
            ..small_cfg()
        };
        let varmap = candle_nn::VarMap::new();
        let model = FusedModel::load(VarBuilder::from_varmap(&varmap, DTYPE, &Device::Cpu), &cfg)?;
        let image = vec![0.3, -1.0, 2.0, 0.5, 0.0, 1.5];
        let field = |name: &str, v: Vec<f32>| -> BTreeMap<String, Vec<f32>> {
            [(name.to_string(), v)].into()
        };
        let title = field("title", vec![1.0, -0.5, 0.25, 2.0]);
        let description = field("description", vec![-0.3, 0.8, 1.5, -1.0]);
        let mut both = title.clone();
        both.extend(description.clone());
        let items = [
            FusionInput {
                image: Some(image.clone()),
                text: BTreeMap::new(),
            },
            FusionInput {
                image: None,
                text: title,
            },
            FusionInput {
                image: None,
                text: description,
            },
            FusionInput {
                image: Some(image),
                text: both,
            },
        ];
        let p = model.predict(&items)?;
        // The weighted geometric mean of the three experts (weights w, 1, 1).
        let total_weight = cfg.image_weight + 2.0;
        let pooled: Vec<f32> = (0..3)
            .map(|c| (p[0][c].powf(cfg.image_weight) * p[1][c] * p[2][c]).powf(1.0 / total_weight))
            .collect();
        let total: f32 = pooled.iter().sum();
        for c in 0..3 {
            let want = pooled[c] / total;
            assert!(
                (p[3][c] - want).abs() < 1e-5,
                "class {c}: {} vs {want}",
                p[3][c]
            );
        }
        // The experts disagree with each other somewhere, or the check proves nothing.
        assert!((0..3).any(|c| (p[0][c] - p[1][c]).abs() > 1e-3), "{p:?}");
        Ok(())
    }
}
