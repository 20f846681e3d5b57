//! The training loop and the study: logistic regression, image-only, text-only and fused models
//! trained on one split and scored on its test part, as in the study's table.
//!
//! Determinism: weights are initialised, batches shuffled and dropout masks drawn from seeded
//! generators on the host (candle's CPU generator cannot be seeded), and candle's CPU kernels
//! are deterministic, so one seed gives one result.
//!
//! Concurrency: the joint (search) heads on frozen features are aligned on their own cached
//! inputs and never feed the classifier, so their alignment runs on a second thread beside
//! the classifier training (and, in the study, beside the baselines). Each side updates only
//! its own variables, from its own seeded generator, so the result is the same as one after
//! the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::baseline::LogisticRegression;
use super::config::{Input, InputSet, TrainConfig};
use super::data::FeatureTable;
use super::metrics::SplitMetrics;
use super::model_file::{varmap_to_safetensors, ModelMetrics, TrainedModel, WidthTrial};
use super::optim::{AdamWParams, HostAdamW};
use super::split::{self, Split};
use super::{fingerprint, Example};
use crate::error::{Error, Result};
use crate::models::fusion::{FusedModel, FusionConfig, TrainNoise, DTYPE};
use crate::progress::Progress;

/// Variant names used in reports and stored models.
pub const LOGISTIC_REGRESSION: &str = "logistic regression";
pub const IMAGE_ONLY: &str = "image-only";
pub const TEXT_ONLY: &str = "text-only";
pub const FUSED: &str = "fused";

/// Rows evaluated per forward pass; bounds memory on large splits.
const EVAL_CHUNK: usize = 4096;

mod jobs;
mod loops;
mod report;
mod selection;

use jobs::*;
pub(crate) use loops::reinit_seeded;
pub use report::{Report, ReportRow, Study};

