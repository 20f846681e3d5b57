//! The examples as device-resident feature matrices, built once per training run so the
//! training loop only gathers rows.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::config::Input;
use super::Example;
use crate::error::{Error, Result};
use crate::models::fusion::{FusionBatch, FusionConfig, Modality, DTYPE};

/// One input's features for every example: zeros where absent, plus the presence column.
pub(crate) struct Column {
    pub features: Tensor,
    pub present: Tensor,
    pub present_host: Vec<bool>,
}

impl Column {
    fn build(
        n: usize,
        dim: usize,
        rows: impl Iterator<Item = Option<Vec<f32>>>,
        device: &Device,
    ) -> Result<Self> {
        let mut data = vec![0f32; n * dim];
        let mut present_host = vec![false; n];
        for (i, row) in rows.enumerate() {
            if let Some(v) = row {
                data[i * dim..(i + 1) * dim].copy_from_slice(&v);
                present_host[i] = true;
            }
        }
        let present: Vec<f32> = present_host
            .iter()
            .map(|&p| if p { 1.0 } else { 0.0 })
            .collect();
        Ok(Self {
            features: Tensor::from_vec(data, (n, dim), device)?,
            present: Tensor::from_vec(present, (n, 1), device)?,
            present_host,
        })
    }
}

/// All examples of one run as matrices, rows in example order.
pub(crate) struct FeatureTable {
    pub keys: Vec<u64>,
    /// Class index per row; `None` for unlabelled rows.
    pub labels: Vec<Option<u32>>,
    pub label_names: Vec<String>,
    /// Each row's group (items that are one thing, e.g. one emoji in several renders).
    pub groups: Vec<Option<String>>,
    pub fields: Vec<String>,
    pub image_dim: usize,
    pub text_dim: usize,
    /// `None` when no example has an image.
    pub image: Option<Column>,
    /// One column per entry of `fields`.
    pub text: Vec<Column>,
    pub device: Device,
}

/// The width of the first present vector among `rows`, and a check that all others match.
fn common_width<'a>(
    examples: &'a [Example],
    field: &str,
    get: impl Fn(&'a Example) -> Option<&'a Vec<f32>>,
) -> Result<Option<usize>> {
    let mut width = None;
    for e in examples {
        if let Some(v) = get(e) {
            match width {
                None => width = Some(v.len()),
                Some(w) if w != v.len() => {
                    return Err(Error::FeatureDim {
                        item: format!("item {}", e.key),
                        field: field.to_string(),
                        expected: w,
                        got: v.len(),
                    })
                }
                Some(_) => {}
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "item {}: {field} contains a non-finite value",
                    e.key
                )));
            }
        }
    }
    Ok(width)
}

