//! Fine-tuning the top of the image tower on the catalogue's labels (`--finetune-image`).
//!
//! The study fine-tuned the top half of its ImageNet CNN. Here the frozen bottom of
//! EfficientNet-Lite runs once per image ([`ImageActivations`], kept in f16), and only the
//! [`Top`] (the last `blocks` MBConv blocks and the head convolution) trains, with a linear
//! classifier over its pooled features:
//!
//! 1. **Linear probe first.** The classifier trains alone on the frozen features, so the first
//!    fine-tuning steps do not push a random classifier's gradients into the pretrained
//!    convolutions (linear probing, then fine-tuning: Kumar et al., 2022).
//! 2. **Fine-tuning.** Top and classifier train together (AdamW, the top at a smaller learning
//!    rate), on the training split's labels, noise included.
//! 3. **Chosen on validation.** Each epoch's top is scored by its classifier's validation
//!    top-1; the best is kept, and the untouched top (epoch 0, after the probe) competes too, so
//!    fine-tuning never returns features that validate worse than the frozen ones.
//!
//! The result's features replace the frozen image features everywhere the fused model reads
//! them; the stored model carries the top's weights so queries compute the same features.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::FinetuneConfig;
use super::optim::{AdamWParams, HostAdamW};
use crate::error::{Error, Result};
use crate::models::efficientnet_lite::{Top, FEATURE_DIM};
use crate::progress::Progress;

/// The frozen bottom's output for a set of items: one f16 row per item with an image.
pub struct ImageActivations {
    /// Per item, its row in `data`; `None` for an item without (a readable) image.
    rows: Vec<Option<usize>>,
    /// `(images, height, width, channels)`, f16.
    data: Tensor,
}

impl ImageActivations {
    /// `rows[i]` is item `i`'s row in `data` (`None`: no image).
    pub fn new(rows: Vec<Option<usize>>, data: Tensor) -> Result<Self> {
        let n = data.dim(0)?;
        if let Some(r) = rows.iter().flatten().find(|&&r| r >= n) {
            return Err(Error::InvalidArgument(format!(
                "activation row {r} is past the {n} computed"
            )));
        }
        Ok(Self {
            rows,
            data: data.to_dtype(DType::F16)?,
        })
    }

    /// Number of items (with or without an image).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether item `i` has activations.
    pub fn has(&self, i: usize) -> bool {
        self.rows.get(i).is_some_and(Option::is_some)
    }

    /// The f32 activations of `items` (each must have some), stacked.
    fn batch(&self, items: &[usize]) -> Result<Tensor> {
        let rows: Vec<u32> = items
            .iter()
            .map(|&i| {
                self.rows
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|r| r as u32)
                    .ok_or_else(|| Error::InvalidArgument(format!("item {i} has no image")))
            })
            .collect::<Result<_>>()?;
        let idx = Tensor::from_vec(rows, items.len(), self.data.device())?;
        Ok(self.data.index_select(&idx, 0)?.to_dtype(DType::F32)?)
    }

    /// `top`'s pooled features for every item (`None` where it has no image).
    pub fn features(&self, top: &Top) -> Result<Vec<Option<Vec<f32>>>> {
        let with: Vec<usize> = (0..self.rows.len()).filter(|&i| self.has(i)).collect();
        let mut out = vec![None; self.rows.len()];
        if with.is_empty() {
            return Ok(out);
        }
        for (&i, v) in with.iter().zip(pooled(top, self, &with)?.to_vec2::<f32>()?) {
            out[i] = Some(v);
        }
        Ok(out)
    }
}

/// What fine-tuning did, stored with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// First trained block; blocks before it stay frozen.
    pub first_block: usize,
    /// Trained blocks (besides the head convolution).
    pub blocks: usize,
    pub train_images: usize,
    pub val_images: usize,
    /// Validation top-1 of the probe on the frozen top (epoch 0), then after each epoch.
    pub val_top1: Vec<f64>,
    /// Mean training loss of each fine-tuning epoch.
    pub train_loss: Vec<f64>,
    /// The epoch kept (0: fine-tuning did not beat the frozen top on validation).
    pub best_epoch: usize,
    pub seconds: f64,
}

impl FinetuneReport {
    /// One line for people: what trained, validation top-1 before and after, time.
    pub fn summary(&self) -> String {
        let pct = |e: usize| self.val_top1.get(e).map_or(0.0, |v| 100.0 * v);
        format!(
            "image tower: blocks {}.. and head fine-tuned on {} images; val top-1 {:.1} (frozen) -> {:.1} (epoch {} kept of {}); {:.0}s",
            self.first_block,
            self.train_images,
            pct(0),
            pct(self.best_epoch),
            self.best_epoch,
            self.val_top1.len().saturating_sub(1),
            self.seconds
        )
    }
}

/// A fine-tuned top and how it was chosen.
pub struct Finetuned {
    pub top: Top,
    pub report: FinetuneReport,
}

/// The classifier over pooled features: `(1280, classes)` and its bias.
struct Classifier {
    weight: Var,
    bias: Var,
}

