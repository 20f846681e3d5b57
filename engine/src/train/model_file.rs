//! A trained fused model as one storable value: configuration, label map, weights, metrics and
//! the fingerprint of the data it was trained on.
//!
//! The byte form is a standard safetensors file: the weights are its tensors and everything else
//! is JSON under the metadata key `trio.header`, so any safetensors reader can inspect it.
//!
//! A fused model may carry the study's single-modality baselines (image-only, text-only) trained
//! in the same run, so that `trio eval` can score them on new data beside the fused model. Their
//! tensors sit in the same file under `baselines.<i>.`, their headers in the fused header.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::{Deserialize, Serialize};

use super::config::{InputSet, TrainConfig};
use super::finetune::FinetuneReport;
use super::metrics::SplitMetrics;
use crate::error::{Error, Result};
use crate::models::efficientnet_lite::{EfficientNetLite, Top};
use crate::models::fusion::{FusedModel, FusionConfig, DTYPE};

const FORMAT_KEY: &str = "trio.format";
const FORMAT: &str = "trio-fused-model/1";
const HEADER_KEY: &str = "trio.header";
/// Tensor-name prefix of baseline `i`: `baselines.<i>.`.
const BASELINE_PREFIX: &str = "baselines.";
/// Tensor-name prefix of a fine-tuned image tower's top.
const IMAGE_TOWER_PREFIX: &str = "image_tower.";

/// How a model did, on the split it was trained with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub val: SplitMetrics,
    pub test: SplitMetrics,
    /// Epochs actually run (early stopping may end before `TrainConfig::epochs`).
    pub epochs_run: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Wall-clock training time.
    pub seconds: f64,
    /// The image projection widths tried and their validation top-1, when more than one was
    /// (the model keeps the best).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub width_trials: Vec<WidthTrial>,
}

/// One image projection width tried for a model, and how it validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WidthTrial {
    pub image_proj_dim: usize,
    pub val_top1: f64,
}

/// Everything but the weights; serialised as JSON into the safetensors metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    variant: String,
    config: FusionConfig,
    train: TrainConfig,
    labels: Vec<String>,
    metrics: ModelMetrics,
    fingerprint: String,
    /// Headers of the baselines stored beside the model, in order; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    baselines: Vec<Header>,
    /// Present when the image tower's top was fine-tuned for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_tower: Option<ImageTowerHeader>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ImageTowerHeader {
    network: String,
    report: FinetuneReport,
}

/// The top of the image tower fine-tuned for a model (`--finetune-image`). The model reads
/// image features computed with it, so queries must use it too; it fits only the network it
/// was cut from.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedImageTower {
    /// The network's name, e.g. `efficientnet-lite0`.
    pub network: String,
    pub report: FinetuneReport,
    /// The top's folded weights as safetensors (names from [`Top::tensors`]).
    weights: Vec<u8>,
}

impl TunedImageTower {
    pub fn new(network: &str, report: FinetuneReport, top: &Top) -> Result<Self> {
        Ok(Self {
            network: network.to_string(),
            report,
            weights: tensors_to_safetensors(top.tensors()?)?,
        })
    }

    /// The fine-tuned top, built on `base` (the frozen tower the catalogue embeds with).
    pub fn load(&self, base: &EfficientNetLite) -> Result<Top> {
        if base.config().name != self.network {
            return Err(format_error(format!(
                "the model's image tower was fine-tuned from {}, the catalogue embeds with {}",
                self.network,
                base.config().name
            )));
        }
        let tensors = safetensors_to_tensors(&self.weights, base.device())?;
        base.top(self.report.first_block)?.with_tensors(&tensors)
    }
}

/// A trained fused model (any variant: fused, image-only, text-only, fused without an input).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedModel {
    /// Which variant of the study this is (`fused`, `image-only`, …).
    pub variant: String,
    pub config: FusionConfig,
    pub train: TrainConfig,
    /// Class names; probability `i` of [`FusedModel::predict`] is for `labels[i]`.
    pub labels: Vec<String>,
    pub metrics: ModelMetrics,
    /// [`super::fingerprint`] of the examples the study was given.
    pub fingerprint: String,
    /// Models trained beside this one on the same split (the study's image-only and text-only
    /// baselines), stored with it so they can be scored on new data. Empty for the baselines
    /// themselves and for models stored before baselines were kept.
    pub baselines: Vec<TrainedModel>,
    /// The fine-tuned image tower top whose features this model reads; `None`: the frozen
    /// tower's features.
    pub image_tower: Option<TunedImageTower>,
    /// The weights as a safetensors file.
    weights: Vec<u8>,
}

