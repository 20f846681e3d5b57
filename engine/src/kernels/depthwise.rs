//! Depthwise "SAME" convolutions on channels-last (NHWC) activations: the inference kernel
//! (bias and ReLU6 fused, every instruction set a CPU may offer) and the
//! bias-free op with its gradient that fine-tuning runs.
//!
//! candle has no depthwise convolution (grouped convolutions run one group at a time), and
//! built from tensor operations each of the `k * k` taps is a pass over memory. Here all taps
//! of a pixel accumulate in registers, 16 channels at a time.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::aligned::Aligned;
use super::conv::{contiguous_f32, host_vec, same_padding, tap_range, Isa};

/// Shape and padding of one depthwise call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// The absolute image row that the input slice starts at: the fused blocks hold a window
    /// of rows, the whole-tensor op the full image (0).
    row0: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    pad_top: usize,
    pad_left: usize,
}

/// Depthwise `k x k` convolution with "SAME" padding, bias and ReLU6 on NHWC input.
#[derive(Clone)]
pub(crate) struct Depthwise {
    /// Row-major `(k, k, channels)`.
    weight: Arc<Aligned<f32>>,
    bias: Arc<Aligned<f32>>,
    kernel: usize,
    stride: usize,
    channels: usize,
}

impl Depthwise {
    /// `weight` is `(k, k, channels)`, `bias` is `(channels)`.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor, stride: usize) -> Result<Self> {
        let (k, k2, channels) = weight.dims3()?;
        if k != k2 || bias.dims1()? != channels || stride == 0 {
            bail!(
                "depthwise: weight {:?}, bias {:?}, stride {stride}",
                weight.shape(),
                bias.shape()
            )
        }
        Ok(Self {
            weight: host_vec(weight)?,
            bias: host_vec(bias)?,
            kernel: k,
            stride,
            channels,
        })
    }

    /// `x` is `(batch, height, width, channels)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// Output rows `oy0 .. oy0 + out.len() / (ow * c)` of one `h x w` image of which `input`
    /// holds rows `row0 ..` (a window is enough: only the rows under the taps are read).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rows(
        &self,
        isa: Isa,
        input: &[f32],
        row0: usize,
        (h, w): (usize, usize),
        oy0: usize,
        out: &mut [f32],
    ) {
        let g = self.geometry(row0, (h, w));
        match isa {
            // All rows in one call: the kernel walks 16 channels at a time down every row, so
            // an input row's lines serve each output row over it while still in L1.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => {
                // SAFETY: `Isa::supported` found AVX-512F before this ISA could be chosen.
                unsafe {
                    depthwise_rows_avx512(&self.weight, &self.bias, input, None, &g, oy0, out)
                }
            }
            _ => {
                let ow = same_padding(w, g.k, g.s).0;
                for (i, dst) in out.chunks_exact_mut(ow * g.c).enumerate() {
                    self.row(isa, input, &g, oy0 + i, dst);
                }
            }
        }
    }

    /// [`Self::rows`] from input blocked by 16 channels in zero-padded rows (as
    /// [`Pointwise::run_tile_blocked`] writes it): row `r` (counted from `row0`), column `x`,
    /// channels `16 j ..` at `input[j * slice + (r * cols + left + x) * 16 ..]` with `(cols,
    /// left)` from [`Self::padded_row`], and zeros in the columns around each row. Read in
    /// place, no copy. AVX-512 only, and channels a multiple of 16 ([`Self::reads_blocked`]);
    /// outputs rounded to bf16 pairs only where [`Self::writes_bf16`].
    ///
    /// [`Pointwise::run_tile_blocked`]: super::conv::Pointwise::run_tile_blocked
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rows_blocked(
        &self,
        isa: Isa,
        input: &[f32],
        slice: usize,
        row0: usize,
        (h, w): (usize, usize),
        oy0: usize,
        out: DepthwiseOut,
    ) {
        assert!(self.reads_blocked(isa), "{isa:?} cannot read blocked input");
        let g = self.geometry(row0, (h, w));
        let (weight, bias, blocked) = (&self.weight[..], &self.bias[..], Some(slice));
        match out {
            // SAFETY: `reads_blocked` found an AVX-512 instruction set, which
            // `Isa::supported` checked on this CPU.
            #[cfg(target_arch = "x86_64")]
            DepthwiseOut::F32(out) => unsafe {
                depthwise_rows_avx512(weight, bias, input, blocked, &g, oy0, out)
            },
            // SAFETY: `writes_bf16` found AVX512_BF16, which `Isa::supported` checked.
            #[cfg(target_arch = "x86_64")]
            DepthwiseOut::Bf16(out) => {
                assert!(self.writes_bf16(isa), "{isa:?} cannot write bf16");
                unsafe { depthwise_rows_avx512_bf16(weight, bias, input, blocked, &g, oy0, out) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                let _ = (weight, bias, blocked, input, g, oy0);
                unreachable!("{isa:?} reads no blocked input")
            }
        }
    }

    /// The padded row [`Self::rows_blocked`] reads for an input `w` pixels wide: its columns
    /// and the first image column's place among them.
    pub(crate) fn padded_row(&self, w: usize) -> (usize, usize) {
        padded_columns(w, self.kernel, self.stride)
    }

    /// Whether [`Self::rows_blocked`] can store bf16 pairs ([`DepthwiseOut::Bf16`]) with
    /// `isa`.
    pub(crate) fn writes_bf16(&self, isa: Isa) -> bool {
        #[cfg(target_arch = "x86_64")]
        let bf16 = isa == Isa::Avx512Bf16;
        #[cfg(not(target_arch = "x86_64"))]
        let bf16 = false;
        bf16 && self.reads_blocked(isa)
    }

    /// Whether [`Self::rows_blocked`] runs with `isa`.
    pub(crate) fn reads_blocked(&self, isa: Isa) -> bool {
        let wide = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => true,
            _ => false,
        };
        wide && self.channels.is_multiple_of(16)
    }

    fn geometry(&self, row0: usize, (h, w): (usize, usize)) -> Geometry {
        let (k, s, c) = (self.kernel, self.stride, self.channels);
        Geometry {
            row0,
            h,
            w,
            c,
            k,
            s,
            pad_top: same_padding(h, k, s).1,
            pad_left: same_padding(w, k, s).1,
        }
    }

    /// Kernel side, stride and channels.
    pub(crate) fn shape(&self) -> (usize, usize, usize) {
        (self.kernel, self.stride, self.channels)
    }

    fn row(&self, isa: Isa, image: &[f32], g: &Geometry, oy: usize, out: &mut [f32]) {
        let (w, b) = (&self.weight[..], &self.bias[..]);
        match isa {
            Isa::Baseline => depthwise_row::<false>(w, b, image, g, oy, out),
            // SAFETY: `Isa::detect` found these instruction sets on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { depthwise_row_avx2(w, b, image, g, oy, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => unsafe {
                depthwise_rows_avx512(w, b, image, None, g, oy, out)
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn depthwise_row_avx2(
    weight: &[f32],
    bias: &[f32],
    image: &[f32],
    g: &Geometry,
    oy: usize,
    out: &mut [f32],
) {
    depthwise_row::<true>(weight, bias, image, g, oy, out)
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The AVX-512 depthwise kernel's ring of zero-padded input rows, kept between calls.
    static RING: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Pixels per register block of the AVX-512 kernel.
const P: usize = 8;

/// Columns of a zero-padded input row as the AVX-512 kernel reads it, and where the image's
/// first column sits among them: every tap of every 8-pixel block (the last block may run
/// past the row's end), and the whole input row.
fn padded_columns(w: usize, k: usize, s: usize) -> (usize, usize) {
    let (ow, pad_left, _) = same_padding(w, k, s);
    let cols = ((ow.div_ceil(P) * P).max(1) - 1) * s + k;
    (cols.max(pad_left + w), pad_left)
}

/// The body of both AVX-512 depthwise kernels (channels a multiple of 16), expanded inside
/// each: a closure takes its instruction sets from the function it is written in, so the
/// body's closures must be written inside the functions that enable them.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_avx512 {
    ($weight:expr, $bias:expr, $image:expr, $blocked:expr, $g:expr, $oy:expr, $out:expr) => {{
        let (weight, bias, image): (&[f32], &[f32], &[f32]) = ($weight, $bias, $image);
        let (blocked, g, oy): (Option<usize>, &Geometry, usize) = ($blocked, $g, $oy);
        let mut out: DepthwiseOut = $out;
        use std::arch::x86_64::*;
        let c = g.c;
        let ow = same_padding(g.w, g.k, g.s).0;
        if ow == 0 {
            return;
        }
        let rows = out.values() / (ow * c);
        assert!(
            c.is_multiple_of(16)
                && bias.len() >= c
                && weight.len() >= g.k * g.k * c
                && out.values() == rows * ow * c
        );
        let blocks = ow.div_ceil(P);
        let cols = padded_columns(g.w, g.k, g.s).0;
        for r in 0..rows {
            let (ky0, ky1) = tap_range(oy + r, g.s, g.pad_top, g.k, g.h);
            // Input rows up to the last one under the taps.
            let held = || (oy + r) * g.s + ky1 - g.pad_top - g.row0;
            assert!(
                ky0 == ky1
                    || (oy + r) * g.s + ky0 >= g.pad_top + g.row0
                        && match blocked {
                            None => image.len() >= held() * g.w * c,
                            Some(slice) => {
                                held() * cols * 16 <= slice
                                    && image.len() >= (c / 16 - 1) * slice + held() * cols * 16
                            }
                        }
            );
        }
        // Floats per padded row of one block of channels (in the ring, or the blocked input).
        let slot = cols * 16;
        let dims = (g.k, g.s, c);

        // Stride-1 rows go in pairs (two output rows share all but one input row), which needs
        // one ring row more than the taps. Blocked input is read in place: no ring.
        let paired = g.s == 1 && matches!(g.k, 3 | 5);
        let ring_rows = match blocked {
            Some(_) => 0,
            None => g.k + usize::from(paired),
        };
        // Only the padding columns need zeros: every input column is written before it is read.
        let mut ring_buf = RING.take();
        let ring = super::aligned::aligned_prefix(&mut ring_buf, ring_rows * slot);
        for row in ring.chunks_exact_mut(slot) {
            row[..g.pad_left * 16].fill(0.0);
            row[(g.pad_left + g.w) * 16..].fill(0.0);
        }
        // Per output row, the same for every channel slice: the input rows to copy into the ring
        // first (row, offset of its slot), and the ring offset of each tap row. Worked out once
        // here, so the slices' loops do no division (`row % ring_rows`).
        let mut fills: Vec<Vec<(usize, usize)>> = Vec::with_capacity(rows);
        let mut offsets = vec![0usize; rows * g.k];
        let mut next = 0usize;
        for r in 0..rows {
            let oy = oy + r;
            let (ky0, ky1) = tap_range(oy, g.s, g.pad_top, g.k, g.h);
            let (lo, hi) = (oy * g.s + ky0 - g.pad_top, oy * g.s + ky1 - g.pad_top);
            // Each input row goes into slot `row % ring_rows`, which held a row no tap of this
            // output row (or of the one paired with it) needs.
            let place = |iy: usize| match blocked {
                Some(_) => (iy - g.row0) * slot,
                None => (iy % ring_rows) * slot,
            };
            if blocked.is_none() {
                fills.push((next.max(lo)..hi).map(|iy| (iy, place(iy))).collect());
            }
            next = next.max(hi);
            for ky in ky0..ky1 {
                offsets[r * g.k + ky] = place(oy * g.s + ky - g.pad_top);
            }
        }
        let fill = |ring: &mut [f32], r: usize, cv: usize| {
            for &(iy, at) in fills.get(r).map_or(&[][..], |f| &f[..]) {
                let ring_row = &mut ring[at + g.pad_left * 16..][..g.w * 16];
                let src = &image[(iy - g.row0) * g.w * c + cv..][..(g.w - 1) * c + 16];
                for (x, d) in ring_row.chunks_exact_mut(16).enumerate() {
                    d.copy_from_slice(&src[x * c..x * c + 16]);
                }
            }
        };
        let mut starts = vec![std::ptr::null::<f32>(); g.k];
        let mut pair_rows = [std::ptr::null::<f32>(); 6];
        for cv in (0..c).step_by(16) {
            // The padded input row `at` floats into this slice's rows: the ring's, or the
            // blocked input's own.
            let source = |ring: &[f32], at: usize| -> *const f32 {
                match blocked {
                    Some(slice) => image[cv / 16 * slice + at..].as_ptr(),
                    None => ring[at..].as_ptr(),
                }
            };
            // SAFETY: `cv + 16 <= c <= bias.len()`.
            let b = unsafe { _mm512_loadu_ps(bias.as_ptr().add(cv)) };
            let taps = weight[cv..].as_ptr();
            let store = |out: &mut DepthwiseOut, r: usize, ox: usize, acc: &[__m512; P]| {
                // SAFETY: AVX-512F (and AVX512_BF16 for bf16 output), the caller's; row `r <
                // rows`, pixel `ox + p < ow`, channels `cv + 16 <= c`, `cv` even.
                unsafe {
                    let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
                    for (p, a) in acc.iter().enumerate().take(ow - ox) {
                        let y = _mm512_min_ps(_mm512_max_ps(*a, zero), six);
                        out.put((r * ow + ox + p) * c + cv, y);
                    }
                }
            };
            let mut r = 0;
            while r < rows {
                if paired && r + 1 < rows {
                    fill(ring, r, cv);
                    fill(ring, r + 1, cv);
                    // Input rows `oy - pad_top + t`, t in 0..=k: tap row t of output row `r`,
                    // tap row t - 1 of row `r + 1`; `None` above or below the image.
                    let (ky0, ky1) = tap_range(oy + r, 1, g.pad_top, g.k, g.h);
                    let (ny0, ny1) = tap_range(oy + r + 1, 1, g.pad_top, g.k, g.h);
                    let mut present = 0u8;
                    for t in 0..=g.k {
                        let at = if t < g.k && (ky0..ky1).contains(&t) {
                            Some(offsets[r * g.k + t])
                        } else if t >= 1 && (ny0..ny1).contains(&(t - 1)) {
                            Some(offsets[(r + 1) * g.k + t - 1])
                        } else {
                            None
                        };
                        if let Some(at) = at {
                            pair_rows[t] = source(ring, at);
                            present |= 1 << t;
                        }
                    }
                    for blk in 0..blocks {
                        let ox = blk * P;
                        let (mut first, mut second) = ([b; P], [b; P]);
                        let (one, two, at) = (&mut first, &mut second, (c, ox));
                        // SAFETY: every present ring row holds `cols` padded columns, enough for
                        // every block's taps; the weights were bounds-checked above.
                        unsafe {
                            match g.k {
                                3 => block_pair::<3>(one, two, &pair_rows, present, taps, at),
                                _ => block_pair::<5>(one, two, &pair_rows, present, taps, at),
                            }
                        }
                        store(&mut out, r, ox, &first);
                        store(&mut out, r + 1, ox, &second);
                    }
                    r += 2;
                    continue;
                }
                fill(ring, r, cv);
                let (ky0, ky1) = tap_range(oy + r, g.s, g.pad_top, g.k, g.h);
                for (start, &at) in starts.iter_mut().zip(&offsets[r * g.k..(r + 1) * g.k]) {
                    *start = source(ring, at);
                }
                for blk in 0..blocks {
                    let ox = blk * P;
                    let mut acc = [b; P];
                    let (a, column, ky) = (&mut acc, ox * g.s, (ky0, ky1));
                    // SAFETY: the ring rows of `ky0..ky1` hold `cols` padded columns, enough for
                    // every block's taps; the weights were bounds-checked above.
                    unsafe {
                        match (g.k, g.s) {
                            (3, 1) => block::<3, 1>(a, &starts, column, ky, taps, dims),
                            (5, 1) => block::<5, 1>(a, &starts, column, ky, taps, dims),
                            (3, 2) => block::<3, 2>(a, &starts, column, ky, taps, dims),
                            (5, 2) => block::<5, 2>(a, &starts, column, ky, taps, dims),
                            _ => block::<0, 0>(a, &starts, column, ky, taps, dims),
                        }
                    }
                    store(&mut out, r, ox, &acc);
                }
                r += 1;
            }
        }
        RING.set(ring_buf);
    }};
}

/// The AVX-512 depthwise kernel for output rows `oy ..` (as many as `out` holds), 16 channels at
/// a time down all rows.
///
/// For each slice of 16 channels, the input rows under the taps are copied once into a ring of
/// `k` rows with the "SAME" padding written out as zero columns, so every output pixel, border
/// or not, goes through the same register block: 8 pixels whose accumulators stay in
/// registers over all taps, each input vector loaded once per tap row and reused by every
/// (pixel, tap column) pair that reads it, each weight vector by all 8 pixels. A last block
/// past the row's end computes on zero columns and stores only the real pixels. Channel
/// counts that are not a multiple of 16 take the portable loop.
///
/// In bf16 mode this kernel stays in f32: pairing adjacent taps for `vdpbf16ps` ran no faster
/// (the ring's conversion cost what the products saved) and took the features' cosine to f32
/// below 0.999 on a test photo. Only its outputs are rounded, as they are stored, for the bf16
/// project after it ([`depthwise_rows_avx512_bf16`]): the rounding that project would do
/// anyway.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_rows_avx512(
    weight: &[f32],
    bias: &[f32],
    image: &[f32],
    blocked: Option<usize>,
    g: &Geometry,
    oy: usize,
    out: &mut [f32],
) {
    let ow = same_padding(g.w, g.k, g.s).0;
    if ow > 0 && !g.c.is_multiple_of(16) {
        assert!(
            blocked.is_none(),
            "blocked input needs channels in sixteens"
        );
        for (r, row) in out.chunks_exact_mut(ow * g.c).enumerate() {
            depthwise_pixels::<true>(weight, bias, image, g, oy + r, row, 0..ow);
        }
        return;
    }
    rows_avx512!(weight, bias, image, blocked, g, oy, DepthwiseOut::F32(out))
}

/// [`depthwise_rows_avx512`] with its outputs rounded to bf16 as they are stored, in the
/// pairs the bf16 1x1 kernel reads ([`DepthwiseOut::Bf16`]): the project convolution after it
/// then needs no rounding pass of its own.
///
/// # Safety
/// AVX-512F, AVX-512VL and AVX512_BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn depthwise_rows_avx512_bf16(
    weight: &[f32],
    bias: &[f32],
    image: &[f32],
    blocked: Option<usize>,
    g: &Geometry,
    oy: usize,
    out: &mut [u32],
) {
    assert!(
        g.c.is_multiple_of(16),
        "bf16 output needs channels in sixteens"
    );
    rows_avx512!(weight, bias, image, blocked, g, oy, DepthwiseOut::Bf16(out))
}

