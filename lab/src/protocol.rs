//! The demo's evaluation protocol, harder than the study's split: test groups (emoji) are never
//! seen in training, the catalogue side is degraded the way real catalogues are, and the test
//! side stays clean.
//!
//! 1. Split per class by group (`holdout` of each class, half validation, half test), so every
//!    test item's group is absent from training.
//! 2. On the training and validation items (the "catalogue"): replace `label_noise` of the
//!    labels with a different class drawn uniformly (symmetric noise), and drop each text field
//!    with its rate in `drop_text` (34% of descriptions, 2% of titles by default), never an
//!    item's last input.
//! 3. Test items keep their given labels and inputs.
//! 4. Run the study (logistic regression, image-only, text-only, fused) and the robustness
//!    table (each input removed from the fused model versus a model trained without it).
//!
//! The cross-style variant ([`CrossStyle`]) keeps the same split but trains and validates on one
//! style's items only (one vendor's renders, one supplier's photos) and tests on the other
//! styles' items of the unseen test groups: a catalogue whose pictures change supplier.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use trio_engine::catalog::{Catalog, TrainOptions};
use trio_engine::train::split::per_class;
use trio_engine::train::trainer::{FUSED, IMAGE_ONLY, LOGISTIC_REGRESSION, TEXT_ONLY};
use trio_engine::train::{Example, FinetuneReport, Input, Report, Split, TrainConfig, Trainer};
use trio_engine::{Error, Progress, Result};

use crate::report::Markdown;
use crate::robustness::{robustness, RobustnessTable};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtocolConfig {
    /// Fraction of each class's items held out (by group), half validation, half test.
    pub holdout: f64,
    /// Fraction of catalogue labels replaced by another class.
    pub label_noise: f64,
    /// Per text field, the fraction of catalogue items that lose it.
    pub drop_text: BTreeMap<String, f64>,
    /// Train on one style, test on the others; `None` tests every style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_style: Option<CrossStyle>,
    pub train: TrainConfig,
}

/// Which items the cross-style protocol trains and tests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossStyle {
    /// The metadata field naming an item's style (the demo: `vendor`).
    pub field: String,
    /// The style training and validation see (the demo: `google`); the test holds the rest.
    pub train: String,
}