/// A little-endian f32 tensor for the safetensors writer.
struct F32Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Stored models load only when they record every setting of today's fused model (each model
/// and each stored baseline). A model written before a setting existed would otherwise load
/// with today's default for it, which is not how it was trained; it is refused, with the
/// setting it lacks, so the user retrains it.
fn check_settings_are_current(header: &serde_json::Value) -> Result<()> {
    let current = serde_json::to_value(FusionConfig::default()).map_err(|source| Error::Json {
        context: "fused model settings".into(),
        source,
    })?;
    let Some(current) = current.as_object() else {
        return Ok(());
    };
    let mut headers = vec![header];
    while let Some(h) = headers.pop() {
        let variant = h.get("variant").and_then(|v| v.as_str()).unwrap_or("model");
        let stored = h
            .get("config")
            .and_then(|c| c.as_object())
            .ok_or_else(|| format_error(format!("`{variant}` has no settings")))?;
        // Joint heads on the branch outputs were an alternative design, since removed: such a
        // model's search heads have no counterpart today.
        if stored.get("joint_input").and_then(|v| v.as_str()) == Some("branch_outputs") {
            return Err(format_error(format!(
                "`{variant}` has joint heads on branch outputs (`joint_input: branch_outputs`), \
                 which this Trio no longer has; retrain it with `trio train`"
            )));
        }
        if let Some(missing) = current.keys().find(|k| !stored.contains_key(*k)) {
            return Err(format_error(format!(
                "`{variant}` was stored by an older Trio (its settings have no `{missing}`); \
                 retrain it with `trio train`"
            )));
        }
        if let Some(baselines) = h.get("baselines").and_then(|b| b.as_array()) {
            headers.extend(baselines);
        }
    }
    Ok(())
}

fn format_error(reason: impl Into<String>) -> Error {
    Error::ModelFormat {
        reason: reason.into(),
    }
}

/// Serialises every variable of `varmap` (sorted by name) as safetensors.
pub(crate) fn varmap_to_safetensors(varmap: &VarMap) -> Result<Vec<u8>> {
    let vars = varmap.data().lock().map_err(|_| {
        Error::InvalidArgument("the model's variable map was poisoned by a panic".into())
    })?;
    tensors_to_safetensors(
        vars.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect(),
    )
}

/// Serialises named tensors (sorted by name) as f32 safetensors.
fn tensors_to_safetensors(named: Vec<(String, Tensor)>) -> Result<Vec<u8>> {
    let mut tensors: BTreeMap<String, F32Tensor> = BTreeMap::new();
    for (name, t) in named {
        let values: Vec<f32> = t.flatten_all()?.to_dtype(DTYPE)?.to_vec1()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(
            name,
            F32Tensor {
                shape: t.dims().to_vec(),
                bytes,
            },
        );
    }
    safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| format_error(format!("cannot write weights: {e}")))
}