/// Where the depthwise kernel stores its outputs: f32, or bf16 pairs (`out[i]` holding output
/// values `2 i` and `2 i + 1`, as [`Pointwise::run_tile_rounded`] reads them).
///
/// [`Pointwise::run_tile_rounded`]: super::conv::Pointwise::run_tile_rounded
pub(crate) enum DepthwiseOut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [u32]),
}

#[cfg(target_arch = "x86_64")]
impl DepthwiseOut<'_> {
    /// Output values it holds.
    fn values(&self) -> usize {
        match self {
            DepthwiseOut::F32(v) => v.len(),
            DepthwiseOut::Bf16(w) => 2 * w.len(),
        }
    }

    /// Stores 16 outputs at value `at`.
    ///
    /// # Safety
    /// `at + 16 <= self.values()`, `at` even; AVX-512F, and AVX512_BF16 for `Bf16`.
    #[inline(always)]
    unsafe fn put(&mut self, at: usize, y: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe {
            match self {
                DepthwiseOut::F32(v) => _mm512_storeu_ps(v.as_mut_ptr().add(at), y),
                DepthwiseOut::Bf16(w) => {
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(y));
                    _mm256_storeu_si256(w.as_mut_ptr().add(at / 2).cast(), h);
                }
            }
        }
    }
}

