//! EfficientNet-Lite0/1/2, the image tower's network.
//!
//! EfficientNet (Tan & Le, 2019) with the changes Google made for its "Lite" variants: no
//! squeeze-and-excitation, ReLU6 instead of swish, and a stem and head that are not scaled with
//! the width multiplier (always 32 and 1280 channels). Weight names are those of
//! `efficientnet_lite_pytorch` (a fork of lukemelas' `efficientnet_pytorch`) whose `.pth`
//! files Trio loads: `_conv_stem`, `_bn0`, `_blocks.N._{expand_conv,bn0,depthwise_conv,bn1,
//! project_conv,bn2}`, `_conv_head`, `_bn1`, `_fc`.
//!
//! Two details decide whether the converted TensorFlow weights give the right answers:
//!
//! - **TensorFlow "SAME" padding.** A stride-2 convolution on an even input pads one pixel
//!   more at the bottom/right than at the top/left (e.g. 0/1 for 3x3 on 224, 1/2 for 5x5 on
//!   56). The reference pads statically for its configured image size; padding from the actual
//!   input size, as here, is the same there and still right for other sizes.
//! - **Batch-norm epsilon 1e-3** (TensorFlow's default), folded into the convolutions at load.
//!
//! Activations run channels-last (NHWC): pointwise convolutions are then plain matrix
//! products over all pixels of the batch, and depthwise ones vectorise along channels. On the
//! CPU, [`EfficientNetLite::forward`] runs the whole network on plain slices with each block
//! fused (`kernels::mbconv`); the layer-by-layer path (`kernels::conv` per layer, tensors in
//! between) serves fine-tuning's activations and tops; elsewhere every layer is built from
//! candle tensor ops.
//!
//! One file, past 600 lines: the network's configuration, blocks, weight names and its two forward
//! paths (fused CPU kernels, candle tensor ops) must agree line by line.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::conv::{self as conv_cpu, same_padding};
use crate::kernels::mbconv;

/// Width of the pooled feature vector: the head is not scaled in the Lite variants.
pub const FEATURE_DIM: usize = 1280;
/// Stem width, likewise fixed.
const STEM_CHANNELS: usize = 32;
/// Channel counts are rounded to multiples of this (TensorFlow's `depth_divisor`).
const CHANNEL_DIVISOR: usize = 8;

/// One stage of the EfficientNet-B0 baseline that every variant scales.
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand_ratio: usize,
    input: usize,
    output: usize,
}

/// `efficientnet_lite_builder.py`'s block strings `r1_k3_s11_e1_i32_o16` ... `r1_k3_s11_e6_i192_o320`.
const STAGES: [Stage; 7] = [
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand_ratio: 1,
        input: 32,
        output: 16,
    },
    Stage {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand_ratio: 6,
        input: 16,
        output: 24,
    },
    Stage {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand_ratio: 6,
        input: 24,
        output: 40,
    },
    Stage {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand_ratio: 6,
        input: 40,
        output: 80,
    },
    Stage {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand_ratio: 6,
        input: 80,
        output: 112,
    },
    Stage {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand_ratio: 6,
        input: 112,
        output: 192,
    },
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand_ratio: 6,
        input: 192,
        output: 320,
    },
];

/// Which EfficientNet-Lite, and how to read its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Name used in logs and errors, e.g. `efficientnet-lite0`.
    pub name: String,
    pub width_multiplier: f64,
    pub depth_multiplier: f64,
    /// The resolution the network was trained at; preprocessing crops to it.
    pub image_size: usize,
    pub num_classes: usize,
    pub batch_norm_eps: f64,
}

impl Config {
    fn lite(name: &str, width: f64, depth: f64, image_size: usize) -> Self {
        Self {
            name: name.to_string(),
            width_multiplier: width,
            depth_multiplier: depth,
            image_size,
            num_classes: 1000,
            batch_norm_eps: 1e-3,
        }
    }

    pub fn lite0() -> Self {
        Self::lite("efficientnet-lite0", 1.0, 1.0, 224)
    }

    pub fn lite1() -> Self {
        Self::lite("efficientnet-lite1", 1.0, 1.1, 240)
    }

    pub fn lite2() -> Self {
        Self::lite("efficientnet-lite2", 1.1, 1.2, 260)
    }

    /// `round_filters` of the reference: scale, round to the divisor, never lose over 10%.
    fn round_channels(&self, channels: usize) -> usize {
        if self.width_multiplier == 1.0 {
            return channels;
        }
        let scaled = channels as f64 * self.width_multiplier;
        let d = CHANNEL_DIVISOR as f64;
        let mut rounded = ((scaled + d / 2.0) / d).floor() * d;
        rounded = rounded.max(d);
        if rounded < 0.9 * scaled {
            rounded += d;
        }
        rounded as usize
    }

