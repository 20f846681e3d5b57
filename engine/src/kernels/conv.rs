//! Fused CPU kernels for channels-last (NHWC) convolutions.
//!
//! candle has no depthwise convolution (grouped convolutions run one group at a time) and its
//! matrix product leaves bias, residual and activation to separate passes over memory. For
//! the convolutional networks in `models/` these two kernels do the work in one pass each:
//!
//! - [`Pointwise`]: a 1x1 convolution as a matrix product over row tiles of the pixel matrix,
//!   each tile started from its bias (and residual) and clamped by ReLU6 while still in cache;
//! - [`Patches`]: the stem's image patches, which a [`Pointwise`] product turns into a
//!   convolution.
//!
//! The depthwise convolutions live in `depthwise`, on the same layout and instruction sets.
//!
//! They run as candle custom ops, so they only see CPU storage; models fall back to tensor ops
//! on other devices.
//!
//! One file, past 600 lines: the stem and pointwise kernels share the channels-last tile layout
//! and the instruction-set dispatch, and are tested against one reference.

use std::sync::Arc;

use super::aligned::Aligned;

/// Runs `block` with its row and vector counts as const parameters: one monomorphised kernel per
/// tile shape, for the f32 and bf16 blocks alike.
macro_rules! run_block {
    ($block:expr, $rows:expr, $vectors:expr) => {
        match ($rows, $vectors) {
            (12, 1) => $block.run::<12, 1>(),
            (12, 2) => $block.run::<12, 2>(),
            (8, 3) => $block.run::<8, 3>(),
            (6, 4) => $block.run::<6, 4>(),
            (6, 3) => $block.run::<6, 3>(),
            (6, 2) => $block.run::<6, 2>(),
            (6, _) => $block.run::<6, 1>(),
            (5, 4) => $block.run::<5, 4>(),
            (5, 3) => $block.run::<5, 3>(),
            (5, 2) => $block.run::<5, 2>(),
            (5, _) => $block.run::<5, 1>(),
            (4, 4) => $block.run::<4, 4>(),
            (4, 3) => $block.run::<4, 3>(),
            (4, 2) => $block.run::<4, 2>(),
            (4, _) => $block.run::<4, 1>(),
            (3, 4) => $block.run::<3, 4>(),
            (3, 3) => $block.run::<3, 3>(),
            (3, 2) => $block.run::<3, 2>(),
            (3, _) => $block.run::<3, 1>(),
            (2, 4) => $block.run::<2, 4>(),
            (2, 3) => $block.run::<2, 3>(),
            (2, 2) => $block.run::<2, 2>(),
            (2, _) => $block.run::<2, 1>(),
            (_, 4) => $block.run::<1, 4>(),
            (_, 3) => $block.run::<1, 3>(),
            (_, 2) => $block.run::<1, 2>(),
            (_, _) => $block.run::<1, 1>(),
        }
    };
}

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The f32 data of a contiguous CPU tensor.
pub(super) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: expected f32 input, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expected a contiguous input"),
    }
}

/// A tensor's values on the host, starting on a cache line (weights the kernels stream).
pub(super) fn host_vec(t: &Tensor) -> Result<Arc<Aligned<f32>>> {
    Ok(Arc::new(Aligned::from_slice(
        &t.flatten_all()?.to_vec1::<f32>()?,
    )))
}

/// Rows of the pixel matrix per task: small enough that a tile of the output stays in the
/// core's L2 cache, large enough that packing the weights is amortised.
const MAX_TILE_ROWS: usize = 256;
const MIN_TILE_ROWS: usize = 16;

/// `x (m, k) @ w (k, n) + bias (+ residual)`, then ReLU6 if asked.
#[derive(Clone)]
pub(crate) struct Pointwise {
    /// Row-major `(k, n)`.
    weight: Arc<Aligned<f32>>,
    bias: Arc<Aligned<f32>>,
    k: usize,
    n: usize,
    relu6: bool,
    /// The weights packed for the bf16 kernel, on its first use.
    bf16: Arc<std::sync::OnceLock<Aligned<u32>>>,
}

