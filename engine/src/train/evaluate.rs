//! Scoring a stored model on labelled examples it never saw (an external test set): the fused
//! model intact, the fused model with each input removed in turn (the study's robustness to
//! missing data, measured), and the single-modality baselines stored beside it.
//!
//! Examples whose label the model does not know cannot be scored; they are counted per label
//! and reported, never silently dropped. Examples without a label are counted too.

use std::collections::BTreeMap;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::config::Input;
use super::data::FeatureTable;
use super::metrics::SplitMetrics;
use super::trainer::evaluate_fused;
use super::{Example, TrainedModel};
use crate::error::{Error, Result};

/// One model scored on the known-label examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRow {
    /// Whose weights: `fused`, or a stored baseline (`image-only`, `text-only`).
    pub model: String,
    /// The input withheld from every example (fused rows only); `None`: all inputs given.
    pub removed: Option<Input>,
    /// The inputs the model was given, e.g. `image + description + title`.
    pub inputs: String,
    /// Scored examples that had the removed input (the others are unchanged by its removal);
    /// `None` when nothing was removed.
    pub items_with_removed: Option<usize>,
    pub metrics: SplitMetrics,
}

/// What [`evaluate_model`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Examples with a label the model knows: the ones every row scores.
    pub scored: usize,
    /// Examples whose label the model was not trained on, per label.
    pub unknown_labels: BTreeMap<String, usize>,
    /// Examples without a label.
    pub unlabelled: usize,
    /// Scored examples with each input (image, then the model's text fields).
    pub with_input: BTreeMap<String, usize>,
    /// The fused model intact, then with each input removed, then the stored baselines.
    pub rows: Vec<EvaluationRow>,
}

impl Evaluation {
    /// Examples with a label the model does not know.
    pub fn unknown(&self) -> usize {
        self.unknown_labels.values().sum()
    }

    /// The row of `model` with `removed` withheld.
    pub fn row(&self, model: &str, removed: Option<&Input>) -> Option<&EvaluationRow> {
        self.rows
            .iter()
            .find(|r| r.model == model && r.removed.as_ref() == removed)
    }
}

/// Scores `model` (and its stored baselines) on `examples`; see the module documentation.
pub fn evaluate_model(
    model: &TrainedModel,
    examples: &[Example],
    device: &Device,
) -> Result<Evaluation> {
    let mut unknown_labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut unlabelled = 0;
    let known: Vec<Example> = examples
        .iter()
        .filter(|e| match e.label.as_deref() {
            None => {
                unlabelled += 1;
                false
            }
            Some(l) if model.labels.iter().any(|m| m == l) => true,
            Some(l) => {
                *unknown_labels.entry(l.to_string()).or_default() += 1;
                false
            }
        })
        .cloned()
        .collect();
    if known.is_empty() {
        let unknown: Vec<String> = unknown_labels
            .iter()
            .take(5)
            .map(|(l, n)| format!("`{l}` ({n})"))
            .collect();
        return Err(Error::NotEnoughData {
            reason: format!(
                "no example has a label the model knows ({} unlabelled; unknown labels: {}{})",
                unlabelled,
                if unknown.is_empty() {
                    "none".to_string()
                } else {
                    unknown.join(", ")
                },
                if unknown_labels.len() > 5 {
                    ", …"
                } else {
                    ""
                }
            ),
        });
    }
    for b in &model.baselines {
        if b.labels != model.labels {
            return Err(Error::ModelFormat {
                reason: format!(
                    "baseline `{}` has {} labels, the model {}: they were not trained together",
                    b.variant,
                    b.labels.len(),
                    model.labels.len()
                ),
            });
        }
    }
    let table = FeatureTable::for_model(&known, &model.config, &model.labels, device)?;
    let rows: Vec<usize> = (0..known.len()).collect();
    let inputs = model.inputs();
    let has = |input: &Input, r: usize| -> bool {
        let field = |f: &str| {
            table
                .fields
                .iter()
                .position(|x| x == f)
                .is_some_and(|i| table.text[i].present_host[r])
        };
        match input {
            Input::Image => inputs.image && table.image.as_ref().is_some_and(|c| c.present_host[r]),
            Input::Text(f) => field(f),
            Input::AllText => inputs.text_fields.iter().any(|f| field(f)),
        }
    };
    let mut with_input = BTreeMap::new();
    if inputs.image {
        with_input.insert(
            Input::Image.to_string(),
            rows.iter().filter(|&&r| has(&Input::Image, r)).count(),
        );
    }
    for f in &inputs.text_fields {
        let input = Input::Text(f.clone());
        with_input.insert(f.clone(), rows.iter().filter(|&&r| has(&input, r)).count());
    }

    let fused = model.load(device)?;
    let mut out = vec![EvaluationRow {
        model: model.variant.clone(),
        removed: None,
        inputs: inputs.to_string(),
        items_with_removed: None,
        metrics: evaluate_fused(&fused, &table, &rows, None)?,
    }];
    let removals = inputs.removals();
    for removed in removals {
        let rest = inputs.without(&removed);
        if rest.is_empty() {
            continue;
        }
        out.push(EvaluationRow {
            model: model.variant.clone(),
            inputs: rest.to_string(),
            items_with_removed: Some(rows.iter().filter(|&&r| has(&removed, r)).count()),
            metrics: evaluate_fused(&fused, &table, &rows, Some(&removed))?,
            removed: Some(removed),
        });
    }
    for baseline in &model.baselines {
        let loaded = baseline.load(device)?;
        out.push(EvaluationRow {
            model: baseline.variant.clone(),
            removed: None,
            inputs: baseline.inputs().to_string(),
            items_with_removed: None,
            metrics: evaluate_fused(&loaded, &table, &rows, None)?,
        });
    }
    Ok(Evaluation {
        scored: known.len(),
        unknown_labels,
        unlabelled,
        with_input,
        rows: out,
    })
}
