//! CPU kernels for the fused encoder.
//!
//! Everything works on contiguous row-major `f32` buffers, one row per token, with weights packed
//! once at load time, so a forward pass allocates nothing but its few activation buffers. The
//! AVX-512 kernels are chosen at run time, never by compile flags, so one binary runs on any
//! x86-64. The portable kernels (the `gemm` crate, plus plain loops the compiler vectorises)
//! serve other CPUs and cross-check the fast ones in tests.
//!
//! One file, past 600 lines: the GEMM, attention and LayerNorm kernels share one run-time dispatch
//! and one packed-weight layout, and each fast kernel sits beside the portable one it is tested
//! against.

use std::cell::Cell;

use rayon::prelude::*;

use super::elementwise::{gelu_erf, SendPtr};
use super::quantized::{Int8Kernel, QuantizedRows, QuantizedWeight};

/// Below this many multiply-adds a GEMM runs on the calling thread: waking the pool costs more.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Rows of elementwise work (layer norm, activation) per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Below this many multiply-adds attention runs on the calling thread. Lower than the GEMMs'
/// bar: one short text's heads are enough to keep the second thread busy between products
/// instead of letting it fall asleep and waking it for the next one.
const ATTENTION_PARALLEL_MIN_MACS: usize = 1 << 15;
/// Per-thread scratch buffers (activations, rounded or quantised inputs) larger than this are
/// freed after use rather than kept: catalogue batches (32 texts of ~14 tokens need ~7 MiB)
/// reuse theirs, a batch of long texts does not pin tens of MiB on every thread.
pub(crate) const KEEP_SCRATCH_BYTES: usize = 16 << 20;

thread_local! {
    /// The bf16 products' rounded inputs, reused across calls (taken while in use).
    static ROUNDED: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    /// The int8 products' quantised inputs, reused across calls (taken while in use).
    static QUANTIZED: Cell<Option<QuantizedRows>> = const { Cell::new(None) };
}

/// The instruction set the fused kernels use, detected once when the model loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The `gemm` crate (which picks its own SIMD at run time) and compiler-vectorised loops.
    Portable,
    /// Hand-written AVX-512 GEMM with fused epilogues; elementwise loops compiled for AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// As `Avx512`, with the GEMMs in bfloat16 (`vdpbf16ps`, AVX512_BF16): weights and each
    /// GEMM's input rounded to bf16, products accumulated in f32.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Isa {
    /// The best f32 kernels this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Portable
    }

    /// Whether this CPU has the bf16 GEMM's instructions.
    pub(crate) fn has_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// Runs a portable `#[inline(always)]` function, recompiled for AVX-512 when `isa` allows it,