impl Pointwise {
    /// `weight` is `(in, out)`, `bias` is `(out)`.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor, relu6: bool) -> Result<Self> {
        let (k, n) = weight.dims2()?;
        if bias.dims1()? != n {
            bail!("pointwise: bias of {} for {n} outputs", bias.dims1()?)
        }
        Ok(Self {
            weight: host_vec(weight)?,
            bias: host_vec(bias)?,
            k,
            n,
            relu6,
            bf16: Arc::default(),
        })
    }

    /// `x` is `(pixels, in)`; `residual`, if any, is `(pixels, out)`.
    pub(crate) fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        match residual {
            Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, self),
            None => x.apply_op1_no_bwd(self),
        }
    }

    fn check(&self, layout: &Layout) -> Result<usize> {
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            bail!(
                "pointwise: input has {k} channels, weights expect {}",
                self.k
            )
        }
        Ok(m)
    }

    fn run(&self, x: &[f32], m: usize, residual: Option<&[f32]>) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() == Isa::Avx512 {
            return self.run_avx512(x, m, residual);
        }
        let (k, n) = (self.k, self.n);
        let mut out = vec![0f32; m * n];
        let threads = rayon::current_num_threads().max(1);
        let tile_rows = m.div_ceil(threads * 4).clamp(MIN_TILE_ROWS, MAX_TILE_ROWS);
        if m.div_ceil(tile_rows) < threads {
            // Too few pixels to share out by rows (the last stages at batch 1): let gemm split
            // the columns across threads, then finish in one pass.
            let parallel = gemm::Parallelism::Rayon(threads);
            matmul(&mut out, x, &self.weight, m, k, n, parallel);
            self.finish_tile(&mut out, 0, residual);
            return out;
        }
        out.par_chunks_mut(tile_rows * n)
            .enumerate()
            .for_each(|(tile, dst)| {
                let row0 = tile * tile_rows;
                let rows = dst.len() / n;
                let lhs = &x[row0 * k..(row0 + rows) * k];
                matmul(dst, lhs, &self.weight, rows, k, n, gemm::Parallelism::None);
                self.finish_tile(dst, row0, residual);
            });
        out
    }

    /// `dst = act(x @ weight + bias (+ residual))` for the `dst.len() / n` rows of one tile,
    /// on the calling thread, with `isa`'s kernel: what the fused blocks call on tiles that are
    /// already in cache. `Baseline` and `Avx2Fma` both use the `gemm` crate here (which picks
    /// its own vector width); they differ in the depthwise kernel.
    pub(crate) fn run_tile(&self, isa: Isa, x: &[f32], residual: Option<&[f32]>, dst: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        let rows = dst.len() / n;
        assert!(x.len() == rows * k && residual.is_none_or(|r| r.len() == dst.len()));
        self.run_tile_into(isa, x, residual, dst, None)
    }

    /// [`Self::run_tile`] with the output blocked by 16 channels as `layout` places them. What
    /// a depthwise convolution reads best: one contiguous run per block of channels, its
    /// padding columns already in place. Only the AVX-512 kernels write this layout, and only
    /// for a multiple of 16 outputs ([`Self::writes_blocked`]).
    pub(crate) fn run_tile_blocked(
        &self,
        isa: Isa,
        x: &[f32],
        dst: &mut [f32],
        layout: BlockedOut,
    ) {
        assert!(
            self.writes_blocked(isa),
            "{isa:?} cannot write blocked output"
        );
        self.run_tile_into(isa, x, None, dst, Some(layout))
    }

    /// [`Self::run_tile`] (into rows of `n`) from pixels already rounded to bf16 pairs,
    /// `ceil(k / 2)` words each, as `Depthwise::rows_blocked` stores them with
    /// `DepthwiseOut::Bf16`. AVX512_BF16 only.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn run_tile_rounded(
        &self,
        isa: Isa,
        x: &[u32],
        residual: Option<&[f32]>,
        dst: &mut [f32],
    ) {
        assert_eq!(isa, Isa::Avx512Bf16, "{isa:?} does not read bf16 pixels");
        self.run_bf16(avx512bf16::Pixels::Rounded(x), residual, dst, None)
    }

    /// The bf16 kernel over `x`, its weights packed on first use.
    #[cfg(target_arch = "x86_64")]
    fn run_bf16(
        &self,
        x: avx512bf16::Pixels,
        residual: Option<&[f32]>,
        dst: &mut [f32],
        blocked: Option<BlockedOut>,
    ) {
        let (k, n) = (self.k, self.n);
        let packed = self
            .bf16
            .get_or_init(|| Aligned::from_slice(&avx512bf16::pack(&self.weight, k, n)));
        let tile = avx512bf16::Tile {
            x,
            packed,
            bias: &self.bias,
            residual,
            k,
            n,
            relu6: self.relu6,
            blocked,
        };
        // SAFETY: callers pass here only with `Isa::Avx512Bf16`, chosen only where
        // `Isa::supported` found AVX-512F, AVX-512VL and AVX512_BF16.
        unsafe { avx512bf16::pointwise(&tile, dst) }
    }

    /// Whether [`Self::run_tile_blocked`] runs with `isa`.
    pub(crate) fn writes_blocked(&self, isa: Isa) -> bool {
        let wide = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => true,
            _ => false,
        };
        wide && self.n.is_multiple_of(16)
    }

    fn run_tile_into(
        &self,
        isa: Isa,
        x: &[f32],
        residual: Option<&[f32]>,
        dst: &mut [f32],
        blocked: Option<BlockedOut>,
    ) {
        let (k, n) = (self.k, self.n);
        let rows = x.len() / k;
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                let tile = avx512::Tile {
                    x,
                    weight: &self.weight,
                    bias: &self.bias,
                    residual,
                    k,
                    n,
                    relu6: self.relu6,
                    blocked,
                };
                // SAFETY: `Isa::Avx512` is only chosen where `Isa::supported` found AVX-512F.
                unsafe { avx512::pointwise(&tile, dst) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => self.run_bf16(avx512bf16::Pixels::F32(x), residual, dst, blocked),
            _ => {
                assert!(blocked.is_none(), "{isa:?} writes rows only");
                matmul(dst, x, &self.weight, rows, k, n, gemm::Parallelism::None);
                self.finish_tile(dst, 0, residual);
            }
        }
    }

    /// Output channels.
    pub(crate) fn outputs(&self) -> usize {
        self.n
    }

    /// Input channels.
    pub(crate) fn inputs(&self) -> usize {
        self.k
    }

    /// The AVX-512 path: row tiles shared across threads, each computed by a register-blocked
    /// kernel that reads the operands in place and applies the epilogue before storing.
    #[cfg(target_arch = "x86_64")]
    fn run_avx512(&self, x: &[f32], m: usize, residual: Option<&[f32]>) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let mut out = vec![0f32; m * n];
        if out.is_empty() {
            return out;
        }
        let threads = rayon::current_num_threads().max(1);
        let rows_per_task = m
            .div_ceil(threads * 4)
            .next_multiple_of(avx512::ROWS)
            .clamp(avx512::ROWS, MAX_TILE_ROWS);
        out.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, dst)| {
                let row0 = task * rows_per_task;
                let rows = dst.len() / n;
                let tile = avx512::Tile {
                    x: &x[row0 * k..(row0 + rows) * k],
                    weight: &self.weight,
                    bias: &self.bias,
                    residual: residual.map(|r| &r[row0 * n..(row0 + rows) * n]),
                    k,
                    n,
                    relu6: self.relu6,
                    blocked: None,
                };
                // SAFETY: `Isa::detect` found AVX-512F on this CPU before choosing this path.
                unsafe { avx512::pointwise(&tile, dst) }
            });
        out
    }

    /// Adds bias (and residual) to output rows starting at `row0` and applies ReLU6, while
    /// the tile is still in cache.
    fn finish_tile(&self, dst: &mut [f32], row0: usize, residual: Option<&[f32]>) {
        let n = self.n;
        let bias = &self.bias[..n];
        match residual {
            Some(res) => {
                let res = &res[row0 * n..row0 * n + dst.len()];
                for (d_row, r_row) in dst.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
                    for ((d, r), b) in d_row.iter_mut().zip(r_row).zip(bias) {
                        *d += r + b;
                    }
                }
            }
            None => {
                for d_row in dst.chunks_exact_mut(n) {
                    for (d, b) in d_row.iter_mut().zip(bias) {
                        *d += b;
                    }
                }
            }
        }
        if self.relu6 {
            for d in dst {
                *d = d.clamp(0.0, 6.0);
            }
        }
    }
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)`, all row-major.
fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    parallelism: gemm::Parallelism,
) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion above gives each slice exactly the elements the dimensions and
    // row-major strides below address, and `dst` is a unique borrow, so it aliases neither
    // input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl CustomOp1 for Pointwise {
    fn name(&self) -> &'static str {
        "nhwc-pointwise"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = self.check(layout)?;
        let x = contiguous_f32(storage, layout, "pointwise")?;
        Ok((
            CpuStorage::F32(self.run(x, m, None)),
            Shape::from((m, self.n)),
        ))
    }
}

impl CustomOp2 for Pointwise {
    fn name(&self) -> &'static str {
        "nhwc-pointwise-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let m = self.check(l1)?;
        if l2.shape().dims() != [m, self.n] {
            bail!(
                "pointwise: residual {:?} for output ({m}, {})",
                l2.shape(),
                self.n
            )
        }
        let x = contiguous_f32(s1, l1, "pointwise")?;
        let r = contiguous_f32(s2, l2, "pointwise residual")?;
        Ok((
            CpuStorage::F32(self.run(x, m, Some(r))),
            Shape::from((m, self.n)),
        ))
    }
}

/// The instruction set a convolution kernel is compiled for. The default x86-64 target only
/// assumes SSE2, so the kernels are compiled several ways and one is picked at run time (as gemm
/// does for its matrix products); tests force each one the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with the 1x1 convolutions in bfloat16 (AVX512_BF16), accumulating in f32.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Isa {
    /// The widest f32 instruction set this CPU runs.
    pub(crate) fn detect() -> Self {
        Self::available()
            .into_iter()
            .rfind(|isa| !isa.is_bf16())
            .unwrap_or(Isa::Baseline)
    }

    /// Whether the 1x1 convolutions round to bfloat16.
    pub(crate) fn is_bf16(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Isa::Avx512Bf16 {
            return true;
        }
        false
    }

    /// Whether this CPU can run kernels compiled for `self`.
    pub(crate) fn supported(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
        }
    }

    /// Every instruction set this CPU runs, narrowest first.
    pub(crate) fn available() -> Vec<Self> {
        let all = [
            Isa::Baseline,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16,
        ];
        all.into_iter().filter(|isa| isa.supported()).collect()
    }
}

/// Image patches for a `k x k` "SAME" convolution: NCHW `(b, c, h, w)` in, `(b * oh * ow,
/// k * k * c)` out with columns ordered `(ky, kx, c)` and zeros where the window leaves the
/// image. Followed by a [`Pointwise`] product, this is the stem convolution.
#[derive(Clone)]
pub(crate) struct Patches {
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
}

impl Patches {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for Patches {
    fn name(&self) -> &'static str {
        "nchw-patches"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, "patches")?;
        let (k, s) = (self.kernel, self.stride);
        let (oh, _, _) = same_padding(h, k, s);
        let (ow, _, _) = same_padding(w, k, s);
        let cols = k * k * c;
        let mut out = vec![0f32; b * oh * ow * cols];
        if !out.is_empty() {
            out.par_chunks_mut(ow * cols)
                .enumerate()
                .for_each(|(r, dst)| {
                    let (image, oy) = (r / oh, r % oh);
                    let image = &x[image * c * h * w..(image + 1) * c * h * w];
                    self.rows(image, (c, h, w), oy, dst);
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b * oh * ow, cols))))
    }
}

