//! Pieces the encoder's float and int8 matrix products share: the erf GELU their epilogues
//! apply (scalar and 16-lane), the lane masks of a partial output panel, and the pointer that
//! lets parallel tasks write disjoint parts of one output.

/// A pointer that may cross threads: each task writes a disjoint part of the buffer behind it.
#[derive(Clone, Copy)]
pub(in crate::kernels) struct SendPtr(pub(in crate::kernels) *mut f32);
// SAFETY: users guarantee that concurrent tasks touch disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    // A method, not field access, so closures capture the whole (Send) wrapper.
    pub(in crate::kernels) fn get(self) -> *mut f32 {
        self.0
    }
}

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

#[cfg(target_arch = "x86_64")]
pub(in crate::kernels) mod avx512 {
    use std::arch::x86_64::*;

    use super::erf_coeffs;

    /// Lane masks for a panel whose last `valid` (at most 32) columns are real.
    pub(in crate::kernels) fn column_masks(valid: usize) -> (__mmask16, __mmask16) {
        let low = if valid >= 16 {
            0xffff
        } else {
            ((1u32 << valid) - 1) as u16
        };
        let high = if valid >= 32 {
            0xffff
        } else if valid > 16 {
            ((1u32 << (valid - 16)) - 1) as u16
        } else {
            0
        };
        (low, high)
    }

    /// The erf GELU of 16 lanes, with the same rational erf as `super::erf_fast`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::kernels) fn gelu_erf(x: __m512) -> __m512 {
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