    /// Every MBConv block in order. The first and last stages keep their depth (Lite's
    /// `fix_head_stem`); the others repeat `ceil(depth_multiplier * repeats)` times.
    fn blocks(&self) -> Vec<BlockSpec> {
        let mut blocks = Vec::new();
        for (i, stage) in STAGES.iter().enumerate() {
            let repeats = if i == 0 || i == STAGES.len() - 1 {
                stage.repeats
            } else {
                (self.depth_multiplier * stage.repeats as f64).ceil() as usize
            };
            let input = if i == 0 {
                STEM_CHANNELS
            } else {
                self.round_channels(stage.input)
            };
            let output = self.round_channels(stage.output);
            for r in 0..repeats {
                blocks.push(BlockSpec {
                    input: if r == 0 { input } else { output },
                    output,
                    expand_ratio: stage.expand_ratio,
                    kernel: stage.kernel,
                    stride: if r == 0 { stage.stride } else { 1 },
                });
            }
        }
        blocks
    }
}

#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    input: usize,
    output: usize,
    expand_ratio: usize,
    kernel: usize,
    stride: usize,
}

/// A convolution and the batch-norm after it, folded: `w' = w * s`, `b' = beta - mean * s` with
/// `s = gamma / sqrt(var + eps)`. Returns the weight in PyTorch layout and the bias.
fn load_conv_bn(
    conv: VarBuilder,
    bn: VarBuilder,
    shape: (usize, usize, usize, usize),
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let out = shape.0;
    let w = conv.get(shape, "weight")?.to_dtype(DType::F32)?;
    let get = |name| bn.get(out, name).and_then(|t| t.to_dtype(DType::F32));
    let (gamma, beta, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let w = w.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
    let b = (beta - (mean * &scale)?)?;
    Ok((w, b))
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// Supplies the tensor named by the first argument when a part of the network is copied,
/// given the current one: a clone, a trainable variable, or a stored fine-tuned weight.
type TensorMap<'a> = dyn FnMut(String, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// A 1x1 convolution (with folded batch-norm) on NHWC activations: a matrix product over
/// pixels, then bias, optional residual and optional ReLU6.
struct Pointwise {
    /// `(in, out)`, so that `pixels x in` times it gives `pixels x out`.
    weight: Tensor,
    bias: Tensor,
    relu6: bool,
    cpu: Option<conv_cpu::Pointwise>,
}

impl Pointwise {
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        input: usize,
        output: usize,
        relu6: bool,
        cfg: &Config,
    ) -> candle_core::Result<Self> {
        let (w, bias) = load_conv_bn(conv, bn, (output, input, 1, 1), cfg.batch_norm_eps)?;
        let weight = w.reshape((output, input))?.t()?.contiguous()?;
        Self::from_folded(weight, bias, relu6, true)
    }

    /// From a folded `(in, out)` weight and bias; `kernels` builds the fused CPU kernel (off for
    /// a copy that is being trained, whose weights change under it).
    fn from_folded(
        weight: Tensor,
        bias: Tensor,
        relu6: bool,
        kernels: bool,
    ) -> candle_core::Result<Self> {
        let cpu = (kernels && weight.device().is_cpu())
            .then(|| conv_cpu::Pointwise::new(&weight, &bias, relu6))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            relu6,
            cpu,
        })
    }

    fn rebuild(&self, name: &str, kernels: bool, f: &mut TensorMap) -> candle_core::Result<Self> {
        let weight = f(format!("{name}.weight"), &self.weight)?;
        let bias = f(format!("{name}.bias"), &self.bias)?;
        Self::from_folded(weight, bias, self.relu6, kernels)
    }

    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        fast: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let out = self.weight.dim(1)?;
        let flat = x.reshape((b * h * w, c))?;
        let residual = residual.map(|r| r.reshape((b * h * w, out))).transpose()?;
        let y = match (&self.cpu, fast) {
            (Some(cpu), true) => cpu.forward(&flat, residual.as_ref())?,
            _ => {
                let mut y = flat.matmul(&self.weight)?.broadcast_add(&self.bias)?;
                if let Some(r) = &residual {
                    y = (y + r)?;
                }
                if self.relu6 {
                    y = relu6(&y)?;
                }
                y
            }
        };
        y.reshape((b, h, w, out))
    }
}

/// A depthwise convolution (with folded batch-norm and ReLU6) on NHWC activations.
struct Depthwise {
    /// `(k, k, channels)`.
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    cpu: Option<crate::kernels::depthwise::Depthwise>,
    /// Run the CPU kernel that has a gradient (a copy being fine-tuned on the CPU).
    trainable_cpu: bool,
}

