//! Int8 matrix products for the text encoder's linear layers (`--tower-precision int8`).
//!
//! Weights are quantised once at load, symmetrically per output channel (`w ≈ sw · qw`, `qw` in
//! −127..=127). Each product's input is quantised per row as it arrives, asymmetrically to u8
//! (`x ≈ sx · (qx − zx)`), because `vpdpbusd` multiplies unsigned by signed bytes; the row's zero
//! point comes out after the integer sum through the weights' precomputed column sums:
//! `Σ x·w ≈ sx · sw · (Σ qx·qw − zx · Σ qw)`. Every sum is exact in i32 (255 · 127 · depth stays
//! below 2³¹ up to a depth of 66 000), so the AVX-512 VNNI kernel and the portable one compute
//! the same integers, and the tests hold them to equality. Bias, residual and GELU stay in f32.

use rayon::prelude::*;

use super::elementwise::{gelu_erf, SendPtr};

/// Rows of the input quantised per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The kernel that multiplies the bytes, picked once when the weights are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    /// Plain integer loops the compiler vectorises: any CPU, and the reference for VNNI.
    Portable,
    /// AVX-512 VNNI (`vpdpbusd`): 64 u8 × i8 products summed into 16 i32 lanes per instruction.
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Int8Kernel {
    /// VNNI where this CPU has it, otherwise the portable loops.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if Self::has_vnni() {
            return Int8Kernel::Vnni;
        }
        Int8Kernel::Portable
    }

    /// Whether this CPU has the VNNI kernel's instructions.
    pub(crate) fn has_vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// Depth rounded up to whole groups of four bytes, the unit `vpdpbusd` sums. Pad bytes are zero
/// in the weights, so whatever the input holds there adds nothing.
fn padded_depth(k: usize) -> usize {
    k.next_multiple_of(4)
}

/// A product's input rows quantised to u8: `x[r][i] ≈ scale[r] · (values[r][i] − zero[r])`.
#[derive(Default)]
pub(crate) struct QuantizedRows {
    /// rows × padded depth.
    values: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
    depth: usize,
}

impl QuantizedRows {
    /// Quantises `x`, rows of `k` values, replacing what the buffers held.
    pub(crate) fn quantize(&mut self, x: &[f32], k: usize, kernel: Int8Kernel) {
        assert!(
            k > 0 && x.len().is_multiple_of(k),
            "input is not whole rows"
        );
        let rows = x.len() / k;
        let depth = padded_depth(k);
        self.depth = depth;
        self.values.clear();
        self.values.resize(rows * depth, 0);
        self.scale.clear();
        self.scale.resize(rows, 0.0);
        self.zero.clear();
        self.zero.resize(rows, 0);
        let run = |x: &[f32], q: &mut [u8], s: &mut [f32], z: &mut [i32]| match kernel {
            // SAFETY: `Int8Kernel::Vnni` exists only where AVX-512F and BW were detected.
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => unsafe { vnni::quantize_rows(x, k, q, s, z) },
            Int8Kernel::Portable => quantize_rows(x, k, q, s, z),
        };
        if rows <= ROWS_PER_TASK {
            run(x, &mut self.values, &mut self.scale, &mut self.zero);
        } else {
            x.par_chunks(k * ROWS_PER_TASK)
                .zip(self.values.par_chunks_mut(depth * ROWS_PER_TASK))
                .zip(self.scale.par_chunks_mut(ROWS_PER_TASK))
                .zip(self.zero.par_chunks_mut(ROWS_PER_TASK))
                .for_each(|(((x, q), s), z)| run(x, q, s, z));
        }
    }

    fn rows(&self) -> usize {
        self.scale.len()
    }

    /// The bytes its buffers hold on to.
    pub(crate) fn bytes(&self) -> usize {
        self.values.capacity() + 8 * self.scale.capacity()
    }
}

