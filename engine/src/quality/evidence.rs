//! The evidence behind a reported duplicate pair, and the checks a candidate pair must pass
//! before it may be grouped.
//!
//! Hashes and vectors only *nominate* pairs: among flat icons, product variants or renders in
//! several colours they nominate far more look-alikes than copies. A nominated pair becomes a
//! link only if
//! - **its texts agree**, when both items have text: two items whose titles (or descriptions)
//!   say different things (another colour, another size, facing the other way) are different
//!   items however alike their pictures are. Texts are compared as written, after folding case,
//!   punctuation and spacing: they agree when at most one character in ten differs and they
//!   name the same numbers (a model number, a size). Sentence vectors are not used here: they
//!   place "light skin tone" and "dark skin tone" a cosine of 0.98 apart. An item without text
//!   (a bare image) is judged by its pixels alone;
//! - **its pixels agree**, when both items have a thumbnail: one global change (crop, rescale,
//!   mirror, re-encoding, a brightness shift) maps one picture onto the other, leaving at most
//!   a small share of pixels of another colour (see [`super::thumbnail::compare`]).

use serde::{Deserialize, Serialize};

use super::thumbnail;
use super::thumbnail::Thumbnail;

/// Why two items were judged copies: every measurement taken on the pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyEvidence {
    /// Hamming distance between the perceptual hashes (0–64), when both have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_distance: Option<u32>,
    /// Cosine similarity of the vectors, when one is among the other's nearest neighbours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Share of pixels of another colour under the best alignment (0 = same picture), when
    /// both have a thumbnail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_difference: Option<f32>,
    /// Whether that alignment mirrors one picture.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirrored: bool,
    /// Character similarity (0–1) of the texts both items have, the lowest over the fields,
    /// when they share one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_similarity: Option<f32>,
}

/// What the checks read of one item: its folded texts (by field position) and its thumbnail.
#[derive(Clone, Copy)]
pub(crate) struct Checked<'a> {
    pub texts: &'a [Option<String>],
    pub thumbnail: Option<&'a Thumbnail>,
}

/// The checks of this module with their cutoffs.
#[derive(Clone, Copy)]
pub(crate) struct Verifier<'a> {
    pub items: &'a [Checked<'a>],
    pub max_pixel_difference: f32,
    pub min_text_similarity: f32,
    /// Judge re-listings rather than copies: both items need text, and it must agree; the
    /// pixels are not compared.
    pub relisting: bool,
}

impl Verifier<'_> {
    /// The evidence for items `a` and `b` (indices) if their texts and pixels agree, `None`
    /// if either check fails. A mirrored alignment is tried only when `allow_mirror`.
    pub fn check(&self, a: usize, b: usize, allow_mirror: bool) -> Option<CopyEvidence> {
        let (x, y) = (&self.items[a], &self.items[b]);
        let mut evidence = CopyEvidence::default();
        let text_similarity = self.text_similarity(a, b);
        if text_similarity.is_some_and(|s| s < self.min_text_similarity) {
            return None;
        }
        evidence.text_similarity = text_similarity;
        if self.relisting {
            // Another photo of the same thing: the texts must say so, the pixels may differ.
            return text_similarity.map(|_| evidence);
        }
        if let (Some(px), Some(py)) = (x.thumbnail, y.thumbnail) {
            let m = thumbnail::compare_within(px, py, allow_mirror, self.max_pixel_difference)?;
            evidence.pixel_difference = Some(m.difference);
            evidence.mirrored = m.mirrored;
        }
        Some(evidence)
    }

    /// Whether the texts of items `a` and `b` say they are different items: such a pair may
    /// never share a group, even through members without text.
    pub fn texts_conflict(&self, a: usize, b: usize) -> bool {
        self.text_similarity(a, b)
            .is_some_and(|s| s < self.min_text_similarity)
    }

    /// The lowest agreement over the text fields both items have; `None` when they share none.
    fn text_similarity(&self, a: usize, b: usize) -> Option<f32> {
        let (x, y) = (&self.items[a], &self.items[b]);
        x.texts
            .iter()
            .zip(y.texts)
            .filter_map(|(tx, ty)| Some(text_agreement(tx.as_ref()?, ty.as_ref()?)))
            .reduce(f32::min)
    }
}

/// A text folded for comparison: lowercase letters and digits, one space between words.
/// `None` for a text with neither.
pub fn fold_text(text: &str) -> Option<String> {
    let folded = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ");
    (!folded.is_empty()).then_some(folded)
}

/// How far two folded texts agree, 0–1: their normalised character similarity (one minus the
/// edit distance over the longer length), or 0 when they name different numbers.
pub fn text_agreement(a: &str, b: &str) -> f32 {
    let numbers = |t: &str| -> Vec<String> {
        t.split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_start_matches('0').to_string())
            .collect()
    };
    if numbers(a) != numbers(b) {
        return 0.0;
    }
    strsim::normalized_levenshtein(a, b) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(a: &str, b: &str) -> f32 {
        text_agreement(&fold_text(a).unwrap(), &fold_text(b).unwrap())
    }

    #[test]
    fn texts_agree_on_spelling_not_on_meaningful_changes() {
        assert_eq!(
            agree("Blue Mug, 350 ml", "blue mug 350ml"),
            1.0 - 1.0 / 15.0
        );
        assert_eq!(agree("Waving hand", "waving  HAND!"), 1.0);
        assert!(
            agree(
                "waving hand: light skin tone",
                "waving hand: dark skin tone"
            ) < 0.9
        );
        assert!(agree("man cook", "woman cook") < 0.9);
        assert!(agree("person walking", "person walking facing right") < 0.9);
        assert_eq!(agree("Galaxy S21 256GB", "Galaxy S21 512GB"), 0.0);
        assert_eq!(agree("size 08", "size 8"), 1.0 - 1.0 / 7.0);
        assert!(fold_text(" -- ").is_none());
    }
}