impl FeatureTable {
    /// Every text field name seen in `examples`, sorted.
    pub fn fields_in(examples: &[Example]) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        for e in examples {
            seen.extend(e.text.keys().cloned());
        }
        seen.into_iter().collect()
    }

    /// Builds the table for `fields`; labels are numbered in sorted order. Widths come from the
    /// data and must agree across examples (all text fields share one width).
    pub fn build(examples: &[Example], fields: &[String], device: &Device) -> Result<Self> {
        let n = examples.len();
        let image_dim = common_width(examples, "image", |e| e.image.as_ref())?;
        let mut text_dim: Option<(usize, &str)> = None;
        for f in fields {
            match (common_width(examples, f, |e| e.text.get(f))?, text_dim) {
                (Some(w), None) => text_dim = Some((w, f)),
                (Some(w), Some((t, first))) if w != t => {
                    let item = examples
                        .iter()
                        .find(|e| e.text.contains_key(f))
                        .map(|e| e.key)
                        .unwrap_or_default();
                    return Err(Error::FeatureDim {
                        item: format!("item {item}"),
                        field: format!("{f} (text fields must share one width; `{first}` has {t})"),
                        expected: t,
                        got: w,
                    });
                }
                (None, _) => {
                    return Err(Error::NotEnoughData {
                        reason: format!("no example has the text field `{f}`"),
                    })
                }
                _ => {}
            }
        }
        let label_names: Vec<String> = examples
            .iter()
            .filter_map(|e| e.label.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let index: BTreeMap<&str, u32> = label_names
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as u32))
            .collect();
        let labels = examples
            .iter()
            .map(|e| e.label.as_deref().and_then(|l| index.get(l).copied()))
            .collect();
        let image = match image_dim {
            Some(d) => Some(Column::build(
                n,
                d,
                examples.iter().map(|e| e.image.clone()),
                device,
            )?),
            None => None,
        };
        let text_width = text_dim.map(|(w, _)| w).unwrap_or(0);
        let text = fields
            .iter()
            .map(|f| {
                Column::build(
                    n,
                    text_width,
                    examples.iter().map(|e| e.text.get(f).cloned()),
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            keys: examples.iter().map(|e| e.key).collect(),
            labels,
            label_names,
            groups: examples.iter().map(|e| e.group.clone()).collect(),
            fields: fields.to_vec(),
            image_dim: image_dim.unwrap_or(0),
            text_dim: text_width,
            image,
            text,
            device: device.clone(),
        })
    }

    /// Builds the table a stored model reads: its label map (labels it does not know become
    /// `None`), its text fields and its feature widths, which every present vector must match.
    /// Unlike [`FeatureTable::build`], an input no example has is simply absent everywhere.
    pub fn for_model(
        examples: &[Example],
        cfg: &FusionConfig,
        label_names: &[String],
        device: &Device,
    ) -> Result<Self> {
        let n = examples.len();
        let check = |field: &str, v: &[f32], expected: usize, key: u64| -> Result<()> {
            if v.len() != expected {
                return Err(Error::FeatureDim {
                    item: format!("item {key}"),
                    field: field.to_string(),
                    expected,
                    got: v.len(),
                });
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "item {key}: {field} contains a non-finite value"
                )));
            }
            Ok(())
        };
        for e in examples {
            if let Some(v) = &e.image {
                check("image", v, cfg.image_dim, e.key)?;
            }
            for f in &cfg.text_fields {
                if let Some(v) = e.text.get(f) {
                    check(f, v, cfg.text_dim, e.key)?;
                }
            }
        }
        let index: BTreeMap<&str, u32> = label_names
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as u32))
            .collect();
        let image = Column::build(
            n,
            cfg.image_dim,
            examples.iter().map(|e| e.image.clone()),
            device,
        )?;
        let text = cfg
            .text_fields
            .iter()
            .map(|f| {
                Column::build(
                    n,
                    cfg.text_dim,
                    examples.iter().map(|e| e.text.get(f).cloned()),
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            keys: examples.iter().map(|e| e.key).collect(),
            labels: examples
                .iter()
                .map(|e| e.label.as_deref().and_then(|l| index.get(l).copied()))
                .collect(),
            label_names: label_names.to_vec(),
            groups: examples.iter().map(|e| e.group.clone()).collect(),
            fields: cfg.text_fields.clone(),
            image_dim: cfg.image_dim,
            text_dim: cfg.text_dim,
            image: Some(image),
            text,
            device: device.clone(),
        })
    }

    fn field_column(&self, field: &str) -> Result<&Column> {
        self.fields
            .iter()
            .position(|f| f == field)
            .map(|i| &self.text[i])
            .ok_or_else(|| Error::NotEnoughData {
                reason: format!("no example has the text field `{field}`"),
            })
    }

    fn image_column(&self) -> Result<&Column> {
        self.image.as_ref().ok_or_else(|| Error::NotEnoughData {
            reason: "no example has an image".to_string(),
        })
    }

    pub fn index_tensor(&self, rows: &[usize]) -> Result<Tensor> {
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        Ok(Tensor::from_vec(idx, rows.len(), &self.device)?)
    }

    /// Class indices of `rows` (all must be labelled).
    pub fn label_tensor(&self, rows: &[usize]) -> Result<Tensor> {
        let labels = rows
            .iter()
            .map(|&r| {
                self.labels[r].ok_or_else(|| {
                    Error::InvalidArgument(format!("item {} has no label", self.keys[r]))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tensor::from_vec(labels, rows.len(), &self.device)?)
    }

    /// Whether row `r` has at least one of the inputs `cfg` reads.
    pub fn has_any_input(&self, r: usize, cfg: &FusionConfig) -> bool {
        let image = cfg.use_image && self.image.as_ref().is_some_and(|c| c.present_host[r]);
        image
            || cfg
                .text_fields
                .iter()
                .any(|f| self.field_column(f).is_ok_and(|c| c.present_host[r]))
    }

    /// The rows of `rows` for the model `cfg`, with `hide` forced absent. Also returns the
    /// host-side presence (image, then per field) for drawing training noise.
    pub fn fusion_batch(
        &self,
        rows: &[usize],
        cfg: &FusionConfig,
        hide: Option<&Input>,
    ) -> Result<(FusionBatch, Vec<bool>, Vec<Vec<bool>>)> {
        let idx = self.index_tensor(rows)?;
        let n = rows.len();
        let gather = |col: &Column, hidden: bool| -> Result<(Modality, Vec<bool>)> {
            let features = col.features.index_select(&idx, 0)?;
            if hidden {
                return Ok((
                    Modality {
                        features,
                        present: Tensor::zeros((n, 1), DTYPE, &self.device)?,
                    },
                    vec![false; n],
                ));
            }
            Ok((
                Modality {
                    features,
                    present: col.present.index_select(&idx, 0)?,
                },
                rows.iter().map(|&r| col.present_host[r]).collect(),
            ))
        };
        let (image, image_host) = if cfg.use_image {
            let (m, h) = gather(self.image_column()?, hide == Some(&Input::Image))?;
            (Some(m), h)
        } else {
            (None, vec![false; n])
        };
        let mut text = Vec::with_capacity(cfg.text_fields.len());
        let mut text_host = Vec::with_capacity(cfg.text_fields.len());
        for f in &cfg.text_fields {
            let hidden =
                matches!(hide, Some(Input::AllText)) || hide == Some(&Input::Text(f.clone()));
            let (m, h) = gather(self.field_column(f)?, hidden)?;
            text.push(m);
            text_host.push(h);
        }
        Ok((FusionBatch { image, text }, image_host, text_host))
    }

    /// Every input side by side, zeros where absent: the logistic-regression baseline's input.
    pub fn flat_features(&self) -> Result<Tensor> {
        let mut parts: Vec<&Tensor> = Vec::new();
        if let Some(c) = &self.image {
            parts.push(&c.features);
        }
        parts.extend(self.text.iter().map(|c| &c.features));
        Ok(Tensor::cat(&parts, 1)?)
    }
}
