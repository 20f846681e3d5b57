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
use crate::models::experts::PooledClassifier;
use crate::models::fusion::{info_nce, FusedModel, FusionConfig, JointInput, TrainNoise, DTYPE};
use crate::progress::Progress;

/// Variant names used in reports and stored models.
pub const LOGISTIC_REGRESSION: &str = "logistic regression";
pub const IMAGE_ONLY: &str = "image-only";
pub const TEXT_ONLY: &str = "text-only";
pub const FUSED: &str = "fused";

/// Rows evaluated per forward pass; bounds memory on large splits.
const EVAL_CHUNK: usize = 4096;

/// One row of the study's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub variant: String,
    /// The inputs the variant reads, e.g. `image + description + title`.
    pub inputs: String,
    pub test: SplitMetrics,
    pub val: SplitMetrics,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub seconds: f64,
    /// The image projection widths tried, when more than one was (the best validation kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub width_trials: Vec<WidthTrial>,
}

/// The study's table: every variant scored on the same validation and test items. An item
/// lacking every input a variant reads still counts, with that variant's "nothing present"
/// prediction, so rows are comparable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label_field: String,
    pub seed: u64,
    pub classes: usize,
    pub train_items: usize,
    pub val_items: usize,
    pub test_items: usize,
    pub fingerprint: String,
    pub rows: Vec<ReportRow>,
    /// Wall-clock time of the whole study.
    pub seconds: f64,
}

impl Report {
    pub fn row(&self, variant: &str) -> Option<&ReportRow> {
        self.rows.iter().find(|r| r.variant == variant)
    }
}

/// What [`Trainer::run_study`] produces.
#[derive(Debug, Clone)]
pub struct Study {
    pub report: Report,
    pub split: Split,
    pub fused: TrainedModel,
    /// `None` when no example has an image or no example has text.
    pub image_only: Option<TrainedModel>,
    pub text_only: Option<TrainedModel>,
}

/// How one call of the training loop went.
struct FitOutcome {
    epochs_run: usize,
    best_epoch: usize,
    val: SplitMetrics,
    seconds: f64,
    /// The image projection widths tried, when more than one was.
    width_trials: Vec<WidthTrial>,
}

/// A fused-family model being trained: its configuration, seeded weights and training rows.
struct FusedRun {
    variant: String,
    cfg: FusionConfig,
    varmap: VarMap,
    model: FusedModel,
    train_rows: Vec<usize>,
    /// Seconds spent setting it up.
    setup_seconds: f64,
}

/// Waits for a training thread, passing on its panic as one.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One independent piece of the study.
type Job<'a> = Box<dyn FnOnce() -> Result<Done> + Send + 'a>;

/// What a study job produced.
enum Done {
    /// The fused model's classifier.
    Fit(FitOutcome),
    /// The fused model's joint heads, aligned in this many seconds.
    Aligned(f64),
    /// The fused model's classifier, then its joint heads aligned in this many seconds.
    FitThenAligned(FitOutcome, f64),
    /// The classifier of candidate `i` (another image projection width, see
    /// [`Trainer::prepare_candidates`]).
    Candidate(usize, FitOutcome),
    /// An image-only or text-only model.
    Model(Box<TrainedModel>),
    /// The logistic-regression baseline.
    Row(ReportRow),
}

/// The fused model's results gathered from its jobs (see [`Trainer::fused_jobs`]).
#[derive(Default)]
struct FusedParts {
    fit: Option<FitOutcome>,
    align_seconds: f64,
    /// Classifiers of the other candidates, by candidate index.
    candidates: Vec<(usize, FitOutcome)>,
}

impl FusedParts {
    /// Keeps `done` if it belongs to the fused model; hands anything else back.
    fn take(&mut self, done: Done) -> Option<Done> {
        match done {
            Done::Fit(fit) => self.fit = Some(fit),
            Done::Aligned(seconds) => self.align_seconds = seconds,
            Done::FitThenAligned(fit, seconds) => {
                self.fit = Some(fit);
                self.align_seconds = seconds;
            }
            Done::Candidate(i, fit) => self.candidates.push((i, fit)),
            other => return Some(other),
        }
        None
    }