impl Depthwise {
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        channels: usize,
        kernel: usize,
        stride: usize,
        cfg: &Config,
    ) -> candle_core::Result<Self> {
        let (w, bias) = load_conv_bn(conv, bn, (channels, 1, kernel, kernel), cfg.batch_norm_eps)?;
        let weight = w
            .reshape((channels, kernel * kernel))?
            .t()?
            .reshape((kernel, kernel, channels))?
            .contiguous()?;
        Self::from_folded(weight, bias, stride, true)
    }

    /// From a folded `(k, k, channels)` weight and bias; `kernels` as for [`Pointwise`].
    fn from_folded(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        kernels: bool,
    ) -> candle_core::Result<Self> {
        let kernel = weight.dim(0)?;
        let cpu = (kernels && weight.device().is_cpu())
            .then(|| crate::kernels::depthwise::Depthwise::new(&weight, &bias, stride))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
            cpu,
            trainable_cpu: false,
        })
    }

    fn rebuild(&self, name: &str, kernels: bool, f: &mut TensorMap) -> candle_core::Result<Self> {
        let weight = f(format!("{name}.weight"), &self.weight)?;
        let bias = f(format!("{name}.bias"), &self.bias)?;
        Self::from_folded(weight, bias, self.stride, kernels)
    }

    fn forward(&self, x: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        if let (Some(cpu), true) = (&self.cpu, fast) {
            return cpu.forward(x);
        }
        if self.trainable_cpu {
            let y = x.contiguous()?.apply_op2(
                &self.weight,
                crate::kernels::depthwise::DepthwiseGrad {
                    stride: self.stride,
                },
            )?;
            return relu6(&y.broadcast_add(&self.bias)?);
        }
        // Device-generic: pad, then sum k*k shifted (and for stride 2, subsampled) windows
        // scaled by their per-channel weight.
        let (b, h, w, c) = x.dims4()?;
        let (k, s) = (self.kernel, self.stride);
        let (oh, top, bottom) = same_padding(h, k, s);
        let (ow, left, right) = same_padding(w, k, s);
        // `s - 1` extra zeros so that every tap's window of `out * s` rows fits.
        let x = x
            .pad_with_zeros(1, top, bottom + s - 1)?
            .pad_with_zeros(2, left, right + s - 1)?;
        let wp = x.dim(2)?;
        let mut acc: Option<Tensor> = None;
        for ky in 0..k {
            let mut rows = x.narrow(1, ky, oh * s)?;
            if s > 1 {
                rows = rows
                    .reshape((b, oh, s, wp, c))?
                    .narrow(2, 0, 1)?
                    .squeeze(2)?;
            }
            for kx in 0..k {
                let mut window = rows.narrow(2, kx, ow * s)?;
                if s > 1 {
                    window = window
                        .reshape((b, oh, ow, s, c))?
                        .narrow(3, 0, 1)?
                        .squeeze(3)?;
                }
                let tap = window.broadcast_mul(&self.weight.get(ky)?.get(kx)?)?;
                acc = Some(match acc {
                    None => tap,
                    Some(a) => (a + tap)?,
                });
            }
        }
        let acc =
            acc.ok_or_else(|| candle_core::Error::Msg("depthwise kernel of size 0".into()))?;
        relu6(&acc.broadcast_add(&self.bias)?)
    }
}

/// Mobile inverted bottleneck: expand (1x1), depthwise, project (1x1), residual when shapes
/// allow. No squeeze-and-excitation in the Lite variants.
struct MbConv {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
    span: tracing::Span,
}

impl MbConv {
    fn load(
        vb: VarBuilder,
        spec: BlockSpec,
        index: usize,
        cfg: &Config,
    ) -> candle_core::Result<Self> {
        let hidden = spec.input * spec.expand_ratio;
        let expand = (spec.expand_ratio != 1)
            .then(|| {
                Pointwise::load(
                    vb.pp("_expand_conv"),
                    vb.pp("_bn0"),
                    spec.input,
                    hidden,
                    true,
                    cfg,
                )
            })
            .transpose()?;
        let depthwise = Depthwise::load(
            vb.pp("_depthwise_conv"),
            vb.pp("_bn1"),
            hidden,
            spec.kernel,
            spec.stride,
            cfg,
        )?;
        let project = Pointwise::load(
            vb.pp("_project_conv"),
            vb.pp("_bn2"),
            hidden,
            spec.output,
            false,
            cfg,
        )?;
        Ok(Self {
            expand,
            depthwise,
            project,
            residual: spec.stride == 1 && spec.input == spec.output,
            span: tracing::trace_span!("mbconv", index),
        })
    }

    /// A copy whose tensors `f` supplies, named `{index}.expand.weight` and so on.
    fn rebuild(&self, index: usize, kernels: bool, f: &mut TensorMap) -> candle_core::Result<Self> {
        Ok(Self {
            expand: self
                .expand
                .as_ref()
                .map(|e| e.rebuild(&format!("{index}.expand"), kernels, f))
                .transpose()?,
            depthwise: self
                .depthwise
                .rebuild(&format!("{index}.depthwise"), kernels, f)?,
            project: self
                .project
                .rebuild(&format!("{index}.project"), kernels, f)?,
            residual: self.residual,
            span: tracing::trace_span!("mbconv", index),
        })
    }

