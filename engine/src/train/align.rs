//! Aligning the joint (search) space, after the classifier is trained: the joint heads learn,
//! with a symmetric InfoNCE loss over image–text pairs, to put an item's image next to its own
//! text, so a text query finds images that carry no text.
//!
//! The heads' inputs are cached once (frozen features, or the trained branches' outputs for
//! heads on branch outputs), so an epoch costs a few matrix products. The design below was
//! checked as a whole on the demo catalogue's validation split (BENCHMARKS.md, "Cross-modal
//! search"), not choice by choice:
//!
//! - **Groups are positives.** Items sharing a `group` are one thing (one emoji drawn by two
//!   vendors, in five skin tones); pushing one's image away from the other's text would teach
//!   the heads to tell renders apart by style. Each pair's positives are every pair of its group
//!   in the step, weighted equally.
//! - **Hard negatives.** Steps are filled with whole classes (`align_class_batches`), so an
//!   item's negatives include the look-alikes of its own class: the ones a name query must beat.
//! - **Early stopping on retrieval.** After each epoch every validation item's text, one field
//!   at a time, queries the images of the training and validation items the way `trio search
//!   --text` does; the epoch with the best recall@10 (ties: mean reciprocal rank) is kept.
//! - **Field dropout.** Each step hides text fields at the modality-dropout rate (never all of
//!   a pair's), so single-field queries align as well as whole items.

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::config::TrainConfig;
use super::contrastive::grouped_info_nce;
use super::data::{Column, FeatureTable};
use crate::error::{Error, Result};
use crate::models::fusion::{FusedModel, FusionConfig};
use crate::progress::Progress;

/// Rows whose head inputs are computed per forward pass while caching.
const CACHE_CHUNK: usize = 4096;

/// Validation retrieval quality of the joint space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AlignScore {
    pub recall_at_10: f64,
    pub mean_reciprocal_rank: f64,
}

impl AlignScore {
    fn better_than(&self, other: &AlignScore) -> bool {
        self.recall_at_10 > other.recall_at_10
            || (self.recall_at_10 == other.recall_at_10
                && self.mean_reciprocal_rank > other.mean_reciprocal_rank)
    }
}

/// Validation queries (one per validation pair and present field) against the images of the
/// training and validation items.
struct Validation {
    /// `[gallery, image_dim]` frozen image features.
    gallery: Tensor,
    /// One `[queries, text_dim]` block per field; queries in block order.
    queries: Vec<(String, Tensor)>,
    /// Gallery positions that count as a hit, per query, in the same order.
    relevant: Vec<Vec<usize>>,
}

impl Validation {
    fn build(
        table: &FeatureTable,
        image_col: &Column,
        cfg: &FusionConfig,
        gallery_rows: &[usize],
        val_pairs: &[usize],
    ) -> Result<Option<Self>> {
        if val_pairs.is_empty() || gallery_rows.is_empty() {
            return Ok(None);
        }
        let same = |a: usize, b: usize| -> bool {
            a == b || matches!((&table.groups[a], &table.groups[b]), (Some(x), Some(y)) if x == y)
        };
        let mut queries = Vec::new();
        let mut relevant = Vec::new();
        for (field, col) in cfg
            .text_fields
            .iter()
            .filter_map(|f| Some((f, field_col(table, f)?)))
        {
            let rows: Vec<usize> = val_pairs
                .iter()
                .copied()
                .filter(|&r| col.present_host[r])
                .collect();
            if rows.is_empty() {
                continue;
            }
            for &r in &rows {
                relevant.push(
                    gallery_rows
                        .iter()
                        .enumerate()
                        .filter(|(_, &g)| same(r, g))
                        .map(|(p, _)| p)
                        .collect(),
                );
            }
            let x = col.features.index_select(&table.index_tensor(&rows)?, 0)?;
            queries.push((field.clone(), x));
        }
        if queries.is_empty() {
            return Ok(None);
        }
        let gallery = image_col
            .features
            .index_select(&table.index_tensor(gallery_rows)?, 0)?;
        Ok(Some(Self {
            gallery,
            queries,
            relevant,
        }))
    }

    /// Recall@10 and MRR of the model's joint space. A query enters as `trio search --text`
    /// sends it: its embedding in every text field.
    fn score(&self, model: &FusedModel) -> Result<AlignScore> {
        // One matrix product per field scores every query against the gallery: far cheaper than
        // a dot product per query and image, and this runs every epoch.
        let gallery = model.embed_joint_image(&self.gallery)?.t()?;
        let fields = &model.config().text_fields;
        let mut ranks = Vec::with_capacity(self.relevant.len());
        let mut relevant = self.relevant.iter();
        for (_, x) in &self.queries {
            let every: Vec<(&str, &Tensor)> = fields.iter().map(|f| (f.as_str(), x)).collect();
            let scores: Vec<Vec<f32>> = model
                .embed_joint_text(&every)?
                .matmul(&gallery)?
                .to_vec2()?;
            for (row, rel) in scores.iter().zip(relevant.by_ref()) {
                ranks.push(relevant_rank(row, rel));
            }
        }
        let n = ranks.len().max(1) as f64;
        Ok(AlignScore {
            recall_at_10: ranks.iter().filter(|&&r| r <= 10).count() as f64 / n,
            mean_reciprocal_rank: ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n,
        })
    }
}