/// Each row's range, widened to hold 0 so that zero stays exact, split into 255 steps; values
/// round to the nearest step (ties to even).
fn quantize_rows(x: &[f32], k: usize, q: &mut [u8], scale: &mut [f32], zero: &mut [i32]) {
    let depth = padded_depth(k);
    for (((x, q), s), z) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(depth))
        .zip(scale.iter_mut())
        .zip(zero.iter_mut())
    {
        let mut lo = [0.0f32; 16];
        let mut hi = [0.0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(c) {
                *l = if v < *l { v } else { *l };
                *h = if v > *h { v } else { *h };
            }
        }
        let (mut min, mut max) = (0.0f32, 0.0f32);
        for &v in lo.iter().chain(hi.iter()).chain(chunks.remainder()) {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
        }
        let step = (max - min) / 255.0;
        if step.is_nan() || step <= 0.0 {
            // All zeros (or not finite): store zeros that dequantise to zero.
            q.fill(0);
            (*s, *z) = (1.0, 0);
            continue;
        }
        let inv = 1.0 / step;
        let zero_point = (-min * inv).round_ties_even().clamp(0.0, 255.0);
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * inv).round_ties_even() + zero_point).clamp(0.0, 255.0) as u8;
        }
        q[k..].fill(0);
        (*s, *z) = (step, zero_point as i32);
    }
}

/// A linear layer's weight in int8, laid out for its kernel, with the per-channel scales and
/// the column sums that take the input's zero point out.
pub(crate) struct QuantizedWeight {
    kernel: Int8Kernel,
    outputs: usize,
    depth: usize,
    /// Portable: `outputs × depth` bytes, row-major. VNNI: panels of `NR` outputs, each word
    /// four consecutive inputs of one output (see [`QuantizedWeight::new`]).
    words: Vec<Line>,
    /// Per output (zero-padded to whole panels): `sw`, and `Σ qw` over the inputs.
    scale: Vec<f32>,
    column_sum: Vec<i32>,
}

/// 64 bytes, aligned to a cache line, so packed panels never straddle two lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

impl QuantizedWeight {
    /// Quantises `weight` (PyTorch layout `[outputs, inputs]`, row-major) for `kernel`.
    pub(crate) fn new(weight: &[f32], outputs: usize, inputs: usize, kernel: Int8Kernel) -> Self {
        assert_eq!(
            weight.len(),
            outputs * inputs,
            "weight size does not match its shape"
        );
        let depth = padded_depth(inputs);
        let padded_outputs = outputs.next_multiple_of(NR);
        let mut scale = vec![0.0f32; padded_outputs];
        let mut column_sum = vec![0i32; padded_outputs];
        let mut q = vec![0i8; outputs * depth];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            let max = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            let dst = &mut q[o * depth..][..inputs];
            for (d, &w) in dst.iter_mut().zip(row) {
                *d = (w / s).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            scale[o] = s;
            column_sum[o] = dst.iter().map(|&v| i32::from(v)).sum();
        }
        let word = |o: usize, g: usize| {
            let b = &q[o * depth + 4 * g..][..4];
            u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
        };
        let groups = depth / 4;
        let words = match kernel {
            Int8Kernel::Portable => {
                let mut lines = vec![Line([0; 16]); (outputs * groups).div_ceil(16)];
                let flat = lines_mut(&mut lines);
                for o in 0..outputs {
                    for g in 0..groups {
                        flat[o * groups + g] = word(o, g);
                    }
                }
                lines
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => {
                // Depth block by depth block; within one, panel after panel (kc/4 × NR words
                // each), so a sweep over a block's panels reads memory sequentially.
                let panels = padded_outputs / NR;
                let kc_max = depth_block(depth);
                let mut lines = vec![Line([0; 16]); (panels * groups * NR).div_ceil(16)];
                let flat = lines_mut(&mut lines);
                for o in 0..outputs {
                    let (panel, lane) = (o / NR, o % NR);
                    for g in 0..groups {
                        let i = 4 * g;
                        let (kb, kk) = (i / kc_max * kc_max, i % kc_max);
                        let kc = kc_max.min(depth - kb);
                        flat[kb / 4 * panels * NR + (panel * kc / 4 + kk / 4) * NR + lane] =
                            word(o, g);
                    }
                }
                lines
            }
        };
        QuantizedWeight {
            kernel,
            outputs,
            depth,
            words,
            scale,
            column_sum,
        }
    }

    pub(crate) fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// `out = gelu?(dequantised(x · Wᵀ) + bias + residual?)`, on up to `threads` threads.
    pub(crate) fn forward(
        &self,
        x: &QuantizedRows,
        out: &mut [f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        gelu: bool,
        threads: usize,
    ) {
        let n = self.outputs;
        assert_eq!(bias.len(), n, "bias size does not match the weight");
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "residual is not rows × outputs");
        }
        let epilogue = Epilogue {
            bias,
            residual,
            gelu,
        };
        self.products(x, out, Some(&epilogue), threads);
    }

