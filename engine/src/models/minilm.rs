//! MiniLM (all-MiniLM-L6-v2), and any BERT-layout encoder: the text tower's network.
//!
//! The same weights run two ways:
//! - on the CPU, a fused encoder ([`fused`]) on packed token rows, with no padding, pre-packed
//!   weights and AVX-512 kernels picked at run time. It is several times faster than generic
//!   tensor ops for the short texts of a catalogue;
//! - on other devices (CUDA), candle tensor ops on padded batches with an attention mask.
//!
//! Both return, per tokenised sequence, the mean of the last hidden states; the tower
//! normalises. Tests check that the two agree, and both against sentence-transformers.

mod fused;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use self::fused::{FusedEncoder, FusedLayer, Norm as FusedNorm};
use crate::error::{Error, Result};
use crate::kernels::encoder::{Activation, Isa, PackedLinear};
use crate::kernels::quantized::Int8Kernel;

/// A BERT `config.json`. Fields that some checkpoints omit take BERT's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

/// The feed-forward activation, by its name in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// The exact, erf-based GELU (BERT's `gelu`).
    #[serde(rename = "gelu", alias = "gelu_python")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

impl Config {
    /// sentence-transformers/all-MiniLM-L6-v2: 6 layers, 384 wide, 12 heads.
    pub fn all_minilm_l6_v2() -> Self {
        Config {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            model_type: Some("bert".into()),
        }
    }

