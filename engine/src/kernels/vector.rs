//! Dot products, the inner loop of every search: `f32` ([`Dot`]) and `u8` codes against `i8`
//! weights ([`CodeDot`], for the quantised graph walk, see `quant`). The widest instruction set
//! the CPU has is picked once at run time (AVX-512 / AVX-512 VNNI, else AVX2 (+FMA or AVX-VNNI),
//! else portable code), so one binary runs everywhere and still uses the machine it lands on.

use std::sync::OnceLock;

/// A dot-product kernel over two equally long slices.
#[derive(Clone, Copy)]
pub(crate) struct Dot {
    kernel: unsafe fn(&[f32], &[f32]) -> f32,
}

impl Dot {
    /// The fastest kernel this CPU supports.
    pub(crate) fn best() -> Dot {
        static BEST: OnceLock<Dot> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Dot {
                        kernel: x86::dot_avx512,
                    };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Dot {
                        kernel: x86::dot_avx2,
                    };
                }
            }
            Dot {
                kernel: dot_portable,
            }
        })
    }

    /// `a · b`. Slices of different lengths are compared over the shorter one.
    #[inline]
    pub(crate) fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: `best` only selects a kernel whose instruction set the running CPU reported, and
        // every kernel reads within the `n` elements both slices have.
        unsafe { (self.kernel)(&a[..n], &b[..n]) }
    }
}

/// Portable fallback; eight independent sums let the compiler vectorise it.
unsafe fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// An integer dot-product kernel: `u8` codes against 15-bit weights given as two `i8` halves,
/// `w = 128 hi + lo` with `lo` in `0..=127`, so that VNNI's `u8 × i8` instruction serves both
/// halves. Sums are exact modulo 2^32, hence exact whenever the true sum fits an `i32`.
#[derive(Clone, Copy)]
pub(crate) struct CodeDot {
    kernel: unsafe fn(&[u8], &[i8], &[i8]) -> i32,
}

impl CodeDot {
    /// The fastest kernel this CPU supports.
    pub(crate) fn best() -> CodeDot {
        static BEST: OnceLock<CodeDot> = OnceLock::new();
        *BEST.get_or_init(|| {
            code_kernels().last().copied().unwrap_or(CodeDot {
                kernel: code_dot_portable,
            })
        })
    }

    /// `Σ a[i] (128 hi[i] + lo[i])`, wrapping on overflow. Slices of different lengths are
    /// compared over the shortest one.
    #[inline]
    pub(crate) fn dot(&self, a: &[u8], hi: &[i8], lo: &[i8]) -> i32 {
        let n = a.len().min(hi.len()).min(lo.len());
        // SAFETY: `code_kernels` only lists kernels whose instruction set the running CPU
        // reported, and every kernel reads within the `n` elements all slices have.
        unsafe { (self.kernel)(&a[..n], &hi[..n], &lo[..n]) }
    }
}

/// Every integer kernel the running CPU supports, slowest first (portable first).
fn code_kernels() -> Vec<CodeDot> {
    #[allow(unused_mut)]
    let mut kernels = vec![CodeDot {
        kernel: code_dot_portable,
    }];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") {
            kernels.push(CodeDot {
                kernel: x86::code_dot_avx2,
            });
        }
        if has!("avx2") && has!("avxvnni") {
            kernels.push(CodeDot {
                kernel: x86::code_dot_avxvnni,
            });
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
            kernels.push(CodeDot {
                kernel: x86::code_dot_avx512vnni,
            });
        }
    }
    kernels
}

/// Portable fallback; the compiler widens and vectorises the products.
unsafe fn code_dot_portable(a: &[u8], hi: &[i8], lo: &[i8]) -> i32 {
    let (mut h, mut l) = (0i32, 0i32);
    for ((&x, &y), &z) in a.iter().zip(hi).zip(lo) {
        h = h.wrapping_add(x as i32 * y as i32);
        l = l.wrapping_add(x as i32 * z as i32);
    }
    h.wrapping_mul(128).wrapping_add(l)
}

/// Scales `v` to unit length in place, dividing by `max(norm, 1e-12)` as sentence-transformers
/// does, so a zero vector stays zero. For vectors Trio computes (text embeddings, averaged text
/// fields); [`normalized`] is the checked form for vectors from outside.
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = Dot::best().dot(v, v).sqrt();
    let inv = 1.0 / norm.max(1e-12);
    v.iter_mut().for_each(|x| *x *= inv);
}

