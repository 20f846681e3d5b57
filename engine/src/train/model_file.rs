//! A trained fused model as one storable value: configuration, label map, weights, metrics and
//! the fingerprint of the data it was trained on.
//!
//! The byte form is a standard safetensors file: the weights are its tensors and everything else
//! is JSON under the metadata key `trio.header`, so any safetensors reader can inspect it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::{Deserialize, Serialize};

use super::config::{InputSet, TrainConfig};
use super::metrics::SplitMetrics;
use crate::error::{Error, Result};
use crate::models::fusion::{FusedModel, FusionConfig, DTYPE};

const FORMAT_KEY: &str = "trio.format";
const FORMAT: &str = "trio-fused-model/1";
const HEADER_KEY: &str = "trio.header";

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
    let mut tensors: BTreeMap<String, F32Tensor> = BTreeMap::new();
    for (name, var) in vars.iter() {
        let t = var.as_tensor();
        let values: Vec<f32> = t.flatten_all()?.to_dtype(DTYPE)?.to_vec1()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(
            name.clone(),
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
            weights,
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

    /// One self-describing safetensors file: weights plus a JSON header in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            variant: self.variant.clone(),
            config: self.config.clone(),
            train: self.train.clone(),
            labels: self.labels.clone(),
            metrics: self.metrics.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        let json = serde_json::to_string(&header).map_err(|source| Error::Json {
            context: "trained model header".into(),
            source,
        })?;
        let st = SafeTensors::deserialize(&self.weights)
            .map_err(|e| format_error(format!("weights: {e}")))?;
        let mut tensors: Vec<(String, TensorView<'_>)> = st.tensors();
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
        let header: Header = serde_json::from_str(json).map_err(|source| Error::Json {
            context: "trained model header".into(),
            source,
        })?;
        if header.labels.len() != header.config.num_classes {
            return Err(format_error(format!(
                "{} labels for {} classes",
                header.labels.len(),
                header.config.num_classes
            )));
        }
        // Keep the weights without the header, so a model read back equals the one written.
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format_error(format!("weights: {e}")))?;
        let mut tensors = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let weights = safetensors::tensor::serialize(tensors, None)
            .map_err(|e| format_error(format!("cannot copy weights: {e}")))?;
        Ok(Self {
            variant: header.variant,
            config: header.config,
            train: header.train,
            labels: header.labels,
            metrics: header.metrics,
            fingerprint: header.fingerprint,
            weights,
        })
    }

    /// Builds the model on `device`.
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