    /// Rejects what this implementation would compute wrongly rather than fail on.
    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::ModelConfig {
                model: self.model_type.clone().unwrap_or_else(|| "bert".into()),
                reason,
            })
        };
        if let Some(t) = self.model_type.as_deref() {
            // RoBERTa-style models share BERT's tensor names but offset their position ids,
            // so they would load and silently give wrong vectors.
            if t != "bert" {
                return bad(format!("model_type `{t}` is not a BERT-layout encoder"));
            }
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` (only `absolute` is implemented)",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} does not split into {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.type_vocab_size == 0 || self.max_position_embeddings == 0 {
            return bad("type_vocab_size and max_position_embeddings must be positive".into());
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The fused encoder when the weights are on the CPU (AVX-512 kernels where the CPU has
    /// them), candle tensor ops on any other device.
    #[default]
    Auto,
    /// The fused encoder with its portable kernels only: for other CPUs, and to check the
    /// AVX-512 kernels against.
    FusedPortable,
    /// The fused encoder with its matrix products in bfloat16 (AVX512_BF16, f32 accumulation);
    /// an error on CPUs without it.
    FusedBf16,
    /// The fused encoder with its linear layers in int8 (weights per output channel, inputs
    /// per row, i32 sums): AVX-512 VNNI where the CPU has it, portable integer loops that
    /// compute the same integers elsewhere. Attention, GELU and LayerNorm stay in f32.
    FusedInt8,
    /// candle tensor ops on the `VarBuilder`'s device, on padded, masked batches.
    Candle,
}

/// A BERT-family encoder that turns token ids into mean-pooled sentence vectors.
pub struct MiniLm {
    config: Config,
    engine: Engine,
}

enum Engine {
    Fused(FusedEncoder),
    Candle(CandleEncoder),
}

impl MiniLm {
    /// Loads the weights under `vb` (bare names or under `bert.`) for the best backend.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        Self::load_with(vb, config, Backend::Auto)
    }

    /// Loads the weights under `vb` to run on `backend`.
    pub fn load_with(vb: VarBuilder, config: &Config, backend: Backend) -> Result<Self> {
        config.validate()?;
        let vb = if !vb.contains_tensor("embeddings.word_embeddings.weight")
            && vb.contains_tensor("bert.embeddings.word_embeddings.weight")
        {
            vb.pp("bert")
        } else {
            vb
        };
        let on_cpu = vb.device().is_cpu();
        let arithmetic = match backend {
            Backend::Auto if on_cpu => Some(Arithmetic::Float(Isa::detect())),
            Backend::FusedPortable if on_cpu => Some(Arithmetic::Float(Isa::Portable)),
            #[cfg(target_arch = "x86_64")]
            Backend::FusedBf16 if on_cpu && Isa::has_bf16() => {
                Some(Arithmetic::Float(Isa::Avx512Bf16))
            }
            Backend::FusedInt8 if on_cpu => Some(Arithmetic::Int8(Int8Kernel::detect())),
            Backend::FusedBf16 if on_cpu => {
                return Err(Error::InvalidArgument(
                    "this CPU has no AVX512_BF16 for the bf16 MiniLM backend".into(),
                ))
            }
            Backend::FusedPortable | Backend::FusedBf16 | Backend::FusedInt8 => {
                return Err(Error::InvalidArgument(
                    "the fused MiniLM backend runs on the CPU only".into(),
                ))
            }
            Backend::Auto | Backend::Candle => None,
        };
        let engine = match arithmetic {
            Some(arithmetic) => Engine::Fused(load_fused(vb, config, arithmetic)?),
            None => Engine::Candle(CandleEncoder::load(vb, config)?),
        };
        Ok(MiniLm {
            config: config.clone(),
            engine,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The width of the vectors `mean_pooled` returns (384 for MiniLM).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// For each tokenised sequence (special tokens included, at most `max_position_embeddings`
    /// long), the mean of its last hidden states. Not normalised.
    pub fn mean_pooled(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        match &self.engine {
            Engine::Fused(f) => f.mean_pooled(sequences),
            Engine::Candle(c) => c.mean_pooled(sequences, &self.config),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks, as candle tensors. The fused encoder is built from them.

fn to_host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        Ok(Linear {
            weight: vb.get((outputs, inputs), "weight")?,
            bias: vb.get(outputs, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }

    fn packed(&self, arithmetic: Arithmetic) -> candle_core::Result<PackedLinear> {
        let (outputs, inputs) = self.weight.dims2()?;
        let (weight, bias) = (to_host(&self.weight)?, to_host(&self.bias)?);
        Ok(match arithmetic {
            Arithmetic::Float(isa) => PackedLinear::new(&weight, &bias, outputs, inputs, isa),
            Arithmetic::Int8(kernel) => {
                PackedLinear::quantized(&weight, &bias, outputs, inputs, kernel)
            }
        })
    }
}

struct Norm {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl Norm {
    /// `LayerNorm.weight`/`.bias`, or the `gamma`/`beta` of older checkpoints.
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let (g, b) = if vb.contains_tensor("gamma") && !vb.contains_tensor("weight") {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(Norm {
            gamma: vb.get(h, g)?,
            beta: vb.get(h, b)?,
            eps: config.layer_norm_eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.gamma, &self.beta, self.eps as f32)
    }

    fn fused(&self) -> candle_core::Result<FusedNorm> {
        Ok(FusedNorm {
            gamma: to_host(&self.gamma)?,
            beta: to_host(&self.beta)?,
        })
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: Norm,
}

impl Embeddings {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        Ok(Embeddings {
            word: vb.get((config.vocab_size, h), "word_embeddings.weight")?,
            position: vb.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type: vb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?,
            norm: Norm::load(vb.pp("LayerNorm"), config)?,
        })
    }

    /// `[batch, len]` token ids (all of token type 0) to `[batch, len, hidden]`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let h = self.word.dim(1)?;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, h))?;
        let positions = self.position.narrow(0, 0, len)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type.get(0)?)?;
        self.norm.forward(&x)
    }
}

struct Layer {
    /// Query, key and value as one `[3·hidden, hidden]` projection: one matmul, not three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let attn = vb.pp("attention");
        let q = Linear::load(attn.pp("self.query"), h, h)?;
        let k = Linear::load(attn.pp("self.key"), h, h)?;
        let v = Linear::load(attn.pp("self.value"), h, h)?;
        let qkv = Linear {
            weight: Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
            bias: Tensor::cat(&[&q.bias, &k.bias, &v.bias], 0)?,
        };
        Ok(Layer {
            qkv,
            attention_out: Linear::load(attn.pp("output.dense"), h, h)?,
            attention_norm: Norm::load(attn.pp("output.LayerNorm"), config)?,
            intermediate: Linear::load(vb.pp("intermediate.dense"), h, i)?,
            output: Linear::load(vb.pp("output.dense"), i, h)?,
            output_norm: Norm::load(vb.pp("output.LayerNorm"), config)?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            act: config.hidden_act,
        })
    }

    /// `x`: `[batch, len, hidden]`; `mask_bias`: `[batch, 1, 1, len]`, 0 for tokens and a
    /// large negative number for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, len, hidden) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((batch, len, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, len, hidden))?;
        let x = self
            .attention_norm
            .forward(&(self.attention_out.forward(&ctx)? + x)?)?;
        let inter = self.intermediate.forward(&x)?;
        let inter = match self.act {
            HiddenAct::Gelu => inter.gelu_erf()?,
            HiddenAct::GeluTanh => inter.gelu()?,
            HiddenAct::Relu => inter.relu()?,
        };
        self.output_norm
            .forward(&(self.output.forward(&inter)? + x)?)
    }

    fn into_fused(self, arithmetic: Arithmetic) -> candle_core::Result<FusedLayer> {
        Ok(FusedLayer {
            qkv: self.qkv.packed(arithmetic)?,
            attention_out: self.attention_out.packed(arithmetic)?,
            attention_norm: self.attention_norm.fused()?,
            intermediate: self.intermediate.packed(arithmetic)?,
            output: self.output.packed(arithmetic)?,
            output_norm: self.output_norm.fused()?,
        })
    }
}

/// The encoder as candle tensors on the weights' device.
struct CandleEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    device: Device,
}

impl CandleEncoder {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(CandleEncoder {
            embeddings,
            layers,
            device: vb.device().clone(),
        })
    }

    /// Pads the batch to its longest sequence, runs it with a mask, mean-pools real tokens.
    fn mean_pooled(&self, sequences: &[&[u32]], config: &Config) -> Result<Vec<Vec<f32>>> {
        let _span = tracing::trace_span!("minilm_candle", sequences = sequences.len()).entered();
        let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        if len == 0 || len > config.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "sequences of {len} tokens: the model takes 1 to {}",
                config.max_position_embeddings
            )));
        }
        if sequences.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidArgument("an empty token sequence".into()));
        }
        let mut ids = vec![config.pad_token_id; sequences.len() * len];
        let mut mask = vec![0.0f32; sequences.len() * len];
        for (b, seq) in sequences.iter().enumerate() {
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= config.vocab_size) {
                return Err(Error::InvalidArgument(format!(
                    "token id {bad} is outside the model's vocabulary of {}",
                    config.vocab_size
                )));
            }
            ids[b * len..b * len + seq.len()].copy_from_slice(seq);
            mask[b * len..b * len + seq.len()].fill(1.0);
        }
        let shape = (sequences.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let mask_bias = ((&mask - 1.0)? * 1e4)?.reshape((sequences.len(), 1, 1, len))?;
        let mut x = self.embeddings.forward(&ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias)?;
        }
        let summed = x.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum_keepdim(1)?)?;
        Ok(pooled.to_dtype(DType::F32)?.to_vec2()?)
    }
}

/// The fused encoder's arithmetic: the kernels of its linear layers.
#[derive(Debug, Clone, Copy)]
enum Arithmetic {
    /// f32 or bf16 products, and `Isa`'s elementwise kernels.
    Float(Isa),
    /// Int8 products; elementwise kernels in f32, portable with the portable int8 kernel.
    Int8(Int8Kernel),
}

/// Builds the fused encoder block by block, dropping each block's tensors once packed, so
/// loading never holds two full copies of the weights.
fn load_fused(vb: VarBuilder, config: &Config, arithmetic: Arithmetic) -> Result<FusedEncoder> {
    let isa = match arithmetic {
        Arithmetic::Float(isa) => isa,
        Arithmetic::Int8(Int8Kernel::Portable) => Isa::Portable,
        #[cfg(target_arch = "x86_64")]
        Arithmetic::Int8(Int8Kernel::Vnni) => Isa::detect(),
    };
    let h = config.hidden_size;
    let emb = Embeddings::load(vb.pp("embeddings"), config)?;
    let token_type0 = to_host(&emb.token_type.get(0)?)?;
    let mut position = to_host(&emb.position)?;
    for row in position.chunks_exact_mut(h) {
        for (p, t) in row.iter_mut().zip(&token_type0) {
            *p += t;
        }
    }
    let word = to_host(&emb.word)?;
    let embedding_norm = emb.norm.fused()?;
    drop(emb);
    let layers = (0..config.num_hidden_layers)
        .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config)?.into_fused(arithmetic))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let act = match config.hidden_act {
        HiddenAct::Gelu => Activation::GeluErf,
        HiddenAct::GeluTanh => Activation::GeluTanh,
        HiddenAct::Relu => Activation::Relu,
    };
    Ok(FusedEncoder {
        isa,
        hidden: h,
        heads: config.num_attention_heads,
        eps: config.layer_norm_eps as f32,
        act,
        vocab: config.vocab_size,
        max_positions: config.max_position_embeddings,
        word,
        position,
        embedding_norm,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn tiny_config(act: HiddenAct) -> Config {
        Config {
            vocab_size: 50,
            // 4 heads of 16: wide enough for the AVX-512 attention kernel.
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 80,
            hidden_act: act,
            max_position_embeddings: 40,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            model_type: Some("bert".into()),
        }
    }

    /// Random weights with BERT's tensor names, under `prefix`.
    fn tiny_weights(config: &Config, prefix: &str) -> HashMap<String, Tensor> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![config.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![config.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            for (name, shape) in [
                ("attention.self.query", vec![h, h]),
                ("attention.self.key", vec![h, h]),
                ("attention.self.value", vec![h, h]),
                ("attention.output.dense", vec![h, h]),
                ("intermediate.dense", vec![i, h]),
                ("output.dense", vec![h, i]),
            ] {
                shapes.push((format!("{p}{name}.bias"), vec![shape[0]]));
                shapes.push((format!("{p}{name}.weight"), shape));
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}{norm}.weight"), vec![h]));
                shapes.push((format!("{p}{norm}.bias"), vec![h]));
            }
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let scale = if name.contains("LayerNorm.weight") {
                    1.0
                } else {
                    0.2
                };
                let t = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * scale).unwrap();
                (format!("{prefix}{name}"), t)
            })
            .collect()
    }

    fn sequences() -> Vec<Vec<u32>> {
        [1usize, 7, 3, 40, 12]
            .iter()
            .enumerate()
            .map(|(s, &len)| (0..len).map(|t| ((t * 7 + s * 13) % 50) as u32).collect())
            .collect()
    }

    #[test]
    fn backends_agree_on_random_weights() {
        for act in [HiddenAct::Gelu, HiddenAct::GeluTanh, HiddenAct::Relu] {
            let config = tiny_config(act);
            let weights = tiny_weights(&config, "bert.");
            let vb = || VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
            let seqs = sequences();
            let seqs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
            let reference = MiniLm::load_with(vb(), &config, Backend::Candle)
                .unwrap()
                .mean_pooled(&seqs)
                .unwrap();
            // Each sequence alone through candle too: padding must not leak into the result.
            for (i, seq) in seqs.iter().enumerate() {
                let alone = MiniLm::load_with(vb(), &config, Backend::Candle)
                    .unwrap()
                    .mean_pooled(&[seq])
                    .unwrap();
                for (a, b) in alone[0].iter().zip(&reference[i]) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{act:?}: padding changed sequence {i}"
                    );
                }
            }
            for backend in [Backend::Auto, Backend::FusedPortable] {
                let got = MiniLm::load_with(vb(), &config, backend)
                    .unwrap()
                    .mean_pooled(&seqs)
                    .unwrap();
                assert_eq!(got.len(), reference.len());
                for (g, r) in got.iter().zip(&reference) {
                    assert_eq!(g.len(), config.hidden_size);
                    for (a, b) in g.iter().zip(r) {
                        assert!((a - b).abs() < 1e-4, "{act:?} {backend:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// The int8 encoder with each kernel forced, against f32 on random weights (mean-pooled
    /// vectors within cosine 0.99), and the two kernels against each other: the same integers,
    /// so their vectors differ only by the f32 elementwise kernels' rounding (cosine 0.9999).
    #[test]
    fn int8_encoder_tracks_f32_on_every_kernel() {
        let cosine = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        };
        let config = tiny_config(HiddenAct::Gelu);
        let weights = tiny_weights(&config, "");
        let vb = || VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let seqs = sequences();
        let seqs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let reference = MiniLm::load_with(vb(), &config, Backend::FusedPortable)
            .unwrap()
            .mean_pooled(&seqs)
            .unwrap();
        let mut kernels = vec![Int8Kernel::Portable];
        if Int8Kernel::has_vnni() {
            kernels.push(Int8Kernel::detect());
        }
        let mut runs = Vec::new();
        for kernel in kernels {
            let encoder = load_fused(vb(), &config, Arithmetic::Int8(kernel)).unwrap();
            let got = encoder.mean_pooled(&seqs).unwrap();
            for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                let cos = cosine(g, r);
                assert!(cos > 0.99, "{kernel:?} sequence {i}: cosine {cos} to f32");
            }
            runs.push(got);
        }
        for other in &runs[1..] {
            for (a, b) in other.iter().zip(&runs[0]) {
                let cos = cosine(a, b);
                assert!(cos > 0.9999, "VNNI vs portable int8: cosine {cos}");
            }
        }
        let via_backend = MiniLm::load_with(vb(), &config, Backend::FusedInt8)
            .unwrap()
            .mean_pooled(&seqs)
            .unwrap();
        assert_eq!(
            &via_backend,
            runs.last().unwrap(),
            "FusedInt8 is the detected kernel"
        );
    }

    #[test]
    fn rejects_bad_inputs_and_configs() {
        let config = tiny_config(HiddenAct::Gelu);
        let weights = tiny_weights(&config, "");
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = MiniLm::load(vb, &config).unwrap();
        assert!(
            model.mean_pooled(&[&[1, 50]]).is_err(),
            "token id outside the vocabulary"
        );
        assert!(model.mean_pooled(&[&[]]).is_err(), "empty sequence");
        assert!(
            model.mean_pooled(&[&[1; 41]]).is_err(),
            "longer than the positions"
        );

        let mut roberta = config.clone();
        roberta.model_type = Some("roberta".into());
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(matches!(
            MiniLm::load(vb, &roberta),
            Err(Error::ModelConfig { .. })
        ));
    }

    #[test]
    fn config_parses_minilm_json() {
        let json = r#"{"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
            "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0,
            "position_embedding_type": "absolute", "type_vocab_size": 2, "vocab_size": 30522}"#;
        let parsed: Config = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, Config::all_minilm_l6_v2());
    }
}