impl CrossStyle {
    /// Keeps training and validation rows of style `train` and test rows of any other style;
    /// rows without a style are dropped from all three.
    fn restrict(&self, split: Split, styles: &[Option<String>]) -> Split {
        let is_train = |r: &usize| styles.get(*r).and_then(Option::as_deref) == Some(&self.train);
        let is_other = |r: &usize| matches!(styles.get(*r).and_then(Option::as_deref), Some(s) if s != self.train);
        Split {
            train: split.train.into_iter().filter(is_train).collect(),
            val: split.val.into_iter().filter(is_train).collect(),
            test: split.test.into_iter().filter(is_other).collect(),
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            holdout: 0.2,
            label_noise: 0.2,
            drop_text: BTreeMap::from([
                ("description".to_string(), 0.34),
                ("title".to_string(), 0.02),
            ]),
            cross_style: None,
            train: TrainConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolReport {
    pub config: ProtocolConfig,
    /// Logistic regression, image-only, text-only and fused on the clean test split.
    pub report: Report,
    pub robustness: RobustnessTable,
    /// Catalogue labels the protocol changed.
    pub noisy_labels: usize,
    /// Per field, how many catalogue items lost it.
    pub dropped_text: BTreeMap<String, usize>,
    /// Test groups that also occur in training; 0 unless examples have no `group`.
    pub test_groups_in_training: usize,
    /// How the image tower was fine-tuned on the degraded catalogue, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tuning: Option<FinetuneReport>,
}

/// One of the fused model's targets on the demo protocol, checked against the measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Points (percentage points of top-1) by which fused must beat the best single modality.
pub const MARGIN_OVER_SINGLE: f64 = 3.0;
/// Points by which fused must beat logistic regression on the concatenated frozen features.
pub const MARGIN_OVER_LR: f64 = 5.0;
/// Points the fused model may trail a specialist trained without the removed input.
pub const SLACK_VS_SPECIALIST: f64 = 2.0;

/// One target's two sides on one run, before it is judged: `fused − other` must reach
/// `min_diff`.
#[derive(Debug, Clone, PartialEq)]
struct TargetMeasure {
    target: String,
    fused: f64,
    other_name: String,
    other: f64,
    min_diff: f64,
}

impl TargetMeasure {
    fn met(&self, diff: f64) -> bool {
        diff >= self.min_diff - 1e-9
    }

    fn check(&self) -> TargetCheck {
        let diff = self.fused - self.other;
        TargetCheck {
            target: self.target.clone(),
            measured: format!(
                "fused {:.1} vs {} {:.1}: {diff:+.1} points",
                self.fused, self.other_name, self.other
            ),
            met: self.met(diff),
        }
    }
}

impl ProtocolReport {
    /// The targets: fused top-1 at least [`MARGIN_OVER_SINGLE`] points above the best
    /// single-modality model; with any one input removed, within [`SLACK_VS_SPECIALIST`] points
    /// of the model trained without it; at least [`MARGIN_OVER_LR`] points above logistic
    /// regression on the concatenated frozen features. A target whose rows are missing (no image in the data, say) is left out.
    pub fn targets(&self) -> Vec<TargetCheck> {
        self.target_measures()
            .iter()
            .map(TargetMeasure::check)
            .collect()
    }

    fn target_measures(&self) -> Vec<TargetMeasure> {
        let top1 = |v: &str| self.report.row(v).map(|r| 100.0 * r.test.top1);
        let mut out = Vec::new();
        let singles: Vec<(&str, f64)> = [IMAGE_ONLY, TEXT_ONLY]
            .into_iter()
            .filter_map(|v| top1(v).map(|t| (v, t)))
            .collect();
        let best = singles.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(fused), Some((name, single))) = (top1(FUSED), best) {
            out.push(TargetMeasure {
                target: format!(
                    "fused top-1 ≥ best single modality + {MARGIN_OVER_SINGLE:.0} points"
                ),
                fused,
                other_name: name.to_string(),
                other: single,
                min_diff: MARGIN_OVER_SINGLE,
            });
        }
        for r in &self.robustness.rows {
            if r.removed == Input::AllText {
                continue;
            }
            out.push(TargetMeasure {
                target: format!(
                    "without {}: fused within {SLACK_VS_SPECIALIST:.0} points of a model trained without it",
                    r.removed
                ),
                fused: 100.0 * r.fused.top1,
                other_name: r.specialist_variant.clone(),
                other: 100.0 * r.specialist.top1,
                min_diff: -SLACK_VS_SPECIALIST,
            });
        }
        if let (Some(fused), Some(lr)) = (top1(FUSED), top1(LOGISTIC_REGRESSION)) {
            out.push(TargetMeasure {
                target: format!(
                    "fused top-1 ≥ logistic regression on concatenated frozen features + {MARGIN_OVER_LR:.0} points"
                ),
                fused,
                other_name: LOGISTIC_REGRESSION.to_string(),
                other: lr,
                min_diff: MARGIN_OVER_LR,
            });
        }
        out
    }

    /// The targets as a Markdown table.
    pub fn targets_markdown(&self) -> String {
        targets_table(&self.targets())
    }
}

impl Markdown for ProtocolReport {
    fn to_markdown(&self) -> String {
        let tuning = self
            .image_tuning
            .as_ref()
            .map(|t| format!("{}\n", t.summary()))
            .unwrap_or_default();
        format!(
            "{tuning}{}\n{} catalogue labels flipped; text dropped: {:?}; test groups seen in training: {}\n\n{}",
            self.report.to_markdown(),
            self.noisy_labels,
            self.dropped_text,
            self.test_groups_in_training,
            self.robustness.to_markdown()
        )
    }
}

/// Target checks as a Markdown table.
fn targets_table(targets: &[TargetCheck]) -> String {
    let mut s = String::from("| target | measured | met |\n|---|---|---|\n");
    for t in targets {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            t.target,
            t.measured,
            if t.met { "yes" } else { "no" }
        ));
    }
    s
}