/// Two stride-1 output rows at once, `P` pixels each from padded column `column`: input row
/// `t` (of `K + 1`) is loaded once and serves tap row `t` of the first output row and tap row
/// `t - 1` of the second, so each load feeds twice the multiply-adds, and the 16 accumulators
/// give the multiply-add units twice the independent chains of one row.
///
/// # Safety
/// AVX-512F; `rows[t]` for every bit `t` set in `present` holds at least `column + P - 1 + K`
/// padded columns; `taps` points at the weights of channel `cv`, row stride `K * c`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_pair<const K: usize>(
    first: &mut [std::arch::x86_64::__m512; P],
    second: &mut [std::arch::x86_64::__m512; P],
    rows: &[*const f32; 6],
    present: u8,
    taps: *const f32,
    (c, column): (usize, usize),
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        for (t, row) in rows.iter().enumerate().take(K + 1) {
            if present & (1 << t) == 0 {
                continue;
            }
            let row = row.add(column * 16);
            let mut xs = [_mm512_setzero_ps(); 16];
            for (j, x) in xs.iter_mut().enumerate().take(P + K - 1) {
                *x = _mm512_loadu_ps(row.add(j * 16));
            }
            if t < K {
                let taps = taps.add(t * K * c);
                for kx in 0..K {
                    let w = _mm512_loadu_ps(taps.add(kx * c));
                    for (p, a) in first.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(xs[p + kx], w, *a);
                    }
                }
            }
            if t >= 1 {
                let taps = taps.add((t - 1) * K * c);
                for kx in 0..K {
                    let w = _mm512_loadu_ps(taps.add(kx * c));
                    for (p, a) in second.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(xs[p + kx], w, *a);
                    }
                }
            }
        }
    }
}