/// The 1-based rank of the best-scoring relevant gallery item among `scores` (ties in its
/// favour); `usize::MAX` when nothing is relevant.
fn relevant_rank(scores: &[f32], relevant: &[usize]) -> usize {
    if relevant.is_empty() {
        return usize::MAX;
    }
    let best = relevant
        .iter()
        .map(|&r| scores[r])
        .fold(f32::NEG_INFINITY, f32::max);
    1 + scores.iter().filter(|&&s| s > best).count()
}

fn field_col<'a>(table: &'a FeatureTable, field: &str) -> Option<&'a Column> {
    table
        .fields
        .iter()
        .position(|x| x == field)
        .map(|i| &table.text[i])
}

/// Trains only the joint heads of `model` (the variables of `varmap` that
/// [`FusionConfig::is_joint_var`] names) on the pairs among `train_rows` that have an image and
/// some text, keeping the epoch with the best validation score. Returns that score, or `None`
/// when there was nothing to align or to validate on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn align_joint_heads(
    train_cfg: &TrainConfig,
    model: &FusedModel,
    varmap: &VarMap,
    table: &FeatureTable,
    cfg: &FusionConfig,
    train_rows: &[usize],
    val_rows: &[usize],
    variant: &str,
    progress: &dyn Progress,
) -> Result<Option<AlignScore>> {
    let Some(image_col) = table.image.as_ref() else {
        return Ok(None);
    };
    if !cfg.has_joint() || train_cfg.align_epochs == 0 {
        return Ok(None);
    }
    let field_cols: Vec<&Column> = cfg
        .text_fields
        .iter()
        .filter_map(|f| field_col(table, f))
        .collect();
    let pairs = |rows: &[usize]| -> Vec<usize> {
        rows.iter()
            .copied()
            .filter(|&r| image_col.present_host[r] && field_cols.iter().any(|c| c.present_host[r]))
            .collect()
    };
    let (train, val) = (pairs(train_rows), pairs(val_rows));
    if train.len() < 2 {
        return Ok(None);
    }
    let mut gallery_rows: Vec<usize> = train_rows
        .iter()
        .chain(val_rows)
        .copied()
        .filter(|&r| image_col.present_host[r])
        .collect();
    gallery_rows.sort_unstable();
    gallery_rows.dedup();
    let validation = Validation::build(table, image_col, cfg, &gallery_rows, &val)?;

    // The heads' inputs for the training pairs, computed once.
    let mut image_parts = Vec::new();
    let mut text_parts: Vec<Vec<Tensor>> = vec![Vec::new(); field_cols.len()];
    for chunk in train.chunks(CACHE_CHUNK) {
        let (batch, _, _) = table.fusion_batch(chunk, cfg, None)?;
        let (i, t) = model.joint_inputs(&batch)?;
        if let Some(i) = i {
            image_parts.push(i);
        }
        for (acc, t) in text_parts.iter_mut().zip(t) {
            acc.push(t);
        }
    }
    let train_image = Tensor::cat(&image_parts, 0)?;
    let train_text = text_parts
        .iter()
        .map(|parts| Tensor::cat(parts, 0))
        .collect::<candle_core::Result<Vec<_>>>()?;

    let vars: Vec<Var> = {
        let data = varmap.data().lock().map_err(|_| {
            Error::InvalidArgument("the model's variable map was poisoned by a panic".into())
        })?;
        let mut named: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(k, _)| FusionConfig::is_joint_var(k))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    };
    if vars.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "variant `{variant}` has no joint-head variables to align"
        )));
    }
    let snapshot = || -> Result<Vec<Tensor>> {
        Ok(vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<Vec<_>>>()?)
    };
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: train_cfg.align_lr,
            weight_decay: train_cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(train_cfg.seed.wrapping_add(0xa11e));
    let score = |m: &FusedModel| -> Result<Option<AlignScore>> {
        validation.as_ref().map(|v| v.score(m)).transpose()
    };
    let mut best = (score(model)?, 0usize, snapshot()?);
    let stage = format!("align {variant}");
    progress.start(&stage, Some(train_cfg.align_epochs as u64));
    let started = std::time::Instant::now();
    let mut epochs_run = 0;
    for epoch in 1..=train_cfg.align_epochs {
        epochs_run = epoch;
        let order = epoch_order(table, &train, train_cfg.align_class_batches, &mut rng);
        let (mut loss_sum, mut steps) = (0f64, 0usize);
        for chunk in order.chunks(train_cfg.align_batch_size) {
            if chunk.len() < 2 {
                continue;
            }
            let positions: Vec<u32> = chunk.iter().map(|&p| p as u32).collect();
            let idx = Tensor::from_vec(positions, chunk.len(), &table.device)?;
            let image = train_image.index_select(&idx, 0)?;
            let text = train_text
                .iter()
                .map(|t| t.index_select(&idx, 0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let present = field_dropout(&field_cols, &train, chunk, &mut rng, table)?;
            let groups: Vec<Option<&str>> = chunk
                .iter()
                .map(|&p| table.groups[train[p]].as_deref())
                .collect();
            let (ji, jt) = model.joint_from_inputs(&image, &text, &present)?;
            let loss = grouped_info_nce(&ji, &jt, &groups, cfg.temperature)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            steps += 1;
            opt.backward_step(&loss)?;
        }
        let train_loss = loss_sum / steps.max(1) as f64;
        if !train_loss.is_finite() {
            return Err(Error::NotEnoughData {
                reason: format!(
                    "{stage}: the alignment loss diverged at epoch {epoch}; lower align_lr"
                ),
            });
        }
        let now = score(model)?;
        let improved = match (&now, &best.0) {
            (Some(n), Some(b)) => n.better_than(b),
            _ => true,
        };
        if improved {
            best = (now, epoch, snapshot()?);
        }
        progress.advance(1);
        progress.message(&format!(
            "epoch {epoch}/{}: train InfoNCE {train_loss:.4}{}",
            train_cfg.align_epochs,
            now.map(|s| format!(
                ", val text→image R@10 {:.3}, MRR {:.3} ({} val pairs)",
                s.recall_at_10,
                s.mean_reciprocal_rank,
                val.len()
            ))
            .unwrap_or_default()
        ));
        if validation.is_some()
            && train_cfg.align_patience > 0
            && epoch - best.1 >= train_cfg.align_patience
        {
            break;
        }
    }
    progress.finish();
    tracing::info!(
        variant,
        epochs_run,
        best_epoch = best.1,
        seconds = started.elapsed().as_secs_f64(),
        "aligned the joint heads"
    );
    for (var, value) in vars.iter().zip(&best.2) {
        var.set(value)?;
    }
    Ok(best.0)
}

/// Positions into `train` for one epoch: shuffled, or whole classes in shuffled order (each
/// class shuffled inside) so consecutive steps hold a class's look-alikes together.
fn epoch_order(
    table: &FeatureTable,
    train: &[usize],
    class_batches: bool,
    rng: &mut StdRng,
) -> Vec<usize> {
    if !class_batches {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(rng);
        return order;
    }
    let mut by_class: std::collections::BTreeMap<Option<u32>, Vec<usize>> = Default::default();
    for (p, &r) in train.iter().enumerate() {
        by_class.entry(table.labels[r]).or_default().push(p);
    }
    let mut classes: Vec<Vec<usize>> = by_class.into_values().collect();
    for c in &mut classes {
        c.shuffle(rng);
    }
    classes.shuffle(rng);
    classes.concat()
}

/// How often the alignment hides each text field of a pair, so the text head learns to place a
/// query of one field (a title alone) where the pair's full text lies.
const FIELD_DROPOUT: f32 = 0.3;

/// Presence columns (`[batch, 1]` per field) for the pairs at `chunk` (positions into `train`):
/// each present field is kept with probability `1 − FIELD_DROPOUT`, never all of a pair's.
fn field_dropout(
    field_cols: &[&Column],
    train: &[usize],
    chunk: &[usize],
    rng: &mut StdRng,
    table: &FeatureTable,
) -> Result<Vec<Tensor>> {
    let mut shown: Vec<Vec<f32>> = vec![Vec::with_capacity(chunk.len()); field_cols.len()];
    for &p in chunk {
        let r = train[p];
        let has: Vec<bool> = field_cols.iter().map(|c| c.present_host[r]).collect();
        let mut keep: Vec<bool> = has
            .iter()
            .map(|&h| h && rng.gen::<f32>() >= FIELD_DROPOUT)
            .collect();
        if !keep.iter().any(|k| *k) {
            keep = has;
        }
        for (s, k) in shown.iter_mut().zip(keep) {
            s.push(if k { 1.0 } else { 0.0 });
        }
    }
    shown
        .into_iter()
        .map(|flags| {
            let n = flags.len();
            Ok(Tensor::from_vec(flags, (n, 1), &table.device)?)
        })
        .collect()
}