/// Replaces the image features of the degraded examples in place, learning only from the
/// split's training and validation rows (which carry the protocol's noisy labels): how
/// `--finetune-image` joins the protocol. The caller owns the images; the protocol only
/// decides what may be learnt from.
pub type ImageTuner<'a> =
    dyn Fn(&mut [Example], &Split, u64, &dyn Progress) -> Result<FinetuneReport> + Sync + 'a;

/// One run of the protocol described in the module documentation, with `cfg.train.seed`; the
/// image features are first replaced by `tuner`'s on the degraded catalogue (when given).
fn run_once(
    examples: &[Example],
    styles: &[Option<String>],
    cfg: &ProtocolConfig,
    device: &Device,
    progress: &dyn Progress,
    tuner: Option<&ImageTuner>,
) -> Result<ProtocolReport> {
    for (field, rate) in &cfg.drop_text {
        if !(0.0..=1.0).contains(rate) {
            return Err(Error::InvalidTrainConfig {
                field: "drop_text",
                reason: format!("rate for `{field}` must be in [0, 1], got {rate}"),
            });
        }
    }
    if !(0.0..=1.0).contains(&cfg.label_noise) {
        return Err(Error::InvalidTrainConfig {
            field: "label_noise",
            reason: format!("must be in [0, 1], got {}", cfg.label_noise),
        });
    }
    let seed = cfg.train.seed;
    let mut split = per_class(examples, cfg.holdout, seed)?;
    if let Some(cross) = &cfg.cross_style {
        split = cross.restrict(split, styles);
        if split.train.is_empty() || split.test.is_empty() {
            return Err(Error::InvalidTrainConfig {
                field: "cross_style",
                reason: format!(
                    "no training items of style `{}` or no test items of another style in `{}`",
                    cross.train, cross.field
                ),
            });
        }
    }
    let labels: Vec<String> = examples
        .iter()
        .filter_map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut degraded = examples.to_vec();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x6e_015e));
    let mut noisy_labels = 0;
    let mut dropped_text: BTreeMap<String, usize> =
        cfg.drop_text.keys().map(|f| (f.clone(), 0)).collect();
    let mut catalogue: Vec<usize> = split.train.iter().chain(&split.val).copied().collect();
    catalogue.sort_unstable();
    for &r in &catalogue {
        let e = &mut degraded[r];
        // Every draw is made whatever the item holds, so one item never shifts another's.
        let flip = rng.gen::<f64>() < cfg.label_noise;
        let pick = rng.gen_range(0..labels.len().max(2) - 1);
        if flip && labels.len() > 1 {
            if let Some(current) = e
                .label
                .as_deref()
                .and_then(|l| labels.iter().position(|x| x == l))
            {
                let other = if pick >= current { pick + 1 } else { pick };
                e.label = Some(labels[other].clone());
                noisy_labels += 1;
            }
        }
        for (field, rate) in &cfg.drop_text {
            let drop = rng.gen::<f64>() < *rate;
            let inputs = usize::from(e.image.is_some()) + e.text.len();
            if drop && inputs > 1 && e.text.remove(field).is_some() {
                if let Some(n) = dropped_text.get_mut(field) {
                    *n += 1;
                }
            }
        }
    }
    let train_groups: BTreeSet<&str> = split
        .train
        .iter()
        .filter_map(|&r| examples[r].group.as_deref())
        .collect();
    let test_groups: BTreeSet<&str> = split
        .test
        .iter()
        .filter_map(|&r| examples[r].group.as_deref())
        .collect();
    let test_groups_in_training = test_groups.intersection(&train_groups).count();

    let image_tuning = tuner
        .map(|tune| tune(&mut degraded, &split, seed, progress))
        .transpose()?;
    let trainer = Trainer::new(cfg.train.clone(), device.clone())?;
    let study = trainer.run_study_on(&degraded, split, progress)?;
    let robustness = robustness(&trainer, &degraded, &study, progress)?;
    Ok(ProtocolReport {
        config: cfg.clone(),
        report: study.report,
        robustness,
        noisy_labels,
        dropped_text,
        test_groups_in_training,
        image_tuning,
    })
}