/// Unit-length copy of `v`; `None` for a zero or non-finite vector, which has no direction.
pub(crate) fn normalized(v: &[f32]) -> Option<Vec<f32>> {
    let norm = Dot::best().dot(v, v).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    let out: Vec<f32> = v.iter().map(|x| x / norm).collect();
    out.iter().all(|x| x.is_finite()).then_some(out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Four 16-lane accumulators hide the FMA latency; a masked load handles the tail.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut s2 = _mm512_setzero_ps();
        let mut s3 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): offsets stay below `n`, the length of both slices.
        unsafe {
            while i + 64 <= n {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    s1,
                );
                s2 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 32)),
                    _mm512_loadu_ps(pb.add(i + 32)),
                    s2,
                );
                s3 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 48)),
                    _mm512_loadu_ps(pb.add(i + 48)),
                    s3,
                );
                i += 64;
            }
            while i + 16 <= n {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
                i += 16;
            }
            if i < n {
                let mask: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as __mmask16;
                s1 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(mask, pa.add(i)),
                    _mm512_maskz_loadu_ps(mask, pb.add(i)),
                    s1,
                );
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm256_setzero_ps();
        let mut s1 = _mm256_setzero_ps();
        let mut s2 = _mm256_setzero_ps();
        let mut s3 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): offsets stay below `n`, the length of both slices.
        unsafe {
            while i + 32 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    s1,
                );
                s2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 16)),
                    _mm256_loadu_ps(pb.add(i + 16)),
                    s2,
                );
                s3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 24)),
                    _mm256_loadu_ps(pb.add(i + 24)),
                    s3,
                );
                i += 32;
            }
            while i + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                i += 8;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        let half = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let one = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1));
        let mut sum = _mm_cvtss_f32(one);
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// `vpdpbusd` multiplies 64 `u8 × i8` pairs and adds them, four at a time, into 16 `i32`
    /// lanes in one instruction: one code load serves both weight halves; a masked load
    /// handles the tail.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn code_dot_avx512vnni(a: &[u8], hi: &[i8], lo: &[i8]) -> i32 {
        let n = a.len();
        let (pa, ph, pl) = (a.as_ptr(), hi.as_ptr(), lo.as_ptr());
        let mut h0 = _mm512_setzero_si512();
        let mut l0 = _mm512_setzero_si512();
        let mut h1 = _mm512_setzero_si512();
        let mut l1 = _mm512_setzero_si512();
        let mut i = 0;
        // SAFETY (all loads): offsets stay below `n`, the length of all three slices.
        unsafe {
            while i + 128 <= n {
                let c0 = _mm512_loadu_si512(pa.add(i).cast());
                let c1 = _mm512_loadu_si512(pa.add(i + 64).cast());
                h0 = _mm512_dpbusd_epi32(h0, c0, _mm512_loadu_si512(ph.add(i).cast()));
                l0 = _mm512_dpbusd_epi32(l0, c0, _mm512_loadu_si512(pl.add(i).cast()));
                h1 = _mm512_dpbusd_epi32(h1, c1, _mm512_loadu_si512(ph.add(i + 64).cast()));
                l1 = _mm512_dpbusd_epi32(l1, c1, _mm512_loadu_si512(pl.add(i + 64).cast()));
                i += 128;
            }
            while i < n {
                let mask: __mmask64 = if n - i >= 64 {
                    u64::MAX
                } else {
                    (1u64 << (n - i)) - 1
                };
                let c = _mm512_maskz_loadu_epi8(mask, pa.add(i).cast());
                h0 = _mm512_dpbusd_epi32(h0, c, _mm512_maskz_loadu_epi8(mask, ph.add(i).cast()));
                l0 = _mm512_dpbusd_epi32(l0, c, _mm512_maskz_loadu_epi8(mask, pl.add(i).cast()));
                i += 64;
            }
        }
        let h = _mm512_add_epi32(h0, h1);
        let l = _mm512_add_epi32(l0, l1);
        _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(h, 7), l))
    }

    /// The 256-bit VEX form of `vpdpbusd` (Alder Lake and later cores without AVX-512).
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn code_dot_avxvnni(a: &[u8], hi: &[i8], lo: &[i8]) -> i32 {
        let n = a.len();
        let (pa, ph, pl) = (a.as_ptr(), hi.as_ptr(), lo.as_ptr());
        let mut h0 = _mm256_setzero_si256();
        let mut l0 = _mm256_setzero_si256();
        let mut h1 = _mm256_setzero_si256();
        let mut l1 = _mm256_setzero_si256();
        let mut i = 0;
        // SAFETY (all loads): offsets stay below `n`, the length of all three slices.
        unsafe {
            while i + 64 <= n {
                let c0 = _mm256_loadu_si256(pa.add(i).cast());
                let c1 = _mm256_loadu_si256(pa.add(i + 32).cast());
                h0 = _mm256_dpbusd_avx_epi32(h0, c0, _mm256_loadu_si256(ph.add(i).cast()));
                l0 = _mm256_dpbusd_avx_epi32(l0, c0, _mm256_loadu_si256(pl.add(i).cast()));
                h1 = _mm256_dpbusd_avx_epi32(h1, c1, _mm256_loadu_si256(ph.add(i + 32).cast()));
                l1 = _mm256_dpbusd_avx_epi32(l1, c1, _mm256_loadu_si256(pl.add(i + 32).cast()));
                i += 64;
            }
        }
        let h = _mm256_add_epi32(h0, h1);
        let l = _mm256_add_epi32(l0, l1);
        let mut sum = reduce_epi32_avx2(_mm256_add_epi32(_mm256_slli_epi32(h, 7), l));
        while i < n {
            let w = 128 * hi[i] as i32 + lo[i] as i32;
            sum = sum.wrapping_add(a[i] as i32 * w);
            i += 1;
        }
        sum
    }

    /// Without VNNI: widen to `i16` and let `vpmaddwd` multiply and add pairs into `i32`
    /// (`vpmaddubsw` would be one step shorter but saturates at `2 × 255 × 127`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn code_dot_avx2(a: &[u8], hi: &[i8], lo: &[i8]) -> i32 {
        let n = a.len();
        let (pa, ph, pl) = (a.as_ptr(), hi.as_ptr(), lo.as_ptr());
        let mut h = _mm256_setzero_si256();
        let mut l = _mm256_setzero_si256();
        let mut i = 0;
        // SAFETY (all loads): offsets stay below `n`, the length of all three slices.
        unsafe {
            while i + 16 <= n {
                let c = _mm256_cvtepu8_epi16(_mm_loadu_si128(pa.add(i).cast()));
                let wh = _mm256_cvtepi8_epi16(_mm_loadu_si128(ph.add(i).cast()));
                let wl = _mm256_cvtepi8_epi16(_mm_loadu_si128(pl.add(i).cast()));
                h = _mm256_add_epi32(h, _mm256_madd_epi16(c, wh));
                l = _mm256_add_epi32(l, _mm256_madd_epi16(c, wl));
                i += 16;
            }
        }
        let mut sum = reduce_epi32_avx2(_mm256_add_epi32(_mm256_slli_epi32(h, 7), l));
        while i < n {
            let w = 128 * hi[i] as i32 + lo[i] as i32;
            sum = sum.wrapping_add(a[i] as i32 * w);
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2")]
    fn reduce_epi32_avx2(s: __m256i) -> i32 {
        let half = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let quad = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
        let one = _mm_add_epi32(quad, _mm_shuffle_epi32(quad, 1));
        _mm_cvtsi128_si32(one)
    }

    /// Hints the cache to fetch the line holding `p`; harmless on any address.
    #[inline(always)]
    pub(crate) fn prefetch(p: *const u8) {
        // SAFETY: prefetching never faults, whatever the address.
        unsafe { _mm_prefetch(p as *const i8, _MM_HINT_T0) }
    }
}

