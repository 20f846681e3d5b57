//! Training settings and the names of the model inputs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::fusion::FusionConfig;

/// How to train. Defaults suit catalogues of a few thousand items on a laptop CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Most passes over the training split; early stopping usually ends sooner.
    pub epochs: usize,
    /// Examples per optimiser step. Large, because the model is small and features are cached:
    /// on the demo-sized synthetic catalogue, 512 (with `lr` 3e-3) ran the study in a third of
    /// the CPU time of 256 (with 2e-3) at the same accuracy.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seeds weight initialisation, shuffling, dropout and the splits: same seed, same result.
    pub seed: u64,
    /// Stop after this many epochs without a better validation top-1 (ties broken by validation
    /// loss), keeping the best epoch's weights; 0 trains all `epochs`.
    pub patience: usize,
    /// Fraction of each class held out, split half validation, half test (the study: 4%).
    pub holdout: f64,
    /// Most epochs that align the joint (search) heads after classification training, on their
    /// cached inputs (see `train::align`); the epoch with the best validation text→image
    /// recall@10 is kept. 0 leaves the heads as initialised (or as trained beside the
    /// classifier, for heads on branch outputs).
    pub align_epochs: usize,
    /// Stop aligning after this many epochs without a better validation recall; 0 runs all
    /// `align_epochs`.
    pub align_patience: usize,
    /// Image–text pairs per alignment step: every other pair in the step is a negative, so
    /// larger is harder; the features are cached, so a step is cheap.
    pub align_batch_size: usize,
    /// AdamW learning rate of the alignment.
    pub align_lr: f64,
    /// Fill each alignment step with whole classes, so an item's negatives include the
    /// look-alikes of its own class, which random steps rarely hold.
    pub align_class_batches: bool,
    /// What the labels are (e.g. `category`); recorded in models and reports.
    pub label_field: String,
    /// Image projection widths tried beside `model.image_proj_dim` for models that read the
    /// image and text; each trains on the same split and the best validation top-1 is kept
    /// (ties: `model.image_proj_dim`). A narrow image branch suits catalogues whose images
    /// generalise poorly next to their text, a wide one the others; empty: no search.
    pub image_proj_candidates: Vec<usize>,
    /// Fine-tune the top of the image tower on the labels before training the fused model
    /// (`--finetune-image`; see `train::finetune`). `None`: frozen image features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_image: Option<FinetuneConfig>,
    /// The fused model's hyper-parameters. The trainer fills in `num_classes`, the feature widths
    /// (from the data), `use_image` per variant, and `text_fields` when the list is empty (then
    /// every field seen in the data, sorted by name).
    pub model: FusionConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 60,
            batch_size: 512,
            lr: 3e-3,
            weight_decay: 1e-4,
            seed: 0,
            patience: 5,
            holdout: 0.04,
            align_epochs: 200,
            align_patience: 10,
            align_batch_size: 1024,
            align_lr: 1e-3,
            align_class_batches: true,
            label_field: "label".to_string(),
            image_proj_candidates: vec![32],
            finetune_image: None,
            model: FusionConfig {
                text_fields: Vec::new(),
                ..FusionConfig::default()
            },
        }
    }
}

impl TrainConfig {
    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        check_loop(
            ["epochs", "batch_size", "lr"],
            self.epochs,
            self.batch_size,
            self.lr,
        )?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid("weight_decay", "must be a non-negative number");
        }
        if self.align_batch_size < 2 {
            return invalid("align_batch_size", "must be at least 2");
        }
        if !(self.align_lr > 0.0 && self.align_lr.is_finite()) {
            return invalid("align_lr", "must be a positive number");
        }
        if !(0.0..0.5).contains(&self.holdout) {
            return invalid("holdout", "must be in [0, 0.5)");
        }
        if self.image_proj_candidates.contains(&0) {
            return invalid("image_proj_candidates", "widths must be at least 1");
        }
        if let Some(f) = &self.finetune_image {
            f.validate()?;
        }
        Ok(())
    }
}

/// The error for a setting that cannot train.
pub(super) fn invalid(field: &'static str, reason: &str) -> Result<()> {
    Err(Error::InvalidTrainConfig {
        field,
        reason: reason.to_string(),
    })
}