impl Patches {
    /// The patches of output rows `oy0 ..` (as many as `out` holds) of one NCHW image of
    /// `(c, h, w)`, every value written (zero where a window leaves the image).
    ///
    /// The input rows under the taps are first interleaved channels-last into a ring of `k`
    /// rows, each row once per call, with the "SAME" padding as zero columns; a patch's taps
    /// along one kernel row are then `k * c` contiguous floats, copied in one move (the stem's
    /// 3 x 3 taps over 3 channels are 9), not gathered one by one from `c` planes.
    pub(crate) fn rows(
        &self,
        image: &[f32],
        (c, h, w): (usize, usize, usize),
        oy0: usize,
        out: &mut [f32],
    ) {
        let (k, s) = (self.kernel, self.stride);
        let (_, pad_top, _) = same_padding(h, k, s);
        let (ow, pad_left, _) = same_padding(w, k, s);
        let (cols, span) = (k * k * c, k * c);
        if ow == 0 || cols == 0 {
            return;
        }
        let row_len = ((ow - 1) * s + k).max(pad_left + w) * c;
        let mut ring = vec![0f32; k * row_len];
        let mut next = 0;
        for (i, dst) in out.chunks_exact_mut(ow * cols).enumerate() {
            let oy = oy0 + i;
            let (ky0, ky1) = tap_range(oy, s, pad_top, k, h);
            if ky0 < ky1 {
                let (lo, hi) = (oy * s + ky0 - pad_top, oy * s + ky1 - pad_top);
                for iy in next.max(lo)..hi {
                    let row = &mut ring[(iy % k) * row_len..][pad_left * c..][..w * c];
                    for ch in 0..c {
                        let plane = &image[(ch * h + iy) * w..][..w];
                        for (px, &v) in row.chunks_exact_mut(c).zip(plane) {
                            px[ch] = v;
                        }
                    }
                }
                next = next.max(hi);
            }
            // Kernel row by kernel row, so each row's bounds and ring row are found once and
            // the inner loop is one fixed-length copy per pixel.
            for ky in 0..k {
                let taps = dst
                    .chunks_exact_mut(cols)
                    .map(|patch| &mut patch[ky * span..][..span]);
                if ky < ky0 || ky >= ky1 {
                    taps.for_each(|t| t.fill(0.0));
                    continue;
                }
                let iy = oy * s + ky - pad_top;
                let row = &ring[(iy % k) * row_len..][..row_len];
                if span == 9 {
                    for (ox, t) in taps.enumerate() {
                        // A fixed length compiles to two moves instead of a `memcpy` call.
                        let src: &[f32; 9] = row[ox * s * c..][..9].try_into().expect("span 9");
                        let t: &mut [f32; 9] = t.try_into().expect("span is 9");
                        *t = *src;
                    }
                } else {
                    for (ox, t) in taps.enumerate() {
                        t.copy_from_slice(&row[ox * s * c..][..span]);
                    }
                }
            }
        }
    }
}

