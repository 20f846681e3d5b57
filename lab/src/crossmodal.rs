//! Cross-modal search, measured: does a text query find the images it names when those items
//! carry no text at all?
//!
//! A text query enters the fused model the way `trio search --text` sends it (see
//! [`FusionInput::text_query`]: the query's sentence embedding in every text field, the image marked
//! absent); the gallery holds image-only vectors (every text field marked absent). Recall@k is
//! the share of queries with at least one relevant image among the `k` nearest, by exact
//! cosine similarity, so the figure measures the model's alignment, not the vector index.

use serde::{Deserialize, Serialize};

use trio_engine::models::fusion::{FusedModel, FusionInput};
use trio_engine::{Error, Result};

/// One text query and the gallery positions of the images it should find.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// The query's sentence embedding (the text tower's output).
    pub embedding: Vec<f32>,
    /// Positions in the gallery that count as a hit.
    pub relevant: Vec<usize>,
}

/// Text→image retrieval quality over a set of queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossModalRecall {
    pub queries: usize,
    pub gallery: usize,
    /// `(k, recall@k)`, in the order the ks were asked.
    pub recall: Vec<(usize, f64)>,
    /// Mean of 1 / (rank of the first relevant image).
    pub mean_reciprocal_rank: f64,
    /// Median rank (1-based) of the first relevant image.
    pub median_rank: usize,
    /// Each query's rank of its first relevant image, in query order, so a caller can break
    /// the figure down (by class, by vendor) without ranking again.
    #[serde(default)]
    pub ranks: Vec<usize>,
}

impl CrossModalRecall {
    pub fn at(&self, k: usize) -> Option<f64> {
        self.recall.iter().find(|(kk, _)| *kk == k).map(|(_, r)| *r)
    }
}

/// Image-only fused vectors of `images` (frozen image features), batched.
pub fn image_only_vectors(model: &FusedModel, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(1024) {
        let inputs: Vec<FusionInput> = chunk
            .iter()
            .map(|v| FusionInput {
                image: Some(v.clone()),
                text: Default::default(),
            })
            .collect();
        out.extend(model.fused_vectors(&inputs)?);
    }
    Ok(out)
}

/// Recall@k of `queries` against image-only `gallery` vectors (from [`image_only_vectors`]).
pub fn text_to_image_recall(
    model: &FusedModel,
    gallery: &[Vec<f32>],
    queries: &[TextQuery],
    ks: &[usize],
) -> Result<CrossModalRecall> {
    if queries.is_empty() || gallery.is_empty() {
        return Err(Error::InvalidArgument(
            "cross-modal recall needs at least one query and one gallery image".into(),
        ));
    }
    if let Some((i, q)) = queries
        .iter()
        .enumerate()
        .find(|(_, q)| q.relevant.is_empty() || q.relevant.iter().any(|&r| r >= gallery.len()))
    {
        return Err(Error::InvalidItem {
            what: "cross-modal query".into(),
            index: i,
            reason: format!(
                "relevant images {:?} must be non-empty positions in a gallery of {}",
                q.relevant,
                gallery.len()
            ),
        });
    }
    let fields = model.config().text_fields.clone();
    let mut ranks = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(512) {
        let inputs: Vec<FusionInput> = chunk
            .iter()
            .map(|q| FusionInput::text_query(&fields, &q.embedding))
            .collect();
        let vectors = model.fused_vectors(&inputs)?;
        for (q, v) in chunk.iter().zip(&vectors) {
            ranks.push(first_relevant_rank(v, gallery, &q.relevant));
        }
    }
    let n = ranks.len() as f64;
    let recall = ks
        .iter()
        .map(|&k| (k, ranks.iter().filter(|&&r| r <= k).count() as f64 / n))
        .collect();
    let mean_reciprocal_rank = ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n;
    let mut sorted = ranks.clone();
    sorted.sort_unstable();
    Ok(CrossModalRecall {
        queries: queries.len(),
        gallery: gallery.len(),
        recall,
        mean_reciprocal_rank,
        median_rank: sorted[sorted.len() / 2],
        ranks,
    })
}

/// 1-based rank of the best-scoring relevant image: one plus the number of gallery images that
/// score strictly higher (ties count in the query's favour, as any order among them is fair).
fn first_relevant_rank(query: &[f32], gallery: &[Vec<f32>], relevant: &[usize]) -> usize {
    let scores: Vec<f32> = gallery
        .iter()
        .map(|v| v.iter().zip(query).map(|(a, b)| a * b).sum())
        .collect();
    let best = relevant
        .iter()
        .map(|&r| scores[r])
        .fold(f32::NEG_INFINITY, f32::max);
    1 + scores.iter().filter(|&&s| s > best).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_strictly_better_images() {
        let gallery = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        assert_eq!(first_relevant_rank(&[0.0, 1.0], &gallery, &[1]), 1);
        assert_eq!(first_relevant_rank(&[0.0, 1.0], &gallery, &[0]), 3);
        assert_eq!(first_relevant_rank(&[0.0, 1.0], &gallery, &[0, 2]), 2);
    }
}
