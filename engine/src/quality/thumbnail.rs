//! Colour thumbnails and the pixel check that decides whether two images are copies.
//!
//! Vectors and perceptual hashes say two pictures *look alike*; among flat icons, product
//! variants or skin-tone renders that is true of many pairs that are not copies. A copy is the
//! same pixels after one global change: rescaled, cropped, mirrored, re-encoded, brightened.
//! [`compare`] tests exactly that on 32 × 32 colour thumbnails: it searches the crops and the
//! mirror image that could map one picture onto the other, and on the best alignment counts the
//! pixels whose colour still differs. A recoloured variant (a red and a blue heart, two skin
//! tones, two flags) differs over a whole region, a copy only in a little noise.

use image::imageops::{self, FilterType};
use image::{DynamicImage, GenericImageView, ImageBuffer, Rgb};

/// Side of the stored thumbnail, in pixels.
pub const SIDE: usize = 32;
/// Bytes of one stored thumbnail (RGB, one byte per channel).
pub const BYTES: usize = SIDE * SIDE * 3;

/// Colour change (0–1 per channel) a pixel may show and still count as the same: above JPEG
/// noise and a moderate brightness or contrast change, below a recolouring.
const TOLERANCE: f32 = 0.15;
/// Crop sides tried, as a share of the larger picture (a copy cropped to 80% is still found).
const CROPS: [f32; 5] = [1.0, 0.95, 0.9, 0.85, 0.8];
/// Alignments fully scored after the coarse pass.
const FINALISTS: usize = 3;

/// A 32 × 32 RGB thumbnail of an image composited on white, `BYTES` bytes row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail(Vec<u8>);

impl Thumbnail {
    /// The thumbnail of a decoded image: alpha composited on white (a transparent PNG and its
    /// flattened JPEG copy look alike), downscaled with a filter that averages away noise.
    pub fn of(img: &DynamicImage) -> Self {
        let (w, h) = img.dimensions();
        let rgb: Vec<u8> = img
            .pixels()
            .flat_map(|(_, _, p)| {
                let [r, g, b, a] = p.0;
                let a = u32::from(a);
                let over_white = move |c: u8| ((u32::from(c) * a + 255 * (255 - a)) / 255) as u8;
                [over_white(r), over_white(g), over_white(b)]
            })
            .collect();
        let flat = ImageBuffer::<Rgb<u8>, Vec<u8>>::from_raw(w, h, rgb)
            .unwrap_or_else(|| ImageBuffer::new(w.max(1), h.max(1)));
        let small = imageops::resize(&flat, SIDE as u32, SIDE as u32, FilterType::Triangle);
        Thumbnail(small.into_raw())
    }

    /// A thumbnail from its stored bytes; `None` when the length is not [`BYTES`].
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() == BYTES).then_some(Thumbnail(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn to_f32(&self) -> Vec<f32> {
        self.0.iter().map(|&c| f32::from(c) / 255.0).collect()
    }
}

/// How well two thumbnails match under the best alignment found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelMatch {
    /// Share of pixels (0–1) whose colour differs by more than the tolerance even allowing a
    /// one-pixel shift: 0 for the same picture, a few hundredths for a re-encoded or cropped
    /// copy, more for a variant.
    pub difference: f32,
    /// Whether the best alignment mirrors one picture left to right.
    pub mirrored: bool,
}

/// One way of laying picture `a` over picture `b`.
#[derive(Debug, Clone, Copy)]
struct Alignment {
    /// Which picture is cropped (the other is taken whole).
    crop_a: bool,
    /// Side of the crop as a share of the whole.
    side: f32,
    /// Crop position: -1, 0 or 1 of the free margin, horizontally and vertically.
    dx: f32,
    dy: f32,
    mirrored: bool,
}