    /// The kernel's integer stage alone: `Σ qx·qw` per row and output.
    #[cfg(test)]
    fn integer_products(&self, x: &QuantizedRows) -> Vec<i32> {
        let mut out = vec![0.0f32; x.rows() * self.outputs];
        self.products(x, &mut out, None, 1);
        out.iter().map(|v| v.to_bits() as i32).collect()
    }

    /// The integer products into `out` (as i32 bits), then, with `epilogue`, dequantised and
    /// finished in place while each tile is still in L1.
    fn products(
        &self,
        x: &QuantizedRows,
        out: &mut [f32],
        epilogue: Option<&Epilogue<'_>>,
        threads: usize,
    ) {
        let (m, n) = (x.rows(), self.outputs);
        assert_eq!(x.depth, self.depth, "input depth does not match the weight");
        assert_eq!(out.len(), m * n, "output is not rows × outputs");
        match self.kernel {
            Int8Kernel::Portable => {
                let weights = bytes(&self.words, n * self.depth);
                let rows_per_task = if threads > 1 {
                    m.div_ceil(threads).max(1)
                } else {
                    m.max(1)
                };
                let run = |(t, out): (usize, &mut [f32])| {
                    let row0 = t * rows_per_task;
                    for (r, o) in out.chunks_exact_mut(n).enumerate() {
                        let a = &x.values[(row0 + r) * self.depth..][..self.depth];
                        for (o, w) in o.iter_mut().zip(weights.chunks_exact(self.depth)) {
                            let dot: i32 = a
                                .iter()
                                .zip(w)
                                .map(|(&a, &w)| i32::from(a) * i32::from(w as i8))
                                .sum();
                            *o = f32::from_bits(dot as u32);
                        }
                        if let Some(e) = epilogue {
                            self.finish_row(x, row0 + r, o, e);
                        }
                    }
                };
                if threads > 1 {
                    out.par_chunks_mut(rows_per_task * n)
                        .enumerate()
                        .for_each(run);
                } else {
                    out.chunks_mut(rows_per_task * n).enumerate().for_each(run);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => {
                let job = vnni::Gemm {
                    a: x.values.as_ptr(),
                    m,
                    depth: self.depth,
                    n,
                    panels: self.words.as_ptr().cast(),
                    c: SendPtr(out.as_mut_ptr()),
                    dequant: epilogue.map(|e| vnni::Dequant {
                        row_scale: x.scale.as_ptr(),
                        row_zero: x.zero.as_ptr(),
                        column_scale: self.scale.as_ptr(),
                        column_sum: self.column_sum.as_ptr(),
                        bias: e.bias.as_ptr(),
                        residual: e.residual.map_or(std::ptr::null(), |r| r.as_ptr()),
                        gelu: e.gelu,
                    }),
                };
                let count = n.div_ceil(NR);
                let tasks = threads.min(count);
                if tasks <= 1 {
                    // SAFETY: `Vnni` weights exist only where `has_vnni` found the
                    // instructions; the asserts above bound every buffer `job` points into.
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

    /// Dequantises one row of integer products in place and applies the epilogue, in the
    /// VNNI epilogue's order of operations, so both kernels round alike.
    fn finish_row(&self, x: &QuantizedRows, row: usize, out: &mut [f32], e: &Epilogue<'_>) {
        let n = self.outputs;
        let (sx, zx) = (x.scale[row], x.zero[row]);
        let residual = e.residual.map(|r| &r[row * n..][..n]);
        for (o, v) in out.iter_mut().enumerate() {
            let acc = v.to_bits() as i32 - zx * self.column_sum[o];
            let mut y = acc as f32 * (sx * self.scale[o]) + e.bias[o];
            if let Some(r) = residual {
                y += r[o];
            }
            *v = if e.gelu { gelu_erf(y) } else { y };
        }
    }
}

/// What follows the integer product: the layer's bias, then a residual, then GELU.
struct Epilogue<'a> {
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    gelu: bool,
}

fn lines_mut(lines: &mut [Line]) -> &mut [u32] {
    // SAFETY: `Line` is `repr(C)` around `[u32; 16]`, so the lines are contiguous words.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u32>(), lines.len() * 16) }
}

fn bytes(lines: &[Line], len: usize) -> &[u8] {
    assert!(len <= lines.len() * 64);
    // SAFETY: as in `lines_mut`; `len` is within the lines' bytes.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), len) }
}

/// Output columns per packed weight panel: two registers of 16 i32 accumulators.
const NR: usize = 32;

/// The VNNI kernel's depth blocking, in bytes: equal blocks of at most 1024 (a 1024 × 32 byte
/// block, 32 KiB, stays in L1 while row tiles stream past it), each a multiple of four.
#[cfg(target_arch = "x86_64")]
fn depth_block(depth: usize) -> usize {
    const KC: usize = 1024;
    let blocks = depth.div_ceil(KC).max(1);
    (depth / 4).div_ceil(blocks).max(1) * 4
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{depth_block, SendPtr, NR};
    use crate::kernels::elementwise::avx512::{column_masks, gelu_erf};

    /// The portable `quantize_rows` in 16-lane registers, the same operations in the same
    /// order (min and max are exact in any order), so every byte, scale and zero point agrees.
    ///
    /// # Safety
    /// AVX-512F and AVX-512BW must be available.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_rows(
        x: &[f32],
        k: usize,
        q: &mut [u8],
        scale: &mut [f32],
        zero: &mut [i32],
    ) {
        let depth = k.next_multiple_of(4);
        assert!(q.len() >= x.len() / k * depth && scale.len() >= x.len() / k);
        let mask = |i: usize| ((1u32 << (k - i).min(16)) - 1) as __mmask16;
        for (r, x) in x.chunks_exact(k).enumerate() {
            let x = x.as_ptr();
            // SAFETY: masked loads stay inside the row's `k` values and masked stores inside
            // its `depth` bytes of `q` (asserted above).
            unsafe {
                let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for i in (0..k).step_by(16) {
                    let v = _mm512_maskz_loadu_ps(mask(i), x.add(i));
                    lo = _mm512_min_ps(lo, v);
                    hi = _mm512_max_ps(hi, v);
                }
                let (min, max) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
                let row = q.as_mut_ptr().add(r * depth);
                let step = (max - min) / 255.0;
                if step.is_nan() || step <= 0.0 {
                    std::ptr::write_bytes(row, 0, depth);
                    (scale[r], zero[r]) = (1.0, 0);
                    continue;
                }
                let inv = 1.0 / step;
                let zero_point = (-min * inv).round_ties_even().clamp(0.0, 255.0);
                let (inv_v, zp) = (_mm512_set1_ps(inv), _mm512_set1_ps(zero_point));
                let (floor, ceil) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
                for i in (0..depth).step_by(16) {
                    let v = _mm512_maskz_loadu_ps(mask(i.min(k)), x.add(i.min(k)));
                    let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm512_mul_ps(v, inv_v),
                    );
                    let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, zp), floor), ceil);
                    // Lanes past `k` (padding up to `depth`) store zero.
                    let bytes = _mm512_maskz_mov_epi32(mask(i.min(k)), _mm512_cvttps_epi32(v));
                    let store = ((1u32 << (depth - i).min(16)) - 1) as __mmask16;
                    _mm512_mask_cvtepi32_storeu_epi8(row.add(i).cast(), store, bytes);
                }
                (scale[r], zero[r]) = (step, zero_point as i32);
            }
        }
    }