/// Trains fused models and baselines with one [`TrainConfig`] on one device.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, device })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The text fields the models read: the configured list, or every field in the data.
    pub(crate) fn fields_for(&self, examples: &[Example]) -> Vec<String> {
        if self.cfg.model.text_fields.is_empty() {
            FeatureTable::fields_in(examples)
        } else {
            self.cfg.model.text_fields.clone()
        }
    }

    pub(crate) fn table(&self, examples: &[Example]) -> Result<FeatureTable> {
        let table = FeatureTable::build(examples, &self.fields_for(examples), &self.device)?;
        if table.label_names.len() < 2 {
            return Err(Error::NotEnoughData {
                reason: format!(
                    "{} distinct label(s); a classifier needs at least two",
                    table.label_names.len()
                ),
            });
        }
        Ok(table)
    }

    /// All inputs present in the data.
    pub(crate) fn full_inputs(table: &FeatureTable) -> InputSet {
        InputSet {
            image: table.image.is_some(),
            text_fields: table.fields.clone(),
        }
    }

    /// The model configuration for `inputs` on `table`.
    pub(crate) fn model_config(&self, table: &FeatureTable, inputs: &InputSet) -> FusionConfig {
        FusionConfig {
            use_image: inputs.image,
            image_dim: if table.image_dim > 0 {
                table.image_dim
            } else {
                self.cfg.model.image_dim
            },
            text_dim: if table.text_dim > 0 {
                table.text_dim
            } else {
                self.cfg.model.text_dim
            },
            text_fields: inputs.text_fields.clone(),
            num_classes: table.label_names.len(),
            ..self.cfg.model.clone()
        }
    }

    /// Splits per class and runs the study: see [`Trainer::run_study_on`].
    pub fn run_study(&self, examples: &[Example], progress: &dyn Progress) -> Result<Study> {
        let split = split::per_class(examples, self.cfg.holdout, self.cfg.seed)?;
        self.run_study_on(examples, split, progress)
    }

    /// Trains logistic regression, image-only, text-only and fused models on `split.train`,
    /// choosing each one's epoch on `split.val`, and scores them on `split.test`.
    pub fn run_study_on(
        &self,
        examples: &[Example],
        split: Split,
        progress: &dyn Progress,
    ) -> Result<Study> {
        let started = Instant::now();
        let table = self.table(examples)?;
        let split = self.usable(&table, split, progress)?;
        let print = fingerprint(examples);
        let all = Self::full_inputs(&table);
        let fused_runs = self.prepare_candidates(&table, &split, FUSED, &all)?;
        let two_modalities = all.image && !all.text_fields.is_empty();
        let image_only_inputs = all.without(&Input::AllText);
        let text_only_inputs = all.without(&Input::Image);
        // The study's models train independently of each other, so they run as jobs on as many
        // threads as rayon may use, longest first (measured on the full demo: the fused
        // model's alignment, its classifier, text-only, image-only, logistic regression).
        let (t, sp, pr) = (&table, &split, &print);
        let mut jobs = self.candidate_jobs(&fused_runs, t, sp, progress);
        if two_modalities {
            for (variant, inputs) in [
                (TEXT_ONLY, &text_only_inputs),
                (IMAGE_ONLY, &image_only_inputs),
            ] {
                jobs.push(Box::new(move || {
                    let m = self.fit_fused(t, sp, variant, inputs, pr, progress)?;
                    Ok(Done::Model(Box::new(m)))
                }));
            }
        }
        jobs.push(Box::new(move || {
            Ok(Done::Row(self.fit_logistic_regression(t, sp, progress)?))
        }));
        let mut parts = FusedParts::default();
        let (mut image_only, mut text_only, mut logistic) = (None, None, None);
        for done in run_jobs(jobs)? {
            match parts.take(done) {
                Some(Done::Model(m)) if m.variant == IMAGE_ONLY => image_only = Some(*m),
                Some(Done::Model(m)) => text_only = Some(*m),
                Some(Done::Row(row)) => logistic = Some(row),
                _ => {}
            }
        }
        let missing = |what: &str| Error::InvalidArgument(format!("the study lost its {what}"));
        let (fits, align_seconds) = parts.finish(fused_runs.len())?;
        let (run, fit, align_seconds) =
            self.choose(fused_runs, fits, align_seconds, &table, &split, progress)?;
        let mut fused = self.finish_fused(run, &table, &split, fit, align_seconds, &print)?;
        // The baselines travel with the model, so `trio eval` can score them on new data.
        fused = fused.with_baselines(image_only.iter().chain(&text_only).cloned().collect());
        let mut rows = vec![logistic.ok_or_else(|| missing("logistic regression"))?];
        rows.extend(image_only.iter().chain(&text_only).map(row_of));
        rows.push(row_of(&fused));
        let report = Report {
            label_field: self.cfg.label_field.clone(),
            seed: self.cfg.seed,
            classes: table.label_names.len(),
            train_items: split.train.len(),
            val_items: split.val.len(),
            test_items: split.test.len(),
            fingerprint: print,
            rows,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok(Study {
            report,
            split,
            fused,
            image_only,
            text_only,
        })
    }

    /// Trains one fused-family variant reading `inputs` on `split` and scores it.
    pub fn train_variant(
        &self,
        examples: &[Example],
        split: &Split,
        variant: &str,
        inputs: &InputSet,
        progress: &dyn Progress,
    ) -> Result<TrainedModel> {
        let table = self.table(examples)?;
        let split = self.usable(&table, split.clone(), progress)?;
        self.fit_fused(
            &table,
            &split,
            variant,
            inputs,
            &fingerprint(examples),
            progress,
        )
    }

    /// Scores `model` on `rows` of `examples` (all labelled), with `hide` removed from every row.
    pub fn evaluate(
        &self,
        model: &TrainedModel,
        examples: &[Example],
        rows: &[usize],
        hide: Option<&Input>,
    ) -> Result<SplitMetrics> {
        let mut scores = self.evaluate_many(model, examples, &[(rows, hide)])?;
        scores
            .pop()
            .ok_or_else(|| Error::InvalidArgument("no score was computed".into()))
    }

    /// [`Trainer::evaluate`] for several (rows, removed input) pairs, in order: the examples'
    /// features and the model's classifier are loaded once for all of them.
    pub fn evaluate_many(
        &self,
        model: &TrainedModel,
        examples: &[Example],
        queries: &[(&[usize], Option<&Input>)],
    ) -> Result<Vec<SplitMetrics>> {
        let table = self.table(examples)?;
        let fused = self.check_labels(model, &table)?;
        queries
            .iter()
            .map(|&(rows, hide)| evaluate_fused(&fused, &table, rows, hide))
            .collect()
    }

    pub(crate) fn check_labels(
        &self,
        model: &TrainedModel,
        table: &FeatureTable,
    ) -> Result<FusedModel> {
        if model.labels != table.label_names {
            return Err(Error::InvalidArgument(format!(
                "model `{}` knows {} labels, the examples have {}: it was trained on other data",
                model.variant,
                model.labels.len(),
                table.label_names.len()
            )));
        }
        model.load(&self.device)
    }

    /// Drops from the split the labelled examples that have no input at all, with a warning.
    pub(crate) fn usable(
        &self,
        table: &FeatureTable,
        mut split: Split,
        progress: &dyn Progress,
    ) -> Result<Split> {
        let all = self.model_config(table, &Self::full_inputs(table));
        let mut dropped = Vec::new();
        for part in [&mut split.train, &mut split.val, &mut split.test] {
            part.retain(|&r| {
                let ok = table.has_any_input(r, &all) && table.labels[r].is_some();
                if !ok {
                    dropped.push(table.keys[r]);
                }
                ok
            });
        }
        if !dropped.is_empty() {
            progress.warn(&format!(
                "{} labelled item(s) have neither an image nor text and were left out (first: item {})",
                dropped.len(),
                dropped[0]
            ));
        }
        if split.train.is_empty() {
            return Err(Error::NotEnoughData {
                reason: "the training split is empty".into(),
            });
        }
        Ok(split)
    }

    /// Trains one fused-family model on `split.train`: the classifier, and the joint heads'
    /// alignment beside it when that reads only frozen features (see [`Trainer::aligns_apart`]).
    pub(crate) fn fit_fused(
        &self,
        table: &FeatureTable,
        split: &Split,
        variant: &str,
        inputs: &InputSet,
        print: &str,
        progress: &dyn Progress,
    ) -> Result<TrainedModel> {
        let runs = self.prepare_candidates(table, split, variant, inputs)?;
        let mut parts = FusedParts::default();
        for done in run_jobs(self.candidate_jobs(&runs, table, split, progress))? {
            parts.take(done);
        }
        let (fits, align_seconds) = parts.finish(runs.len())?;
        let (run, fit, align_seconds) =
            self.choose(runs, fits, align_seconds, table, split, progress)?;
        self.finish_fused(run, table, split, fit, align_seconds, print)
    }
}