/// The protocol repeated with several seeds. Each seed draws its own split, label noise, text
/// drops and initialisation; on the demo one test split holds about 900 items, so a single
/// run's top-1 carries about ±1.5 points of split luck, and the targets' margins are smaller
/// than that. Their mean over seeds, with its standard error, is the model's margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolSeries {
    pub seeds: Vec<u64>,
    pub runs: Vec<ProtocolReport>,
    /// The targets judged on the mean over seeds of each target's difference.
    pub targets: Vec<TargetCheck>,
}

impl ProtocolSeries {
    fn new(seeds: Vec<u64>, runs: Vec<ProtocolReport>) -> Self {
        let per_run: Vec<Vec<TargetMeasure>> =
            runs.iter().map(ProtocolReport::target_measures).collect();
        let mut targets = Vec::new();
        if let Some(first) = per_run.first() {
            for (i, measure) in first.iter().enumerate() {
                // Same data, same variants: every run has the same targets in the same order.
                let sides: Vec<&TargetMeasure> = per_run
                    .iter()
                    .filter_map(|m| m.get(i))
                    .filter(|m| m.target == measure.target)
                    .collect();
                let fused: Vec<f64> = sides.iter().map(|m| m.fused).collect();
                let other: Vec<f64> = sides.iter().map(|m| m.other).collect();
                let diffs: Vec<f64> = sides.iter().map(|m| m.fused - m.other).collect();
                let (diff, se) = mean_and_standard_error(&diffs);
                let met_runs = sides.iter().filter(|m| m.met(m.fused - m.other)).count();
                // The best single modality is each run's own; name it only when all agree.
                let other_name = if sides.iter().all(|m| m.other_name == measure.other_name) {
                    measure.other_name.as_str()
                } else {
                    "the best single modality"
                };
                targets.push(TargetCheck {
                    target: measure.target.clone(),
                    measured: format!(
                        "fused {:.1} vs {} {:.1}: {diff:+.1} ± {se:.1} points (mean ± s.e. of {} seeds; met in {met_runs})",
                        mean_and_standard_error(&fused).0,
                        other_name,
                        mean_and_standard_error(&other).0,
                        sides.len()
                    ),
                    met: measure.met(diff),
                });
            }
        }
        Self {
            seeds,
            runs,
            targets,
        }
    }

    /// The targets as a Markdown table.
    pub fn targets_markdown(&self) -> String {
        targets_table(&self.targets)
    }
}

impl Markdown for ProtocolSeries {
    /// Test top-1 of every model and every input-withheld fused model, one row per seed, then
    /// the mean and its standard error.
    fn to_markdown(&self) -> String {
        let Some(first) = self.runs.first() else {
            return String::new();
        };
        let mut columns: Vec<String> = first
            .report
            .rows
            .iter()
            .map(|r| r.variant.clone())
            .collect();
        columns.extend(
            first
                .robustness
                .rows
                .iter()
                .map(|r| format!("fused without {}", r.removed)),
        );
        let values = |run: &ProtocolReport| -> Vec<f64> {
            let study = run.report.rows.iter().map(|r| 100.0 * r.test.top1);
            let withheld = run.robustness.rows.iter().map(|r| 100.0 * r.fused.top1);
            study.chain(withheld).collect()
        };
        let mut s = format!("| seed | {} |\n|---|", columns.join(" | "));
        s.push_str(&"---:|".repeat(columns.len()));
        s.push('\n');
        let table: Vec<Vec<f64>> = self.runs.iter().map(values).collect();
        for (seed, row) in self.seeds.iter().zip(&table) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.1}")).collect();
            s.push_str(&format!("| {seed} | {} |\n", cells.join(" | ")));
        }
        let column =
            |c: usize| -> Vec<f64> { table.iter().filter_map(|r| r.get(c).copied()).collect() };
        let stats: Vec<(f64, f64)> = (0..columns.len())
            .map(|c| mean_and_standard_error(&column(c)))
            .collect();
        let means: Vec<String> = stats.iter().map(|(m, _)| format!("**{m:.1}**")).collect();
        let errors: Vec<String> = stats.iter().map(|(_, e)| format!("±{e:.1}")).collect();
        s.push_str(&format!("| mean | {} |\n", means.join(" | ")));
        s.push_str(&format!("| s.e. | {} |\n", errors.join(" | ")));
        s
    }
}

