//! Perceptual hashes: 64-bit fingerprints that stay close when an image is resized,
//! re-encoded or slightly recoloured, so copies of one picture can be found without
//! comparing pixels. Compare two hashes with [`hamming`]; a few bits apart means "same
//! picture".
//!
//! Neither hash survives a mirror image or a rotation; those copies are left to the
//! image-vector neighbours in [`super::duplicates`].

use image::imageops::{self, FilterType};
use image::{DynamicImage, GenericImageView, ImageBuffer, Luma};

/// Side of the grayscale thumbnail the DCT runs on (pHash's classic 32).
const DCT_SIDE: usize = 32;
/// Side of the block of low frequencies kept (8 × 8 = 64 bits).
const LOW_FREQ_SIDE: usize = 8;

type GrayF32 = ImageBuffer<Luma<f32>, Vec<f32>>;

/// DCT-based perceptual hash: the image, alpha composited on white, becomes a 32 × 32
/// grayscale thumbnail; a 2-D DCT-II keeps its lowest 8 × 8 frequencies; each of the 63
/// non-DC coefficients gives one bit, set when the coefficient is above their median. The
/// DC bit (the most significant) is always 0.
///
/// Low frequencies describe the layout of light and dark, which resizing, JPEG artefacts
/// and a brightness shift barely move; leaving out the DC term (the mean brightness) makes
/// the hash blind to an overall brightness change. The same construction as imagehash's
/// `phash`, minus its DC bit.
pub fn phash(img: &DynamicImage) -> u64 {
    let thumb = grayscale_thumbnail(img, DCT_SIDE as u32, DCT_SIDE as u32);
    let pixels: Vec<f32> = thumb.into_raw();
    let dct = dct_2d(&pixels, DCT_SIDE);

    let ac: Vec<f32> = (1..LOW_FREQ_SIDE * LOW_FREQ_SIDE)
        .map(|i| dct[(i / LOW_FREQ_SIDE) * DCT_SIDE + i % LOW_FREQ_SIDE])
        .collect();
    let median = median(&ac);
    bits_from(std::iter::once(false).chain(ac.iter().map(|&c| c > median)))
}

/// Difference hash: a 9 × 8 grayscale thumbnail, one bit per horizontally adjacent pair
/// saying whether brightness rises to the right. Cheaper than [`phash`] and as robust to
/// re-encoding, a little weaker on crops.
pub fn dhash(img: &DynamicImage) -> u64 {
    let thumb = grayscale_thumbnail(img, 9, 8);
    let mut bits = Vec::with_capacity(64);
    for y in 0..8 {
        for x in 0..8 {
            let left = thumb.get_pixel(x, y)[0];
            let right = thumb.get_pixel(x + 1, y)[0];
            bits.push(right > left);
        }
    }
    bits_from(bits.into_iter())
}

/// Number of differing bits between two hashes (0 = identical, 64 = opposite).
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Luma thumbnail of `img` after compositing any alpha on white, so a transparent PNG and
/// its flattened JPEG copy hash alike. The triangle filter widens with the downscale ratio,
/// which averages away noise and JPEG blocks.
fn grayscale_thumbnail(img: &DynamicImage, width: u32, height: u32) -> GrayF32 {
    let (w, h) = img.dimensions();
    // Pixel by pixel, so a large photo costs one f32 per pixel, not a full RGBA copy.
    let luma: Vec<f32> = img
        .pixels()
        .map(|(_, _, p)| {
            let [r, g, b, a] = p.0.map(|c| f32::from(c) / 255.0);
            let over_white = |c: f32| c * a + (1.0 - a);
            // ITU-R BT.601 luma, the weights PIL's "L" mode and most hashing libraries use.
            // Kept in 0..=1: `imageops::resize` clamps float pixels to that range.
            0.299 * over_white(r) + 0.587 * over_white(g) + 0.114 * over_white(b)
        })
        .collect();
    let gray = GrayF32::from_raw(w, h, luma).unwrap_or_else(|| GrayF32::new(w, h));
    imageops::resize(&gray, width, height, FilterType::Triangle)
}