    fn forward(&self, x: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let h = match &self.expand {
            Some(expand) => {
                let _layer = tracing::trace_span!("expand").entered();
                expand.forward(x, None, fast)?
            }
            None => x.clone(),
        };
        let h = {
            let _layer = tracing::trace_span!("depthwise").entered();
            self.depthwise.forward(&h, fast)?
        };
        let _layer = tracing::trace_span!("project").entered();
        self.project.forward(&h, self.residual.then_some(x), fast)
    }
}

/// The 3x3 stride-2 stem convolution (with folded batch-norm and ReLU6). It reads the NCHW
/// input and writes NHWC.
struct Stem {
    /// PyTorch layout `(32, 3, 3, 3)`, for candle's `conv2d`.
    weight: Tensor,
    bias: Tensor,
    /// On the CPU: image patches times the weight as a `(27, 32)` matrix, fused with bias and
    /// ReLU6.
    cpu: Option<conv_cpu::Pointwise>,
    span: tracing::Span,
}

const STEM_KERNEL: usize = 3;
const STEM_STRIDE: usize = 2;

impl Stem {
    fn load(vb: &VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let k = STEM_KERNEL;
        let (weight, bias) = load_conv_bn(
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
            (STEM_CHANNELS, 3, k, k),
            cfg.batch_norm_eps,
        )?;
        let cpu = if weight.device().is_cpu() {
            // Columns of the patch matrix are ordered (ky, kx, channel).
            let matrix = weight
                .permute((2, 3, 1, 0))?
                .reshape((k * k * 3, STEM_CHANNELS))?
                .contiguous()?;
            Some(conv_cpu::Pointwise::new(&matrix, &bias, true)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            cpu,
            span: tracing::trace_span!("stem"),
        })
    }

    fn forward(&self, images: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let (b, _, h, w) = images.dims4()?;
        let (oh, top, bottom) = same_padding(h, STEM_KERNEL, STEM_STRIDE);
        let (ow, left, right) = same_padding(w, STEM_KERNEL, STEM_STRIDE);
        if let (Some(cpu), true) = (&self.cpu, fast) {
            let patches = conv_cpu::Patches {
                kernel: STEM_KERNEL,
                stride: STEM_STRIDE,
            }
            .forward(images)?;
            return cpu
                .forward(&patches, None)?
                .reshape((b, oh, ow, STEM_CHANNELS));
        }
        let x = images
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .conv2d(&self.weight, 0, STEM_STRIDE, 1, 1)?
            .permute((0, 2, 3, 1))?;
        relu6(&x.broadcast_add(&self.bias)?)
    }
}

/// EfficientNet-Lite with its ImageNet classifier.
pub struct EfficientNetLite {
    config: Config,
    stem: Stem,
    blocks: Vec<MbConv>,
    head: Pointwise,
    head_span: tracing::Span,
    /// `(1280, classes)`.
    fc_weight: Tensor,
    fc_bias: Tensor,
    classifier_span: tracing::Span,
    device: Device,
    /// Whether the fused CPU kernels run (they exist only for CPU tensors).
    cpu_kernels: bool,
    /// The whole network on plain slices, blocks fused (on the CPU): what `forward` runs.
    network: Option<mbconv::Network>,
    /// The classifier on the CPU 1x1 kernel, beside `network`.
    cpu_classifier: Option<CpuClassifier>,
    /// The instruction set its kernels use.
    isa: conv_cpu::Isa,
}

/// The instruction set of the image network's CPU kernels. `Auto` (the default) is the widest
/// this CPU has; the others exist so that every path can be checked on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuIsa {
    #[default]
    Auto,
    /// Plain loops and the `gemm` crate: what any CPU runs.
    Portable,
    /// AVX2 and FMA (depthwise); 1x1 convolutions through the `gemm` crate.
    Avx2,
    /// AVX-512F throughout.
    Avx512,
    /// AVX-512, with the 1x1 convolutions in bfloat16 (AVX512_BF16) accumulating in f32.
    Avx512Bf16,
}