/// Reads a safetensors buffer into f32 tensors on `device`.
fn safetensors_to_tensors(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_error(format!("weights: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format_error(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::from_vec(values, view.shape(), device)?);
    }
    Ok(out)
}

impl TrainedModel {
    pub(crate) fn new(
        variant: String,
        config: FusionConfig,
        train: TrainConfig,
        labels: Vec<String>,
        metrics: ModelMetrics,
        fingerprint: String,
        weights: Vec<u8>,
    ) -> Self {
        Self {
            variant,
            config,
            train,
            labels,
            metrics,
            fingerprint,
            baselines: Vec::new(),
            image_tower: None,
            weights,
        }
    }

    /// The same model reading features of a fine-tuned image tower top.
    pub fn with_image_tower(mut self, tower: Option<TunedImageTower>) -> Self {
        self.image_tower = tower;
        self
    }

    /// The same model carrying `baselines` (which must not carry baselines themselves).
    pub fn with_baselines(mut self, baselines: Vec<TrainedModel>) -> Self {
        self.baselines = baselines
            .into_iter()
            .map(|mut b| {
                b.baselines.clear();
                b
            })
            .collect();
        self
    }

    /// The stored baseline named `variant`, if any.
    pub fn baseline(&self, variant: &str) -> Option<&TrainedModel> {
        self.baselines.iter().find(|b| b.variant == variant)
    }

    fn header(&self) -> Header {
        Header {
            variant: self.variant.clone(),
            config: self.config.clone(),
            train: self.train.clone(),
            labels: self.labels.clone(),
            metrics: self.metrics.clone(),
            fingerprint: self.fingerprint.clone(),
            baselines: self.baselines.iter().map(TrainedModel::header).collect(),
            image_tower: self.image_tower.as_ref().map(|t| ImageTowerHeader {
                network: t.network.clone(),
                report: t.report.clone(),
            }),
        }
    }

    /// The weights alone, as a safetensors file.
    pub fn weights_safetensors(&self) -> &[u8] {
        &self.weights
    }

    /// The inputs this model reads.
    pub fn inputs(&self) -> InputSet {
        InputSet {
            image: self.config.use_image,
            text_fields: self.config.text_fields.clone(),
        }
    }

    /// One self-describing safetensors file: weights (and the baselines' weights, prefixed)
    /// plus a JSON header in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(&self.header()).map_err(|source| Error::Json {
            context: "trained model header".into(),
            source,
        })?;
        let own = SafeTensors::deserialize(&self.weights)
            .map_err(|e| format_error(format!("weights: {e}")))?;
        let baselines = self
            .baselines
            .iter()
            .map(|b| SafeTensors::deserialize(&b.weights))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format_error(format!("baseline weights: {e}")))?;
        let tower = self
            .image_tower
            .as_ref()
            .map(|t| SafeTensors::deserialize(&t.weights))
            .transpose()
            .map_err(|e| format_error(format!("image tower weights: {e}")))?;
        let mut tensors: Vec<(String, TensorView<'_>)> = own.tensors();
        if let Some(st) = &tower {
            tensors.extend(
                st.tensors()
                    .into_iter()
                    .map(|(name, view)| (format!("{IMAGE_TOWER_PREFIX}{name}"), view)),
            );
        }
        for (i, st) in baselines.iter().enumerate() {
            tensors.extend(
                st.tensors()
                    .into_iter()
                    .map(|(name, view)| (format!("{BASELINE_PREFIX}{i}.{name}"), view)),
            );
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let metadata = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT.to_string()),
            (HEADER_KEY.to_string(), json),
        ]);
        safetensors::tensor::serialize(tensors, Some(metadata))
            .map_err(|e| format_error(format!("cannot write model: {e}")))
    }

    /// Reads what [`TrainedModel::to_bytes`] wrote, checking the format tag, the header, and that
    /// the weights are readable.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format_error(format!("not a safetensors file: {e}")))?;
        let fields = meta
            .metadata()
            .as_ref()
            .ok_or_else(|| format_error("no Trio header (safetensors metadata is empty)"))?;
        match fields.get(FORMAT_KEY) {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(format_error(format!(
                    "format `{f}` is not supported (expected `{FORMAT}`)"
                )))
            }
            None => {
                return Err(format_error(format!(
                    "no `{FORMAT_KEY}` entry: not a Trio model"
                )))
            }
        }
        let json = fields
            .get(HEADER_KEY)
            .ok_or_else(|| format_error(format!("no `{HEADER_KEY}` entry")))?;
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|source| Error::Json {
                context: "trained model header".into(),
                source,
            })?;
        check_settings_are_current(&value)?;
        let header: Header = serde_json::from_value(value).map_err(|source| Error::Json {
            context: "trained model header".into(),
            source,
        })?;
        for h in std::iter::once(&header).chain(&header.baselines) {
            if h.labels.len() != h.config.num_classes {
                return Err(format_error(format!(
                    "`{}`: {} labels for {} classes",
                    h.variant,
                    h.labels.len(),
                    h.config.num_classes
                )));
            }
        }
        // Keep each model's weights without the header, so a model read back equals the one
        // written.
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format_error(format!("weights: {e}")))?;
        let mut own = Vec::new();
        let mut tower = Vec::new();
        let mut parts: Vec<Vec<(String, TensorView<'_>)>> =
            vec![Vec::new(); header.baselines.len()];
        for (name, view) in st.tensors() {
            if let Some(inner) = name.strip_prefix(IMAGE_TOWER_PREFIX) {
                tower.push((inner.to_string(), view));
                continue;
            }
            let Some(rest) = name.strip_prefix(BASELINE_PREFIX) else {
                own.push((name, view));
                continue;
            };
            let (index, inner) = rest
                .split_once('.')
                .and_then(|(i, inner)| Some((i.parse::<usize>().ok()?, inner)))
                .ok_or_else(|| format_error(format!("tensor `{name}`: bad baseline name")))?;
            let part = parts.get_mut(index).ok_or_else(|| {
                format_error(format!(
                    "tensor `{name}` belongs to baseline {index}, the header lists {}",
                    header.baselines.len()
                ))
            })?;
            part.push((inner.to_string(), view));
        }
        let pack = |mut tensors: Vec<(String, TensorView<'_>)>| -> Result<Vec<u8>> {
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            safetensors::tensor::serialize(tensors, None)
                .map_err(|e| format_error(format!("cannot copy weights: {e}")))
        };
        let weights = pack(own)?;
        let image_tower = match (&header.image_tower, tower.is_empty()) {
            (Some(h), false) => Some(TunedImageTower {
                network: h.network.clone(),
                report: h.report.clone(),
                weights: pack(tower)?,
            }),
            (None, true) => None,
            (Some(_), true) => {
                return Err(format_error(
                    "the header names a fine-tuned image tower but its weights are missing",
                ))
            }
            (None, false) => {
                return Err(format_error(
                    "image tower weights are present but the header does not describe them",
                ))
            }
        };
        let mut baselines = Vec::with_capacity(parts.len());
        for (h, part) in header.baselines.iter().zip(parts) {
            baselines.push(Self::from_header(h.clone(), pack(part)?, Vec::new()));
        }
        Ok(Self::from_header(header, weights, baselines).with_image_tower(image_tower))
    }

    fn from_header(header: Header, weights: Vec<u8>, baselines: Vec<TrainedModel>) -> Self {
        Self {
            variant: header.variant,
            config: header.config,
            train: header.train,
            labels: header.labels,
            metrics: header.metrics,
            fingerprint: header.fingerprint,
            baselines,
            image_tower: None,
            weights,
        }
    }

    /// Builds the fused network on `device`.
    pub fn load(&self, device: &Device) -> Result<FusedModel> {
        let tensors = safetensors_to_tensors(&self.weights, device)?;
        let vb = VarBuilder::from_tensors(tensors, DTYPE, device);
        FusedModel::load(vb, &self.config)
    }

    /// The `k` most probable labels of one probability row, best first.
    pub fn top_k(&self, probs: &[f32], k: usize) -> Vec<(String, f32)> {
        let mut order: Vec<usize> = (0..probs.len().min(self.labels.len())).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|i| (self.labels[i].clone(), probs[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(config: serde_json::Value, baselines: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"variant": "fused", "config": config, "baselines": baselines})
    }

    #[test]
    fn models_missing_a_current_setting_are_refused_naming_it() {
        let current = serde_json::to_value(FusionConfig::default()).expect("settings");
        assert!(check_settings_are_current(&header(current.clone(), vec![])).is_ok());

        let mut old = current.clone();
        old.as_object_mut().expect("object").remove("image_weight");
        let err = check_settings_are_current(&header(old.clone(), vec![]))
            .expect_err("a model without image_weight is older");
        let text = err.to_string();
        assert!(
            text.contains("image_weight") && text.contains("trio train"),
            "{text}"
        );

        let mut branch_heads = current.clone();
        branch_heads
            .as_object_mut()
            .expect("object")
            .insert("joint_input".into(), "branch_outputs".into());
        let err = check_settings_are_current(&header(branch_heads, vec![]))
            .expect_err("joint heads on branch outputs are gone");
        assert!(err.to_string().contains("branch_outputs"), "{err}");

        let baseline = serde_json::json!({"variant": "text-only", "config": old});
        let err = check_settings_are_current(&header(current, vec![baseline]))
            .expect_err("an older baseline is refused too");
        assert!(err.to_string().contains("text-only"), "{err}");
    }
}
