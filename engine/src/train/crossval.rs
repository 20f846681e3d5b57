//! Out-of-fold class probabilities: for every labelled example, the fused model's prediction
//! from a model that never saw it. Confident disagreement with the given label is the signal
//! label-noise detection (cleanlab's confident learning) works from.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::metrics::softmax_rows;
use super::split::{group_folds, per_class_among, Split};
use super::trainer::{fused_logits, Trainer, FUSED};
use super::{fingerprint, Example};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// One labelled example's out-of-fold prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutOfFoldRow {
    pub key: u64,
    /// The label the catalogue gives the example.
    pub label: String,
    /// Its index in [`OutOfFold::labels`].
    pub label_index: usize,
    /// The fold the example was held out in.
    pub fold: usize,
    /// Probabilities over [`OutOfFold::labels`].
    pub probs: Vec<f32>,
}

/// Out-of-fold predictions for every labelled example with at least one input, in example
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutOfFold {
    pub labels: Vec<String>,
    pub rows: Vec<OutOfFoldRow>,
}

/// Splits the labelled examples into `k_folds` stratified folds (groups kept together); for
/// each fold trains the fused model on the others (epoch chosen on a per-class holdout of
/// them, `cfg.holdout`) and predicts the fold.
pub fn cross_val_probabilities(
    examples: &[Example],
    k_folds: usize,
    cfg: &TrainConfig,
    device: &Device,
    progress: &dyn Progress,
) -> Result<OutOfFold> {
    // One image width per fold (`image_proj_candidates` left out): a fold's head only scores
    // its held-out items, and a second width would double the run.
    let cfg = &TrainConfig {
        image_proj_candidates: Vec::new(),
        ..cfg.clone()
    };
    let trainer = Trainer::new(cfg.clone(), device.clone())?;
    let table = trainer.table(examples)?;
    let folds = group_folds(examples, k_folds, cfg.seed)?;
    if let Some(i) = folds.iter().position(Vec::is_empty) {
        return Err(Error::NotEnoughData {
            reason: format!("fold {i} of {k_folds} is empty: too few labelled examples or groups"),
        });
    }
    let inputs = Trainer::full_inputs(&table);
    let full = trainer.model_config(&table, &inputs);
    let print = fingerprint(examples);
    let mut fold_of = vec![usize::MAX; examples.len()];
    let mut probs: Vec<Option<Vec<f32>>> = vec![None; examples.len()];
    for (k, held) in folds.iter().enumerate() {
        for &r in held {
            fold_of[r] = k;
        }
        let rest: Vec<usize> = folds
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        let inner = per_class_among(
            examples,
            &rest,
            cfg.holdout,
            cfg.seed.wrapping_add(k as u64 + 1),
        )?;
        let mut val = inner.val;
        val.extend(inner.test);
        val.sort_unstable();
        let split = Split {
            train: inner.train,
            val,
            test: Vec::new(),
        };
        let split = trainer.usable(&table, split, progress)?;
        let model = trainer.fit_fused(
            &table,
            &split,
            &format!("{FUSED} fold {}/{k_folds}", k + 1),
            &inputs,
            &print,
            progress,
        )?;
        let fused = model.load(device)?;
        let predict: Vec<usize> = held
            .iter()
            .copied()
            .filter(|&r| table.has_any_input(r, &full))
            .collect();
        let p = softmax_rows(&fused_logits(&fused, &table, &full, &predict, None)?);
        for (r, row) in predict.into_iter().zip(p) {
            probs[r] = Some(row);
        }
    }
    let rows = examples
        .iter()
        .enumerate()
        .filter_map(|(r, e)| {
            let p = probs[r].take()?;
            let label = e.label.clone()?;
            let label_index = table.labels[r]? as usize;
            Some(OutOfFoldRow {
                key: e.key,
                label,
                label_index,
                fold: fold_of[r],
                probs: p,
            })
        })
        .collect();
    Ok(OutOfFold {
        labels: table.label_names.clone(),
        rows,
    })
}