impl EfficientNetLite {
    /// Builds the network from weights named as in `efficientnet_lite_pytorch`. Batch-norm is
    /// folded into the convolutions here, so inference does no normalisation work.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let wrap = |e: candle_core::Error| Error::ModelWeights {
            model: cfg.name.clone(),
            reason: e.to_string(),
        };
        let specs = cfg.blocks();
        let stem = Stem::load(&vb, cfg).map_err(wrap)?;
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| MbConv::load(vb.pp(format!("_blocks.{i}")), *spec, i, cfg))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(wrap)?;
        let last = specs.last().map_or(STEM_CHANNELS, |s| s.output);
        let head = Pointwise::load(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            last,
            FEATURE_DIM,
            true,
            cfg,
        )
        .map_err(wrap)?;
        let fc = vb.pp("_fc");
        let fc_weight = fc
            .get((cfg.num_classes, FEATURE_DIM), "weight")
            .and_then(|w| w.to_dtype(DType::F32)?.t()?.contiguous())
            .map_err(wrap)?;
        let fc_bias = fc
            .get(cfg.num_classes, "bias")
            .and_then(|b| b.to_dtype(DType::F32))
            .map_err(wrap)?;
        let device = vb.device().clone();
        let network = cpu_network(&stem, &blocks, &head);
        let cpu_classifier = network
            .as_ref()
            .and_then(|_| CpuClassifier::new(&fc_weight, &fc_bias).ok());
        Ok(Self {
            config: cfg.clone(),
            stem,
            blocks,
            head,
            head_span: tracing::trace_span!("head"),
            fc_weight,
            fc_bias,
            classifier_span: tracing::trace_span!("classifier"),
            cpu_kernels: device.is_cpu(),
            network,
            cpu_classifier,
            isa: conv_cpu::Isa::detect(),
            device,
        })
    }

    /// Runs the CPU kernels compiled for `isa`; an error if this CPU lacks it.
    pub fn set_cpu_isa(&mut self, isa: CpuIsa) -> Result<()> {
        let chosen = match isa {
            CpuIsa::Auto => conv_cpu::Isa::detect(),
            CpuIsa::Portable => conv_cpu::Isa::Baseline,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => conv_cpu::Isa::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => conv_cpu::Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512Bf16 => conv_cpu::Isa::Avx512Bf16,
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{isa:?} kernels exist only on x86-64"
                )))
            }
        };
        if !chosen.supported() {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {isa:?} image kernels"
            )));
        }
        self.isa = chosen;
        Ok(())
    }

    /// The instruction sets this CPU runs the image kernels with, narrowest first.
    pub fn cpu_isas() -> Vec<CpuIsa> {
        conv_cpu::Isa::available()
            .into_iter()
            .map(|isa| match isa {
                conv_cpu::Isa::Baseline => CpuIsa::Portable,
                #[cfg(target_arch = "x86_64")]
                conv_cpu::Isa::Avx2Fma => CpuIsa::Avx2,
                #[cfg(target_arch = "x86_64")]
                conv_cpu::Isa::Avx512 => CpuIsa::Avx512,
                #[cfg(target_arch = "x86_64")]
                conv_cpu::Isa::Avx512Bf16 => CpuIsa::Avx512Bf16,
            })
            .collect()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Turns the fused CPU kernels off (or back on) so that the device-generic path can be
    /// checked against them on a machine without a GPU. They are on by default on the CPU.
    pub fn set_cpu_kernels(&mut self, enabled: bool) {
        self.cpu_kernels = enabled && self.device.is_cpu();
    }

    /// Runs a batch of normalised images, `(batch, 3, height, width)` f32, and returns the
    /// pooled features `(batch, 1280)` and the ImageNet logits `(batch, classes)`.
    pub fn forward(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, channels, h, w) = images.dims4()?;
        self.check_channels(channels)?;
        let features = match (&self.network, self.cpu_kernels) {
            (Some(network), true) => {
                let pixels = images
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let slices: Vec<&[f32]> = pixels.chunks(pixels.len() / b.max(1)).collect();
                let features = network.features(self.isa, &slices, (h, w));
                Tensor::from_vec(features, (b, network.features_dim()), &self.device)?
            }
            _ => {
                let x = self.activations_before(images, self.blocks.len())?;
                let _enter = self.head_span.enter();
                pool(&self.head.forward(&x, None, self.cpu_kernels)?)?
            }
        };
        self.with_logits(features)
    }

    /// [`Self::forward`] on normalised NCHW images of `3 x h x w` floats, one slice each: on
    /// the CPU kernels they are read where they lie, with no batch tensor assembled (at batch
    /// 32 that copy is 19 MB, and fresh memory for it page-faults on every call).
    pub fn forward_images(
        &self,
        images: &[&[f32]],
        (h, w): (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        if let Some(bad) = images.iter().position(|im| im.len() != 3 * h * w) {
            return Err(Error::InvalidArgument(format!(
                "image {bad} has {} values, not 3 x {h} x {w}",
                images[bad].len()
            )));
        }
        match (&self.network, self.cpu_kernels) {
            (Some(network), true) => {
                let features = network.features(self.isa, images, (h, w));
                let features = Tensor::from_vec(
                    features,
                    (images.len(), network.features_dim()),
                    &self.device,
                )?;
                self.with_logits(features)
            }
            _ => {
                let data: Vec<f32> = images.iter().flat_map(|im| im.iter().copied()).collect();
                let batch = Tensor::from_vec(data, (images.len(), 3, h, w), &Device::Cpu)?
                    .to_device(&self.device)?;
                self.forward(&batch)
            }
        }
    }

    fn check_channels(&self, channels: usize) -> Result<()> {
        if channels != 3 {
            return Err(Error::InvalidArgument(format!(
                "{} expects 3-channel images, got {channels}",
                self.config.name
            )));
        }
        Ok(())
    }

    /// Pooled features and the ImageNet logits computed from them.
    fn with_logits(&self, features: Tensor) -> Result<(Tensor, Tensor)> {
        let _enter = self.classifier_span.enter();
        let logits = match (&self.cpu_classifier, self.cpu_kernels) {
            (Some(classifier), true) => {
                let batch = features.dim(0)?;
                let x = features.flatten_all()?.to_vec1::<f32>()?;
                // f32 even in bf16 mode: the class probabilities stay those of the f32 network.
                let isa = if self.isa.is_bf16() {
                    conv_cpu::Isa::detect()
                } else {
                    self.isa
                };
                let logits = classifier.logits(isa, &x, batch);
                Tensor::from_vec(logits, (batch, classifier.classes), &self.device)?
            }
            _ => features
                .matmul(&self.fc_weight)?
                .broadcast_add(&self.fc_bias)?,
        };
        Ok((features, logits))
    }

    /// Number of MBConv blocks (16 in Lite0, 21 in Lite1 and Lite2).
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The activations entering block `first` (NHWC, after the stem and blocks `..first`) for a
    /// batch of normalised NCHW images: what a fine-tuned [`Top`] reads.
    pub fn activations_before(&self, images: &Tensor, first: usize) -> Result<Tensor> {
        if first > self.blocks.len() {
            return Err(Error::InvalidArgument(format!(
                "{} has {} blocks; cannot stop before block {first}",
                self.config.name,
                self.blocks.len()
            )));
        }
        let images = images.to_dtype(DType::F32)?;
        let fast = self.cpu_kernels;
        let mut x = self.stem.forward(&images, fast)?.contiguous()?;
        for block in &self.blocks[..first] {
            x = block.forward(&x, fast)?;
        }
        Ok(x)
    }

    /// A copy of the blocks from `first` on and the head, for fine-tuning or for serving a
    /// fine-tuned copy beside this frozen network.
    pub fn top(&self, first: usize) -> Result<Top> {
        if first > self.blocks.len() {
            return Err(Error::InvalidArgument(format!(
                "{} has {} blocks; its top cannot start at block {first}",
                self.config.name,
                self.blocks.len()
            )));
        }
        let mut same = |_: String, t: &Tensor| Ok(t.clone());
        Top::build(
            &self.blocks[first..],
            &self.head,
            first,
            self.cpu_kernels,
            &mut same,
        )
        .map_err(Error::from)
    }

    /// Softmax over the last axis, for turning logits into class probabilities.
    pub fn probabilities(logits: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(logits)?)
    }
}

