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
const FINALISTS: usize = 2;

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
    compare_within(a, b, allow_mirror, 1.0).unwrap_or(PixelMatch {
        difference: 1.0,
        mirrored: false,
    })
}

/// [`compare`], giving up (`None`) as soon as the difference is sure to exceed
/// `max_difference`: most candidate pairs are not copies, and this is what keeps checking
/// them cheap.
pub fn compare_within(
    a: &Thumbnail,
    b: &Thumbnail,
    allow_mirror: bool,
    max_difference: f32,
) -> Option<PixelMatch> {
    let (fa, fb) = (a.to_f32(), b.to_f32());
    // A coarse pass on a sparse grid ranks every alignment; only the best are fully scored.
    let mut candidates: Vec<(f32, Alignment)> = alignments(allow_mirror)
        .map(|al| (coarse_difference(&fa, &fb, al), al))
        .collect();
    candidates.sort_by(|p, q| p.0.total_cmp(&q.0));
    let max_pixels = (max_difference * (SIDE * SIDE) as f32).floor() as usize;
    candidates
        .iter()
        .take(FINALISTS)
        .filter_map(|&(_, al)| {
            let (x, y) = laid_over(&fa, &fb, al);
            let differing = differing_pixels(&x, &y, max_pixels)?;
            Some(PixelMatch {
                difference: differing as f32 / (SIDE * SIDE) as f32,
                mirrored: al.mirrored,
            })
        })
        .min_by(|p, q| p.difference.total_cmp(&q.difference))
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

/// Where output pixel `i` (along one axis) samples a picture cropped to `side` of its extent
/// at position `d` (-1, 0 or 1 of the free margin).
fn source_coord(side: f32, d: f32, i: usize) -> f32 {
    let n = SIDE as f32;
    let extent = side * n;
    let margin = (n - extent) / 2.0;
    let v = margin + d * margin + (i as f32 + 0.5) * extent / n - 0.5;
    v.clamp(0.0, n - 1.0)
}

/// Channel `c` of picture `t` at the real-valued position (`x`, `y`), bilinearly.
fn bilinear(t: &[f32], x: f32, y: f32, c: usize) -> f32 {
    let (x_lo, fx) = (x.floor() as usize, x.fract());
    let (y_lo, fy) = (y.floor() as usize, y.fract());
    let (x_hi, y_hi) = ((x_lo + 1).min(SIDE - 1), (y_lo + 1).min(SIDE - 1));
    let at = |yy: usize, xx: usize| t[(yy * SIDE + xx) * 3 + c];
    let top = at(y_lo, x_lo) * (1.0 - fx) + at(y_lo, x_hi) * fx;
    let bottom = at(y_hi, x_lo) * (1.0 - fx) + at(y_hi, x_hi) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The square of side `side · SIDE` at position (`dx`, `dy`) of the free margin, resampled
/// bilinearly to `SIDE × SIDE`.
fn resample(t: &[f32], side: f32, dx: f32, dy: f32) -> Vec<f32> {
    if side >= 1.0 {
        return t.to_vec();
    }
    let mut out = Vec::with_capacity(BYTES);
    for yi in 0..SIDE {
        let y = source_coord(side, dy, yi);
        for xi in 0..SIDE {
            let x = source_coord(side, dx, xi);
            for c in 0..3 {
                out.push(bilinear(t, x, y, c));
            }
        }
    }
    out
}

/// Step of the sparse grid the coarse pass samples (an 8 × 8 grid).
const COARSE_STEP: usize = 4;

/// Mean absolute difference of the two pictures under `al`, on a sparse grid sampled straight
/// from the thumbnails: cheap enough to rank every alignment.
fn coarse_difference(a: &[f32], b: &[f32], al: Alignment) -> f32 {
    let mut sum = 0.0;
    let mut n = 0;
    for row in (COARSE_STEP / 2..SIDE).step_by(COARSE_STEP) {
        for col in (COARSE_STEP / 2..SIDE).step_by(COARSE_STEP) {
            // Picture `a` is the mirrored one: its column runs backwards.
            let a_col = if al.mirrored { SIDE - 1 - col } else { col };
            let (ax, ay, bx, by) = if al.crop_a {
                (
                    source_coord(al.side, al.dx, a_col),
                    source_coord(al.side, al.dy, row),
                    col as f32,
                    row as f32,
                )
            } else {
                (
                    a_col as f32,
                    row as f32,
                    source_coord(al.side, al.dx, col),
                    source_coord(al.side, al.dy, row),
                )
            };
            for c in 0..3 {
                sum += (bilinear(a, ax, ay, c) - bilinear(b, bx, by, c)).abs();
            }
            n += 3;
        }
    }
    sum / n as f32
}

/// Number of pixels whose colour differs from every pixel within one step in the other
/// picture by more than [`TOLERANCE`] in some channel, checked both ways: a one-pixel
/// misalignment (sub-pixel crops, resampling) does not count, a region of another colour does.
/// `None` once the count passes `limit`.
fn differing_pixels(x: &[f32], y: &[f32], limit: usize) -> Option<usize> {
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
                if count > limit {
                    return None;
                }
            }
        }
    }
    Some(count)
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
