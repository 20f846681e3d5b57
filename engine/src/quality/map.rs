//! A 2-D map of the catalogue: t-SNE places items whose vectors are close next to each
//! other. The engine returns the coordinates; the command line draws them (PNG or HTML).
//!
//! Vectors are compared by cosine similarity, as everywhere else in Trio: they are scaled to
//! unit length, where Euclidean distance is `√(2 − 2·cos)`.

use bhtsne::{tSNE, Neighbor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Knobs of the t-SNE layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutOptions {
    /// Effective number of neighbours each point tries to keep close (5–50 is usual;
    /// lowered automatically for tiny inputs).
    pub perplexity: f32,
    /// Gradient-descent iterations.
    pub epochs: usize,
    /// Barnes–Hut accuracy: 0.5 is the usual trade-off, smaller is slower and more exact.
    pub theta: f32,
    /// Seed of the random initial positions.
    pub seed: u64,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            epochs: 1000,
            theta: 0.5,
            seed: 0,
        }
    }
}

/// Below this many points t-SNE has nothing to optimise; they are placed on a circle.
const MIN_TSNE_POINTS: usize = 5;

/// 2-D t-SNE coordinates of `vectors`, with default options and the given seed.
pub fn layout(vectors: &[Vec<f32>], seed: u64) -> Result<Vec<[f32; 2]>> {
    layout_with(
        vectors,
        &LayoutOptions {
            seed,
            ..LayoutOptions::default()
        },
    )
}

/// 2-D t-SNE coordinates of `vectors`. Neighbours are found exactly (all pairs, in
/// parallel): fine for some tens of thousands of items; beyond that, take the neighbours
/// from the vector index and call [`layout_from_neighbours`].
///
/// The seed fixes the starting positions. bhtsne sums forces on rayon's threads, and how
/// rayon splits that work varies with load, so with several threads two runs from one seed
/// give the same picture but not the same bits; inside a one-thread rayon pool they are
/// identical.
pub fn layout_with(vectors: &[Vec<f32>], opts: &LayoutOptions) -> Result<Vec<[f32; 2]>> {
    let unit = unit_vectors(vectors)?;
    let n = unit.len();
    if n < MIN_TSNE_POINTS {
        return Ok(circle(n));
    }
    let k = neighbour_count(n, opts.perplexity);
    let neighbours: Vec<Vec<(usize, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut sims: Vec<(usize, f32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, dot(&unit[i], &unit[j])))
                .collect();
            if sims.len() > k {
                sims.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                sims.truncate(k);
            }
            sims
        })
        .collect();
    layout_from_neighbours(&neighbours, opts)
}

/// 2-D t-SNE coordinates from each item's nearest neighbours `(index, cosine similarity)`,
/// e.g. as answered by the vector index. Only the neighbour graph matters, so this scales to
/// catalogues where comparing all pairs would not. The item itself, repeats and
/// out-of-range indices are dropped; every row is cut to the shortest row's length.
pub fn layout_from_neighbours(
    neighbours: &[Vec<(usize, f32)>],
    opts: &LayoutOptions,
) -> Result<Vec<[f32; 2]>> {
    validate_layout(opts)?;
    let n = neighbours.len();
    if n < MIN_TSNE_POINTS {
        return Ok(circle(n));
    }
    let mut rows: Vec<Vec<Neighbor<f32>>> = Vec::with_capacity(n);
    for (i, row) in neighbours.iter().enumerate() {
        let mut clean: Vec<(usize, f32)> = Vec::with_capacity(row.len());
        for &(j, sim) in row {
            if !sim.is_finite() {
                return Err(Error::InvalidItem {
                    what: "map neighbours".into(),
                    index: i,
                    reason: format!("similarity to item {j} is {sim}"),
                });
            }
            if j != i && j < n && !clean.iter().any(|c| c.0 == j) {
                clean.push((j, sim));
            }
        }
        clean.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        rows.push(
            clean
                .into_iter()
                .map(|(index, sim)| Neighbor {
                    index,
                    distance: (2.0 - 2.0 * sim.clamp(-1.0, 1.0)).max(0.0).sqrt(),
                })
                .collect(),
        );
    }
    let k = rows.iter().map(Vec::len).min().unwrap_or(0);
    if k == 0 {
        let index = rows.iter().position(Vec::is_empty).unwrap_or(0);
        return Err(Error::InvalidItem {
            what: "map neighbours".into(),
            index,
            reason: "no neighbours other than itself".into(),
        });
    }
    for row in &mut rows {
        row.truncate(k);
    }
    // bhtsne needs n − 1 ≥ 3·perplexity, and a perplexity above k/3 asks more of the
    // neighbour rows than they hold.
    let perplexity = opts.perplexity.min(k as f32 / 3.0).max(1.0);

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let init: Vec<f32> = (0..n * 2).map(|_| gaussian(&mut rng) * 1e-4).collect();
    let samples = vec![(); n];
    let mut tsne: tSNE<f32, ()> = tSNE::new(&samples);
    tsne.perplexity(perplexity)
        .epochs(opts.epochs)
        .initial_embedding(init)
        .barnes_hut_with_neighbors(opts.theta, &rows);
    let flat = tsne.embedding();
    Ok(flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

fn validate_layout(opts: &LayoutOptions) -> Result<()> {
    if !(opts.perplexity.is_finite() && opts.perplexity >= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "t-SNE perplexity must be at least 1, got {}",
            opts.perplexity
        )));
    }
    if !(opts.theta.is_finite() && opts.theta > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "t-SNE theta must be positive, got {}",
            opts.theta
        )));
    }
    Ok(())
}

/// Neighbours per point for a perplexity: t-SNE's customary three per unit of perplexity.
fn neighbour_count(n: usize, perplexity: f32) -> usize {
    ((3.0 * perplexity).ceil() as usize).clamp(1, n - 1)
}

fn unit_vectors(vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let dim = vectors.first().map_or(0, Vec::len);
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.len() != dim {
                return Err(Error::LengthMismatch {
                    what: format!("map vector {i}"),
                    expected: dim,
                    got: v.len(),
                });
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::InvalidItem {
                    what: "map vectors".into(),
                    index: i,
                    reason: format!("component {x} is not finite"),
                });
            }
            let norm = dot(v, v).sqrt();
            Ok(if norm > 0.0 {
                v.iter().map(|x| x / norm).collect()
            } else {
                v.clone()
            })
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn circle(n: usize) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let angle = std::f32::consts::TAU * i as f32 / n.max(1) as f32;
            [angle.cos(), angle.sin()]
        })
        .collect()
}

/// Standard normal sample (Box–Muller), enough for an initial embedding.
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_inputs_are_placed_without_tsne() {
        assert!(layout(&[], 0).expect("empty").is_empty());
        let two = layout(&[vec![1.0, 0.0], vec![0.0, 1.0]], 0).expect("two points");
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
    }

    #[test]
    fn ragged_or_broken_vectors_are_refused() {
        let ragged = vec![vec![1.0, 0.0]; 3]
            .into_iter()
            .chain([vec![1.0]])
            .collect::<Vec<_>>();
        assert!(matches!(
            layout(&ragged, 0),
            Err(Error::LengthMismatch { got: 1, .. })
        ));
        let nan = vec![vec![1.0, f32::NAN]];
        assert!(matches!(
            layout(&nan, 0),
            Err(Error::InvalidItem { index: 0, .. })
        ));
    }
}