/// Compares two thumbnails over crops of up to 20% of the side, in either direction, and the
/// mirror image when `allow_mirror` (many distinct things come in mirrored pairs, so callers
/// decide when a mirror image counts as a copy).
pub fn compare(a: &Thumbnail, b: &Thumbnail, allow_mirror: bool) -> PixelMatch {
    let (fa, fb) = (a.to_f32(), b.to_f32());
    let mut candidates: Vec<(f32, Alignment)> = alignments(allow_mirror)
        .map(|al| {
            let (x, y) = laid_over(&fa, &fb, al);
            (coarse_difference(&x, &y), al)
        })
        .collect();
    candidates.sort_by(|p, q| p.0.total_cmp(&q.0));
    candidates
        .iter()
        .take(FINALISTS)
        .map(|&(_, al)| {
            let (x, y) = laid_over(&fa, &fb, al);
            PixelMatch {
                difference: tolerant_difference(&x, &y),
                mirrored: al.mirrored,
            }
        })
        .min_by(|p, q| p.difference.total_cmp(&q.difference))
        .unwrap_or(PixelMatch {
            difference: 1.0,
            mirrored: false,
        })
}

fn alignments(allow_mirror: bool) -> impl Iterator<Item = Alignment> {
    let mirrors: &'static [bool] = if allow_mirror {
        &[false, true]
    } else {
        &[false]
    };
    mirrors.iter().flat_map(|&mirrored| {
        CROPS.iter().flat_map(move |&side| {
            let positions: &'static [(f32, f32)] = if side < 1.0 {
                &[(0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
            } else {
                &[(0.0, 0.0)]
            };
            let directions: &'static [bool] = if side < 1.0 { &[true, false] } else { &[true] };
            directions.iter().flat_map(move |&crop_a| {
                positions.iter().map(move |&(dx, dy)| Alignment {
                    crop_a,
                    side,
                    dx,
                    dy,
                    mirrored,
                })
            })
        })
    })
}

/// The two pictures as aligned `SIDE × SIDE` RGB grids: the cropped one resampled, the
/// mirrored one (always `a`) flipped.
fn laid_over(a: &[f32], b: &[f32], al: Alignment) -> (Vec<f32>, Vec<f32>) {
    let crop = |t: &[f32]| resample(t, al.side, al.dx, al.dy);
    let (mut x, y) = if al.crop_a {
        (crop(a), b.to_vec())
    } else {
        (a.to_vec(), crop(b))
    };
    if al.mirrored {
        for row in x.chunks_exact_mut(SIDE * 3) {
            for i in 0..SIDE / 2 {
                for c in 0..3 {
                    row.swap(i * 3 + c, (SIDE - 1 - i) * 3 + c);
                }
            }
        }
    }
    (x, y)
}