/// The mean and the standard error of the mean (0 for fewer than two values).
fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Runs the protocol once per seed (`cfg.train.seed` is replaced by each) and judges the
/// targets on the means; with `tuner`, each run first fine-tunes the image features on its own
/// degraded catalogue. `styles` holds each example's style, read only by the cross-style
/// protocol (pass an empty slice otherwise). Progress shows one run after another.
pub fn run_protocol(
    examples: &[Example],
    styles: &[Option<String>],
    cfg: &ProtocolConfig,
    seeds: &[u64],
    device: &Device,
    progress: &dyn Progress,
    tuner: Option<&ImageTuner>,
) -> Result<ProtocolSeries> {
    if seeds.is_empty() {
        return Err(Error::InvalidTrainConfig {
            field: "seeds",
            reason: "give at least one seed".to_string(),
        });
    }
    let mut runs = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let mut run_cfg = cfg.clone();
        run_cfg.train.seed = seed;
        runs.push(run_once(
            examples, styles, &run_cfg, device, progress, tuner,
        )?);
    }
    Ok(ProtocolSeries::new(seeds.to_vec(), runs))
}

/// The protocol on a catalogue's own labelled items, once per seed: groups from
/// `opts.group_field` never straddle training and test, training labels and texts are degraded,
/// test labels stay clean, nothing is stored. With `opts.config.finetune_image`, the image
/// tower's frozen bottom runs once for all seeds and each run fine-tunes its top on its own
/// split.
pub fn evaluate_catalog(
    catalog: &Catalog,
    opts: &TrainOptions,
    protocol: &ProtocolConfig,
    seeds: &[u64],
    progress: &dyn Progress,
) -> Result<ProtocolSeries> {
    let examples = catalog.examples(&opts.config.label_field, opts.group_field.as_deref())?;
    let styles = match &protocol.cross_style {
        Some(cross) => styles_of(catalog, &examples, &cross.field)?,
        None => Vec::new(),
    };
    let cfg = ProtocolConfig {
        train: opts.config.clone(),
        ..protocol.clone()
    };
    let device = catalog.device();
    match &cfg.train.finetune_image {
        Some(tuning) => {
            let acts = catalog.finetune_activations(&examples, tuning, progress)?;
            let tuner = catalog.split_tuner(&acts, tuning);
            run_protocol(
                &examples,
                &styles,
                &cfg,
                seeds,
                device,
                progress,
                Some(&tuner),
            )
        }
        None => run_protocol(&examples, &styles, &cfg, seeds, device, progress, None),
    }
}

/// Each example's value of the metadata field `field`, as text.
fn styles_of(catalog: &Catalog, examples: &[Example], field: &str) -> Result<Vec<Option<String>>> {
    examples
        .iter()
        .map(|e| {
            Ok(catalog.store().get_by_key(e.key)?.and_then(|item| {
                match item.metadata.get(field)? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_style_keeps_the_training_style_to_train_and_the_others_to_test() {
        let styles: Vec<Option<String>> = ["g", "t", "g", "t", "x", "g"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .collect();
        let cross = CrossStyle {
            field: "vendor".into(),
            train: "g".into(),
        };
        let split = Split {
            train: vec![0, 1, 6],
            val: vec![2, 3],
            test: vec![4, 5, 6, 3],
        };
        let kept = cross.restrict(split, &styles);
        assert_eq!(kept.train, [0]);
        assert_eq!(kept.val, [2]);
        // Every style but the training one is tested; an item without a style is left out.
        assert_eq!(kept.test, [4, 3]);
    }
}