impl Classifier {
    fn new(classes: usize, rng: &mut StdRng, device: &Device) -> Result<Self> {
        let bound = 1.0 / (FEATURE_DIM as f32).sqrt();
        let w: Vec<f32> = (0..FEATURE_DIM * classes)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (FEATURE_DIM, classes), device)?)?,
            bias: Var::zeros(classes, DType::F32, device)?,
        })
    }

    fn logits(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features
            .matmul(self.weight.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?)
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

/// Inverted dropout on `x` with a mask drawn from `rng` (seeded, unlike candle's).
fn dropout(x: &Tensor, rate: f32, rng: &mut StdRng) -> Result<Tensor> {
    if rate <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - rate;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.gen::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
}

fn label_tensor(labels: &[Option<u32>], rows: &[usize], device: &Device) -> Result<Tensor> {
    let l: Vec<u32> = rows.iter().map(|&r| labels[r].unwrap_or(0)).collect();
    Ok(Tensor::from_vec(l, rows.len(), device)?)
}

/// Top-1 of `classifier` on `features` (rows of `rows`) against `labels`.
fn top1(
    classifier: &Classifier,
    features: &Tensor,
    labels: &[Option<u32>],
    rows: &[usize],
) -> Result<f64> {
    if rows.is_empty() {
        return Ok(0.0);
    }
    let pred = classifier
        .logits(features)?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?;
    let hits = pred
        .iter()
        .zip(rows)
        .filter(|(p, &r)| labels[r] == Some(**p))
        .count();
    Ok(hits as f64 / rows.len() as f64)
}

/// Pooled features of `rows` under `top`, stacked.
fn pooled(top: &Top, acts: &ImageActivations, rows: &[usize]) -> Result<Tensor> {
    let parts = rows
        .chunks(64)
        .map(|c| top.forward(&acts.batch(c)?))
        .collect::<Result<Vec<_>>>()?;
    if parts.is_empty() {
        return Err(Error::InvalidArgument("no images to fine-tune on".into()));
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Fine-tunes a copy of `top` to predict `labels` (class index per item, `None` when
/// unlabelled) from `acts`, on items `train`, choosing the epoch on `val`. Items without an
/// image or label are skipped. Deterministic for a seed.
#[allow(clippy::too_many_arguments)]
pub fn finetune_top(
    top: &Top,
    acts: &ImageActivations,
    labels: &[Option<u32>],
    classes: usize,
    train: &[usize],
    val: &[usize],
    cfg: &FinetuneConfig,
    seed: u64,
    progress: &dyn Progress,
) -> Result<Finetuned> {
    cfg.validate()?;
    let started = Instant::now();
    let usable = |rows: &[usize]| -> Vec<usize> {
        rows.iter()
            .copied()
            .filter(|&r| acts.has(r) && labels.get(r).copied().flatten().is_some())
            .collect()
    };
    let (train, val) = (usable(train), usable(val));
    if train.len() < 2 || classes < 2 {
        return Err(Error::InvalidArgument(format!(
            "fine-tuning the image tower needs labelled images of at least 2 classes; \
             the training split has {} labelled images",
            train.len()
        )));
    }
    let device = acts.data.device().clone();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1ae7_f17e);
    let classifier = Classifier::new(classes, &mut rng, &device)?;

    // 1. Linear probe on the frozen top's features.
    let frozen_train = pooled(top, acts, &train)?;
    let frozen_val = if val.is_empty() {
        None
    } else {
        Some(pooled(top, acts, &val)?)
    };
    let mut probe = HostAdamW::new(
        classifier.vars(),
        AdamWParams::new(cfg.head_lr, cfg.weight_decay),
    )?;
    progress.start("image probe", Some(cfg.probe_epochs as u64));
    let probe_batch = 256.max(cfg.batch_size);
    for _ in 0..cfg.probe_epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(probe_batch) {
            let idx = Tensor::from_vec(
                chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                chunk.len(),
                &device,
            )?;
            let x = dropout(&frozen_train.index_select(&idx, 0)?, cfg.dropout, &mut rng)?;
            let rows: Vec<usize> = chunk.iter().map(|&i| train[i]).collect();
            let loss = candle_nn::loss::cross_entropy(
                &classifier.logits(&x)?,
                &label_tensor(labels, &rows, &device)?,
            )?;
            probe.backward_step(&loss)?;
        }
        progress.advance(1);
    }
    progress.finish();
    let score = |features: &Option<Tensor>, c: &Classifier| -> Result<f64> {
        match features {
            Some(f) => top1(c, f, labels, &val),
            None => Ok(0.0),
        }
    };
    let mut val_top1 = vec![score(&frozen_val, &classifier)?];
    drop(frozen_train);

    // 2. Fine-tune top and classifier together.
    let (trainable, top_vars) = top.trainable()?;
    let mut opt_top = HostAdamW::new(top_vars, AdamWParams::new(cfg.lr, cfg.weight_decay))?;
    let mut opt_head = HostAdamW::new(
        classifier.vars(),
        AdamWParams::new(cfg.head_lr, cfg.weight_decay),
    )?;
    let mut best: (f64, usize, Option<Top>) = (val_top1[0], 0, None);
    let mut train_loss = Vec::new();
    let mut since_best = 0;
    let steps = train.len().div_ceil(cfg.batch_size);
    for epoch in 1..=cfg.epochs {
        progress.start(
            &format!("fine-tune image epoch {epoch}/{}", cfg.epochs),
            Some(steps as u64),
        );
        let mut order = train.clone();
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for rows in order.chunks(cfg.batch_size) {
            let features = trainable.forward(&acts.batch(rows)?)?;
            let x = dropout(&features, cfg.dropout, &mut rng)?;
            let loss = candle_nn::loss::cross_entropy(
                &classifier.logits(&x)?,
                &label_tensor(labels, rows, &device)?,
            )?;
            total += f64::from(loss.to_scalar::<f32>()?) * rows.len() as f64;
            let grads = loss.backward()?;
            opt_top.step(&grads)?;
            opt_head.step(&grads)?;
            progress.advance(1);
        }
        progress.finish();
        train_loss.push(total / train.len() as f64);
        let tuned = trainable.frozen()?;
        let v = if val.is_empty() {
            0.0
        } else {
            score(&Some(pooled(&tuned, acts, &val)?), &classifier)?
        };
        val_top1.push(v);
        if v > best.0 || val.is_empty() {
            best = (v, epoch, Some(tuned));
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience > 0 && since_best >= cfg.patience {
                break;
            }
        }
    }
    let (_, best_epoch, tuned) = best;
    let top = match tuned {
        Some(t) => t,
        None => top.frozen()?,
    };
    Ok(Finetuned {
        report: FinetuneReport {
            first_block: top.first_block(),
            blocks: top.block_count(),
            train_images: train.len(),
            val_images: val.len(),
            val_top1,
            train_loss,
            best_epoch,
            seconds: started.elapsed().as_secs_f64(),
        },
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::efficientnet_lite::{Config, EfficientNetLite};
    use crate::progress::NoProgress;
    use candle_nn::VarBuilder;

    /// Random activations entering the last block of Lite0 (7x7x192), two classes.
    fn setup(n: usize) -> (Top, ImageActivations, Vec<Option<u32>>) {
        let device = Device::Cpu;
        let net = EfficientNetLite::load(VarBuilder::zeros(DType::F32, &device), &Config::lite0())
            .unwrap();
        let top = net.top(15).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let values: Vec<f32> = (0..n * 7 * 7 * 192)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let data = Tensor::from_vec(values, (n, 7, 7, 192), &device).unwrap();
        let acts = ImageActivations::new((0..n).map(Some).collect(), data).unwrap();
        let labels = (0..n).map(|i| Some((i % 2) as u32)).collect();
        (top, acts, labels)
    }

    /// When no fine-tuning epoch validates better than the probe on the untouched top, the
    /// untouched top comes back: fine-tuning never hands over worse features.
    #[test]
    fn an_epoch_that_does_not_validate_better_is_not_kept() {
        let (top, acts, labels) = setup(24);
        let (train, val): (Vec<usize>, Vec<usize>) = (0..24).partition(|i| i % 3 != 0);
        let cfg = FinetuneConfig {
            blocks: Some(1),
            epochs: 2,
            patience: 0,
            batch_size: 8,
            // Steps too small to move any weight: every epoch validates exactly as epoch 0.
            lr: 1e-30,
            head_lr: 1e-30,
            probe_epochs: 1,
            ..FinetuneConfig::default()
        };
        let out =
            finetune_top(&top, &acts, &labels, 2, &train, &val, &cfg, 1, &NoProgress).unwrap();
        assert_eq!(out.report.val_top1.len(), 3);
        assert_eq!(out.report.best_epoch, 0, "{:?}", out.report);
        assert_eq!(out.report.train_loss.len(), 2);
        assert_eq!(
            acts.features(&out.top).unwrap(),
            acts.features(&top).unwrap()
        );
    }

    #[test]
    fn bad_settings_and_empty_splits_are_refused() {
        let (top, acts, labels) = setup(6);
        let train: Vec<usize> = (0..6).collect();
        for bad in [
            FinetuneConfig {
                epochs: 0,
                ..FinetuneConfig::default()
            },
            FinetuneConfig {
                batch_size: 1,
                ..FinetuneConfig::default()
            },
            FinetuneConfig {
                head_lr: 0.0,
                ..FinetuneConfig::default()
            },
            FinetuneConfig {
                dropout: 1.0,
                ..FinetuneConfig::default()
            },
        ] {
            assert!(
                finetune_top(&top, &acts, &labels, 2, &train, &[], &bad, 0, &NoProgress).is_err()
            );
        }
        let cfg = FinetuneConfig::default();
        let unlabelled = vec![None; 6];
        assert!(finetune_top(
            &top,
            &acts,
            &unlabelled,
            2,
            &train,
            &[],
            &cfg,
            0,
            &NoProgress
        )
        .is_err());
        assert_eq!(cfg.first_block(16).unwrap(), 8);
        assert!(FinetuneConfig {
            blocks: Some(17),
            ..cfg
        }
        .first_block(16)
        .is_err());
    }
}