/// Pixels per register block of the 1x1 kernels for `vectors` 16-channel vectors of output:
/// at least 12 accumulators, so that a narrow output (16 to 48 channels, as in the project
/// convolutions) still hides the multiply-add latency instead of waiting on it.
#[cfg(target_arch = "x86_64")]
fn block_rows(vectors: usize) -> usize {
    match vectors {
        1 | 2 => 12,
        3 => 8,
        _ => 6,
    }
}

/// `(first row, rows)` of each register block over `rows` pixels: full blocks of
/// [`block_rows`], the remainder in blocks of at most 6 (the shapes `run_block!` compiles).
#[cfg(target_arch = "x86_64")]
fn row_blocks(rows: usize, vectors: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = block_rows(vectors);
    let mut r0 = 0;
    std::iter::from_fn(move || {
        (r0 < rows).then(|| {
            let count = if rows - r0 >= full {
                full
            } else {
                (rows - r0).min(6)
            };
            r0 += count;
            (r0 - count, count)
        })
    })
}

/// Where a channel-blocked 1x1 output puts each pixel's channels `16 j .. 16 j + 16`: at
/// `j * slice` plus the pixel's place within the block, where the tile's pixels run along
/// image rows of `width` pixels, each row `stride` pixels after the previous, the first pixel
/// of each `left` pixels in. The columns around each row are left alone: the depthwise kernel
/// keeps its zero padding there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockedOut {
    pub slice: usize,
    pub width: usize,
    pub stride: usize,
    pub left: usize,
}

impl BlockedOut {
    /// Floats from a block's start to the tile's pixel `p`.
    #[cfg(target_arch = "x86_64")]
    fn pixel(&self, p: usize) -> usize {
        (p / self.width * self.stride + self.left + p % self.width) * 16
    }
}

/// Whether `len` floats hold `rows` output rows of `n` channels, row-major or blocked.
#[cfg(target_arch = "x86_64")]
fn out_fits(blocked: Option<BlockedOut>, rows: usize, n: usize, len: usize) -> bool {
    match blocked {
        None => len == rows * n,
        Some(b) => {
            let end = if rows == 0 { 0 } else { b.pixel(rows - 1) + 16 };
            n.is_multiple_of(16)
                && b.width > 0
                && b.left + b.width <= b.stride
                && end <= b.slice
                && (n == 0 || len >= (n / 16 - 1) * b.slice + end)
        }
    }
}

/// Floats from one 16-channel output vector of a pixel to the next.
#[cfg(target_arch = "x86_64")]
fn vector_stride(blocked: Option<BlockedOut>) -> usize {
    blocked.map_or(16, |b| b.slice)
}

/// Where each of a register block's output rows starts, from `dst`: pixels `r0 ..` (`count`
/// of them), channel `c0`. Walks the image rows without a division per pixel: this runs once
/// per register block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_rows_at(
    blocked: Option<BlockedOut>,
    n: usize,
    (r0, count): (usize, usize),
    c0: usize,
) -> [usize; 12] {
    let mut at = [0; 12];
    match blocked {
        None => {
            for (r, a) in at.iter_mut().enumerate().take(count) {
                *a = (r0 + r) * n + c0;
            }
        }
        Some(b) => {
            let (mut y, mut x) = (r0 / b.width, r0 % b.width);
            let base = c0 / 16 * b.slice;
            for a in at.iter_mut().take(count) {
                *a = base + (y * b.stride + b.left + x) * 16;
                x += 1;
                if x == b.width {
                    (y, x) = (y + 1, 0);
                }
            }
        }
    }
    at
}