/// The ImageNet classifier as column blocks of the CPU 1x1 kernel, run side by side on the
/// thread pool: each block's weights are read in place once per call, where candle's matrix
/// product repacks all 1280 x 1000 of them on every call (at batch 8, more time than the
/// product itself).
struct CpuClassifier {
    parts: Vec<conv_cpu::Pointwise>,
    classes: usize,
}

impl CpuClassifier {
    /// Output columns per block: a multiple of the kernel's 64-wide register block.
    const PART: usize = 256;

    /// `weight` is `(features, classes)`, `bias` `(classes)`.
    fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let classes = weight.dim(1)?;
        let parts = (0..classes)
            .step_by(Self::PART)
            .map(|c0| {
                let len = Self::PART.min(classes - c0);
                conv_cpu::Pointwise::new(
                    &weight.narrow(1, c0, len)?.contiguous()?,
                    &bias.narrow(0, c0, len)?,
                    false,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { parts, classes })
    }

    /// `(batch, classes)` logits of `(batch, features)` rows.
    fn logits(&self, isa: conv_cpu::Isa, features: &[f32], batch: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let blocks: Vec<Vec<f32>> = self
            .parts
            .par_iter()
            .map(|part| {
                let mut out = vec![0f32; batch * part.outputs()];
                part.run_tile(isa, features, None, &mut out);
                out
            })
            .collect();
        let mut logits = vec![0f32; batch * self.classes];
        let mut c0 = 0;
        for (part, block) in self.parts.iter().zip(&blocks) {
            let n = part.outputs();
            for (row, src) in logits
                .chunks_exact_mut(self.classes)
                .zip(block.chunks_exact(n))
            {
                row[c0..c0 + n].copy_from_slice(src);
            }
            c0 += n;
        }
        logits
    }
}

/// The network as fused CPU kernels on plain slices, where every layer has its CPU kernel.
fn cpu_network(stem: &Stem, blocks: &[MbConv], head: &Pointwise) -> Option<mbconv::Network> {
    let stem = mbconv::Stem::new(STEM_KERNEL, STEM_STRIDE, 3, stem.cpu.clone()?);
    let blocks = blocks
        .iter()
        .map(|b| {
            let expand = match &b.expand {
                Some(e) => Some(e.cpu.clone()?),
                None => None,
            };
            Some(mbconv::Block::new(
                expand,
                b.depthwise.cpu.clone()?,
                b.project.cpu.clone()?,
                b.residual,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(mbconv::Network::new(stem, blocks, head.cpu.clone()?))
}

/// Global average pooling of NHWC activations: `(batch, channels)`.
fn pool(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h * w, c))?.mean(1)
}

/// The blocks from `first` on, the head convolution and the pooling: the part of the network
/// that `--finetune-image` trains (the study fine-tuned the top half of its CNN). It maps the
/// activations from [`EfficientNetLite::activations_before`] to the 1280-d features.
///
/// Batch-norm stays folded into the convolutions, so fine-tuning trains the folded weights and
/// biases with the normalisation statistics frozen, as is usual for small fine-tuning sets.
pub struct Top {
    first: usize,
    blocks: Vec<MbConv>,
    head: Pointwise,
    fast: bool,
}

impl Top {
    fn build(
        blocks: &[MbConv],
        head: &Pointwise,
        first: usize,
        kernels: bool,
        f: &mut TensorMap,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            first,
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(i, b)| b.rebuild(first + i, kernels, f))
                .collect::<candle_core::Result<_>>()?,
            head: head.rebuild("head", kernels, f)?,
            fast: kernels && head.weight.device().is_cpu(),
        })
    }

