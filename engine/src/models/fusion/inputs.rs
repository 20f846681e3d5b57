//! What the model reads: items with their present inputs, packed into batches with presence
//! columns, and the training-time noise drawn for a batch.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::FusionConfig;
use crate::error::{Error, Result};

/// Anything that can hand the model its inputs: a catalogue item, a training example, a query.
pub trait ModalityInputs {
    /// The frozen image features, if the item has an image.
    fn image(&self) -> Option<&[f32]>;
    /// The frozen embedding of one text field, if the item has that field.
    fn text(&self, field: &str) -> Option<&[f32]>;
    /// How to name this input in an error message ("item 42", "query").
    fn describe(&self) -> String {
        "input".to_string()
    }
}

/// A free-standing input: a query or an item outside any catalogue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FusionInput {
    pub image: Option<Vec<f32>>,
    pub text: BTreeMap<String, Vec<f32>>,
}

impl FusionInput {
    /// How a text query reaches the fused model: the query's sentence embedding fills every
    /// text field the model reads (a query is not a title or a description, and items carry
    /// their words in either), and the image is absent.
    pub fn text_query(text_fields: &[String], embedding: &[f32]) -> Self {
        Self {
            image: None,
            text: text_fields
                .iter()
                .map(|f| (f.clone(), embedding.to_vec()))
                .collect(),
        }
    }
}

impl ModalityInputs for FusionInput {
    fn image(&self) -> Option<&[f32]> {
        self.image.as_deref()
    }
    fn text(&self, field: &str) -> Option<&[f32]> {
        self.text.get(field).map(Vec::as_slice)
    }
    fn describe(&self) -> String {
        "query".to_string()
    }
}

/// One modality of a batch: its features (rows of zeros where absent, never read as data) and a
/// presence column of 1.0 / 0.0.
#[derive(Debug, Clone)]
pub struct Modality {
    /// `[batch, dim]`.
    pub features: Tensor,
    /// `[batch, 1]`, 1.0 where the item has this input.
    pub present: Tensor,
}

/// A batch in the model's input order: the image (when the model uses it), then one entry per
/// configured text field.
#[derive(Debug, Clone)]
pub struct FusionBatch {
    pub image: Option<Modality>,
    pub text: Vec<Modality>,
}

/// Training-time randomness (dropout masks), drawn by the caller from a seeded generator.
#[derive(Debug, Clone)]
pub struct TrainNoise {
    /// Scaled keep masks (`0` or `1/(1-p)`) for the image branch output, `[batch, proj]`.
    pub(super) image_dropout: Option<Tensor>,
    /// Same, one per text field, `[batch, tuning]`.
    pub(super) text_dropout: Vec<Tensor>,
}

impl TrainNoise {
    /// Draws the dropout masks for a batch of `rows`.
    pub fn sample<R: Rng>(
        cfg: &FusionConfig,
        rows: usize,
        rng: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut mask = |width: usize, rate: f32| -> Result<Tensor> {
            let keep = 1.0 - rate;
            let scale = 1.0 / keep;
            let v: Vec<f32> = (0..rows * width)
                .map(|_| if rng.gen::<f32>() < keep { scale } else { 0.0 })
                .collect();
            Ok(Tensor::from_vec(v, (rows, width), device)?)
        };
        let image_dropout = if cfg.use_image && cfg.image_dropout_rate() > 0.0 {
            Some(mask(cfg.image_proj_dim, cfg.image_dropout_rate())?)
        } else {
            None
        };
        let mut text_dropout = Vec::new();
        if cfg.dropout > 0.0 {
            for _ in &cfg.text_fields {
                text_dropout.push(mask(cfg.text_tuning_dim, cfg.dropout)?);
            }
        }
        Ok(Self {
            image_dropout,
            text_dropout,
        })
    }
}

/// Packs inputs into a [`FusionBatch`] for `cfg`, checking every width.
pub fn batch_from_inputs<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<FusionBatch> {
    let (batch, any) = batch_with_presence(cfg, items, device)?;
    if let Some(i) = any.iter().position(|a| !a) {
        return Err(Error::NoInputs {
            item: items[i].describe(),
        });
    }
    Ok(batch)
}

/// [`batch_from_inputs`] that lets rows lack every input `cfg` reads (their presence columns
/// are all zero): how a single-modality expert reads items it has nothing to say about.
pub fn partial_batch_from_inputs<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<FusionBatch> {
    Ok(batch_with_presence(cfg, items, device)?.0)
}

/// The batch, and per row whether it holds any input `cfg` reads.
pub(super) fn batch_with_presence<I: ModalityInputs>(
    cfg: &FusionConfig,
    items: &[I],
    device: &Device,
) -> Result<(FusionBatch, Vec<bool>)> {
    let rows = items.len();
    let column = |dim: usize,
                  field: &str,
                  get: &dyn Fn(&I) -> Option<&[f32]>|
     -> Result<(Vec<f32>, Vec<f32>)> {
        let mut data = vec![0f32; rows * dim];
        let mut present = vec![0f32; rows];
        for (i, item) in items.iter().enumerate() {
            if let Some(v) = get(item) {
                if v.len() != dim {
                    return Err(Error::FeatureDim {
                        item: item.describe(),
                        field: field.to_string(),
                        expected: dim,
                        got: v.len(),
                    });
                }
                data[i * dim..(i + 1) * dim].copy_from_slice(v);
                present[i] = 1.0;
            }
        }
        Ok((data, present))
    };
    let to_modality = |(data, present): (Vec<f32>, Vec<f32>), dim: usize| -> Result<Modality> {
        Ok(Modality {
            features: Tensor::from_vec(data, (rows, dim), device)?,
            present: Tensor::from_vec(present, (rows, 1), device)?,
        })
    };
    let mut any = vec![false; rows];
    let image = if cfg.use_image {
        let col = column(cfg.image_dim, "image", &|it: &I| it.image())?;
        for (a, p) in any.iter_mut().zip(&col.1) {
            *a |= *p > 0.0;
        }
        Some(to_modality(col, cfg.image_dim)?)
    } else {
        None
    };
    let mut text = Vec::with_capacity(cfg.text_fields.len());
    for field in &cfg.text_fields {
        let col = column(cfg.text_dim, field, &|it: &I| it.text(field))?;
        for (a, p) in any.iter_mut().zip(&col.1) {
            *a |= *p > 0.0;
        }
        text.push(to_modality(col, cfg.text_dim)?);
    }
    Ok((FusionBatch { image, text }, any))
}