/// `P` pixels from padded column `column` of the ring rows, channels `cv .. cv + 16`, into
/// `acc` (which holds the bias). `K` and `S` fix the kernel side and stride for the common
/// shapes (0: read them from `dims`). Inlined into the kernel, whose instruction set it runs.
///
/// # Safety
/// AVX-512F; `rows[ky]` holds at least `column + (P - 1) * s + k` padded columns for every tap
/// row in `ky0..ky1`; `taps` points at the weights of channel `cv`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<const K: usize, const S: usize>(
    acc: &mut [std::arch::x86_64::__m512; P],
    rows: &[*const f32],
    column: usize,
    (ky0, ky1): (usize, usize),
    taps: *const f32,
    (k, s, c): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        for (row, ky) in rows[ky0..ky1].iter().zip(ky0..) {
            let row = row.add(column * 16);
            let taps = taps.add(ky * k * c);
            if K > 0 {
                let mut xs = [_mm512_setzero_ps(); 24];
                for (j, x) in xs.iter_mut().enumerate().take((P - 1) * S + K) {
                    *x = _mm512_loadu_ps(row.add(j * 16));
                }
                for kx in 0..K {
                    let w = _mm512_loadu_ps(taps.add(kx * c));
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(xs[p * S + kx], w, *a);
                    }
                }
            } else {
                for kx in 0..k {
                    let w = _mm512_loadu_ps(taps.add(kx * c));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let x = _mm512_loadu_ps(row.add((p * s + kx) * 16));
                        *a = _mm512_fmadd_ps(x, w, *a);
                    }
                }
            }
        }
    }
}