    /// Rows per register tile: 12 × 2 accumulators + 2 weight vectors + 1 broadcast ≤ 32 zmm.
    const MR: usize = 12;
    /// Row block: its bytes (at most 240 × 1536) stay in L2 while the panels sweep past.
    const MC: usize = 240;

    /// The epilogue's operands: per row (at the first row) and per column (at the first column).
    pub(super) struct Dequant {
        pub row_scale: *const f32,
        pub row_zero: *const i32,
        pub column_scale: *const f32,
        pub column_sum: *const i32,
        pub bias: *const f32,
        pub residual: *const f32,
        pub gelu: bool,
    }

    /// One product `c = x · W` of u8 rows and int8 panels; `run` computes a range of panels.
    pub(super) struct Gemm {
        pub a: *const u8,
        pub m: usize,
        pub depth: usize,
        pub n: usize,
        pub panels: *const u32,
        pub c: SendPtr,
        /// `None` leaves the raw i32 sums in `c`.
        pub dequant: Option<Dequant>,
    }

    // SAFETY: `Gemm` only carries pointers into buffers that outlive the parallel call; the
    // caller gives concurrent `run`s disjoint panel ranges, so their writes never overlap.
    unsafe impl Sync for Gemm {}

    impl Gemm {
        /// # Safety
        /// AVX-512F, AVX-512BW and AVX-512 VNNI must be available, the pointers must cover the
        /// shapes in `self`, and concurrent calls must use disjoint panel ranges.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(super) unsafe fn run(&self, panel_begin: usize, panel_end: usize) {
            let (m, depth, n) = (self.m, self.depth, self.n);
            let c = self.c.get().cast::<i32>();
            let panels = n.div_ceil(NR);
            let kc_max = depth_block(depth);
            let mut finished = Sums([[0; NR]; MR]);
            // SAFETY (all pointer arithmetic below): offsets stay inside the buffers whose
            // extents the caller guarantees; word offsets are a quarter of byte offsets.
            unsafe {
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    let tiles = mc.div_ceil(MR);
                    for kb in (0..depth).step_by(kc_max) {
                        let kc = kc_max.min(depth - kb);
                        let block = self.panels.add(kb / 4 * panels * NR);
                        let (first, last) = (kb == 0, kb + kc == depth);
                        for p in panel_begin..panel_end {
                            let col = p * NR;
                            let masks = column_masks((n - col).min(NR));
                            let b = block.add(p * kc / 4 * NR);
                            for t in 0..tiles {
                                let rows = MR.min(mc - t * MR);
                                let row0 = i0 + t * MR;
                                let ct = c.add(row0 * n + col);
                                let a = self.a.add(row0 * depth + kb);
                                let from = (ct.cast_const(), n, !first, masks);
                                let Some(d) = self.dequant.as_ref().filter(|_| last) else {
                                    tile(rows, (a, depth, b, kc / 4, from, (ct, n, masks)));
                                    continue;
                                };
                                // The finished sums go to an aligned stack tile in whole
                                // registers: re-reading masked stores from `c` would stall on
                                // store forwarding.
                                let sums = finished.0.as_mut_ptr().cast::<i32>();
                                let to = (sums, NR, (0xffff, 0xffff));
                                tile(rows, (a, depth, b, kc / 4, from, to));
                                let residual = if d.residual.is_null() {
                                    d.residual
                                } else {
                                    d.residual.add(row0 * n + col)
                                };
                                dequantize(
                                    rows,
                                    sums,
                                    (ct.cast(), n),
                                    (d.row_scale.add(row0), d.row_zero.add(row0)),
                                    (d.column_scale.add(col), d.column_sum.add(col)),
                                    d.bias.add(col),
                                    residual,
                                    d.gelu,
                                    masks,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A register tile's sums, 64-byte aligned so each row is two whole-register loads.
    #[repr(C, align(64))]
    struct Sums([[i32; NR]; MR]);

    /// Inputs (stride in bytes), a panel block (groups of four depths), where the sums so far
    /// are (read when the flag is set) and where the tile's sums go, each with its stride and
    /// column masks.
    type TileArgs = (
        *const u8,
        usize,
        *const u32,
        usize,
        (*const i32, usize, bool, (__mmask16, __mmask16)),
        (*mut i32, usize, (__mmask16, __mmask16)),
    );

    /// `rows` × 32 sums at `c` (+= when accumulating), by the kernel unrolled for `rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile(rows: usize, args: TileArgs) {
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

    /// A register tile unrolled over the listed rows: per step, four depths of each row
    /// broadcast against a panel's 2 × 16 words (`vpdpbusd` sums the four products).
    macro_rules! tile_kernel {
        ($name:ident, $($r:literal)+) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            unsafe fn $name(
                (a, lda, b, kc4, (c, ldc, accumulate, (mask0, mask1)), (d, ldd, (dmask0, dmask1))): TileArgs,
            ) {
                let mut acc0 = [_mm512_setzero_si512(); MR];
                let mut acc1 = [_mm512_setzero_si512(); MR];
                // SAFETY: the caller guarantees that `a` covers the tile's rows (stride `lda`
                // bytes) to 4·kc4 bytes, `b` kc4 × 32 words, and `c` and `d` the tile's rows;
                // the masks keep loads and stores inside their columns.
                unsafe {
                    if accumulate {
                        $(
                            acc0[$r] = _mm512_maskz_loadu_epi32(mask0, c.add($r * ldc));
                            acc1[$r] = _mm512_maskz_loadu_epi32(mask1, c.add($r * ldc + 16));
                        )+
                    }
                    for kk in 0..kc4 {
                        let b0 = _mm512_load_si512(b.add(kk * NR).cast());
                        let b1 = _mm512_load_si512(b.add(kk * NR + 16).cast());
                        $(
                            let av = _mm512_set1_epi32(
                                a.add($r * lda + kk * 4).cast::<i32>().read_unaligned(),
                            );
                            acc0[$r] = _mm512_dpbusd_epi32(acc0[$r], av, b0);
                            acc1[$r] = _mm512_dpbusd_epi32(acc1[$r], av, b1);
                        )+
                    }
                    $(
                        _mm512_mask_storeu_epi32(d.add($r * ldd), dmask0, acc0[$r]);
                        _mm512_mask_storeu_epi32(d.add($r * ldd + 16), dmask1, acc1[$r]);
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

    /// A finished tile's sums (rows of `NR` at `sums`) to f32 in `c`: `(acc − zx·Σqw) · (sx·sw)
    /// + bias (+ residual)`, then GELU; the portable `finish_row`'s operations in its order.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn dequantize(
        rows: usize,
        sums: *const i32,
        (c, ldc): (*mut f32, usize),
        (row_scale, row_zero): (*const f32, *const i32),
        (column_scale, column_sum): (*const f32, *const i32),
        bias: *const f32,
        residual: *const f32,
        gelu: bool,
        (mask0, mask1): (__mmask16, __mmask16),
    ) {
        // SAFETY: the caller guarantees the tile's rows and the columns' operands; masks keep
        // every access inside the output's width.
        unsafe {
            for (k, off) in [(mask0, 0), (mask1, 16)] {
                if k == 0 {
                    continue;
                }
                let sw = _mm512_maskz_loadu_ps(k, column_scale.add(off));
                let sum = _mm512_maskz_loadu_epi32(k, column_sum.add(off));
                let b = _mm512_maskz_loadu_ps(k, bias.add(off));
                for r in 0..rows {
                    let zx = _mm512_set1_epi32(*row_zero.add(r));
                    let scale = _mm512_mul_ps(_mm512_set1_ps(*row_scale.add(r)), sw);
                    let acc = _mm512_sub_epi32(
                        _mm512_load_si512(sums.add(r * NR + off).cast()),
                        _mm512_mullo_epi32(zx, sum),
                    );
                    let mut v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale), b);
                    if !residual.is_null() {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, residual.add(r * ldc + off)));
                    }
                    if gelu {
                        v = gelu_erf(v);
                    }
                    _mm512_mask_storeu_ps(c.add(r * ldc + off), k, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU runs: the portable one always, VNNI where it exists.
    fn kernels() -> Vec<Int8Kernel> {
        let mut v = vec![Int8Kernel::Portable];
        if Int8Kernel::detect() != Int8Kernel::Portable {
            v.push(Int8Kernel::detect());
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

    /// Rows with a spread of ranges: all-negative, all-positive, mixed, an all-zero row and
    /// outliers, as the encoder's activations have.
    fn inputs(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut x = values(rows * k, seed);
        for (r, row) in x.chunks_exact_mut(k).enumerate() {
            match r % 5 {
                0 => row.iter_mut().for_each(|v| *v = -v.abs()),
                1 => row.iter_mut().for_each(|v| *v = v.abs() * 3.0),
                2 => row[r % k] *= 40.0,
                3 if r == 3 => row.fill(0.0),
                _ => {}
            }
        }
        x
    }

    /// Shapes around the 12-row tile, 240-row block, 32-wide panel, the 4-byte group and the
    /// 1024-byte depth block (1536 and 2100 inputs take two and three blocks).
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (5, 33, 7),
        (13, 64, 300),
        (25, 47, 257),
        (12, 384, 384),
        (241, 96, 513),
        (14, 40, 1536),
        (3, 17, 2100),
    ];

    #[test]
    fn rows_quantize_alike_on_every_path_within_half_a_step() {
        let (rows, k) = (23, 37);
        let x = inputs(rows, k, 1);
        let mut first: Option<QuantizedRows> = None;
        for kernel in kernels() {
            let mut q = QuantizedRows::default();
            q.quantize(&x, k, kernel);
            assert_eq!(q.depth, 40);
            for r in 0..rows {
                let (s, z) = (q.scale[r], q.zero[r]);
                assert!((0..=255).contains(&z), "{kernel:?} zero point {z}");
                let row = &q.values[r * q.depth..][..q.depth];
                assert!(row[k..].iter().all(|&b| b == 0), "padding is not zero");
                for (i, &v) in x[r * k..][..k].iter().enumerate() {
                    let back = s * (i32::from(row[i]) - z) as f32;
                    assert!(
                        (back - v).abs() <= 0.5 * s * (1.0 + 1e-4),
                        "{kernel:?} row {r}: {v} comes back as {back} (step {s})"
                    );
                    if v == 0.0 {
                        assert_eq!(back, 0.0, "zero is not exact");
                    }
                }
            }
            match &first {
                None => first = Some(q),
                Some(f) => {
                    assert_eq!(f.values, q.values, "{kernel:?} bytes differ");
                    assert_eq!(f.scale, q.scale, "{kernel:?} scales differ");
                    assert_eq!(f.zero, q.zero, "{kernel:?} zero points differ");
                }
            }
        }
        // Many rows take the parallel path; each row's bytes are those of the serial one.
        let many = inputs(150, k, 2);
        let (mut a, mut b) = (QuantizedRows::default(), QuantizedRows::default());
        a.quantize(&many, k, Int8Kernel::Portable);
        for (r, row) in many.chunks_exact(k).enumerate().step_by(37) {
            b.quantize(row, k, Int8Kernel::Portable);
            assert_eq!(b.values, a.values[r * a.depth..][..a.depth], "row {r}");
        }
    }

    #[test]
    fn integer_sums_are_exact_on_every_path() {
        for &(rows, n, k) in &SHAPES {
            let x = inputs(rows, k, 3);
            let w: Vec<f32> = values(n * k, 4);
            let mut q = QuantizedRows::default();
            q.quantize(&x, k, Int8Kernel::Portable);
            // The reference: the quantised operands, multiplied and summed in i64.
            let portable = QuantizedWeight::new(&w, n, k, Int8Kernel::Portable);
            let qw = bytes(&portable.words, n * portable.depth);
            let want: Vec<i32> = (0..rows * n)
                .map(|i| {
                    let (r, o) = (i / n, i % n);
                    let sum: i64 = (0..k)
                        .map(|j| {
                            i64::from(q.values[r * q.depth + j])
                                * i64::from(qw[o * portable.depth + j] as i8)
                        })
                        .sum();
                    i32::try_from(sum).expect("sums fit i32")
                })
                .collect();
            for kernel in kernels() {
                let weight = QuantizedWeight::new(&w, n, k, kernel);
                assert_eq!(weight.scale, portable.scale, "{kernel:?} scales");
                assert_eq!(weight.column_sum, portable.column_sum, "{kernel:?} sums");
                assert_eq!(
                    weight.integer_products(&q),
                    want,
                    "{kernel:?} {rows}x{n}x{k}"
                );
            }
        }
    }

    #[test]
    fn dequantised_products_stay_within_the_rounding_bound_of_f32() {
        for &(rows, n, k) in &SHAPES {
            let x = inputs(rows, k, 5);
            let w = values(n * k, 6);
            let bias = values(n, 7);
            let residual = values(rows * n, 8);
            let mut outputs: Vec<(Int8Kernel, [Vec<f32>; 3])> = Vec::new();
            for kernel in kernels() {
                let weight = QuantizedWeight::new(&w, n, k, kernel);
                let mut q = QuantizedRows::default();
                q.quantize(&x, k, kernel);
                let run = |residual: Option<&[f32]>, gelu: bool, threads: usize| {
                    let mut out = vec![f32::NAN; rows * n];
                    weight.forward(&q, &mut out, &bias, residual, gelu, threads);
                    out
                };
                let plain = run(None, false, 1);
                assert_eq!(plain, run(None, false, 2), "{kernel:?} threads");
                // Each product is off by at most its operands' rounding: |Δx| ≤ sx/2 and
                // |Δw| ≤ sw/2 per term (plus f32 rounding of the sums).
                for r in 0..rows {
                    for o in 0..n {
                        let (sx, sw) = (f64::from(q.scale[r]), f64::from(weight.scale[o]));
                        let (mut exact, mut bound) = (0.0f64, 1e-5);
                        for j in 0..k {
                            let (a, b) = (f64::from(x[r * k + j]), f64::from(w[o * k + j]));
                            exact += a * b;
                            bound += a.abs() * sw / 2.0 + b.abs() * sx / 2.0 + sx * sw / 4.0;
                        }
                        let got = f64::from(plain[r * n + o] - bias[o]);
                        assert!(
                            (got - exact).abs() <= bound * 1.001,
                            "{kernel:?} {rows}x{n}x{k} [{r},{o}]: {got} vs {exact}, bound {bound}"
                        );
                    }
                }
                let res = run(Some(&residual), false, 1);
                let gelu = run(None, true, 1);
                for i in 0..rows * n {
                    assert_eq!(res[i], plain[i] + residual[i], "{kernel:?} residual");
                    let want = gelu_erf(plain[i]);
                    assert!((gelu[i] - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu");
                }
                outputs.push((kernel, [plain, res, gelu]));
            }
            // Same integers, same scales, same order of f32 operations: the kernels agree bit
            // for bit but for GELU (the vector GELU fuses its multiply-adds).
            let (_, reference) = &outputs[0];
            for (kernel, out) in &outputs[1..] {
                assert_eq!(out[0], reference[0], "{kernel:?} {rows}x{n}x{k} bias");
                assert_eq!(out[1], reference[1], "{kernel:?} {rows}x{n}x{k} residual");
                for (a, b) in out[2].iter().zip(&reference[2]) {
                    assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{kernel:?} gelu");
                }
            }
        }
    }

    #[test]
    fn a_quantised_linear_layer_tracks_its_f32_twin() {
        // Through `PackedLinear`, on encoder-like shapes: relative error of the whole output.
        use crate::kernels::encoder::{Epilogue, Isa, PackedLinear};
        let (rows, n, k) = (29, 96, 384);
        let x = inputs(rows, k, 9);
        let w: Vec<f32> = values(n * k, 10).iter().map(|v| v * 0.1).collect();
        let b = values(n, 11);
        let float = PackedLinear::new(&w, &b, n, k, Isa::Portable);
        let mut want = vec![0.0; rows * n];
        float.forward(&x, rows, &mut want, Epilogue::Bias);
        for kernel in kernels() {
            let int8 = PackedLinear::quantized(&w, &b, n, k, kernel);
            let mut got = vec![0.0; rows * n];
            int8.forward(&x, rows, &mut got, Epilogue::Bias);
            let err: f32 = got.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum();
            let norm: f32 = want.iter().map(|w| w * w).sum();
            let rel = (err / norm).sqrt();
            assert!(rel < 0.02, "{kernel:?}: relative error {rel}");
        }
    }
}