/// 2-D DCT-II of a square `side × side` row-major block, unnormalised: only the order of
/// the coefficients matters to the hash.
fn dct_2d(pixels: &[f32], side: usize) -> Vec<f32> {
    let basis: Vec<f32> = (0..side * side)
        .map(|i| {
            let (k, n) = (i / side, i % side);
            (std::f32::consts::PI / side as f32 * (n as f32 + 0.5) * k as f32).cos()
        })
        .collect();
    // Rows first, then columns: out = B · X · Bᵀ.
    let mut rows = vec![0f32; side * side];
    for y in 0..side {
        for k in 0..side {
            rows[y * side + k] = (0..side)
                .map(|n| pixels[y * side + n] * basis[k * side + n])
                .sum();
        }
    }
    let mut out = vec![0f32; side * side];
    for k in 0..side {
        for x in 0..side {
            out[k * side + x] = (0..side)
                .map(|n| rows[n * side + x] * basis[k * side + n])
                .sum();
        }
    }
    out
}

fn median(values: &[f32]) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Packs up to 64 booleans into a hash, the first one as the most significant bit.
fn bits_from(bits: impl Iterator<Item = bool>) -> u64 {
    bits.fold(0u64, |acc, bit| (acc << 1) | u64::from(bit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn dct_of_a_constant_block_is_only_dc() {
        let dct = dct_2d(&[3.0; 16], 4);
        assert!((dct[0] - 48.0).abs() < 1e-4);
        assert!(dct[1..].iter().all(|c| c.abs() < 1e-4), "{dct:?}");
    }

    #[test]
    fn dct_matches_a_direct_sum() {
        let side = 5;
        let x: Vec<f32> = (0..side * side).map(|i| ((i * 7) % 11) as f32).collect();
        let dct = dct_2d(&x, side);
        let pi = std::f32::consts::PI;
        for (v, u) in [(0, 1), (2, 3), (4, 4)] {
            let mut direct = 0.0;
            for y in 0..side {
                for xx in 0..side {
                    direct += x[y * side + xx]
                        * (pi / side as f32 * (xx as f32 + 0.5) * u as f32).cos()
                        * (pi / side as f32 * (y as f32 + 0.5) * v as f32).cos();
                }
            }
            assert!((dct[v * side + u] - direct).abs() < 1e-3, "({v},{u})");
        }
    }

    #[test]
    fn transparent_pixels_hash_like_white() {
        let mut transparent = RgbaImage::from_pixel(64, 64, Rgba([0, 0, 0, 0]));
        let mut white = RgbImage::from_pixel(64, 64, Rgb([255, 255, 255]));
        for y in 10..40 {
            for x in 5..30 {
                transparent.put_pixel(x, y, Rgba([200, 20, 20, 255]));
                white.put_pixel(x, y, Rgb([200, 20, 20]));
            }
        }
        let a = DynamicImage::ImageRgba8(transparent);
        let b = DynamicImage::ImageRgb8(white);
        assert_eq!(phash(&a), phash(&b));
        assert_eq!(dhash(&a), dhash(&b));
    }

    #[test]
    fn different_layouts_hash_differently() {
        let blob_at = |cx: f32, cy: f32| {
            let img = RgbImage::from_fn(64, 64, |x, y| {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                Rgb([(d * 4.0).min(255.0) as u8; 3])
            });
            DynamicImage::ImageRgb8(img)
        };
        let (a, b) = (blob_at(16.0, 16.0), blob_at(48.0, 40.0));
        assert!(
            hamming(phash(&a), phash(&b)) >= 16,
            "{}",
            hamming(phash(&a), phash(&b))
        );
        assert!(
            hamming(dhash(&a), dhash(&b)) >= 16,
            "{}",
            hamming(dhash(&a), dhash(&b))
        );
        assert_eq!(phash(&a) >> 63, 0, "the DC bit is always 0");
    }

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }

    #[test]
    fn bits_are_packed_msb_first() {
        assert_eq!(bits_from([true, false, true].into_iter()), 0b101);
    }
}