/// A register-blocked 1x1-convolution kernel for AVX-512: 6 pixels x 64 output channels
/// accumulate in 24 vector registers while the input channels stream past, so each weight
/// vector loaded serves six pixels (12 pixels, 8 for 48 channels, where the output is
/// narrow). Unlike a general matrix product it needs no packing, which
/// dominates at the small channel counts of mobile networks, and it adds bias and residual and
/// clamps before the single store.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Pixels per register block.
    pub(super) const ROWS: usize = 6;
    /// Output channels per register block: four 16-lane vectors.
    const COLS: usize = 64;
    const LANES: usize = 16;

    /// One task's share of a pointwise convolution: `rows = x.len() / k` pixels.
    pub(super) struct Tile<'a> {
        pub x: &'a [f32],
        pub weight: &'a [f32],
        pub bias: &'a [f32],
        pub residual: Option<&'a [f32]>,
        pub k: usize,
        pub n: usize,
        pub relu6: bool,
        /// Channel-blocked output (`None`: rows of `n`).
        pub blocked: Option<super::BlockedOut>,
    }

    /// `dst = act(x @ weight + bias (+ residual))` for the tile's rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pointwise(t: &Tile, dst: &mut [f32]) {
        let (k, n) = (t.k, t.n);
        let rows = t.x.len() / k.max(1);
        assert!(
            k > 0
                && t.x.len() == rows * k
                && t.weight.len() == k * n
                && t.bias.len() == n
                && super::out_fits(t.blocked, rows, n, dst.len())
                && t.residual.is_none_or(|r| r.len() == rows * n)
        );
        for c0 in (0..n).step_by(COLS) {
            let width = (n - c0).min(COLS);
            let vectors = width.div_ceil(LANES);
            let tail = width - (vectors - 1) * LANES;
            let last: __mmask16 = if tail == LANES {
                0xffff
            } else {
                (1u16 << tail) - 1
            };
            for (r0, count) in super::row_blocks(rows, vectors) {
                let block = Block {
                    x: t.x[r0 * k..].as_ptr(),
                    weight: t.weight[c0..].as_ptr(),
                    bias: t.bias[c0..].as_ptr(),
                    residual: t
                        .residual
                        .map_or(std::ptr::null(), |r| r[r0 * n + c0..].as_ptr()),
                    out: dst.as_mut_ptr(),
                    rows_at: super::block_rows_at(t.blocked, n, (r0, count), c0),
                    vector: super::vector_stride(t.blocked),
                    k,
                    n,
                    last,
                    relu6: t.relu6,
                };
                // SAFETY: the assertion above sizes every operand (`out_fits` bounds every
                // pixel's place in `dst`); the block covers rows `r0 .. r0 + count` (< rows)
                // and columns `c0 .. c0 + width` (<= n), and the last vector's lanes past
                // `width` are masked off, so no access leaves the slices. AVX-512F is enabled
                // on this function.
                unsafe { run_block!(block, count, vectors) }
            }
        }
    }

    /// Pointers to the top-left corner of one register block in each operand.
    struct Block {
        x: *const f32,
        weight: *const f32,
        bias: *const f32,
        residual: *const f32,
        /// The whole output; row `r` of the block starts `rows_at[r]` floats in, and each of
        /// its vectors `vector` floats after the previous.
        out: *mut f32,
        rows_at: [usize; 12],
        vector: usize,
        k: usize,
        n: usize,
        last: __mmask16,
        relu6: bool,
    }

    impl Block {
        /// `R` pixels by `V` vectors of output channels, the last vector masked by `last`.
        ///
        /// # Safety
        /// AVX-512F must be available, and rows `0..R` of `x` (stride `k`), rows `0..k` of
        /// `weight`, rows `0..R` of `residual` (stride `n`) and of `out` (at `rows_at`, vectors
        /// `vector` apart) must be readable (and `out` writable) for the `V` vectors' unmasked
        /// lanes.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let (k, n) = (self.k, self.n);
            let mask = |v: usize| if v + 1 == V { self.last } else { 0xffff };
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for kk in 0..k {
                // SAFETY: within the rows and lanes the caller vouches for.
                unsafe {
                    let w_row = self.weight.add(kk * n);
                    let mut w = [_mm512_setzero_ps(); V];
                    for (v, wv) in w.iter_mut().enumerate() {
                        *wv = _mm512_maskz_loadu_ps(mask(v), w_row.add(v * LANES));
                    }
                    for (r, acc_row) in acc.iter_mut().enumerate() {
                        let xb = _mm512_set1_ps(*self.x.add(r * k + kk));
                        for (a, wv) in acc_row.iter_mut().zip(&w) {
                            *a = _mm512_fmadd_ps(xb, *wv, *a);
                        }
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            let six = _mm512_set1_ps(6.0);
            for v in 0..V {
                let m = mask(v);
                // SAFETY: as above.
                unsafe {
                    let b = _mm512_maskz_loadu_ps(m, self.bias.add(v * LANES));
                    for (r, acc_row) in acc.iter().enumerate() {
                        let mut y = _mm512_add_ps(acc_row[v], b);
                        if !self.residual.is_null() {
                            let res = self.residual.add(r * n + v * LANES);
                            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, res));
                        }
                        if self.relu6 {
                            y = _mm512_min_ps(_mm512_max_ps(y, zero), six);
                        }
                        let at = self.rows_at[r] + v * self.vector;
                        _mm512_mask_storeu_ps(self.out.add(at), m, y);
                    }
                }
            }
        }
    }
}