/// One output row: every pixel starts from the bias, adds its in-bounds taps one at a time
/// across all channels (a loop the compiler turns into vector multiply-adds), then is
/// clamped by ReLU6. A pixel's channels stay in L1 cache throughout.
#[inline(always)]
fn depthwise_row<const FMA: bool>(
    weight: &[f32],
    bias: &[f32],
    image: &[f32],
    g: &Geometry,
    oy: usize,
    out: &mut [f32],
) {
    let ow = out.len() / g.c;
    depthwise_pixels::<FMA>(weight, bias, image, g, oy, out, 0..ow)
}

/// [`depthwise_row`] for the output columns in `columns` only (`out` is the whole row).
#[inline(always)]
fn depthwise_pixels<const FMA: bool>(
    weight: &[f32],
    bias: &[f32],
    image: &[f32],
    g: &Geometry,
    oy: usize,
    out: &mut [f32],
    columns: std::ops::Range<usize>,
) {
    let c = g.c;
    let (ky0, ky1) = tap_range(oy, g.s, g.pad_top, g.k, g.h);
    for ox in columns {
        let px = &mut out[ox * c..(ox + 1) * c];
        let (kx0, kx1) = tap_range(ox, g.s, g.pad_left, g.k, g.w);
        px.copy_from_slice(&bias[..c]);
        for ky in ky0..ky1 {
            let iy = oy * g.s + ky - g.pad_top;
            for kx in kx0..kx1 {
                let ix = ox * g.s + kx - g.pad_left;
                let src = &image[((iy - g.row0) * g.w + ix) * c..][..c];
                let wt = &weight[(ky * g.k + kx) * c..][..c];
                for ((d, &x), &y) in px.iter_mut().zip(src).zip(wt) {
                    *d = if FMA { x.mul_add(y, *d) } else { *d + x * y };
                }
            }
        }
        for d in px.iter_mut() {
            *d = d.clamp(0.0, 6.0);
        }
    }
}

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "nhwc-depthwise-relu6"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        if c != self.channels {
            bail!(
                "depthwise: input has {c} channels, weights expect {}",
                self.channels
            )
        }
        let x = contiguous_f32(storage, layout, "depthwise")?;
        let (k, s) = (self.kernel, self.stride);
        let oh = same_padding(h, k, s).0;
        let ow = same_padding(w, k, s).0;
        let isa = Isa::detect();
        let mut out = vec![0f32; b * oh * ow * c];
        if !out.is_empty() {
            // Bands of a few rows per task: the AVX-512 kernel copies the input rows under a
            // band's taps once per channel slice.
            let band = oh.div_ceil(4).max(1);
            out.par_chunks_mut(oh * ow * c)
                .zip(x.par_chunks(h * w * c))
                .for_each(|(dst, image)| {
                    dst.par_chunks_mut(band * ow * c)
                        .enumerate()
                        .for_each(|(i, rows)| {
                            self.rows(isa, image, 0, (h, w), i * band, rows);
                        });
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, oh, ow, c))))
    }
}

