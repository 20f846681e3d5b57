//! Choosing the fused model: one candidate per image projection width, trained on the same
//! split, the best on validation kept.

use super::jobs::*;
use super::*;

impl Trainer {
    /// The image projection widths to try for a model reading `inputs`: the configured one
    /// first, then [`TrainConfig::image_proj_candidates`] when the model reads the image and
    /// text. How wide the image branch should be depends on how far a catalogue's images
    /// generalise next to its text, which only its validation split can tell.
    pub(super) fn image_widths(&self, inputs: &InputSet) -> Vec<usize> {
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
    pub(super) fn prepare_candidates(
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
    pub(super) fn candidate_jobs<'a>(
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
    pub(super) fn choose(
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
    pub(super) fn fused_jobs<'a>(
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
    pub(super) fn prepare_fused(
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

    /// Whether `run` has joint heads to align. They read frozen features, so the classifier's
    /// loss never reaches them and the alignment never reads the classifier: the two train at
    /// once.
    pub(super) fn aligns_apart(&self, run: &FusedRun) -> bool {
        run.cfg.has_joint() && self.cfg.align_epochs > 0
    }
}

/// Gives `to` the joint-head weights of `from` (same variant, heads on frozen features, so
/// the same shapes whatever the image projection's width).
pub(super) fn copy_joint_vars(from: &FusedRun, to: &FusedRun) -> Result<()> {
    let poisoned =
        || Error::InvalidArgument("the model's variable map was poisoned by a panic".into());
    let source = from.varmap.data().lock().map_err(|_| poisoned())?;
    let target = to.varmap.data().lock().map_err(|_| poisoned())?;
    for (name, var) in source.iter().filter(|(n, _)| FusionConfig::is_joint_var(n)) {
        let dest = target.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "joint head `{name}` is missing from the chosen model"
            ))
        })?;
        dest.set(var.as_tensor())?;
    }
    Ok(())
}