/// Starts fetching `lines` cache lines (64 bytes) from `p` before they are needed.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for l in 0..lines {
        x86::prefetch(p.cast::<u8>().wrapping_add(l * 64));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, lines);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_unit_length_and_survives_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn every_kernel_matches_the_reference_on_all_lengths() {
        let mut kernels: Vec<Dot> = vec![Dot {
            kernel: dot_portable,
        }];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Dot {
                    kernel: x86::dot_avx512,
                });
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Dot {
                    kernel: x86::dot_avx2,
                });
            }
        }
        for n in 0..200 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let reference: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for k in &kernels {
                let got = k.dot(&a, &b) as f64;
                assert!(
                    (got - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                    "n={n}: {got} vs {reference}"
                );
            }
        }
    }

    #[test]
    fn every_code_kernel_matches_the_exact_sum_on_all_lengths_and_extremes() {
        let kernels = code_kernels();
        for n in 0..300 {
            // Mixed values, then the extremes (the sums of which still fit an `i32` here).
            let a: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let hi: Vec<i8> = (0..n)
                .map(|i| ((i * 53 % 256) as i32 - 128) as i8)
                .collect();
            let lo: Vec<i8> = (0..n).map(|i| (i * 29 % 128) as i8).collect();
            let full = vec![255u8; n];
            let (most, least, top) = (vec![127i8; n], vec![-128i8; n], vec![127i8; n]);
            let zero = vec![0i8; n];
            let exact = |a: &[u8], hi: &[i8], lo: &[i8]| -> i64 {
                (0..a.len())
                    .map(|i| a[i] as i64 * (128 * hi[i] as i64 + lo[i] as i64))
                    .sum()
            };
            for (x, h, l) in [(&a, &hi, &lo), (&full, &most, &top), (&full, &least, &zero)] {
                let want = exact(x, h, l);
                assert!(
                    i32::try_from(want).is_ok(),
                    "n={n}: the test's sums fit i32"
                );
                assert!(!kernels.is_empty());
                for (k, kernel) in kernels.iter().enumerate() {
                    assert_eq!(kernel.dot(x, h, l) as i64, want, "kernel {k}, n={n}");
                }
            }
        }
    }

    #[test]
    fn normalized_refuses_directionless_vectors() {
        assert!(normalized(&[0.0, 0.0]).is_none());
        assert!(normalized(&[f32::NAN, 1.0]).is_none());
        let v = normalized(&[3.0, 4.0]).expect("has a direction");
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