fn row_of(m: &TrainedModel) -> ReportRow {
    ReportRow {
        variant: m.variant.clone(),
        inputs: m.inputs().to_string(),
        test: m.metrics.test,
        val: m.metrics.val,
        epochs_run: m.metrics.epochs_run,
        best_epoch: m.metrics.best_epoch,
        seconds: m.metrics.seconds,
        width_trials: m.metrics.width_trials.clone(),
    }
}

pub(crate) fn labels_of(table: &FeatureTable, rows: &[usize]) -> Result<Vec<u32>> {
    rows.iter()
        .map(|&r| {
            table.labels[r].ok_or_else(|| {
                Error::InvalidArgument(format!("item {} has no label", table.keys[r]))
            })
        })
        .collect()
}

/// Logits of `rows`, in chunks, without training noise.
pub(crate) fn fused_logits(
    model: &FusedModel,
    table: &FeatureTable,
    cfg: &FusionConfig,
    rows: &[usize],
    hide: Option<&Input>,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(EVAL_CHUNK) {
        let (batch, _, _) = table.fusion_batch(chunk, cfg, hide)?;
        out.extend(model.forward(&batch, None)?.logits.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Scores `model`'s prediction on `rows`, with `hide` removed from every row.
pub(crate) fn evaluate_fused(
    model: &FusedModel,
    table: &FeatureTable,
    rows: &[usize],
    hide: Option<&Input>,
) -> Result<SplitMetrics> {
    let mut logits = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(EVAL_CHUNK) {
        let batch = table.fusion_batch(chunk, model.config(), hide)?.0;
        logits.extend(model.forward(&batch, None)?.logits.to_vec2::<f32>()?);
    }
    Ok(SplitMetrics::from_logits(&logits, &labels_of(table, rows)?))
}
