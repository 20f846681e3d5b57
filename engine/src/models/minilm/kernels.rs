//! CPU kernels for the fused encoder.
//!
//! Everything works on contiguous row-major `f32` buffers, one row per token, with weights packed
//! once at load time, so a forward pass allocates nothing but its few activation buffers. The
//! AVX-512 kernels are chosen at run time, never by compile flags, so one binary runs on any
//! x86-64. The portable kernels (the `gemm` crate, plus plain loops the compiler vectorises)
//! serve other CPUs and cross-check the fast ones in tests.

use rayon::prelude::*;

/// Below this many multiply-adds a GEMM runs on the calling thread: waking the pool costs more.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Rows of elementwise work (layer norm, activation) per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The instruction set the fused kernels use, detected once when the model loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The `gemm` crate (which picks its own SIMD at run time) and compiler-vectorised loops.
    Portable,
    /// Hand-written AVX-512 GEMM with fused epilogues; elementwise loops compiled for AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best kernels this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Portable
    }
}

/// Runs a portable `#[inline(always)]` function, recompiled for AVX-512 when `isa` allows it,
/// so the compiler's vectoriser uses 16-lane registers without a global `target-cpu` flag.
macro_rules! dispatch {
    ($isa:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only constructed after detecting AVX-512 on this CPU.
            Isa::Avx512 => unsafe { avx512_versions::$f($($arg),*) },
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

/// A pointer that may cross threads: each task writes a disjoint part of the buffer behind it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: users guarantee that concurrent tasks touch disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    // A method, not field access, so closures capture the whole (Send) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar maths shared by the portable and AVX-512 paths.

/// Rational approximation of erf on [-4, 4] (beyond which erf is ±1 in `f32`); the
/// coefficients are Eigen's `generic_fast_erf_float`. Max error about 1e-7, far below what the
/// golden tests resolve, and unlike `libm::erff` it is branch-free, so it vectorises.
pub(crate) mod erf_coeffs {
    pub const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    pub const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
}

#[inline(always)]
pub(crate) fn erf_fast(x: f32) -> f32 {
    use erf_coeffs::{ALPHA, BETA};
    let x = if x > 4.0 { 4.0 } else { x };
    let x = if x < -4.0 { -4.0 } else { x };
    let x2 = x * x;
    let mut p = ALPHA[0];
    for a in &ALPHA[1..] {
        p = p * x2 + a;
    }
    let mut q = BETA[0];
    for b in &BETA[1..] {
        q = q * x2 + b;
    }
    x * p / q
}

/// BERT's `gelu`: the exact, erf-based GELU.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

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
    y = y * g + 5.000_000_1e-1;
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
                let mut buf = AlignedBuf::zeroed(panels * inputs * nr);
                let dst = buf.as_mut_slice();
                for (o, row) in weight.chunks_exact(inputs).enumerate() {
                    let (panel, lane) = (o / nr, o % nr);
                    let base = panel * inputs * nr + lane;
                    for (i, &w) in row.iter().enumerate() {
                        dst[base + i * nr] = w;
                    }
                }
                PackedWeight::Panels(buf)
            }
        };
        PackedLinear {
            inputs,
            outputs,
            weight,
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
mod avx512 {
    use std::arch::x86_64::*;

    use super::{erf_coeffs, SendPtr};

    /// Output columns per packed panel: two 16-lane registers.
    pub(super) const NR: usize = 32;
    /// Rows per register tile: 12 × 2 accumulators + 2 weight vectors + 1 broadcast ≤ 32 zmm.
    const MR: usize = 12;
    /// Depth block: a 256 × 32 weight block (32 KiB) stays in L1 while a row block streams by.
    const KC: usize = 256;
    /// Row block: its 240 × 256 inputs (240 KiB) stay in L2 while the panels sweep over them.
    const MC: usize = 240;

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

    struct Tile {
        a: *const f32,
        lda: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        bias: *const f32,
        residual: *const f32,
        mask0: __mmask16,
        mask1: __mmask16,
        first: bool,
        last: bool,
        gelu: bool,
    }

    impl Gemm {
        /// # Safety
        /// AVX-512F must be available, the pointers must cover the shapes in `self`, and
        /// concurrent calls must use disjoint panel ranges.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn run(&self, panel_begin: usize, panel_end: usize) {
            let (m, k, n) = (self.m, self.k, self.n);
            let c = self.c.get();
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                for kb in (0..k).step_by(KC) {
                    let kc = KC.min(k - kb);
                    for p in panel_begin..panel_end {
                        let col = p * NR;
                        let valid = (n - col).min(NR);
                        let mask0 = if valid >= 16 {
                            0xffff
                        } else {
                            ((1u32 << valid) - 1) as u16
                        };
                        let mask1 = if valid >= 32 {
                            0xffff
                        } else if valid > 16 {
                            ((1u32 << (valid - 16)) - 1) as u16
                        } else {
                            0
                        };
                        // SAFETY (all `add`s): offsets stay within the buffers per the contract.
                        let b = unsafe { self.panels.add(p * k * NR + kb * NR) };
                        let mut i = i0;
                        while i < i0 + mc {
                            let rows = MR.min(i0 + mc - i);
                            let tile = Tile {
                                a: unsafe { self.a.add(i * k + kb) },
                                lda: k,
                                b,
                                kc,
                                c: unsafe { c.add(i * n + col) },
                                ldc: n,
                                bias: unsafe { self.bias.add(col) },
                                residual: if self.residual.is_null() {
                                    self.residual
                                } else {
                                    unsafe { self.residual.add(i * n + col) }
                                },
                                mask0,
                                mask1,
                                first: kb == 0,
                                last: kb + kc == k,
                                gelu: self.gelu,
                            };
                            unsafe {
                                match rows {
                                    12 => tile_kernel::<12>(&tile),
                                    11 => tile_kernel::<11>(&tile),
                                    10 => tile_kernel::<10>(&tile),
                                    9 => tile_kernel::<9>(&tile),
                                    8 => tile_kernel::<8>(&tile),
                                    7 => tile_kernel::<7>(&tile),
                                    6 => tile_kernel::<6>(&tile),
                                    5 => tile_kernel::<5>(&tile),
                                    4 => tile_kernel::<4>(&tile),
                                    3 => tile_kernel::<3>(&tile),
                                    2 => tile_kernel::<2>(&tile),
                                    _ => tile_kernel::<1>(&tile),
                                }
                            }
                            i += rows;
                        }
                    }
                }
            }
        }
    }

    /// `R` rows × 32 columns of `c`, accumulated in registers over `kc` depth steps.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_kernel<const R: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // SAFETY (whole body): the caller's contract covers every row and column touched;
        // masked loads and stores never touch columns beyond the output's width.
        unsafe {
            if !t.first {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let c = t.c.add(r * t.ldc);
                    acc[0] = _mm512_maskz_loadu_ps(t.mask0, c);
                    acc[1] = _mm512_maskz_loadu_ps(t.mask1, c.add(16));
                }
            }
            for kk in 0..t.kc {
                let b0 = _mm512_load_ps(t.b.add(kk * NR));
                let b1 = _mm512_load_ps(t.b.add(kk * NR + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*t.a.add(r * t.lda + kk));
                    acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
                }
            }
            if t.last {
                let bias0 = _mm512_maskz_loadu_ps(t.mask0, t.bias);
                let bias1 = _mm512_maskz_loadu_ps(t.mask1, t.bias.add(16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_add_ps(acc[0], bias0);
                    acc[1] = _mm512_add_ps(acc[1], bias1);
                    if !t.residual.is_null() {
                        let res = t.residual.add(r * t.ldc);
                        acc[0] = _mm512_add_ps(acc[0], _mm512_maskz_loadu_ps(t.mask0, res));
                        acc[1] = _mm512_add_ps(acc[1], _mm512_maskz_loadu_ps(t.mask1, res.add(16)));
                    }
                    if t.gelu {
                        acc[0] = gelu_erf(acc[0]);
                        acc[1] = gelu_erf(acc[1]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let c = t.c.add(r * t.ldc);
                _mm512_mask_storeu_ps(c, t.mask0, acc[0]);
                _mm512_mask_storeu_ps(c.add(16), t.mask1, acc[1]);
            }
        }
    }

    /// The erf GELU of 16 lanes, with the same rational erf as `super::erf_fast`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn gelu_erf(x: __m512) -> __m512 {
        let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
        let z2 = _mm512_mul_ps(z, z);
        let mut p = _mm512_set1_ps(erf_coeffs::ALPHA[0]);
        for &a in &erf_coeffs::ALPHA[1..] {
            p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(a));
        }
        let mut q = _mm512_set1_ps(erf_coeffs::BETA[0]);
        for &b in &erf_coeffs::BETA[1..] {
            q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(b));
        }
        let erf = _mm512_div_ps(_mm512_mul_ps(z, p), q);
        let half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
        _mm512_fmadd_ps(half_x, erf, half_x)
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
    if work < PARALLEL_MIN_MACS {
        let mut scratch = Vec::new();
        for t in 0..tasks {
            dispatch!(isa, attend_head(&task(t), &mut scratch));
        }
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, t| {
                dispatch!(isa, attend_head(&task(t), scratch))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::detect());
        }
        v
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
                let want = naive_linear(&x, &w, &b, rows, n, k);
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
        let (hidden, heads) = (24, 3);
        let hd = hidden / heads;
        let sequences = [(0, 5), (5, 1), (6, 19)];
        let rows = 25;
        let qkv = values(rows * 3 * hidden, 8);
        for isa in isas() {
            let mut ctx = vec![f32::NAN; rows * hidden];
            attention(isa, &qkv, &sequences, hidden, heads, &mut ctx);
            for &(start, len) in &sequences {
                for h in 0..heads {
                    for i in 0..len {
                        let q = &qkv[(start + i) * 3 * hidden + h * hd..][..hd];
                        let scores: Vec<f64> = (0..len)
                            .map(|j| {
                                let k = &qkv[(start + j) * 3 * hidden + hidden + h * hd..][..hd];
                                q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                    / (hd as f64).sqrt()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for d in 0..hd {
                            let want: f64 = (0..len)
                                .map(|j| {
                                    e[j] / z
                                        * qkv[(start + j) * 3 * hidden + 2 * hidden + h * hd + d]
                                            as f64
                                })
                                .sum();
                            let got = ctx[(start + i) * hidden + h * hd + d] as f64;
                            assert!((got - want).abs() < 1e-5, "{isa:?} seq {start} head {h}");
                        }
                    }
                }
            }
        }
    }
}