/// A depthwise "SAME" convolution without bias or activation, with its gradient: what a copy of
/// the image tower being fine-tuned runs on the CPU. Built from tensor operations instead, each
/// of the `k * k` taps is a pass over the activations forward and several back (candle's
/// gradient of a slice is a zero-filled copy), which dominated fine-tuning.
pub(crate) struct DepthwiseGrad {
    pub(crate) stride: usize,
}

/// Shapes of one depthwise convolution: input `(b, h, w, c)`, kernel `k`, stride `s`.
#[derive(Clone, Copy)]
struct DwShape {
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    oh: usize,
    ow: usize,
    top: usize,
    left: usize,
}

impl DwShape {
    fn new(x: &[usize], weight: &[usize], s: usize) -> Result<Self> {
        let (&[b, h, w, c], &[k, k2, wc]) = (x, weight) else {
            bail!("depthwise: input {x:?} and weight {weight:?} are not (b, h, w, c) and (k, k, c)")
        };
        if k != k2 || wc != c {
            bail!("depthwise: weight {weight:?} does not fit input {x:?}")
        }
        let (oh, top, _) = same_padding(h, k, s);
        let (ow, left, _) = same_padding(w, k, s);
        Ok(Self {
            b,
            h,
            w,
            c,
            k,
            s,
            oh,
            ow,
            top,
            left,
        })
    }