    /// Every candidate's classifier outcome in candidate order (the first is the one its
    /// jobs also aligned), and the alignment's seconds.
    fn finish(mut self, candidates: usize) -> Result<(Vec<FitOutcome>, f64)> {
        let fit = self.fit.ok_or_else(|| {
            Error::InvalidArgument("the fused model's classifier job returned nothing".into())
        })?;
        self.candidates.sort_by_key(|(i, _)| *i);
        let mut fits = vec![fit];
        fits.extend(self.candidates.into_iter().map(|(_, f)| f));
        if fits.len() != candidates {
            return Err(Error::InvalidArgument(format!(
                "{} of {candidates} candidate classifiers returned",
                fits.len()
            )));
        }
        Ok((fits, self.align_seconds))
    }
}

/// Runs `jobs` on up to rayon's thread count of threads, each thread taking the next job in
/// list order when it is free; returns their results in list order, or the first job's error
/// (jobs not yet started then do not start). Every job is seeded on its own, so the results do
/// not depend on which thread ran what, or when.
fn run_jobs(jobs: Vec<Job<'_>>) -> Result<Vec<Done>> {
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let results: Mutex<Vec<Option<Result<Done>>>> = Mutex::new((0..count).map(|_| None).collect());
    let failed = AtomicBool::new(false);
    let work = || loop {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let next = match queue.lock() {
            Ok(mut q) => q.next(),
            Err(_) => None,
        };
        let Some((i, job)) = next else { return };
        let result = job();
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut results) = results.lock() {
            results[i] = Some(result);
        }
    };
    let threads = rayon::current_num_threads().clamp(1, count.max(1));
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        work();
        for helper in helpers {
            join(helper);
        }
    });
    let results = results.into_inner().map_err(|_| {
        Error::InvalidArgument("a training thread panicked while storing its result".into())
    })?;
    // The first failure, not the jobs it kept from starting.
    let mut out = Vec::with_capacity(count);
    let mut skipped = false;
    for result in results {
        match result {
            Some(r) => out.push(r?),
            None => skipped = true,
        }
    }
    if skipped {
        return Err(Error::InvalidArgument(
            "a study job did not run, yet none failed".into(),
        ));
    }
    Ok(out)
}

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
        if self.cfg.baseline_experts {
            if let (Some(image), Some(text)) = (&image_only, &text_only) {
                fused = self.pool_experts(fused, [image, text], &table, &split)?;
            }
        }
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

    /// `fused` with `experts` (trained on the same split) voting in its prediction, its
    /// validation and test scores those of the pooled prediction. The width trials keep the
    /// fused network's own validation scores, on which its width was chosen.
    fn pool_experts(
        &self,
        fused: TrainedModel,
        experts: [&TrainedModel; 2],
        table: &FeatureTable,
        split: &Split,
    ) -> Result<TrainedModel> {
        let started = Instant::now();
        let mut pooled = fused
            .with_baselines(experts.into_iter().cloned().collect())
            .with_baseline_experts();
        let classifier = self.check_labels(&pooled, table)?;
        pooled.metrics.val = evaluate_fused(&classifier, table, &split.val, None)?;
        pooled.metrics.test = evaluate_fused(&classifier, table, &split.test, None)?;
        pooled.metrics.seconds += started.elapsed().as_secs_f64();
        Ok(pooled)
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
        let table = self.table(examples)?;
        let fused = self.check_labels(model, &table)?;
        evaluate_fused(&fused, &table, rows, hide)
    }

    pub(crate) fn check_labels(
        &self,
        model: &TrainedModel,
        table: &FeatureTable,
    ) -> Result<PooledClassifier> {
        if model.labels != table.label_names {
            return Err(Error::InvalidArgument(format!(
                "model `{}` knows {} labels, the examples have {}: it was trained on other data",
                model.variant,
                model.labels.len(),
                table.label_names.len()
            )));
        }
        model.classifier(&self.device)
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

    /// The image projection widths to try for a model reading `inputs`: the configured one
    /// first, then [`TrainConfig::image_proj_candidates`] when the model reads the image and
    /// text. How wide the image branch should be depends on how far a catalogue's images
    /// generalise next to its text, which only its validation split can tell.
    fn image_widths(&self, inputs: &InputSet) -> Vec<usize> {
        let mut widths = vec![self.cfg.model.image_proj_dim];
        if inputs.image && !inputs.text_fields.is_empty() {
            for &w in &self.cfg.image_proj_candidates {
                if !widths.contains(&w) {
                    widths.push(w);
                }
            }
        }
        widths
    }

    /// One seeded run per image projection width (see [`Trainer::image_widths`]).
    fn prepare_candidates(
        &self,
        table: &FeatureTable,
        split: &Split,
        variant: &str,
        inputs: &InputSet,
    ) -> Result<Vec<FusedRun>> {
        self.image_widths(inputs)
            .into_iter()
            .map(|w| self.prepare_fused(table, split, variant, inputs, w))
            .collect()
    }

    /// The first candidate's jobs (classifier and alignment), then one classifier job per
    /// other candidate.
    fn candidate_jobs<'a>(
        &'a self,
        runs: &'a [FusedRun],
        table: &'a FeatureTable,
        split: &'a Split,
        progress: &'a dyn Progress,
    ) -> Vec<Job<'a>> {
        let Some(first) = runs.first() else {
            return Vec::new();
        };
        let mut jobs = self.fused_jobs(first, table, split, progress);
        for (i, run) in runs.iter().enumerate().skip(1) {
            jobs.push(Box::new(move || {
                Ok(Done::Candidate(
                    i,
                    self.classify(run, table, split, progress)?,
                ))
            }));
        }
        jobs
    }

    /// Keeps the candidate with the best validation top-1 (ties: the earlier, so the
    /// configured width) and records every candidate's score in its metrics. The first
    /// candidate's joint heads were aligned; a later winner gets them (copied when they read
    /// frozen features and so fit any width, else aligned anew).
    fn choose(
        &self,
        runs: Vec<FusedRun>,
        fits: Vec<FitOutcome>,
        mut align_seconds: f64,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<(FusedRun, FitOutcome, f64)> {
        let trials: Vec<WidthTrial> = runs
            .iter()
            .zip(&fits)
            .map(|(r, f)| WidthTrial {
                image_proj_dim: r.cfg.image_proj_dim,
                val_top1: f.val.top1,
            })
            .collect();
        let mut best = 0;
        for (i, f) in fits.iter().enumerate() {
            if f.val.top1 > fits[best].val.top1 {
                best = i;
            }
        }
        let mut runs = runs.into_iter();
        let first = runs
            .next()
            .ok_or_else(|| Error::InvalidArgument("no candidate model to choose from".into()))?;
        let winner = if best == 0 {
            first
        } else {
            let winner = runs
                .nth(best - 1)
                .ok_or_else(|| Error::InvalidArgument(format!("candidate {best} is missing")))?;
            if self.aligns_apart(&first) {
                copy_joint_vars(&first, &winner)?;
            } else {
                align_seconds += self.align(&winner, table, split, progress)?;
            }
            winner
        };
        let mut fit = fits
            .into_iter()
            .nth(best)
            .ok_or_else(|| Error::InvalidArgument(format!("candidate {best} has no classifier")))?;
        if trials.len() > 1 {
            fit.width_trials = trials;
        }
        Ok((winner, fit, align_seconds))
    }

    /// The jobs that train `run`: its classifier and its alignment as two jobs when they can
    /// run at once (see [`Trainer::aligns_apart`]), else one job doing one after the other.
    fn fused_jobs<'a>(
        &'a self,
        run: &'a FusedRun,
        table: &'a FeatureTable,
        split: &'a Split,
        progress: &'a dyn Progress,
    ) -> Vec<Job<'a>> {
        if self.aligns_apart(run) {
            vec![
                Box::new(move || Ok(Done::Aligned(self.align(run, table, split, progress)?))),
                Box::new(move || Ok(Done::Fit(self.classify(run, table, split, progress)?))),
            ]
        } else {
            vec![Box::new(move || {
                let fit = self.classify(run, table, split, progress)?;
                let seconds = self.align(run, table, split, progress)?;
                Ok(Done::FitThenAligned(fit, seconds))
            })]
        }
    }

    /// A fused-family model with seeded weights, and the training rows that have one of its
    /// inputs (rows with none teach it nothing; they stay in evaluation).
    fn prepare_fused(
        &self,
        table: &FeatureTable,
        split: &Split,
        variant: &str,
        inputs: &InputSet,
        image_proj_dim: usize,
    ) -> Result<FusedRun> {
        if inputs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "variant `{variant}` reads no input"
            )));
        }
        let started = Instant::now();
        let cfg = FusionConfig {
            image_proj_dim,
            ..self.model_config(table, inputs)
        };
        let varmap = VarMap::new();
        let model = FusedModel::load(VarBuilder::from_varmap(&varmap, DTYPE, &self.device), &cfg)?;
        reinit_seeded(&varmap, self.cfg.seed)?;
        let train_rows: Vec<usize> = split
            .train
            .iter()
            .copied()
            .filter(|&r| table.has_any_input(r, &cfg))
            .collect();
        if train_rows.is_empty() {
            return Err(Error::NotEnoughData {
                reason: format!(
                    "no training example has any input of variant `{variant}` ({inputs})"
                ),
            });
        }
        Ok(FusedRun {
            variant: variant.to_string(),
            cfg,
            varmap,
            model,
            train_rows,
            setup_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Whether `run`'s joint heads align on frozen features, apart from the classifier: then
    /// the classifier's loss never reaches them and the alignment never reads the classifier,
    /// so the two can train at once. Heads on branch outputs align on what the classifier
    /// trained, after it.
    fn aligns_apart(&self, run: &FusedRun) -> bool {
        run.cfg.has_joint()
            && run.cfg.joint_input == JointInput::Features
            && self.cfg.align_epochs > 0
    }

    /// Trains `run`'s classifier (every variable but joint heads on frozen features, which
    /// its loss does not reach and the alignment owns).
    fn classify(
        &self,
        run: &FusedRun,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<FitOutcome> {
        let (cfg, model) = (&run.cfg, &run.model);
        let step = |rows: &[usize], rng: &mut StdRng| -> Result<Tensor> {
            let (batch, image_host, text_host) = table.fusion_batch(rows, cfg, None)?;
            let noise = TrainNoise::sample(cfg, &image_host, &text_host, rng, &self.device)?;
            let out = model.forward(&batch, Some(&noise))?;
            let labels = table.label_tensor(rows)?;
            let mut loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
            if cfg.aux_weight > 0.0 {
                for (logits, visible) in &out.branch_logits {
                    if let Some(aux) = masked_cross_entropy(logits, &labels, visible)? {
                        loss = (loss + (aux * f64::from(cfg.aux_weight))?)?;
                    }
                }
            }
            if let (Some(ji), Some(jt)) = (&out.joint_image, &out.joint_text) {
                if cfg.aligns_with_classifier() {
                    let both: Vec<u32> = (0..rows.len())
                        .filter(|&i| image_host[i] && text_host.iter().any(|t| t[i]))
                        .map(|i| i as u32)
                        .collect();
                    if both.len() >= 2 {
                        let idx = Tensor::from_vec(both.clone(), both.len(), &self.device)?;
                        let nce = info_nce(
                            &ji.index_select(&idx, 0)?,
                            &jt.index_select(&idx, 0)?,
                            cfg.temperature,
                        )?;
                        loss = (loss + (nce * f64::from(cfg.contrastive_weight))?)?;
                    }
                }
            }
            Ok(loss)
        };
        let eval = |rows: &[usize]| -> Result<Vec<Vec<f32>>> {
            fused_logits(model, table, cfg, rows, None)
        };
        let on_features = cfg.joint_input == JointInput::Features;
        let vars = sorted_vars(&run.varmap, |name| !(on_features && cfg.is_joint_var(name)))?;
        self.fit(
            vars,
            &run.train_rows,
            table,
            &split.val,
            &format!("train {}", run.variant),
            progress,
            step,
            eval,
        )
    }

    /// Aligns `run`'s joint heads (nothing to do for a model without both modalities);
    /// returns the seconds it took.
    fn align(
        &self,
        run: &FusedRun,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<f64> {
        let started = Instant::now();
        super::align::align_joint_heads(
            &self.cfg,
            &run.model,
            &run.varmap,
            table,
            &run.cfg,
            &run.train_rows,
            &split.val,
            &run.variant,
            progress,
        )?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Scores the trained `run` on the test split and packs it as a storable model. Its
    /// recorded time adds up its own stages (set-up, classifier, `align_seconds` of alignment,
    /// test scoring), also where the alignment ran beside other work.
    fn finish_fused(
        &self,
        run: FusedRun,
        table: &FeatureTable,
        split: &Split,
        fit: FitOutcome,
        align_seconds: f64,
        print: &str,
    ) -> Result<TrainedModel> {
        let started = Instant::now();
        let alone = PooledClassifier::new(run.model.clone(), Vec::new());
        let test = evaluate_fused(&alone, table, &split.test, None)?;
        let metrics = ModelMetrics {
            val: fit.val,
            test,
            epochs_run: fit.epochs_run,
            best_epoch: fit.best_epoch,
            seconds: run.setup_seconds
                + fit.seconds
                + align_seconds
                + started.elapsed().as_secs_f64(),
            width_trials: fit.width_trials,
        };
        Ok(TrainedModel::new(
            run.variant,
            run.cfg,
            self.cfg.clone(),
            table.label_names.clone(),
            metrics,
            print.to_string(),
            varmap_to_safetensors(&run.varmap)?,
        ))
    }

    /// Trains the logistic-regression baseline on every input, missing ones as zeros.
    fn fit_logistic_regression(
        &self,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<ReportRow> {
        let started = Instant::now();
        let x = table.flat_features()?;
        let varmap = VarMap::new();
        let model = LogisticRegression::load(
            VarBuilder::from_varmap(&varmap, DTYPE, &self.device),
            x.dim(1)?,
            table.label_names.len(),
        )?;
        reinit_seeded(&varmap, self.cfg.seed)?;
        let step = |rows: &[usize], _rng: &mut StdRng| -> Result<Tensor> {
            let logits = model.forward(&x.index_select(&table.index_tensor(rows)?, 0)?)?;
            Ok(candle_nn::loss::cross_entropy(
                &logits,
                &table.label_tensor(rows)?,
            )?)
        };
        let eval = |rows: &[usize]| -> Result<Vec<Vec<f32>>> {
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(EVAL_CHUNK) {
                out.extend(
                    model
                        .forward(&x.index_select(&table.index_tensor(chunk)?, 0)?)?
                        .to_vec2::<f32>()?,
                );
            }
            Ok(out)
        };
        let stage = format!("train {LOGISTIC_REGRESSION}");
        let fit = self.fit(
            sorted_vars(&varmap, |_| true)?,
            &split.train,
            table,
            &split.val,
            &stage,
            progress,
            step,
            eval,
        )?;
        let test = SplitMetrics::from_logits(&eval(&split.test)?, &labels_of(table, &split.test)?);
        Ok(ReportRow {
            variant: LOGISTIC_REGRESSION.to_string(),
            inputs: Self::full_inputs(table).to_string(),
            test,
            val: fit.val,
            epochs_run: fit.epochs_run,
            best_epoch: fit.best_epoch,
            seconds: started.elapsed().as_secs_f64(),
            width_trials: Vec::new(),
        })
    }

    /// AdamW over shuffled batches, validation after every epoch, early stopping on validation
    /// top-1 (ties: loss), and the best epoch's weights restored at the end.
    #[allow(clippy::too_many_arguments)]
    fn fit<S, E>(
        &self,
        vars: Vec<Var>,
        train_rows: &[usize],
        table: &FeatureTable,
        val_rows: &[usize],
        stage: &str,
        progress: &dyn Progress,
        mut step: S,
        eval: E,
    ) -> Result<FitOutcome>
    where
        S: FnMut(&[usize], &mut StdRng) -> Result<Tensor>,
        E: Fn(&[usize]) -> Result<Vec<Vec<f32>>>,
    {
        let started = Instant::now();
        let mut opt = HostAdamW::new(
            vars.clone(),
            AdamWParams::new(self.cfg.lr, self.cfg.weight_decay),
        )?;
        let val_labels = labels_of(table, val_rows)?;
        let mut rng = StdRng::seed_from_u64(self.cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let mut order = train_rows.to_vec();
        let mut best: Option<(SplitMetrics, usize, Vec<Tensor>)> = None;
        let mut epochs_run = 0;
        progress.start(stage, Some(self.cfg.epochs as u64));
        for epoch in 1..=self.cfg.epochs {
            order.shuffle(&mut rng);
            let (mut loss_sum, mut steps) = (0f64, 0usize);
            for chunk in order.chunks(self.cfg.batch_size) {
                let loss = step(chunk, &mut rng)?;
                opt.backward_step(&loss)?;
                loss_sum += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
                steps += 1;
            }
            epochs_run = epoch;
            let train_loss = loss_sum / steps.max(1) as f64;
            if !train_loss.is_finite() {
                return Err(Error::NotEnoughData {
                    reason: format!("{stage}: the training loss diverged at epoch {epoch}; lower the learning rate"),
                });
            }
            let val = SplitMetrics::from_logits(&eval(val_rows)?, &val_labels);
            let improved = match &best {
                None => true,
                Some((b, _, _)) => val_rows.is_empty() || val.better_than(b),
            };
            if improved {
                let snapshot = vars
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                best = Some((val, epoch, snapshot));
            }
            progress.advance(1);
            progress.message(&format!(
                "epoch {epoch}/{}: train loss {train_loss:.4}, val top-1 {:.1}%, val loss {:.4}",
                self.cfg.epochs,
                100.0 * val.top1,
                val.loss
            ));
            let best_epoch = best.as_ref().map_or(epoch, |b| b.1);
            if self.cfg.patience > 0
                && !val_rows.is_empty()
                && epoch - best_epoch >= self.cfg.patience
            {
                break;
            }
        }
        progress.finish();
        let (val, best_epoch, snapshot) = best.ok_or_else(|| Error::NotEnoughData {
            reason: format!("{stage}: no epoch ran"),
        })?;
        for (var, value) in vars.iter().zip(&snapshot) {
            var.set(value)?;
        }
        Ok(FitOutcome {
            epochs_run,
            best_epoch,
            val,
            seconds: started.elapsed().as_secs_f64(),
            width_trials: Vec::new(),
        })
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

/// Scores `model`'s (pooled) prediction on `rows`, with `hide` removed from every row.
pub(crate) fn evaluate_fused(
    model: &PooledClassifier,
    table: &FeatureTable,
    rows: &[usize],
    hide: Option<&Input>,
) -> Result<SplitMetrics> {
    let mut logits = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(EVAL_CHUNK) {
        let log_probs = model.log_probs(|cfg, _| Ok(table.fusion_batch(chunk, cfg, hide)?.0))?;
        logits.extend(log_probs.to_vec2::<f32>()?);
    }
    Ok(SplitMetrics::from_logits(&logits, &labels_of(table, rows)?))
}

/// Mean cross-entropy over the rows where `mask` (`[batch, 1]`, 0/1) is 1; `None` when no row
/// is.
fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Option<Tensor>> {
    let rows = f64::from(mask.sum_all()?.to_scalar::<f32>()?);
    if rows < 1.0 {
        return Ok(None);
    }
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(Some(((picked * mask)?.sum_all()? * (-1.0 / rows))?))
}

/// The model's variables that `keep` names, in name order, so the optimiser's work does not
/// depend on the map's iteration order.
fn sorted_vars(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Result<Vec<Var>> {
    let data = varmap.data().lock().map_err(|_| {
        Error::InvalidArgument("the model's variable map was poisoned by a panic".into())
    })?;
    let mut named: Vec<(&String, &Var)> = data.iter().filter(|(k, _)| keep(k)).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
}

/// Gives `to` the joint-head weights of `from` (same variant, heads on frozen features, so
/// the same shapes whatever the image projection's width).
fn copy_joint_vars(from: &FusedRun, to: &FusedRun) -> Result<()> {
    let poisoned =
        || Error::InvalidArgument("the model's variable map was poisoned by a panic".into());
    let source = from.varmap.data().lock().map_err(|_| poisoned())?;
    let target = to.varmap.data().lock().map_err(|_| poisoned())?;
    for (name, var) in source.iter().filter(|(n, _)| from.cfg.is_joint_var(n)) {
        let dest = target.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "joint head `{name}` is missing from the chosen model"
            ))
        })?;
        dest.set(var.as_tensor())?;
    }
    Ok(())
}

/// Overwrites every variable with values from a generator seeded by `seed`: weights and biases
/// uniform in ±1/√fan_in (PyTorch's `Linear` default), learned "missing" embeddings zero.
/// Variables are visited in name order so the draw does not depend on map iteration order.
pub(crate) fn reinit_seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap.data().lock().map_err(|_| {
        Error::InvalidArgument("the model's variable map was poisoned by a panic".into())
    })?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let Some(var) = vars.get(name) else { continue };
        let dims = var.as_tensor().dims().to_vec();
        let count: usize = dims.iter().product();
        let fan_in = if name.ends_with(".weight") {
            dims.get(1).copied()
        } else if let Some(prefix) = name.strip_suffix(".bias") {
            vars.get(&format!("{prefix}.weight"))
                .and_then(|w| w.as_tensor().dims().get(1).copied())
        } else {
            None
        };
        let values: Vec<f32> = match fan_in {
            Some(f) => {
                let bound = 1.0 / (f.max(1) as f32).sqrt();
                (0..count).map(|_| rng.gen_range(-bound..bound)).collect()
            }
            None => vec![0.0; count],
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}
