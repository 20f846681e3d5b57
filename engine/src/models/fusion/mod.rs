//! The fused model: small trainable layers on top of the frozen towers' features.
//!
//! ```text
//!  image features (1280) ─ Linear+ReLU+dropout ─ h_img ─┬─ presence gate ─┐
//!  title  (384)          ─ Linear+ReLU+dropout ─ h_ti  ─┼─ presence gate ─┼─ concat ─ Linear ─ logits
//!  description (384)     ─ Linear+ReLU+dropout ─ h_de  ─┼─ presence gate ─┘  ("concatenation layer")
//!                                                       │
//!  L2-normalised features ─ joint heads (image head, one text head shared by the fields)
//!                          ─ L2-norm ─ ĝ_img, ĝ_ti, ĝ_de ─ search vector
//! ```
//!
//! The study's design (a tuning layer per input, concatenated, a dense classifier), plus what a
//! catalogue with gaps and cross-modal search need (the README's "The fused model" says why):
//!
//! - a presence gate per branch, `present · h + (1 − present) · m` with a learned "missing"
//!   embedding `m`, so an absent input is never read as data ([`branches`]);
//! - modality dropout while training, never hiding a row's every input ([`inputs`]);
//! - joint heads into one image–text space, aligned with InfoNCE, whose normalised sum is the
//!   item's search vector ([`joint`]);
//! - optional late-fusion heads per branch with an auxiliary loss ([`branches`]).
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
pub use config::{FusionConfig, JointInput};
pub use inputs::{
    batch_from_inputs, partial_batch_from_inputs, FusionBatch, FusionInput, Modality,
    ModalityInputs, TrainNoise,
};
pub use joint::info_nce;
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
    fn joint_heads_on_branch_outputs_or_on_features_name_their_variables(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        // A partial settings file takes every default, including heads on features.
        let partial: FusionConfig = serde_json::from_str(r#"{"dropout": 0.3}"#)?;
        assert_eq!(partial.joint_input, JointInput::Features);
        assert_eq!(small_cfg().joint_input, JointInput::Features);
        let cfg = FusionConfig {
            joint_input: JointInput::BranchOutputs,
            ..small_cfg()
        };
        let names =
            |cfg: &FusionConfig| -> std::result::Result<Vec<String>, Box<dyn std::error::Error>> {
                let varmap = candle_nn::VarMap::new();
                FusedModel::load(VarBuilder::from_varmap(&varmap, DTYPE, &Device::Cpu), cfg)?;
                let data = varmap.data().lock().map_err(|_| "poisoned")?;
                Ok(data.keys().cloned().collect())
            };
        let old = names(&cfg)?;
        assert!(old.iter().any(|n| n == "image.joint.weight"));
        assert!(old.iter().any(|n| n == "text.title.joint.weight"));
        assert!(!old.iter().any(|n| n.starts_with("joint.")));
        let new = names(&small_cfg())?;
        assert!(new.iter().any(|n| n == "joint.image.out.weight"));
        assert!(new.iter().any(|n| n == "joint.text.out.weight"));
        assert!(!new.iter().any(|n| n.contains(".joint.")));
        Ok(())
    }

    #[test]
    fn modality_dropout_never_hides_everything() -> Result<()> {
        use rand::SeedableRng;
        let cfg = FusionConfig {
            modality_dropout: 0.9,
            ..small_cfg()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rows = 200;
        let image_present: Vec<bool> = (0..rows).map(|i| i % 3 != 0).collect();
        let text_present = vec![
            (0..rows).map(|i| i % 2 == 0).collect::<Vec<_>>(),
            vec![true; rows],
        ];
        let noise =
            TrainNoise::sample(&cfg, &image_present, &text_present, &mut rng, &Device::Cpu)?;
        let img: Vec<f32> = noise
            .image_visible
            .as_ref()
            .map(|t| t.flatten_all()?.to_vec1())
            .transpose()?
            .unwrap_or_default();
        let t0: Vec<f32> = noise.text_visible[0].flatten_all()?.to_vec1()?;
        let t1: Vec<f32> = noise.text_visible[1].flatten_all()?.to_vec1()?;
        for i in 0..rows {
            let shown = (img[i] > 0.0 && image_present[i])
                || (t0[i] > 0.0 && text_present[0][i])
                || t1[i] > 0.0;
            assert!(shown, "row {i} lost every input");
        }
        Ok(())
    }
}