/// The square of side `side · SIDE` at position (`dx`, `dy`) of the free margin, resampled
/// bilinearly to `SIDE × SIDE`.
fn resample(t: &[f32], side: f32, dx: f32, dy: f32) -> Vec<f32> {
    if side >= 1.0 {
        return t.to_vec();
    }
    let n = SIDE as f32;
    let extent = side * n;
    let margin = (n - extent) / 2.0;
    let (x0, y0) = (margin + dx * margin, margin + dy * margin);
    let coord = |origin: f32, i: usize| {
        let v = origin + (i as f32 + 0.5) * extent / n - 0.5;
        v.clamp(0.0, n - 1.0)
    };
    let mut out = Vec::with_capacity(BYTES);
    for yi in 0..SIDE {
        let y = coord(y0, yi);
        let (y_lo, fy) = (y.floor() as usize, y.fract());
        let y_hi = (y_lo + 1).min(SIDE - 1);
        for xi in 0..SIDE {
            let x = coord(x0, xi);
            let (x_lo, fx) = (x.floor() as usize, x.fract());
            let x_hi = (x_lo + 1).min(SIDE - 1);
            for c in 0..3 {
                let at = |yy: usize, xx: usize| t[(yy * SIDE + xx) * 3 + c];
                let top = at(y_lo, x_lo) * (1.0 - fx) + at(y_lo, x_hi) * fx;
                let bottom = at(y_hi, x_lo) * (1.0 - fx) + at(y_hi, x_hi) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

/// Mean absolute difference on every other pixel: cheap enough to rank all alignments.
fn coarse_difference(x: &[f32], y: &[f32]) -> f32 {
    let mut sum = 0.0;
    let mut n = 0;
    for row in (0..SIDE).step_by(2) {
        for col in (0..SIDE).step_by(2) {
            let p = (row * SIDE + col) * 3;
            for c in 0..3 {
                sum += (x[p + c] - y[p + c]).abs();
            }
            n += 3;
        }
    }
    sum / n as f32
}

/// Share of pixels whose colour differs from every pixel within one step in the other picture
/// by more than [`TOLERANCE`] in some channel, checked both ways: a one-pixel misalignment
/// (sub-pixel crops, resampling) does not count, a region of another colour does.
fn tolerant_difference(x: &[f32], y: &[f32]) -> f32 {
    let differs = |p: &[f32], q: &[f32], row: usize, col: usize| {
        let at = (row * SIDE + col) * 3;
        let px = &p[at..at + 3];
        for r in row.saturating_sub(1)..=(row + 1).min(SIDE - 1) {
            for c in col.saturating_sub(1)..=(col + 1).min(SIDE - 1) {
                let qt = (r * SIDE + c) * 3;
                if (0..3).all(|ch| (px[ch] - q[qt + ch]).abs() <= TOLERANCE) {
                    return false;
                }
            }
        }
        true
    };
    let mut count = 0usize;
    for row in 0..SIDE {
        for col in 0..SIDE {
            if differs(x, y, row, col) || differs(y, x, row, col) {
                count += 1;
            }
        }
    }
    count as f32 / (SIDE * SIDE) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// A picture with structure: a coloured disc off centre and a bar, on transparency.
    fn picture(disc: [u8; 3]) -> DynamicImage {
        let mut img = RgbaImage::from_pixel(96, 96, Rgba([0, 0, 0, 0]));
        for y in 0..96u32 {
            for x in 0..96u32 {
                let (dx, dy) = (x as f32 - 40.0, y as f32 - 44.0);
                if dx * dx + dy * dy < 26.0 * 26.0 {
                    img.put_pixel(x, y, Rgba([disc[0], disc[1], disc[2], 255]));
                }
                if (70..80).contains(&x) && (10..60).contains(&y) {
                    img.put_pixel(x, y, Rgba([20, 20, 20, 255]));
                }
            }
        }
        DynamicImage::ImageRgba8(img)
    }

    #[test]
    fn copies_match_and_recoloured_variants_do_not() {
        let original = picture([220, 40, 40]);
        let thumb = Thumbnail::of(&original);
        let same = compare(&thumb, &thumb, false);
        assert_eq!(same.difference, 0.0);

        let half = original.resize_exact(48, 48, FilterType::Triangle);
        assert!(compare(&thumb, &Thumbnail::of(&half), false).difference < 0.05);
        let crop = original.crop_imm(5, 5, 86, 86);
        let cropped = compare(&thumb, &Thumbnail::of(&crop), false);
        assert!(cropped.difference < 0.05, "{cropped:?}");

        let blue = Thumbnail::of(&picture([40, 40, 220]));
        let variant = compare(&thumb, &blue, true);
        assert!(variant.difference > 0.2, "{variant:?}");
    }

    #[test]
    fn a_mirror_image_matches_only_when_allowed() {
        let original = picture([220, 40, 40]);
        let thumb = Thumbnail::of(&original);
        let mirrored = Thumbnail::of(&original.fliph());
        let allowed = compare(&thumb, &mirrored, true);
        assert!(allowed.mirrored && allowed.difference < 0.01, "{allowed:?}");
        assert!(compare(&thumb, &mirrored, false).difference > 0.1);
    }

    #[test]
    fn stored_bytes_round_trip_and_wrong_lengths_are_refused() {
        let thumb = Thumbnail::of(&picture([1, 2, 3]));
        let back = Thumbnail::from_bytes(thumb.as_bytes().to_vec()).unwrap();
        assert_eq!(back, thumb);
        assert!(Thumbnail::from_bytes(vec![0; 10]).is_none());
    }
}