/// A training loop's basics, named by `fields` (epochs, batch size, learning rate): at least
/// one epoch, batches of at least two, a positive learning rate.
pub(super) fn check_loop(
    fields: [&'static str; 3],
    epochs: usize,
    batch: usize,
    lr: f64,
) -> Result<()> {
    if epochs == 0 {
        return invalid(fields[0], "must be at least 1");
    }
    if batch < 2 {
        return invalid(fields[1], "must be at least 2");
    }
    if !(lr > 0.0 && lr.is_finite()) {
        return invalid(fields[2], "must be a positive number");
    }
    Ok(())
}

/// One input of the model, as removed in robustness evaluations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Image,
    /// One text field, by name.
    Text(String),
    /// Every text field at once.
    AllText,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Image => f.write_str("image"),
            Input::Text(field) => f.write_str(field),
            Input::AllText => f.write_str("all text"),
        }
    }
}

/// Which inputs a model variant reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSet {
    pub image: bool,
    pub text_fields: Vec<String>,
}

impl InputSet {
    pub fn is_empty(&self) -> bool {
        !self.image && self.text_fields.is_empty()
    }

    /// The inputs a robustness evaluation withholds in turn: the image, each text field, and
    /// all text at once when there is more than one field.
    pub fn removals(&self) -> Vec<Input> {
        let mut removals = Vec::new();
        if self.image {
            removals.push(Input::Image);
        }
        removals.extend(self.text_fields.iter().cloned().map(Input::Text));
        if self.text_fields.len() > 1 {
            removals.push(Input::AllText);
        }
        removals
    }

    /// The same set less one input.
    pub fn without(&self, input: &Input) -> InputSet {
        match input {
            Input::Image => InputSet {
                image: false,
                text_fields: self.text_fields.clone(),
            },
            Input::Text(field) => InputSet {
                image: self.image,
                text_fields: self
                    .text_fields
                    .iter()
                    .filter(|f| *f != field)
                    .cloned()
                    .collect(),
            },
            Input::AllText => InputSet {
                image: self.image,
                text_fields: Vec::new(),
            },
        }
    }

    /// Whether `input` is part of this set.
    pub fn contains(&self, input: &Input) -> bool {
        match input {
            Input::Image => self.image,
            Input::Text(field) => self.text_fields.contains(field),
            Input::AllText => !self.text_fields.is_empty(),
        }
    }
}

impl fmt::Display for InputSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<&str> = Vec::new();
        if self.image {
            parts.push("image");
        }
        parts.extend(self.text_fields.iter().map(String::as_str));
        f.write_str(&parts.join(" + "))
    }
}

/// How to fine-tune the image tower's top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinetuneConfig {
    /// MBConv blocks to train, counted from the top (the head convolution always trains).
    /// `None`: the top half, as in the study. Fewer is much cheaper on a CPU.
    pub blocks: Option<usize>,
    /// Most fine-tuning epochs; early stopping usually ends sooner.
    pub epochs: usize,
    /// Stop after this many epochs without a better validation top-1.
    pub patience: usize,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW learning rate of the pretrained convolutions.
    pub lr: f64,
    /// AdamW learning rate of the classifier (probe and fine-tuning).
    pub head_lr: f64,
    pub weight_decay: f64,
    /// Epochs of the linear probe before fine-tuning.
    pub probe_epochs: usize,
    /// Dropout on the pooled features before the classifier.
    pub dropout: f32,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            blocks: None,
            epochs: 8,
            patience: 2,
            batch_size: 32,
            lr: 1e-4,
            head_lr: 1e-3,
            weight_decay: 1e-4,
            probe_epochs: 10,
            dropout: 0.2,
        }
    }
}

impl FinetuneConfig {
    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        check_loop(
            [
                "finetune_image.epochs",
                "finetune_image.batch_size",
                "finetune_image.lr",
            ],
            self.epochs,
            self.batch_size,
            self.lr,
        )?;
        if !(self.head_lr > 0.0 && self.head_lr.is_finite()) {
            return invalid("finetune_image.head_lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("finetune_image.dropout", "must be in [0, 1)");
        }
        Ok(())
    }

    /// The first block to train in a network of `block_count` blocks.
    pub fn first_block(&self, block_count: usize) -> Result<usize> {
        let blocks = self.blocks.unwrap_or(block_count / 2);
        if blocks > block_count {
            return Err(Error::InvalidTrainConfig {
                field: "finetune_image.blocks",
                reason: format!("the image tower has only {block_count} blocks, not {blocks}"),
            });
        }
        Ok(block_count - blocks)
    }
}
