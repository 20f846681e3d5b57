//! The planted-duplicate benchmark: copies a catalogue typically holds of one picture, planted
//! into a catalogue, and pair-level scores of the groups `trio duplicates` finds against them.

use std::collections::HashSet;

use image::imageops::FilterType;
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use trio_engine::quality::duplicates::DuplicateGroup;
use trio_engine::quality::union_find::UnionFind;
use trio_engine::{Error, Result};

/// Pair-level agreement between found groups and planted duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairScores {
    /// Correct pairs / found pairs (1 when nothing was found).
    pub precision: f64,
    /// Correct pairs / true pairs (1 when nothing was planted).
    pub recall: f64,
    pub found_pairs: usize,
    pub true_pairs: usize,
    pub correct_pairs: usize,
}

/// Scores `found_groups` against `planted_pairs` (original, copy).
///
/// Both sides are read as groups: every pair of members of a found group counts as found
/// (so a giant chained group costs precision), and the true pairs are every pair within a
/// family of planted copies (copies of one original are duplicates of each other too).
/// A found pair outside every family counts as wrong even if the catalogue happens to hold
/// that duplicate naturally.
pub fn pair_precision_recall(
    found_groups: &[DuplicateGroup],
    planted_pairs: &[(u64, u64)],
) -> PairScores {
    let found: HashSet<(u64, u64)> = found_groups
        .iter()
        .flat_map(|g| all_pairs(&g.members))
        .collect();

    let mut keys: Vec<u64> = planted_pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    keys.sort_unstable();
    keys.dedup();
    let pos = |k: u64| keys.binary_search(&k).unwrap_or(0);
    let mut families = UnionFind::new(keys.len());
    for &(a, b) in planted_pairs {
        families.union(pos(a), pos(b));
    }
    let truth: HashSet<(u64, u64)> = families
        .groups(2)
        .iter()
        .flat_map(|g| all_pairs(&g.iter().map(|&i| keys[i]).collect::<Vec<_>>()))
        .collect();

    let correct = found.intersection(&truth).count();
    let ratio = |num: usize, den: usize| {
        if den == 0 {
            1.0
        } else {
            num as f64 / den as f64
        }
    };
    PairScores {
        precision: ratio(correct, found.len()),
        recall: ratio(correct, truth.len()),
        found_pairs: found.len(),
        true_pairs: truth.len(),
        correct_pairs: correct,
    }
}

fn all_pairs(members: &[u64]) -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    for (i, &a) in members.iter().enumerate() {
        for &b in &members[i + 1..] {
            if a != b {
                pairs.push((a.min(b), a.max(b)));
            }
        }
    }
    pairs
}

/// JPEG quality of the re-encoded planted copy (a visibly lossy setting).
const PLANTED_JPEG_QUALITY: u8 = 40;
/// Brightness added to every channel of the recoloured copy (about 8% of full scale).
const PLANTED_BRIGHTNESS: i32 = 20;

/// The copies a catalogue typically holds of one picture, to plant and then find:
/// `resize_50` (half size), `crop_90` (centre 90% of each side), `jpeg_q40` (re-encoded at
/// quality 40, alpha flattened on white), `brighten_20` (every channel +20 of 255) and
/// `flip_h` (mirror image; perceptual hashes miss it by design, vectors should not).
pub fn plant_copies(img: &DynamicImage) -> Result<Vec<(&'static str, DynamicImage)>> {
    let (w, h) = (img.width(), img.height());
    let half = img.resize_exact((w / 2).max(1), (h / 2).max(1), FilterType::Lanczos3);
    let (cw, ch) = (((w * 9) / 10).max(1), ((h * 9) / 10).max(1));
    let crop = img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch);
    Ok(vec![
        ("resize_50", half),
        ("crop_90", crop),
        ("jpeg_q40", jpeg_round_trip(img, PLANTED_JPEG_QUALITY)?),
        ("brighten_20", img.brighten(PLANTED_BRIGHTNESS)),
        ("flip_h", img.fliph()),
    ])
}

fn jpeg_round_trip(img: &DynamicImage, quality: u8) -> Result<DynamicImage> {
    let flat = flatten_on_white(img);
    let mut bytes = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    flat.write_with_encoder(encoder)
        .map_err(|source| Error::ImageEncode {
            what: "planted JPEG copy".into(),
            source,
        })?;
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).map_err(|source| {
        Error::ImageEncode {
            what: "planted JPEG copy (decoding it back)".into(),
            source,
        }
    })
}

/// RGB image of `img` composited on white, as JPEG has no alpha.
fn flatten_on_white(img: &DynamicImage) -> DynamicImage {
    let mut rgb = image::RgbImage::new(img.width(), img.height());
    for (out, px) in rgb.pixels_mut().zip(img.to_rgba8().pixels()) {
        let a = u16::from(px[3]);
        for c in 0..3 {
            out[c] = ((u16::from(px[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    DynamicImage::ImageRgb8(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trio_engine::quality::duplicates::DuplicateKind;

    #[test]
    fn pair_scores_read_both_sides_as_groups() {
        let group = |members: Vec<u64>| DuplicateGroup {
            kind: DuplicateKind::Near,
            members,
            pairs: Vec::new(),
        };
        // Family {1,2,3} (3 true pairs) and {10,11} (1 true pair).
        let planted = [(1, 2), (1, 3), (10, 11)];
        let found = [group(vec![1, 2, 3]), group(vec![20, 21])];
        let s = pair_precision_recall(&found, &planted);
        assert_eq!((s.found_pairs, s.true_pairs, s.correct_pairs), (4, 4, 3));
        assert!((s.precision - 0.75).abs() < 1e-12);
        assert!((s.recall - 0.75).abs() < 1e-12);
        let none = pair_precision_recall(&[], &planted);
        assert_eq!((none.precision, none.recall), (1.0, 0.0));
    }
}