/// The 1x1-convolution kernel in bfloat16 with `vdpbf16ps` (AVX512_BF16): each instruction
/// multiplies 16 pairs of bf16 values and adds both products to 16 f32 accumulators, twice the
/// multiply-adds of an f32 FMA. Weights are rounded to bf16 once, pairs of input channels
/// interleaved per output channel; a tile's pixels are rounded as they arrive. Accumulation,
/// bias, residual and ReLU6 stay in f32.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512bf16 {
    use std::arch::x86_64::*;

    const COLS: usize = 64;
    const LANES: usize = 16;

    /// `(k, n)` f32 weights as `(ceil(k / 2), n)` words, each the bf16 pair of input channels
    /// `2i` and `2i + 1` for one output channel (the second zero when `k` is odd).
    pub(crate) fn pack(weight: &[f32], k: usize, n: usize) -> Vec<u32> {
        let bf = |v: f32| u32::from(half::bf16::from_f32(v).to_bits());
        (0..k.div_ceil(2))
            .flat_map(|p| {
                (0..n).map(move |j| {
                    let lo = bf(weight[2 * p * n + j]);
                    let hi = if 2 * p + 1 < k {
                        bf(weight[(2 * p + 1) * n + j])
                    } else {
                        0
                    };
                    lo | hi << 16
                })
            })
            .collect()
    }

    /// `x` rows of `k` f32 rounded to bf16, each row padded to an even length: `(rows, k2)` words.
    ///
    /// # Safety
    /// AVX512_BF16 must be available.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    unsafe fn round_rows(x: &[f32], k: usize, out: &mut [u32]) {
        let k2 = k.div_ceil(2);
        for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(k2)) {
            let mut i = 0;
            // SAFETY: the masks keep every load inside `src` and every store inside `dst`
            // (16 floats become 8 words).
            unsafe {
                while i < k {
                    let count = (k - i).min(LANES);
                    let v = _mm512_maskz_loadu_ps(
                        (1u32 << count).wrapping_sub(1) as u16,
                        src.as_ptr().add(i),
                    );
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    let words = count.div_ceil(2);
                    _mm256_mask_storeu_epi32(
                        dst.as_mut_ptr().add(i / 2).cast(),
                        ((1u32 << words) - 1) as u8,
                        h,
                    );
                    i += LANES;
                }
            }
        }
    }

    /// A tile's input pixels: f32 rows of `k`, or rows already rounded to bf16 pairs of
    /// `ceil(k / 2)` words (as the depthwise kernel can store them).
    pub(crate) enum Pixels<'a> {
        F32(&'a [f32]),
        Rounded(&'a [u32]),
    }

    /// One tile: `dst = act(x @ w + bias (+ residual))`, `w` packed by [`pack`].
    pub(crate) struct Tile<'a> {
        pub x: Pixels<'a>,
        pub packed: &'a [u32],
        pub bias: &'a [f32],
        pub residual: Option<&'a [f32]>,
        pub k: usize,
        pub n: usize,
        pub relu6: bool,
        /// Channel-blocked output (`None`: rows of `n`).
        pub blocked: Option<super::BlockedOut>,
    }

    thread_local! {
        static ROUNDED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX-512VL and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub(crate) unsafe fn pointwise(t: &Tile, dst: &mut [f32]) {
        let (k, n) = (t.k, t.n);
        let k2 = k.div_ceil(2);
        let rows = match t.x {
            Pixels::F32(x) => x.len() / k.max(1),
            Pixels::Rounded(xb) => xb.len() / k2.max(1),
        };
        assert!(
            k > 0
                && match t.x {
                    Pixels::F32(x) => x.len() == rows * k,
                    Pixels::Rounded(xb) => xb.len() == rows * k2,
                }
                && t.packed.len() == k2 * n
                && t.bias.len() == n
                && super::out_fits(t.blocked, rows, n, dst.len())
                && t.residual.is_none_or(|r| r.len() == rows * n)
        );
        let mut run = |xb: &[u32]| {
            for c0 in (0..n).step_by(COLS) {
                let width = (n - c0).min(COLS);
                let vectors = width.div_ceil(LANES);
                let tail = width - (vectors - 1) * LANES;
                let last: __mmask16 = if tail == LANES {
                    0xffff
                } else {
                    (1u16 << tail) - 1
                };
                for (r0, count) in super::row_blocks(rows, vectors) {
                    let block = Block {
                        x: xb[r0 * k2..].as_ptr(),
                        weight: t.packed[c0..].as_ptr(),
                        bias: t.bias[c0..].as_ptr(),
                        residual: t
                            .residual
                            .map_or(std::ptr::null(), |r| r[r0 * n + c0..].as_ptr()),
                        out: dst.as_mut_ptr(),
                        rows_at: super::block_rows_at(t.blocked, n, (r0, count), c0),
                        vector: super::vector_stride(t.blocked),
                        k2,
                        n,
                        last,
                        relu6: t.relu6,
                    };
                    // SAFETY: as in the f32 kernel: the assertion sizes every operand, the
                    // block stays inside rows `r0 ..< rows` and columns `c0 ..< c0 + width`,
                    // and masks cover the last vector's tail.
                    unsafe { run_block!(block, count, vectors) }
                }
            }
        };
        let x = match t.x {
            Pixels::Rounded(xb) => return run(xb),
            Pixels::F32(x) => x,
        };
        let mut round_and_run = |xb: &mut [u32]| {
            // SAFETY: AVX512_BF16 is enabled on this function; `xb` holds rows × k2 words.
            unsafe { round_rows(x, k, xb) };
            run(xb)
        };
        ROUNDED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < rows * k2 {
                    buf.resize(rows * k2, 0);
                }
                round_and_run(&mut buf[..rows * k2])
            }
            Err(_) => round_and_run(&mut vec![0; rows * k2]),
        });
    }

    struct Block {
        x: *const u32,
        weight: *const u32,
        bias: *const f32,
        residual: *const f32,
        /// The whole output; row `r` of the block starts `rows_at[r]` floats in, and each of
        /// its vectors `vector` floats after the previous.
        out: *mut f32,
        rows_at: [usize; 12],
        vector: usize,
        k2: usize,
        n: usize,
        last: __mmask16,
        relu6: bool,
    }

    impl Block {
        /// # Safety
        /// AVX512_BF16 must be available; rows `0..R` of `x` (stride `k2` words), word rows
        /// `0..k2` of `weight`, rows `0..R` of `residual` (stride `n`) and of `out` (at
        /// `rows_at`, vectors `vector` apart) must be readable (`out` writable) for the `V`
        /// vectors' unmasked lanes.
        #[target_feature(enable = "avx512f,avx512bf16")]
        #[inline]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let (k2, n) = (self.k2, self.n);
            let mask = |v: usize| if v + 1 == V { self.last } else { 0xffff };
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for kk in 0..k2 {
                // SAFETY: within the rows and lanes the caller vouches for.
                unsafe {
                    let w_row = self.weight.add(kk * n);
                    let mut w = [_mm512_setzero_si512(); V];
                    for (v, wv) in w.iter_mut().enumerate() {
                        *wv = _mm512_maskz_loadu_epi32(mask(v), w_row.add(v * LANES).cast());
                    }
                    for (r, acc_row) in acc.iter_mut().enumerate() {
                        let xb: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(*self.x.add(r * k2 + kk) as i32));
                        for (a, wv) in acc_row.iter_mut().zip(&w) {
                            *a = _mm512_dpbf16_ps(
                                *a,
                                xb,
                                std::mem::transmute::<__m512i, __m512bh>(*wv),
                            );
                        }
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            let six = _mm512_set1_ps(6.0);
            for v in 0..V {
                let m = mask(v);
                // SAFETY: as above.
                unsafe {
                    let b = _mm512_maskz_loadu_ps(m, self.bias.add(v * LANES));
                    for (r, acc_row) in acc.iter().enumerate() {
                        let mut y = _mm512_add_ps(acc_row[v], b);
                        if !self.residual.is_null() {
                            let res = self.residual.add(r * n + v * LANES);
                            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, res));
                        }
                        if self.relu6 {
                            y = _mm512_min_ps(_mm512_max_ps(y, zero), six);
                        }
                        let at = self.rows_at[r] + v * self.vector;
                        _mm512_mask_storeu_ps(self.out.add(at), m, y);
                    }
                }
            }
        }
    }
}