    fn rebuild(&self, kernels: bool, f: &mut TensorMap) -> candle_core::Result<Self> {
        Self::build(&self.blocks, &self.head, self.first, kernels, f)
    }

    /// The first block this top holds.
    pub fn first_block(&self) -> usize {
        self.first
    }

    /// How many blocks it holds (besides the head convolution).
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Pooled features `(batch, 1280)` of activations entering block `first`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.to_dtype(DType::F32)?;
        for block in &self.blocks {
            x = block.forward(&x, self.fast)?;
        }
        let _span = tracing::trace_span!("head").entered();
        Ok(pool(&self.head.forward(&x, None, self.fast)?)?)
    }

    /// A copy whose weights are fresh trainable variables (returned in a fixed order), running
    /// the device-generic operations that backpropagation can follow.
    pub fn trainable(&self) -> Result<(Top, Vec<candle_core::Var>)> {
        let mut vars = Vec::new();
        let mut make = |_: String, t: &Tensor| {
            let var = candle_core::Var::from_tensor(&t.detach())?;
            let tensor = var.as_tensor().clone();
            vars.push(var);
            Ok(tensor)
        };
        let mut top = self.rebuild(false, &mut make)?;
        for block in &mut top.blocks {
            block.depthwise.trainable_cpu = block.depthwise.weight.device().is_cpu();
        }
        Ok((top, vars))
    }

    /// A frozen copy of the current weights (of a trained copy, say), with the fast CPU kernels.
    pub fn frozen(&self) -> Result<Top> {
        let mut copy = |_: String, t: &Tensor| t.detach().copy();
        Ok(self.rebuild(true, &mut copy)?)
    }

    /// The folded weights by name (`{block}.expand.weight`, …, `head.bias`), for storing.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut collect = |name: String, t: &Tensor| {
            out.push((name, t.clone()));
            Ok(t.clone())
        };
        self.rebuild(false, &mut collect)?;
        Ok(out)
    }

    /// A copy of this top with the weights in `tensors` (as written by [`Top::tensors`]); every
    /// name must be present with its shape, so a top stored for another network is refused.
    pub fn with_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<Top> {
        let mut take = |name: String, current: &Tensor| {
            let t = tensors.get(&name).ok_or_else(|| {
                candle_core::Error::Msg(format!("the fine-tuned image tower lacks `{name}`"))
            })?;
            if t.dims() != current.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "the fine-tuned image tower's `{name}` is {:?}, this network's is {:?}",
                    t.dims(),
                    current.dims()
                )));
            }
            t.to_dtype(DType::F32)?.to_device(current.device())
        };
        Ok(self.rebuild(true, &mut take)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layouts_match_the_published_variants() {
        // Block counts and widths of the lite0/1/2 .pth files.
        let l0 = Config::lite0().blocks();
        assert_eq!(l0.len(), 16);
        assert_eq!(Config::lite1().blocks().len(), 21);
        let l2 = Config::lite2().blocks();
        assert_eq!(l2.len(), 21);
        let mut widths: Vec<usize> = l2.iter().map(|b| b.output).collect();
        widths.dedup();
        assert_eq!(widths, [16, 24, 48, 88, 120, 208, 352]);
        assert_eq!(l2[5].input * l2[5].expand_ratio, 288);
    }

    /// The fine-tuning copy's depthwise kernel against the device-generic tensor operations:
    /// same output, same gradients for input, weight and bias.
    #[test]
    fn the_trainable_depthwise_kernel_matches_tensor_ops_and_their_gradients() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut random = |shape: &[usize]| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        for (k, s, h, w) in [(3, 1, 7, 7), (5, 2, 8, 6), (3, 2, 7, 7), (5, 1, 6, 9)] {
            let c = 24;
            let (weight, bias) = (random(&[k, k, c]), random(&[c]));
            let x = candle_core::Var::from_tensor(&random(&[2, h, w, c])).unwrap();
            let mut grads = Vec::new();
            let mut outputs = Vec::new();
            for trainable_cpu in [false, true] {
                let wv = candle_core::Var::from_tensor(&weight).unwrap();
                let bv = candle_core::Var::from_tensor(&bias).unwrap();
                let mut layer = Depthwise::from_folded(
                    wv.as_tensor().clone(),
                    bv.as_tensor().clone(),
                    s,
                    false,
                )
                .unwrap();
                layer.trainable_cpu = trainable_cpu;
                let y = layer.forward(x.as_tensor(), false).unwrap();
                let r = Tensor::ones(y.shape(), DType::F32, &Device::Cpu)
                    .unwrap()
                    .affine(0.5, 0.25)
                    .unwrap();
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                outputs.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                grads.push([x.as_tensor(), wv.as_tensor(), bv.as_tensor()].map(|t| {
                    g.get(t)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                }));
            }
            let close = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-4)
            };
            assert!(close(&outputs[0], &outputs[1]), "output, k {k} s {s}");
            for (i, name) in ["input", "weight", "bias"].iter().enumerate() {
                assert!(
                    close(&grads[0][i], &grads[1][i]),
                    "{name} gradient, k {k} s {s}"
                );
            }
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// Lite0 with random weights: convolutions scaled by their fan-in, batch-norm statistics
    /// drawn around the identity, so activations neither die nor all saturate.
    fn random_lite0(seed: u64) -> EfficientNetLite {
        use rand::{Rng, SeedableRng};
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        EfficientNetLite::load(vb.clone(), &Config::lite0()).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        for name in names {
            let var = &data[&name];
            let dims = var.dims().to_vec();
            let n: usize = dims.iter().product();
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.gen_range(-1.0..1.0);
                    if name.ends_with("running_var")
                        || name.ends_with("bn0.weight")
                        || name.ends_with("bn1.weight")
                        || name.ends_with("bn2.weight")
                    {
                        1.0 + 0.5 * u
                    } else if dims.len() == 1 {
                        0.1 * u
                    } else {
                        u * (3.0 / fan_in as f32).sqrt()
                    }
                })
                .collect();
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
        drop(data);
        EfficientNetLite::load(vb, &Config::lite0()).unwrap()
    }

    /// The fused network on every instruction set this CPU has, against the device-generic
    /// tensor operations, on random weights and inputs: one image (layers split into bands),
    /// three (one per thread), and sizes whose "SAME" padding is odd or even. Tolerance 1e-3
    /// absolute on features of order 1: f32 rounding of a different summation order.
    #[test]
    fn the_fused_network_matches_tensor_ops_on_every_isa() {
        let mut model = random_lite0(3);
        for (batch, h, w) in [(1, 64, 64), (3, 57, 71), (2, 33, 32)] {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, h, w), &Device::Cpu).unwrap();
            model.set_cpu_kernels(false);
            let (want, want_logits) = model.forward(&x).unwrap();
            model.set_cpu_kernels(true);
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 0.1, "random activations died out ({scale})");
            for isa in EfficientNetLite::cpu_isas() {
                model.set_cpu_isa(isa).unwrap();
                let (got, logits) = model.forward(&x).unwrap();
                let diff = |a: &Tensor, b: &Tensor| {
                    (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                if isa == CpuIsa::Avx512Bf16 {
                    // Weights and 1x1 inputs rounded to 8-bit mantissas: the features keep
                    // their direction, not their digits.
                    let (a, b) = (
                        got.to_vec2::<f32>().unwrap(),
                        want.to_vec2::<f32>().unwrap(),
                    );
                    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                        let cos = cosine(a, b);
                        assert!(
                            cos > 0.995,
                            "bf16, {batch} x {h} x {w}, image {i}: cosine {cos}"
                        );
                    }
                    continue;
                }
                let d = diff(&got, &want);
                assert!(
                    d < 1e-3,
                    "{isa:?}, {batch} x {h} x {w}: features differ by {d}"
                );
                let d = diff(&logits, &want_logits);
                assert!(
                    d < 1e-2,
                    "{isa:?}, {batch} x {h} x {w}: logits differ by {d}"
                );
            }
        }
    }

    /// An image's features are the same bits alone (layers split over threads) and in a batch
    /// (one image per thread): stored features must not depend on how ingest batched them.
    #[test]
    fn fused_features_do_not_depend_on_the_batch() {
        let model = random_lite0(4);
        let x = Tensor::randn(0f32, 1.0, (3, 3, 48, 40), &Device::Cpu).unwrap();
        let (together, _) = model.forward(&x).unwrap();
        for i in 0..3 {
            let (alone, _) = model.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
            assert_eq!(
                alone.to_vec2::<f32>().unwrap()[0],
                together.to_vec2::<f32>().unwrap()[i],
                "image {i}"
            );
        }
    }

    #[test]
    fn zero_weights_give_finite_outputs_of_the_right_shape() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let model = EfficientNetLite::load(vb, &Config::lite0()).unwrap();
        let x = Tensor::zeros((2, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
        let (f, l) = model.forward(&x).unwrap();
        assert_eq!(f.dims(), [2, FEATURE_DIM]);
        assert_eq!(l.dims(), [2, 1000]);
    }
}