    /// Input row and column under output pixel `(oy, ox)` and tap `(ky, kx)`, if inside.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.s + ky).checked_sub(self.top)?;
        let ix = (ox * self.s + kx).checked_sub(self.left)?;
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

fn dw_forward(x: &[f32], weight: &[f32], d: DwShape) -> Vec<f32> {
    let c = d.c;
    let mut out = vec![0f32; d.b * d.oh * d.ow * c];
    out.par_chunks_mut(d.ow * c)
        .enumerate()
        .for_each(|(r, row)| {
            let (image, oy) = (r / d.oh, r % d.oh);
            let x = &x[image * d.h * d.w * c..(image + 1) * d.h * d.w * c];
            for ox in 0..d.ow {
                let dst = &mut row[ox * c..(ox + 1) * c];
                for ky in 0..d.k {
                    for kx in 0..d.k {
                        let Some((iy, ix)) = d.source(oy, ox, ky, kx) else {
                            continue;
                        };
                        let src = &x[(iy * d.w + ix) * c..(iy * d.w + ix + 1) * c];
                        let tap = &weight[(ky * d.k + kx) * c..(ky * d.k + kx + 1) * c];
                        for ((o, v), t) in dst.iter_mut().zip(src).zip(tap) {
                            *o += v * t;
                        }
                    }
                }
            }
        });
    out
}

/// Gradients of the input and the weight, one image per task (each image's input gradient is
/// its own; the weight gradients are summed after).
fn dw_backward(x: &[f32], weight: &[f32], grad: &[f32], d: DwShape) -> (Vec<f32>, Vec<f32>) {
    let c = d.c;
    let (in_size, out_size, taps) = (d.h * d.w * c, d.oh * d.ow * c, d.k * d.k * c);
    let mut gx = vec![0f32; d.b * in_size];
    let gw_parts: Vec<Vec<f32>> = gx
        .par_chunks_mut(in_size.max(1))
        .enumerate()
        .map(|(image, gx)| {
            let x = &x[image * in_size..(image + 1) * in_size];
            let g = &grad[image * out_size..(image + 1) * out_size];
            let mut gw = vec![0f32; taps];
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let go = &g[(oy * d.ow + ox) * c..(oy * d.ow + ox + 1) * c];
                    for ky in 0..d.k {
                        for kx in 0..d.k {
                            let Some((iy, ix)) = d.source(oy, ox, ky, kx) else {
                                continue;
                            };
                            let at = (iy * d.w + ix) * c;
                            let t = (ky * d.k + kx) * c;
                            for j in 0..c {
                                gx[at + j] += go[j] * weight[t + j];
                                gw[t + j] += go[j] * x[at + j];
                            }
                        }
                    }
                }
            }
            gw
        })
        .collect();
    let mut gw = vec![0f32; taps];
    for part in gw_parts {
        for (a, b) in gw.iter_mut().zip(part) {
            *a += b;
        }
    }
    (gx, gw)
}