/// TensorFlow "SAME" padding along one axis: output size, padding before, padding after.
pub(crate) fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2, total - total / 2)
}

/// The taps `t` in `0..k` for which input index `o * s + t - pad` lies in `0..n`.
pub(super) fn tap_range(o: usize, s: usize, pad: usize, k: usize, n: usize) -> (usize, usize) {
    let origin = o * s;
    let lo = pad.saturating_sub(origin);
    let hi = (n + pad).saturating_sub(origin).min(k);
    (lo.min(hi), hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (112, 0, 1));
        assert_eq!(same_padding(56, 5, 2), (28, 1, 2));
        assert_eq!(same_padding(14, 5, 1), (14, 2, 2));
        assert_eq!(same_padding(7, 3, 2), (4, 1, 1));
        assert_eq!(same_padding(112, 3, 1), (112, 1, 1));
    }

    #[test]
    fn tap_ranges_clip_at_the_borders() {
        // 3x3, stride 2, pad 0 before: output 0 reads inputs 0..3.
        assert_eq!(tap_range(0, 2, 0, 3, 224), (0, 3));
        // Last output of 224 -> 112: origin 222, taps 0..2 in range (input 224 is padding).
        assert_eq!(tap_range(111, 2, 0, 3, 224), (0, 2));
        // 5x5, stride 1, pad 2: first output skips two taps.
        assert_eq!(tap_range(0, 1, 2, 5, 14), (2, 5));
        assert_eq!(tap_range(13, 1, 2, 5, 14), (0, 3));
    }

    #[test]
    fn patches_match_a_naive_gather() {
        // The stem's shape (9-float kernel rows), others through the general copy, odd sizes
        // and strides, asked for whole and in bands of rows (as the fused stem asks).
        for (k, s, c, h, w) in [
            (3, 2, 3, 9, 12),
            (3, 2, 3, 8, 7),
            (5, 1, 2, 6, 9),
            (2, 3, 4, 10, 11),
        ] {
            let image: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let (oh, pad_top, _) = same_padding(h, k, s);
            let (ow, pad_left, _) = same_padding(w, k, s);
            let cols = k * k * c;
            let mut want = vec![0f32; oh * ow * cols];
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (oy * s + ky, ox * s + kx);
                            if iy < pad_top
                                || ix < pad_left
                                || iy - pad_top >= h
                                || ix - pad_left >= w
                            {
                                continue;
                            }
                            for ch in 0..c {
                                want[((oy * ow + ox) * k * k + ky * k + kx) * c + ch] =
                                    image[(ch * h + iy - pad_top) * w + ix - pad_left];
                            }
                        }
                    }
                }
            }
            let patches = Patches {
                kernel: k,
                stride: s,
            };
            for band in [oh, 2, 1] {
                let mut got = vec![f32::NAN; oh * ow * cols];
                for (i, rows) in got.chunks_mut(band * ow * cols).enumerate() {
                    patches.rows(&image, (c, h, w), i * band, rows);
                }
                assert_eq!(got, want, "k{k} s{s} c{c} {h}x{w}, bands of {band}");
            }
        }
    }

    #[test]
    fn blocked_output_holds_the_same_values() {
        let dev = Device::Cpu;
        for (m, k, n) in [(13, 24, 48), (6, 7, 16), (40, 96, 144)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.4)
                .collect();
            let w = Tensor::randn(0f32, 0.3, (k, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.1, n, &dev).unwrap();
            let layer = Pointwise::new(&w, &b, true).unwrap();
            for isa in Isa::available() {
                if !layer.writes_blocked(isa) {
                    continue;
                }
                let mut rows = vec![0f32; m * n];
                layer.run_tile(isa, &x, None, &mut rows);
                // Image rows of 5 pixels, 2 pixels in, 8 apart, as padded rows in a window;
                // slices further apart than the rows need, as a window with spare rows has.
                let (width, stride, left) = (5, 8, 2);
                let slice = (m.div_ceil(width) + 1) * stride * 16;
                let layout = BlockedOut {
                    slice,
                    width,
                    stride,
                    left,
                };
                let mut blocked = vec![f32::NAN; n / 16 * slice];
                layer.run_tile_blocked(isa, &x, &mut blocked, layout);
                for p in 0..m {
                    let at = (p / width * stride + left + p % width) * 16;
                    for ch in 0..n {
                        assert_eq!(
                            blocked[ch / 16 * slice + at + ch % 16],
                            rows[p * n + ch],
                            "{isa:?} {m}x{k}x{n}: pixel {p} channel {ch}"
                        );
                    }
                }
                // The columns around the rows are not touched.
                let written = (0..m).map(|p| (p / width * stride + left + p % width) * 16);
                let written: std::collections::HashSet<usize> = written.collect();
                for (i, v) in blocked.iter().enumerate() {
                    if !written.contains(&(i % slice / 16 * 16)) {
                        assert!(
                            v.is_nan(),
                            "{isa:?}: float {i} outside the rows was written"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pointwise_matches_matmul_with_residual() {
        let dev = Device::Cpu;
        // Row counts with and without a remainder of the 6-row blocks, output widths of one
        // full vector, masked tails, and several 64-wide column blocks.
        for (m, k, n) in [
            (300, 24, 40),
            (5, 24, 40),
            (49, 16, 16),
            (97, 3, 200),
            (13, 70, 96),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (k, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., n, &dev).unwrap();
            let r = Tensor::randn(0f32, 1., (m, n), &dev).unwrap();
            let max_diff = |a: Tensor, b: Tensor| {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                d.to_scalar::<f32>().unwrap()
            };
            let got = Pointwise::new(&w, &b, true)
                .unwrap()
                .forward(&x, Some(&r))
                .unwrap();
            let want = (x.matmul(&w).unwrap().broadcast_add(&b).unwrap() + &r)
                .unwrap()
                .clamp(0f32, 6f32)
                .unwrap();
            assert!(max_diff(got, want) < 1e-4, "{m}x{k}x{n} with residual");
            let got = Pointwise::new(&w, &b, false)
                .unwrap()
                .forward(&x, None)
                .unwrap();
            let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            assert!(max_diff(got, want) < 1e-4, "{m}x{k}x{n}");
        }
    }

    /// Every instruction set's one-tile kernel against a naive product: rows around the 6-, 8-
    /// and 12-row blocks, widths around the 16-lane vector and 64-wide block, odd depths (the bf16 kernel
    /// pads its pairs). The bf16 kernel is checked against the exact product of its operands
    /// rounded to bf16, the only approximation it makes, to the same tolerance.
    #[test]
    fn every_tile_kernel_matches_a_naive_product() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 1, 1),
            (7, 3, 17),
            (13, 27, 32),
            (49, 320, 200),
            (6, 96, 64),
            // Narrow outputs take 12- and 8-pixel blocks, with remainders of up to 11.
            (35, 40, 16),
            (23, 17, 24),
            (29, 64, 40),
        ] {
            let mut random =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect() };
            let (x, w, b, r) = (random(m * k), random(k * n), random(n), random(m * n));
            let tensor = |v: &[f32], shape: (usize, usize)| {
                Tensor::from_vec(v.to_vec(), shape, &dev).unwrap()
            };
            let layer = Pointwise::new(
                &tensor(&w, (k, n)),
                &Tensor::from_vec(b.clone(), n, &dev).unwrap(),
                true,
            )
            .unwrap();
            for isa in Isa::available() {
                let round = |v: &[f32]| -> Vec<f32> {
                    if isa.is_bf16() {
                        v.iter()
                            .map(|&x| half::bf16::from_f32(x).to_f32())
                            .collect()
                    } else {
                        v.to_vec()
                    }
                };
                let (xr, wr) = (round(&x), round(&w));
                let mut got = vec![f32::NAN; m * n];
                layer.run_tile(isa, &x, Some(&r), &mut got);
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512Bf16 {
                    // Pixels handed over already rounded (odd depths padded with a zero) give
                    // the very same outputs.
                    let bf = |v: f32| u32::from(half::bf16::from_f32(v).to_bits());
                    let words: Vec<u32> = x
                        .chunks_exact(k)
                        .flat_map(|row| {
                            row.chunks(2)
                                .map(|p| bf(p[0]) | p.get(1).map_or(0, |&v| bf(v)) << 16)
                        })
                        .collect();
                    let mut from_words = vec![f32::NAN; m * n];
                    layer.run_tile_rounded(isa, &words, Some(&r), &mut from_words);
                    assert_eq!(from_words, got, "{isa:?} {m}x{k}x{n} from rounded pixels");
                }
                for i in 0..m {
                    for j in 0..n {
                        let dot: f32 = (0..k).map(|t| xr[i * k + t] * wr[t * n + j]).sum();
                        let want = (dot + b[j] + r[i * n + j]).clamp(0.0, 6.0);
                        let diff = (got[i * n + j] - want).abs();
                        assert!(
                            diff < 1e-4 * (k as f32).sqrt(),
                            "{isa:?} {m}x{k}x{n} at ({i}, {j}): {diff}"
                        );
                    }
                }
            }
        }
    }
}