/// so the compiler's vectoriser uses 16-lane registers without a global `target-cpu` flag.
macro_rules! dispatch {
    ($isa:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` (and `Avx512Bf16`) are only constructed after detecting
            // AVX-512 on this CPU.
            Isa::Avx512 | Isa::Avx512Bf16 => unsafe { avx512_versions::$f($($arg),*) },
            Isa::Portable => $f($($arg),*),
        }
    };
}

/// Declares AVX-512 builds of portable functions for `dispatch!`.
macro_rules! avx512_versions {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        #[cfg(target_arch = "x86_64")]
        mod avx512_versions {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx512f")]
                pub(super) unsafe fn $name($($arg: $ty),*) {
                    super::$name($($arg),*)
                }
            )*
        }
    };
}

avx512_versions! {
    fn layer_norm_rows(src: &[f32], dst: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32);
    fn activate_rows(values: &mut [f32], act: Activation);
    fn attend_head(task: &HeadTask<'_>, scratch: &mut Vec<f32>);
}

// ---------------------------------------------------------------------------------------------
// Scalar maths shared by the portable and AVX-512 paths.

/// `exp` accurate to a few ulp (Cephes `expf`), branch-free so softmax loops vectorise.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let g = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut y = 1.987_569_1e-4_f32;
    y = y * g + 1.398_2e-3;
    y = y * g + 8.333_452e-3;
    y = y * g + 4.166_579_6e-2;
    y = y * g + 1.666_666_5e-1;
    y = y * g + 0.5; // Cephes: 5.000_000_1e-1, which is 0.5 in f32
    y = y * g * g + g + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `tanh`-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u)
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp_fast(-2.0 * u))
}

/// Sum with 16 independent lanes, so the compiler may vectorise it without reassociating.
#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Elementwise row kernels.

/// The activations of BERT-family configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

/// `dst = LayerNorm(src)` row by row (rows of `gamma.len()` values).
#[inline(always)]
fn layer_norm_rows(src: &[f32], dst: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        let mean = sum_lanes(s) / width as f32;
        let mut acc = [0.0f32; 16];
        let mut chunks = s.chunks_exact(16);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += (v - mean) * (v - mean);
            }
        }
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum();
        let var = (acc.iter().sum::<f32>() + tail) / width as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((d, s), g), b) in d.iter_mut().zip(s).zip(gamma).zip(beta) {
            *d = (s - mean) * rstd * g + b;
        }
    }
}

#[inline(always)]
fn activate_rows(values: &mut [f32], act: Activation) {
    match act {
        Activation::GeluErf => values.iter_mut().for_each(|v| *v = gelu_erf(*v)),
        Activation::GeluTanh => values.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Adds the bias (rows of `bias.len()`), then the residual, then applies the erf GELU.
#[inline(always)]
fn bias_epilogue_rows(out: &mut [f32], bias: &[f32], residual: Option<&[f32]>, gelu: bool) {
    let width = bias.len();
    match residual {
        Some(res) => {
            for (o, r) in out.chunks_exact_mut(width).zip(res.chunks_exact(width)) {
                for ((o, b), r) in o.iter_mut().zip(bias).zip(r) {
                    *o += b + r;
                }
            }
        }
        None => {
            for o in out.chunks_exact_mut(width) {
                for (o, b) in o.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }
    if gelu {
        activate_rows(out, Activation::GeluErf);
    }
}

/// Row-parallel `dst = LayerNorm(src)`.
pub(crate) fn layer_norm(
    isa: Isa,
    src: &[f32],
    dst: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let width = gamma.len();
    assert_eq!(src.len(), dst.len(), "layer norm buffers differ in size");
    assert_eq!(src.len() % width, 0, "layer norm buffer is not whole rows");
    let chunk = width * ROWS_PER_TASK;
    if src.len() <= chunk {
        dispatch!(isa, layer_norm_rows(src, dst, gamma, beta, eps));
    } else {
        src.par_chunks(chunk)
            .zip(dst.par_chunks_mut(chunk))
            .for_each(|(s, d)| dispatch!(isa, layer_norm_rows(s, d, gamma, beta, eps)));
    }
}

/// Applies `act` in place to rows of `width` values.
pub(crate) fn activate(isa: Isa, values: &mut [f32], width: usize, act: Activation) {
    let chunk = width * ROWS_PER_TASK;
    if values.len() <= chunk {
        dispatch!(isa, activate_rows(values, act));
    } else {
        values
            .par_chunks_mut(chunk)
            .for_each(|v| dispatch!(isa, activate_rows(v, act)));
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers.

/// What a linear layer does to `x·Wᵀ` before storing it, fused into the GEMM where possible.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `+ b`
    Bias,
    /// `gelu_erf(· + b)`, BERT's intermediate layer.
    BiasGelu,
    /// `+ b + residual`, the residual having the output's shape.
    BiasResidual(&'a [f32]),
}

/// A linear layer's weight, laid out once for the GEMM kernel that will read it, and its bias.
pub(crate) struct PackedLinear {
    inputs: usize,
    outputs: usize,
    weight: PackedWeight,
    bias: Vec<f32>,
}

enum PackedWeight {
    /// PyTorch's `[outputs, inputs]` layout, read by the `gemm` crate.
    RowMajor(Vec<f32>),
    /// Column panels of `avx512::NR` outputs (zero-padded), each `inputs × NR`, 64-byte aligned.
    #[cfg(target_arch = "x86_64")]
    Panels(AlignedBuf),
    /// As `Panels` in bf16: each word (stored in an f32's bits) holds the pair of inputs
    /// `2i, 2i + 1` of one output, so a panel is `ceil(inputs / 2) × NR` words.
    #[cfg(target_arch = "x86_64")]
    PanelsBf16(AlignedBuf),
    /// Int8 per output channel, for the int8 kernels (`super::quantized`).
    Int8(QuantizedWeight),
}

impl PackedLinear {
    /// Packs `weight` (PyTorch layout `[outputs, inputs]`, row-major) for `isa`.
    pub(crate) fn new(
        weight: &[f32],
        bias: &[f32],
        outputs: usize,
        inputs: usize,
        isa: Isa,
    ) -> Self {
        assert_eq!(
            weight.len(),
            outputs * inputs,
            "weight size does not match its shape"
        );
        assert_eq!(bias.len(), outputs, "bias size does not match the weight");
        let weight = match isa {
            Isa::Portable => PackedWeight::RowMajor(weight.to_vec()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                let nr = avx512::NR;
                let panels = outputs.div_ceil(nr);
                let kc_max = avx512::depth_block(inputs);
                let mut buf = AlignedBuf::zeroed(panels * inputs * nr);
                let dst = buf.as_mut_slice();
                // Depth block by depth block; within one, panel after panel (kc × NR each), so
                // a sweep over the panels of a block reads memory sequentially.
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    let (panel, lane) = (o / nr, o % nr);
                    for (i, &w) in row.iter().enumerate() {
                        let (kb, kk) = (i / kc_max * kc_max, i % kc_max);
                        let kc = kc_max.min(inputs - kb);
                        dst[kb * panels * nr + (panel * kc + kk) * nr + lane] = w;
                    }
                }
                PackedWeight::Panels(buf)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => {
                let nr = avx512::NR;
                let panels = outputs.div_ceil(nr);
                let kc_max = avx512::depth_block_bf16(inputs);
                let k2 = inputs.div_ceil(2);
                let mut buf = AlignedBuf::zeroed(panels * k2 * nr);
                let dst = buf.as_mut_slice();
                let bf = |v: f32| u32::from(half::bf16::from_f32(v).to_bits());
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    let (panel, lane) = (o / nr, o % nr);
                    for p in 0..k2 {
                        let i = 2 * p;
                        let (kb, kk) = (i / kc_max * kc_max, i % kc_max);
                        let kc2 = (kc_max.min(inputs - kb)).div_ceil(2);
                        let hi = row.get(i + 1).map_or(0, |&w| bf(w));
                        let word = bf(row[i]) | hi << 16;
                        dst[kb / 2 * panels * nr + (panel * kc2 + kk / 2) * nr + lane] =
                            f32::from_bits(word);
                    }
                }
                PackedWeight::PanelsBf16(buf)
            }
        };
        PackedLinear {
            inputs,
            outputs,
            weight,
            bias: bias.to_vec(),
        }
    }

    /// Quantises `weight` (PyTorch layout `[outputs, inputs]`) to int8 for `kernel`; each
    /// forward pass quantises its input rows to u8 on the way in.
    pub(crate) fn quantized(
        weight: &[f32],
        bias: &[f32],
        outputs: usize,
        inputs: usize,
        kernel: Int8Kernel,
    ) -> Self {
        assert_eq!(bias.len(), outputs, "bias size does not match the weight");
        PackedLinear {
            inputs,
            outputs,
            weight: PackedWeight::Int8(QuantizedWeight::new(weight, outputs, inputs, kernel)),
            bias: bias.to_vec(),
        }
    }

    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out = epilogue(input · Wᵀ)` for `rows` rows; parallel over output columns when large.
    pub(crate) fn forward(&self, input: &[f32], rows: usize, out: &mut [f32], epilogue: Epilogue) {
        let (k, n) = (self.inputs, self.outputs);
        assert_eq!(input.len(), rows * k, "linear input is not rows × inputs");
        assert_eq!(out.len(), rows * n, "linear output is not rows × outputs");
        let residual = match epilogue {
            Epilogue::BiasResidual(r) => {
                assert_eq!(r.len(), rows * n, "residual is not rows × outputs");
                Some(r)
            }
            _ => None,
        };
        let gelu = matches!(epilogue, Epilogue::BiasGelu);
        let threads = if rows * n * k >= PARALLEL_MIN_MACS {
            rayon::current_num_threads()
        } else {
            1
        };
        match &self.weight {
            PackedWeight::Int8(w) => {
                let mut rows_q = QUANTIZED.with(Cell::take).unwrap_or_default();
                rows_q.quantize(input, k, w.kernel());
                w.forward(&rows_q, out, &self.bias, residual, gelu, threads);
                if rows_q.bytes() <= KEEP_SCRATCH_BYTES {
                    QUANTIZED.with(|q| q.set(Some(rows_q)));
                }
            }
            PackedWeight::RowMajor(w) => {
                let parallelism = if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                };
                // SAFETY: the asserts above bound every access: out is rows×n (row stride n),
                // input rows×k (row stride k), and w is n×k read as its transpose (k×n).
                unsafe {
                    gemm::gemm(
                        rows,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        input.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
                let chunk = n * ROWS_PER_TASK;
                if out.len() <= chunk {
                    bias_epilogue_rows(out, &self.bias, residual, gelu);
                } else {
                    let bias = &self.bias;
                    match residual {
                        Some(r) => out
                            .par_chunks_mut(chunk)
                            .zip(r.par_chunks(chunk))
                            .for_each(|(o, r)| bias_epilogue_rows(o, bias, Some(r), gelu)),
                        None => out
                            .par_chunks_mut(chunk)
                            .for_each(|o| bias_epilogue_rows(o, bias, None, gelu)),
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            PackedWeight::PanelsBf16(panels) => {
                let k2 = k.div_ceil(2);
                let mut rounded = ROUNDED.with(Cell::take);
                rounded.clear();
                rounded.resize(rows * k2, 0);
                // SAFETY: these panels exist only where `Isa::has_bf16` found the instructions.
                unsafe { avx512::round_rows_bf16(input, k, &mut rounded) };
                let job = avx512::GemmBf16 {
                    a: rounded.as_ptr(),
                    m: rows,
                    k,
                    n,
                    panels: panels.as_slice().as_ptr().cast(),
                    bias: self.bias.as_ptr(),
                    c: SendPtr(out.as_mut_ptr()),
                    residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
                    gelu,
                };
                let count = n.div_ceil(avx512::NR);
                let tasks = threads.min(count);
                if tasks <= 1 {
                    // SAFETY: as for `Panels`; `rounded` holds rows × ceil(k / 2) words.
                    unsafe { job.run(0, count) };
                } else {
                    (0..tasks).into_par_iter().for_each(|t| {
                        // SAFETY: as above; tasks own disjoint panel (column) ranges.
                        unsafe { job.run(count * t / tasks, count * (t + 1) / tasks) };
                    });
                }
                if rounded.capacity() * 4 <= KEEP_SCRATCH_BYTES {
                    ROUNDED.with(|r| r.set(rounded));
                }
            }
            #[cfg(target_arch = "x86_64")]
            PackedWeight::Panels(panels) => {
                let job = avx512::Gemm {
                    a: input.as_ptr(),
                    m: rows,
                    k,
                    n,
                    panels: panels.as_slice().as_ptr(),
                    bias: self.bias.as_ptr(),
                    c: SendPtr(out.as_mut_ptr()),
                    residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
                    gelu,
                };
                let count = n.div_ceil(avx512::NR);
                let tasks = threads.min(count);
                if tasks <= 1 {
                    // SAFETY: Panels exist only when AVX-512 was detected; the asserts above
                    // bound the buffers `job` points into.
                    unsafe { job.run(0, count) };
                } else {
                    (0..tasks).into_par_iter().for_each(|t| {
                        // SAFETY: as above; tasks own disjoint panel (column) ranges.
                        unsafe { job.run(count * t / tasks, count * (t + 1) / tasks) };
                    });
                }
            }
        }
    }
}

/// An `f32` buffer aligned to cache lines, so packed weight rows never straddle two lines.
#[cfg(target_arch = "x86_64")]
struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

#[cfg(target_arch = "x86_64")]
impl AlignedBuf {
    fn zeroed(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` contiguous f32s (Line is repr(C) [f32; 16]).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::SendPtr;
    use crate::kernels::elementwise::avx512::{column_masks, gelu_erf};

    /// Output columns per packed weight panel: two 16-lane registers.
    pub(super) const NR: usize = 32;
    /// Rows per register tile: 12 × 2 accumulators + 2 weight vectors + 1 broadcast ≤ 32 zmm.
    const MR: usize = 12;
    /// Most depth per block: a 256 × 32 weight block (32 KiB) stays in L1 while row tiles
    /// stream past it.
    const KC: usize = 256;
    /// Row block: its inputs (at most 240 × 256 × 4 B = 240 KiB) stay in L2 while the weight
    /// panels sweep over them.
    const MC: usize = 240;

    /// The depth blocking for `k` inputs: equal blocks of at most KC (384 = 2 × 192,
    /// 1536 = 6 × 256). Weights are packed block by block with it.
    pub(super) fn depth_block(k: usize) -> usize {
        k.div_ceil(k.div_ceil(KC).max(1)).max(1)
    }

    /// One GEMM `c = epilogue(a · W)`, W packed in panels; `run` computes a range of panels.
    pub(super) struct Gemm {
        pub a: *const f32,
        pub m: usize,
        pub k: usize,
        pub n: usize,
        pub panels: *const f32,
        pub bias: *const f32,
        pub c: SendPtr,
        pub residual: *const f32,
        pub gelu: bool,
    }

    // SAFETY: `Gemm` only carries pointers into buffers that outlive the parallel call; the
    // caller gives concurrent `run`s disjoint panel ranges, so their writes never overlap.
    unsafe impl Sync for Gemm {}

    impl Gemm {
        /// # Safety
        /// AVX-512F must be available, the pointers must cover the shapes in `self`, and
        /// concurrent calls must use disjoint panel ranges.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn run(&self, panel_begin: usize, panel_end: usize) {
            let (m, k, n) = (self.m, self.k, self.n);
            let c = self.c.get();
            let panels = n.div_ceil(NR);
            let kc_max = depth_block(k);
            // SAFETY (all pointer arithmetic below): offsets stay inside the buffers whose
            // extents the caller guarantees.
            unsafe {
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    let tiles = mc.div_ceil(MR);
                    for kb in (0..k).step_by(kc_max) {
                        let kc = kc_max.min(k - kb);
                        let block = self.panels.add(kb * panels * NR);
                        let (first, last) = (kb == 0, kb + kc == k);
                        for p in panel_begin..panel_end {
                            let col = p * NR;
                            let masks = column_masks((n - col).min(NR));
                            let b = block.add(p * kc * NR);
                            for t in 0..tiles {
                                let rows = MR.min(mc - t * MR);
                                let row0 = i0 + t * MR;
                                // The last tile of a panel pulls the next panel's weights
                                // into L1 while it computes.
                                let prefetch = if t + 1 == tiles {
                                    b.wrapping_add(kc * NR)
                                } else {
                                    b
                                };
                                let ct = c.add(row0 * n + col);
                                let a = self.a.add(row0 * k + kb);
                                tile(rows, a, k, b, kc, ct, n, !first, masks, prefetch);
                                if last {
                                    let res = if self.residual.is_null() {
                                        self.residual
                                    } else {
                                        self.residual.add(row0 * n + col)
                                    };
                                    epilogue(
                                        rows,
                                        ct,
                                        n,
                                        self.bias.add(col),
                                        res,
                                        self.gelu,
                                        masks,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A masked store, unmasked when it keeps every lane (every panel of a width that is a
    /// multiple of 32): the epilogue's load of the same bytes right after is then forwarded
    /// from the store buffer, where after a masked store it waits for the store to retire.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_ps(p: *mut f32, mask: __mmask16, v: __m512) {
        // SAFETY: the caller guarantees the masked lanes; a full mask means all 16.
        unsafe {
            if mask == 0xffff {
                _mm512_storeu_ps(p, v)
            } else {
                _mm512_mask_storeu_ps(p, mask, v)
            }
        }
    }

    /// The load matching [`store_ps`]: unmasked when every lane is kept.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_ps(mask: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: as for `store_ps`.
        unsafe {
            if mask == 0xffff {
                _mm512_loadu_ps(p)
            } else {
                _mm512_maskz_loadu_ps(mask, p)
            }
        }
    }

    /// `rows` × 32 outputs at `c` (+= when `accumulate`), by the kernel unrolled for `rows`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        rows: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        masks: (__mmask16, __mmask16),
        prefetch: *const f32,
    ) {
        let args = (a, lda, b, kc, c, ldc, accumulate, masks, prefetch);
        // SAFETY: forwarded from the caller.
        unsafe {
            match rows {
                12 => tile_12(args),
                11 => tile_11(args),
                10 => tile_10(args),
                9 => tile_9(args),
                8 => tile_8(args),
                7 => tile_7(args),
                6 => tile_6(args),
                5 => tile_5(args),
                4 => tile_4(args),
                3 => tile_3(args),
                2 => tile_2(args),
                _ => tile_1(args),
            }
        }
    }

    type TileArgs = (
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        bool,
        (__mmask16, __mmask16),
        *const f32,
    );

    /// Defines a register-tile kernel for the listed rows, unrolled by the macro rather than
    /// left to the optimiser, so the accumulators stay in registers.
    macro_rules! tile_kernel {
        ($name:ident, $($r:literal)+) => {
            #[target_feature(enable = "avx512f")]
            unsafe fn $name(
                (a, lda, b, kc, c, ldc, accumulate, (mask0, mask1), prefetch): TileArgs,
            ) {
                let mut acc0 = [_mm512_setzero_ps(); MR];
                let mut acc1 = [_mm512_setzero_ps(); MR];
                // SAFETY: the caller guarantees that `a` covers the tile's rows (stride `lda`)
                // to depth `kc`, `b` kc × 32 weights and `c` the tile's rows; the masks keep
                // loads and stores inside the output's columns. Prefetches never fault, so
                // `prefetch` may point anywhere (it is only offset with wrapping arithmetic).
                unsafe {
                    if accumulate {
                        $(
                            acc0[$r] = _mm512_maskz_loadu_ps(mask0, c.add($r * ldc));
                            acc1[$r] = _mm512_maskz_loadu_ps(mask1, c.add($r * ldc + 16));
                        )+
                    }
                    for kk in 0..kc {
                        let b0 = _mm512_load_ps(b.add(kk * NR));
                        let b1 = _mm512_load_ps(b.add(kk * NR + 16));
                        _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(kk * NR).cast());
                        _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(kk * NR + 16).cast());
                        $(
                            let av = _mm512_set1_ps(*a.add($r * lda + kk));
                            acc0[$r] = _mm512_fmadd_ps(av, b0, acc0[$r]);
                            acc1[$r] = _mm512_fmadd_ps(av, b1, acc1[$r]);
                        )+
                    }
                    $(
                        store_ps(c.add($r * ldc), mask0, acc0[$r]);
                        store_ps(c.add($r * ldc + 16), mask1, acc1[$r]);
                    )+
                }
            }
        };
    }

    tile_kernel!(tile_1, 0);
    tile_kernel!(tile_2, 0 1);
    tile_kernel!(tile_3, 0 1 2);
    tile_kernel!(tile_4, 0 1 2 3);
    tile_kernel!(tile_5, 0 1 2 3 4);
    tile_kernel!(tile_6, 0 1 2 3 4 5);
    tile_kernel!(tile_7, 0 1 2 3 4 5 6);
    tile_kernel!(tile_8, 0 1 2 3 4 5 6 7);
    tile_kernel!(tile_9, 0 1 2 3 4 5 6 7 8);
    tile_kernel!(tile_10, 0 1 2 3 4 5 6 7 8 9);
    tile_kernel!(tile_11, 0 1 2 3 4 5 6 7 8 9 10);
    tile_kernel!(tile_12, 0 1 2 3 4 5 6 7 8 9 10 11);

    /// The bf16 GEMM's depth blocking: as [`depth_block`], rounded up to whole pairs.
    pub(super) fn depth_block_bf16(k: usize) -> usize {
        depth_block(k).next_multiple_of(2)
    }

    /// Rows of `k` f32 rounded to bf16 (nearest, ties to even), each padded to whole pairs:
    /// `out` is `rows × ceil(k / 2)` words.
    ///
    /// # Safety
    /// AVX-512F, AVX-512VL and AVX512_BF16 must be available.
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_rows_bf16(x: &[f32], k: usize, out: &mut [u32]) {
        let k2 = k.div_ceil(2);
        assert!(k > 0 && x.len().is_multiple_of(k) && out.len() == x.len() / k * k2);
        for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(k2)) {
            let mut i = 0;
            while i < k {
                let count = (k - i).min(16);
                // SAFETY: the masks keep the load inside `src` and the store inside `dst`
                // (16 floats become 8 words; an odd tail's last word is half zero).
                unsafe {
                    let v = _mm512_maskz_loadu_ps(
                        (1u32 << count).wrapping_sub(1) as u16,
                        src.as_ptr().add(i),
                    );
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_mask_storeu_epi32(
                        dst.as_mut_ptr().add(i / 2).cast(),
                        ((1u32 << count.div_ceil(2)) - 1) as u8,
                        h,
                    );
                }
                i += 16;
            }
        }
    }

    /// [`Gemm`] in bf16: `a` holds the input rounded by [`round_rows_bf16`], `panels` the
    /// weights packed as `PackedWeight::PanelsBf16`.
    pub(super) struct GemmBf16 {
        pub a: *const u32,
        pub m: usize,
        pub k: usize,
        pub n: usize,
        pub panels: *const u32,
        pub bias: *const f32,
        pub c: SendPtr,
        pub residual: *const f32,
        pub gelu: bool,
    }

    // SAFETY: as for `Gemm`.
    unsafe impl Sync for GemmBf16 {}

    impl GemmBf16 {
        /// # Safety
        /// AVX-512F and AVX512_BF16 must be available, the pointers must cover the shapes in
        /// `self`, and concurrent calls must use disjoint panel ranges.
        #[target_feature(enable = "avx512f,avx512bf16")]
        pub(super) unsafe fn run(&self, panel_begin: usize, panel_end: usize) {
            let (m, k, n) = (self.m, self.k, self.n);
            let k2 = k.div_ceil(2);
            let c = self.c.get();
            let panels = n.div_ceil(NR);
            let kc_max = depth_block_bf16(k);
            // SAFETY (all pointer arithmetic below): offsets stay inside the buffers whose
            // extents the caller guarantees; word offsets are half the depth offsets.
            unsafe {
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    let tiles = mc.div_ceil(MR);
                    for kb in (0..k).step_by(kc_max) {
                        let kc2 = kc_max.min(k - kb).div_ceil(2);
                        let block = self.panels.add(kb / 2 * panels * NR);
                        let (first, last) = (kb == 0, kb + kc_max >= k);
                        for p in panel_begin..panel_end {
                            let col = p * NR;
                            let masks = column_masks((n - col).min(NR));
                            let b = block.add(p * kc2 * NR);
                            for t in 0..tiles {
                                let rows = MR.min(mc - t * MR);
                                let row0 = i0 + t * MR;
                                let ct = c.add(row0 * n + col);
                                let a = self.a.add(row0 * k2 + kb / 2);
                                // The first tile of a panel pulls the next panel's weights
                                // towards L1 while it computes: with few rows (one short
                                // text) the products wait on the weights, not on the FMAs.
                                let prefetch = if t == 0 { b.wrapping_add(kc2 * NR) } else { b };
                                tile_bf16(rows, (a, k2, b, kc2, ct, n, !first, masks, prefetch));
                                if last {
                                    let res = if self.residual.is_null() {
                                        self.residual
                                    } else {
                                        self.residual.add(row0 * n + col)
                                    };
                                    epilogue(
                                        rows,
                                        ct,
                                        n,
                                        self.bias.add(col),
                                        res,
                                        self.gelu,
                                        masks,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    type TileBf16Args = (
        *const u32,
        usize,
        *const u32,
        usize,
        *mut f32,
        usize,
        bool,
        (__mmask16, __mmask16),
        *const u32,
    );

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_bf16(rows: usize, args: TileBf16Args) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match rows {
                12 => tile_bf16_12(args),
                11 => tile_bf16_11(args),
                10 => tile_bf16_10(args),
                9 => tile_bf16_9(args),
                8 => tile_bf16_8(args),
                7 => tile_bf16_7(args),
                6 => tile_bf16_6(args),
                5 => tile_bf16_5(args),
                4 => tile_bf16_4(args),
                3 => tile_bf16_3(args),
                2 => tile_bf16_2(args),
                _ => tile_bf16_1(args),
            }
        }
    }

    /// As `tile_kernel!`, each step a pair of depths: `vdpbf16ps` adds both products.
    macro_rules! tile_bf16_kernel {
        ($name:ident, $($r:literal)+) => {
            #[target_feature(enable = "avx512f,avx512bf16")]
            unsafe fn $name(
                (a, lda2, b, kc2, c, ldc, accumulate, (mask0, mask1), prefetch): TileBf16Args,
            ) {
                let mut acc0 = [_mm512_setzero_ps(); MR];
                let mut acc1 = [_mm512_setzero_ps(); MR];
                // SAFETY: the caller guarantees that `a` covers the tile's rows (stride `lda2`
                // words) to `kc2` words, `b` kc2 × 32 words and `c` the tile's rows; the masks
                // keep loads and stores inside the output's columns. Prefetches never fault, so
                // `prefetch` may point anywhere (it is only offset with wrapping arithmetic).
                unsafe {
                    if accumulate {
                        $(
                            acc0[$r] = _mm512_maskz_loadu_ps(mask0, c.add($r * ldc));
                            acc1[$r] = _mm512_maskz_loadu_ps(mask1, c.add($r * ldc + 16));
                        )+
                    }
                    for kk in 0..kc2 {
                        let b0: __m512bh = std::mem::transmute(_mm512_load_si512(b.add(kk * NR).cast()));
                        let b1: __m512bh =
                            std::mem::transmute(_mm512_load_si512(b.add(kk * NR + 16).cast()));
                        _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(kk * NR).cast());
                        _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(kk * NR + 16).cast());
                        $(
                            let av: __m512bh =
                                std::mem::transmute(_mm512_set1_epi32(*a.add($r * lda2 + kk) as i32));
                            acc0[$r] = _mm512_dpbf16_ps(acc0[$r], av, b0);
                            acc1[$r] = _mm512_dpbf16_ps(acc1[$r], av, b1);
                        )+
                    }
                    $(
                        store_ps(c.add($r * ldc), mask0, acc0[$r]);
                        store_ps(c.add($r * ldc + 16), mask1, acc1[$r]);
                    )+
                }
            }
        };
    }

    tile_bf16_kernel!(tile_bf16_1, 0);
    tile_bf16_kernel!(tile_bf16_2, 0 1);
    tile_bf16_kernel!(tile_bf16_3, 0 1 2);
    tile_bf16_kernel!(tile_bf16_4, 0 1 2 3);
    tile_bf16_kernel!(tile_bf16_5, 0 1 2 3 4);
    tile_bf16_kernel!(tile_bf16_6, 0 1 2 3 4 5);
    tile_bf16_kernel!(tile_bf16_7, 0 1 2 3 4 5 6);
    tile_bf16_kernel!(tile_bf16_8, 0 1 2 3 4 5 6 7);
    tile_bf16_kernel!(tile_bf16_9, 0 1 2 3 4 5 6 7 8);
    tile_bf16_kernel!(tile_bf16_10, 0 1 2 3 4 5 6 7 8 9);
    tile_bf16_kernel!(tile_bf16_11, 0 1 2 3 4 5 6 7 8 9 10);
    tile_bf16_kernel!(tile_bf16_12, 0 1 2 3 4 5 6 7 8 9 10 11);

    /// Bias, residual and GELU on a finished tile, while it is still in L1. Kept out of the
    /// tile kernels so its constants do not crowd their accumulators out of registers.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn epilogue(
        rows: usize,
        c: *mut f32,
        ldc: usize,
        bias: *const f32,
        residual: *const f32,
        gelu: bool,
        (mask0, mask1): (__mmask16, __mmask16),
    ) {
        // SAFETY: the caller guarantees the tile's rows and the bias' columns; masks keep
        // every access inside the output's width.
        unsafe {
            let bias0 = _mm512_maskz_loadu_ps(mask0, bias);
            let bias1 = _mm512_maskz_loadu_ps(mask1, bias.add(16));
            for r in 0..rows {
                let row = c.add(r * ldc);
                let mut v0 = _mm512_add_ps(load_ps(mask0, row), bias0);
                let mut v1 = _mm512_add_ps(load_ps(mask1, row.add(16)), bias1);
                if !residual.is_null() {
                    let res = residual.add(r * ldc);
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, res));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, res.add(16)));
                }
                if gelu {
                    v0 = gelu_erf(v0);
                    v1 = gelu_erf(v1);
                }
                _mm512_mask_storeu_ps(row, mask0, v0);
                _mm512_mask_storeu_ps(row.add(16), mask1, v1);
            }
        }
    }

    /// `exp` of 16 lanes (Cephes' polynomial, as `super::exp_fast`), scaled by `scalef`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp_ps(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
            _mm512_set1_ps(88.0),
        );
        let t = _mm512_fmadd_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
            _mm512_set1_ps(0.5),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let g = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let g = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), g);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5, // 5.000_000_1e-1 in Cephes, 0.5 in f32
        ] {
            y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(c));
        }
        let g2 = _mm512_mul_ps(g, g);
        let y = _mm512_add_ps(_mm512_fmadd_ps(y, g2, g), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }

    /// `super::attend_head` for head widths that are a multiple of 16, in 16-lane registers:
    /// keys transposed once per head, then per query 16 scores per register, a masked
    /// softmax, and the value rows accumulated 16 dimensions at a time.
    ///
    /// # Safety
    /// AVX-512F must be available and the task's rows must lie inside `task.qkv` and the
    /// output buffer, as `super::attention` checks.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_head(task: &super::HeadTask<'_>, scratch: &mut Vec<f32>) {
        let (hidden, hd, len) = (task.hidden, task.head_dim, task.len);
        let ld = 3 * hidden;
        let padded = len.next_multiple_of(16);
        let chunks = padded / 16;
        let tail: __mmask16 = if len % 16 == 0 {
            0xffff
        } else {
            ((1u32 << (len % 16)) - 1) as u16
        };
        let mask = |c: usize| if c + 1 == chunks { tail } else { 0xffff };
        scratch.clear();
        scratch.resize(hd * padded + padded, 0.0);
        let (keys_t, scores) = scratch.split_at_mut(hd * padded);
        let base = &task.qkv[task.start * ld..(task.start + len) * ld];
        let (q_off, k_off, v_off) = (
            task.head * hd,
            hidden + task.head * hd,
            2 * hidden + task.head * hd,
        );
        for j in 0..len {
            for (d, &kv) in base[j * ld + k_off..][..hd].iter().enumerate() {
                keys_t[d * padded + j] = kv;
            }
        }
        let (kt, sp, qkv) = (keys_t.as_ptr(), scores.as_mut_ptr(), base.as_ptr());
        // SAFETY: every offset below stays within `base` (len rows of ld floats), `keys_t`
        // (hd × padded), `scores` (padded) or the task's output row segment.
        unsafe {
            for i in 0..len {
                let q = qkv.add(i * ld + q_off);
                let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
                for c in 0..chunks {
                    let mut acc = _mm512_setzero_ps();
                    for d in 0..hd {
                        let qd = _mm512_set1_ps(*q.add(d) * task.scale);
                        acc =
                            _mm512_fmadd_ps(qd, _mm512_loadu_ps(kt.add(d * padded + c * 16)), acc);
                    }
                    _mm512_storeu_ps(sp.add(c * 16), acc);
                    max = _mm512_mask_max_ps(max, mask(c), max, acc);
                }
                let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
                let mut sum = _mm512_setzero_ps();
                for c in 0..chunks {
                    let e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sp.add(c * 16)), max));
                    let e = _mm512_maskz_mov_ps(mask(c), e);
                    _mm512_storeu_ps(sp.add(c * 16), e);
                    sum = _mm512_add_ps(sum, e);
                }
                let inv = 1.0 / _mm512_reduce_add_ps(sum);
                let out = task
                    .out
                    .get()
                    .add((task.start + i) * hidden + task.head * hd);
                for dc in (0..hd).step_by(16) {
                    let mut acc = _mm512_setzero_ps();
                    for j in 0..len {
                        let v = _mm512_loadu_ps(qkv.add(j * ld + v_off + dc));
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(*sp.add(j)), v, acc);
                    }
                    _mm512_storeu_ps(out.add(dc), _mm512_mul_ps(acc, _mm512_set1_ps(inv)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention.

/// Self-attention of one head over one sequence, read from the fused `[q | k | v]` rows.
pub(crate) struct HeadTask<'a> {
    qkv: &'a [f32],
    hidden: usize,
    head_dim: usize,
    head: usize,
    start: usize,
    len: usize,
    scale: f32,
    out: SendPtr,
}

/// `softmax(q·kᵀ·scale)·v` for `task`; writes the head's columns of the sequence's rows.
#[inline(always)]
fn attend_head(task: &HeadTask<'_>, scratch: &mut Vec<f32>) {
    let (hidden, hd, len) = (task.hidden, task.head_dim, task.len);
    let ld = 3 * hidden;
    let (q_off, k_off, v_off) = (
        task.head * hd,
        hidden + task.head * hd,
        2 * hidden + task.head * hd,
    );
    let row = |t: usize, off: usize| &task.qkv[(task.start + t) * ld + off..][..hd];
    scratch.clear();
    scratch.resize(hd * len + len + hd, 0.0);
    let (keys_t, rest) = scratch.split_at_mut(hd * len);
    let (scores, acc) = rest.split_at_mut(len);
    // Keys transposed (head_dim × len), so each query's scores are a vectorisable axpy chain.
    for j in 0..len {
        for (d, &kv) in row(j, k_off).iter().enumerate() {
            keys_t[d * len + j] = kv;
        }
    }
    for i in 0..len {
        scores.fill(0.0);
        for (&q, kt) in row(i, q_off).iter().zip(keys_t.chunks_exact(len)) {
            let q = q * task.scale;
            for (s, &kv) in scores.iter_mut().zip(kt) {
                *s += q * kv;
            }
        }
        let max = max_lanes(scores);
        scores.iter_mut().for_each(|s| *s = exp_fast(*s - max));
        let inv = 1.0 / sum_lanes(scores);
        acc.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let p = p * inv;
            for (a, &v) in acc.iter_mut().zip(row(j, v_off)) {
                *a += p * v;
            }
        }
        // SAFETY: this task alone writes these `hd` values (its head's columns of its rows),
        // and `out` spans the sequences' rows × `hidden`.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                task.out
                    .get()
                    .add((task.start + i) * hidden + task.head * hd),
                hd,
            )
        };
        out.copy_from_slice(acc);
    }
}

/// One head's attention with the best kernel for `isa` and the head's width.
fn attend(isa: Isa, task: &HeadTask<'_>, scratch: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16) && task.head_dim.is_multiple_of(16) {
        // SAFETY: `Isa::Avx512` means AVX-512 was detected; the task's spans were checked by
        // `attention` against the buffers.
        return unsafe { avx512::attend_head(task, scratch) };
    }
    dispatch!(isa, attend_head(task, scratch))
}

/// Multi-head self-attention for packed sequences: `ctx[rows × hidden]` from
/// `qkv[rows × 3·hidden]`. Each sequence attends only to itself, so no mask is needed.
/// `sequences` are `(first row, length)` pairs covering the rows.
pub(crate) fn attention(
    isa: Isa,
    qkv: &[f32],
    sequences: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    ctx: &mut [f32],
) {
    let rows: usize = sequences.iter().map(|s| s.1).sum();
    assert_eq!(qkv.len(), rows * 3 * hidden, "qkv is not rows × 3·hidden");
    assert_eq!(
        ctx.len(),
        rows * hidden,
        "attention output is not rows × hidden"
    );
    assert!(
        sequences.iter().all(|&(start, len)| start + len <= rows),
        "a sequence runs past the rows"
    );
    let head_dim = hidden / heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out = SendPtr(ctx.as_mut_ptr());
    let task = |t: usize| {
        let (start, len) = sequences[t / heads];
        HeadTask {
            qkv,
            hidden,
            head_dim,
            head: t % heads,
            start,
            len,
            scale,
            out,
        }
    };
    let tasks = sequences.len() * heads;
    let work: usize = sequences.iter().map(|s| s.1 * s.1).sum::<usize>() * hidden;
    if work < ATTENTION_PARALLEL_MIN_MACS || tasks < 2 {
        let mut scratch = Vec::new();
        for t in 0..tasks {
            attend(isa, &task(t), &mut scratch);
        }
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, t| attend(isa, &task(t), scratch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::elementwise::erf_fast;

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::detect());
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::has_bf16() {
            v.push(Isa::Avx512Bf16);
        }
        v
    }

    /// `v` rounded to bf16 and back: what the bf16 GEMM multiplies.
    fn bf16_rounded(v: &[f32]) -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn erf_and_gelu_match_libm() {
        let mut worst: f64 = 0.0;
        for i in -80_000..=80_000 {
            let x = i as f64 * 1e-4;
            let err = (erf_fast(x as f32) as f64 - candle_core::cpu::erf::erf_f64(x)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 1e-6, "erf max error {worst}");
        for &x in &[-6.0f32, -1.5, -0.3, 0.0, 0.7, 2.0, 9.0] {
            let exact =
                0.5 * x as f64 * (1.0 + candle_core::cpu::erf::erf_f64(x as f64 / 2f64.sqrt()));
            assert!(
                (gelu_erf(x) as f64 - exact).abs() < 2e-6 * (1.0 + x.abs() as f64),
                "gelu({x})"
            );
        }
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let rel = ((exp_fast(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 1e-6, "exp({x}) relative error {rel}");
        }
    }

    fn naive_linear(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
                out[r * n + o] = dot as f32 + b[o];
            }
        }
        out
    }

    fn isa_is_bf16(isa: Isa) -> bool {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Bf16 {
            return true;
        }
        let _ = isa;
        false
    }

    #[test]
    fn linear_matches_naive_for_awkward_shapes() {
        // Rows around the 12-row tile and 240-row block, outputs around the 32-wide panel,
        // depths around the 256-deep block.
        for isa in isas() {
            for &(rows, n, k) in &[
                (1, 1, 1),
                (5, 33, 7),
                (13, 64, 300),
                (25, 47, 256),
                (241, 96, 513),
            ] {
                let x = values(rows * k, 1);
                let w = values(n * k, 2);
                let b = values(n, 3);
                let res = values(rows * n, 4);
                let lin = PackedLinear::new(&w, &b, n, k, isa);
                // The bf16 kernel is checked against the exact product of its rounded operands
                // (rounding is the only approximation it makes), to the f32 tolerance.
                let want = if isa_is_bf16(isa) {
                    naive_linear(&bf16_rounded(&x), &bf16_rounded(&w), &b, rows, n, k)
                } else {
                    naive_linear(&x, &w, &b, rows, n, k)
                };
                let mut out = vec![f32::NAN; rows * n];

                lin.forward(&x, rows, &mut out, Epilogue::Bias);
                for (o, e) in out.iter().zip(&want) {
                    assert!(
                        (o - e).abs() < 1e-4 * (k as f32).sqrt(),
                        "{isa:?} {rows}x{n}x{k}"
                    );
                }
                lin.forward(&x, rows, &mut out, Epilogue::BiasResidual(&res));
                for ((o, e), r) in out.iter().zip(&want).zip(&res) {
                    assert!(
                        (o - e - r).abs() < 1e-4 * (k as f32).sqrt(),
                        "{isa:?} residual"
                    );
                }
                lin.forward(&x, rows, &mut out, Epilogue::BiasGelu);
                for (o, e) in out.iter().zip(&want) {
                    assert!(
                        (o - gelu_erf(*e)).abs() < 1e-4 * (k as f32).sqrt(),
                        "{isa:?} gelu"
                    );
                }
            }
        }
    }

    #[test]
    fn layer_norm_matches_definition() {
        let width = 40;
        let src = values(width * 70, 5);
        let gamma = values(width, 6);
        let beta = values(width, 7);
        for isa in isas() {
            let mut dst = vec![0.0; src.len()];
            layer_norm(isa, &src, &mut dst, &gamma, &beta, 1e-12);
            for (s, d) in src.chunks(width).zip(dst.chunks(width)) {
                let mean = s.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                for i in 0..width {
                    let want = (s[i] as f64 - mean) / var.sqrt() * gamma[i] as f64 + beta[i] as f64;
                    assert!((d[i] as f64 - want).abs() < 1e-5, "{isa:?}");
                }
            }
        }
    }

    #[test]
    fn attention_matches_naive() {
        // Head widths 8 (portable kernel only) and 32 (AVX-512 kernel too); sequence lengths
        // on both sides of the 16-lane chunks.
        for (hidden, heads) in [(24, 3), (64, 2)] {
            let hd = hidden / heads;
            let sequences = [(0, 5), (5, 1), (6, 19), (25, 16), (41, 33)];
            let rows = 74;
            let qkv: Vec<f32> = values(rows * 3 * hidden, 8)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            for isa in isas() {
                let mut ctx = vec![f32::NAN; rows * hidden];
                attention(isa, &qkv, &sequences, hidden, heads, &mut ctx);
                for &(start, len) in &sequences {
                    for h in 0..heads {
                        for i in 0..len {
                            let at = |row: usize, part: usize, d: usize| {
                                qkv[(start + row) * 3 * hidden + part * hidden + h * hd + d] as f64
                            };
                            let scores: Vec<f64> = (0..len)
                                .map(|j| {
                                    (0..hd).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>()
                                        / (hd as f64).sqrt()
                                })
                                .collect();
                            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                            let z: f64 = e.iter().sum();
                            for d in 0..hd {
                                let want: f64 = (0..len).map(|j| e[j] / z * at(j, 2, d)).sum();
                                let got = ctx[(start + i) * hidden + h * hd + d] as f64;
                                assert!(
                                    (got - want).abs() < 1e-5,
                                    "{isa:?} hd {hd} seq {start}+{len} head {h}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