impl CustomOp2 for DepthwiseGrad {
    fn name(&self) -> &'static str {
        "nhwc-depthwise-trainable"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = DwShape::new(l1.dims(), l2.dims(), self.stride)?;
        let x = contiguous_f32(s1, l1, "depthwise")?;
        let w = contiguous_f32(s2, l2, "depthwise")?;
        let out = dw_forward(x, w, d);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.oh, d.ow, d.c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = DwShape::new(x.dims(), weight.dims(), self.stride)?;
        let (gx, gw) = dw_backward(&host_vec(x)?, &host_vec(weight)?, &host_vec(grad)?, d);
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), x.device())?),
            Some(Tensor::from_vec(gw, weight.shape(), weight.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn depthwise_matches_a_naive_convolution() {
        let dev = Device::Cpu;
        // Widths that fill 8- and 4-pixel register blocks and leave remainders, channel
        // counts that are and are not a multiple of the 16-lane vector.
        for (k, s, h, w, c) in [
            (3, 2, 9, 8, 12),
            (5, 1, 6, 7, 16),
            (5, 2, 10, 10, 3),
            (3, 1, 5, 30, 32),
            (5, 2, 11, 41, 48),
            (5, 1, 7, 7, 64),
            (3, 2, 8, 28, 16),
            // Shapes without a specialised register block.
            (7, 1, 9, 12, 16),
            (3, 3, 10, 13, 32),
        ] {
            let x = Tensor::randn(0f32, 1., (2, h, w, c), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1., (k, k, c), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.1, c, &dev).unwrap();
            let layer = Depthwise::new(&wt, &b, s).unwrap();
            let got = layer.forward(&x).unwrap();

            // Reference: candle's grouped conv2d in NCHW on explicitly padded input.
            let (oh, t, bo) = same_padding(h, k, s);
            let (ow, l, r) = same_padding(w, k, s);
            let reference = |x: &Tensor, wt: &Tensor| {
                let padded = x
                    .permute((0, 3, 1, 2))
                    .unwrap()
                    .pad_with_zeros(2, t, bo)
                    .unwrap()
                    .pad_with_zeros(3, l, r)
                    .unwrap();
                let kernel = wt
                    .permute((2, 0, 1))
                    .unwrap()
                    .reshape((c, 1, k, k))
                    .unwrap();
                padded
                    .conv2d(&kernel, 0, s, 1, c)
                    .unwrap()
                    .broadcast_add(&b.reshape((c, 1, 1)).unwrap())
                    .unwrap()
                    .clamp(0f32, 6f32)
                    .unwrap()
                    .permute((0, 2, 3, 1))
                    .unwrap()
            };
            let want = reference(&x, &wt);
            assert_eq!(got.dims(), [2, oh, ow, c]);
            // Every instruction set's row kernel, image by image, from a window that starts
            // one row in (as the fused blocks hold them) where the taps allow.
            let want_rows = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let input = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for isa in Isa::available() {
                for image in 0..2 {
                    let src = &input[image * h * w * c..(image + 1) * h * w * c];
                    let mut out = vec![f32::NAN; oh * ow * c];
                    layer.rows(isa, src, 0, (h, w), 0, &mut out);
                    let want = &want_rows;
                    let want = &want[image * oh * ow * c..(image + 1) * oh * ow * c];
                    let diff = out
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(diff < 1e-4, "{isa:?} k{k} s{s} {h}x{w}x{c}: {diff}");
                    // Rows from oy = 1 on read input rows from `1 * s - top` on.
                    let first = s.saturating_sub(t);
                    let mut tail = vec![f32::NAN; (oh - 1) * ow * c];
                    layer.rows(isa, &src[first * w * c..], first, (h, w), 1, &mut tail);
                    let diff = tail
                        .iter()
                        .zip(&want[ow * c..])
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        diff < 1e-4,
                        "{isa:?} k{k} s{s} {h}x{w}x{c} from row 1: {diff}"
                    );
                    if layer.reads_blocked(isa) {
                        // The same rows from input blocked by 16 channels in zero-padded
                        // rows, slices spaced wider than the rows need (as a window with
                        // spare rows is); what lies past the last row is never read.
                        let (cols, left) = layer.padded_row(w);
                        let slice = (h + 2) * cols * 16;
                        let mut blocked = vec![f32::NAN; c / 16 * slice];
                        for (j, block) in blocked.chunks_exact_mut(slice).enumerate() {
                            for (y, row) in block.chunks_exact_mut(cols * 16).take(h).enumerate() {
                                row.fill(0.0);
                                for x in 0..w {
                                    let px = &src[(y * w + x) * c + j * 16..][..16];
                                    row[(left + x) * 16..][..16].copy_from_slice(px);
                                }
                            }
                        }
                        let mut got = vec![f32::NAN; oh * ow * c];
                        let f32_out = DepthwiseOut::F32(&mut got);
                        layer.rows_blocked(isa, &blocked, slice, 0, (h, w), 0, f32_out);
                        assert_eq!(got, out, "{isa:?} k{k} s{s} {h}x{w}x{c} blocked");
                        if layer.writes_bf16(isa) {
                            // Stored as bf16 pairs: each value the f32 kernel's, rounded.
                            let mut words = vec![u32::MAX; oh * ow * c / 2];
                            let bf16_out = DepthwiseOut::Bf16(&mut words);
                            layer.rows_blocked(isa, &blocked, slice, 0, (h, w), 0, bf16_out);
                            let bf = |v: f32| u32::from(half::bf16::from_f32(v).to_bits());
                            let want: Vec<u32> = out
                                .chunks_exact(2)
                                .map(|p| bf(p[0]) | bf(p[1]) << 16)
                                .collect();
                            assert_eq!(words, want, "{isa:?} k{k} s{s} {h}x{w}x{c} bf16");
                        }
                    }
                }
            }
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    < 1e-4,
                "k{k} s{s}"
            );
        }
    }
}
