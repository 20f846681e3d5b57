//! The training loops: the classifier, the joint heads' alignment, logistic regression, and
//! the shared epoch loop with early stopping.

use super::jobs::*;
use super::*;

impl Trainer {
    /// Trains `run`'s classifier (every variable but the joint heads, which its loss does not
    /// reach and the alignment owns).
    pub(super) fn classify(
        &self,
        run: &FusedRun,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<FitOutcome> {
        let (cfg, model) = (&run.cfg, &run.model);
        let step = |rows: &[usize], rng: &mut StdRng| -> Result<Tensor> {
            let (batch, _, _) = table.fusion_batch(rows, cfg, None)?;
            let noise = TrainNoise::sample(cfg, rows.len(), rng, &self.device)?;
            let out = model.forward(&batch, Some(&noise))?;
            let labels = table.label_tensor(rows)?;
            // Each expert learns on its own rows: the pooled prediction is never trained, so
            // neither expert comes to lean on the other (see `models::fusion`).
            let mut loss = Tensor::zeros((), DTYPE, &self.device)?;
            for (logits, visible) in &out.expert_logits {
                if let Some(expert) = masked_cross_entropy(logits, &labels, visible)? {
                    loss = (loss + expert)?;
                }
            }
            Ok(loss)
        };
        let eval = |rows: &[usize]| -> Result<Vec<Vec<f32>>> {
            fused_logits(model, table, cfg, rows, None)
        };
        let vars = sorted_vars(&run.varmap, |name| !FusionConfig::is_joint_var(name))?;
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
    pub(super) fn align(
        &self,
        run: &FusedRun,
        table: &FeatureTable,
        split: &Split,
        progress: &dyn Progress,
    ) -> Result<f64> {
        let started = Instant::now();
        crate::train::align::align_joint_heads(
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
    pub(super) fn finish_fused(
        &self,
        run: FusedRun,
        table: &FeatureTable,
        split: &Split,
        fit: FitOutcome,
        align_seconds: f64,
        print: &str,
    ) -> Result<TrainedModel> {
        let started = Instant::now();
        let test = evaluate_fused(&run.model, table, &split.test, None)?;
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
    pub(super) fn fit_logistic_regression(
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
    pub(super) fn fit<S, E>(
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

/// Mean cross-entropy over the rows where `mask` (`[batch, 1]`, 0/1) is 1; `None` when no row
/// is.
pub(super) fn masked_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
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
pub(super) fn sorted_vars(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Result<Vec<Var>> {
    let data = varmap.data().lock().map_err(|_| {
        Error::InvalidArgument("the model's variable map was poisoned by a panic".into())
    })?;
    let mut named: Vec<(&String, &Var)> = data.iter().filter(|(k, _)| keep(k)).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
}

/// Overwrites every variable with values from a generator seeded by `seed`: weights and biases
/// uniform in ±1/√fan_in (PyTorch's `Linear` default), any other variable zero.
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
