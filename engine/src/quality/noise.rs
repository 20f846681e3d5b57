//! Which items are probably mislabelled?
//!
//! Two sources of evidence about an item's true class, both independent of its own label:
//!
//! - the fused model's **out-of-fold** predicted probabilities (the model never saw the item's
//!   label when predicting it), and
//! - the **labels of its nearest neighbours** in the fused vector space, weighted by
//!   similarity.
//!
//! [`rank_label_issues`] mixes the two into one probability vector per item and runs
//! confident learning (Northcutt, Jiang & Chuang, 2021) on it. Confident learning does not
//! flag "low probability" with one global cut-off; it counts, per class, how many items of
//! given label `i` look confidently like class `j` (above class `j`'s *average*
//! self-confidence, so hard classes get a lower bar), and then flags that many items per
//! `(i, j)` cell, those with the largest margin `p[j] − p[i]`
//! (cleanlab's `prune_by_noise_rate`).
//!
//! [`find_label_issues_confident_learning`] is that algorithm alone, a faithful
//! re-implementation of cleanlab 2.9's default `find_label_issues`, kept for comparison.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One item whose label may be wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelIssue {
    /// Position of the item in the inputs.
    pub index: usize,
    pub given_label: usize,
    /// The most likely other class.
    pub suggested_label: usize,
    /// How likely the given label is wrong, in `[0, 1]`: one minus the combined probability
    /// of the given label. Issues are sorted by it, highest first.
    pub score: f32,
    /// The model's out-of-fold probability of the given label.
    pub p_given: f32,
    /// Similarity-weighted share of the neighbours carrying the given label; `None` when the
    /// item had no usable neighbours.
    pub neighbour_agreement: Option<f32>,
    /// Whether confident learning on the combined evidence flags the item. Unflagged items
    /// only appear with [`LabelNoiseOptions::rank_all`].
    pub flagged: bool,
}

/// Knobs of [`rank_label_issues`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelNoiseOptions {
    /// Weight of the neighbours' vote against the model's probabilities, in `[0, 1]`:
    /// 0 is confident learning on the model alone, 1 on the neighbours alone. Default 0: on a
    /// validation planting of the demo (20% of labels flipped, seed 1) the fused model's
    /// out-of-fold probabilities alone found the flips best (F1 0.920; 0.915, 0.900, 0.892 at
    /// 0.25, 0.5, 0.75). The vote pays where the model underfits its classes (see the tests).
    pub neighbour_weight: f32,
    /// Return every item ranked, not only the flagged ones.
    pub rank_all: bool,
}

impl Default for LabelNoiseOptions {
    fn default() -> Self {
        Self {
            neighbour_weight: 0.0,
            rank_all: false,
        }
    }
}

/// Ranks items by how likely their label is wrong, combining out-of-fold probabilities with
/// the neighbours' labels (see the module docs).
///
/// - `labels[i]`: the given class of item `i`, in `0..K`.
/// - `oof_probs[i]`: out-of-fold predicted probabilities of item `i`, `K` values.
/// - `neighbours[i]`: nearest neighbours of item `i` as `(item index, cosine similarity)`;
///   the item itself is skipped and negative similarities count as zero. Pass an empty slice
///   to use the probabilities alone.
///
/// Returns the flagged items (all items with `rank_all`), most suspicious first.
pub fn rank_label_issues(
    labels: &[usize],
    oof_probs: &[Vec<f32>],
    neighbours: &[Vec<(usize, f32)>],
    opts: &LabelNoiseOptions,
) -> Result<Vec<LabelIssue>> {
    let probs = ProbMatrix::new(labels, oof_probs)?;
    let w = f64::from(opts.neighbour_weight);
    if !(0.0..=1.0).contains(&w) {
        return Err(Error::InvalidArgument(format!(
            "neighbour_weight must be in [0, 1], got {}",
            opts.neighbour_weight
        )));
    }
    if !neighbours.is_empty() && neighbours.len() != labels.len() {
        return Err(Error::LengthMismatch {
            what: "label-noise neighbour lists".into(),
            expected: labels.len(),
            got: neighbours.len(),
        });
    }

    let k = probs.classes;
    let mut combined = probs.clone();
    let mut agreement: Vec<Option<f32>> = vec![None; labels.len()];
    for (i, row) in neighbours.iter().enumerate() {
        let Some(vote) = neighbour_vote(i, row, labels, k)? else {
            continue;
        };
        agreement[i] = Some(vote[labels[i]] as f32);
        for (c, v) in vote.iter().enumerate() {
            let p = probs.get(i, c);
            combined.set(i, c, (1.0 - w) * p + w * v);
        }
    }

    let flagged = confident_learning_mask(labels, &combined);
    let mut issues: Vec<LabelIssue> = (0..labels.len())
        .filter(|&i| opts.rank_all || flagged[i])
        .map(|i| {
            let given = labels[i];
            let suggested = (0..k)
                .filter(|&c| c != given)
                .max_by(|&a, &b| {
                    combined
                        .get(i, a)
                        .total_cmp(&combined.get(i, b))
                        .then(b.cmp(&a))
                })
                .unwrap_or(given);
            LabelIssue {
                index: i,
                given_label: given,
                suggested_label: suggested,
                score: (1.0 - combined.get(i, given)).clamp(0.0, 1.0) as f32,
                p_given: probs.get(i, given) as f32,
                neighbour_agreement: agreement[i],
                flagged: flagged[i],
            }
        })
        .collect();
    issues.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    Ok(issues)
}

/// Confident learning on the predicted probabilities alone: the indices of the items that
/// cleanlab 2.9's `find_label_issues(labels, pred_probs)` flags with its defaults
/// (`filter_by="prune_by_noise_rate"`, `frac_noise=1`, `min_examples_per_class=1`), in
/// the order of `return_indices_ranked_by="self_confidence"` (least confident first).
///
/// Where numpy sorts unstably, ties are broken by item index here; with continuous
/// probabilities, ties do not occur.
pub fn find_label_issues_confident_learning(
    labels: &[usize],
    probs: &[Vec<f32>],
) -> Result<Vec<usize>> {
    let matrix = ProbMatrix::new(labels, probs)?;
    let mask = confident_learning_mask(labels, &matrix);
    let mut issues: Vec<usize> = (0..labels.len()).filter(|&i| mask[i]).collect();
    issues.sort_by(|&a, &b| {
        matrix
            .get(a, labels[a])
            .total_cmp(&matrix.get(b, labels[b]))
            .then(a.cmp(&b))
    });
    Ok(issues)
}

/// Row-major `n × K` probabilities in f64 (cleanlab computes in float64).
#[derive(Debug, Clone)]
struct ProbMatrix {
    values: Vec<f64>,
    classes: usize,
}

impl ProbMatrix {
    /// Validates the inputs the way cleanlab does: equal lengths, one row length `K ≥ 2`,
    /// labels in `0..K`, at least two classes present, finite probabilities in `[0, 1]`.
    fn new(labels: &[usize], probs: &[Vec<f32>]) -> Result<Self> {
        if labels.len() != probs.len() {
            return Err(Error::LengthMismatch {
                what: "label-noise probabilities".into(),
                expected: labels.len(),
                got: probs.len(),
            });
        }
        let classes = probs.first().map_or(0, Vec::len);
        let mut values = Vec::with_capacity(labels.len() * classes);
        for (i, (row, &label)) in probs.iter().zip(labels).enumerate() {
            let bad = |reason: String| Error::InvalidItem {
                what: "label-noise input".into(),
                index: i,
                reason,
            };
            if row.len() != classes {
                return Err(bad(format!(
                    "{} probabilities, the first item has {classes}",
                    row.len()
                )));
            }
            if label >= classes {
                return Err(bad(format!("label {label} but only {classes} classes")));
            }
            if let Some(p) = row.iter().find(|p| !(0.0..=1.0 + 1e-4).contains(*p)) {
                return Err(bad(format!("probability {p} is not in [0, 1]")));
            }
            values.extend(row.iter().map(|&p| f64::from(p)));
        }
        let mut present = vec![false; classes];
        for &l in labels {
            present[l] = true;
        }
        if present.iter().filter(|&&p| p).count() < 2 {
            return Err(Error::InvalidArgument(
                "label-noise detection needs items of at least two classes".into(),
            ));
        }
        Ok(Self { values, classes })
    }

    fn get(&self, i: usize, c: usize) -> f64 {
        self.values[i * self.classes + c]
    }

    fn set(&mut self, i: usize, c: usize, v: f64) {
        self.values[i * self.classes + c] = v;
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }
}

/// Similarity-weighted label distribution of item `i`'s neighbours, or `None` if no
/// neighbour has positive similarity.
fn neighbour_vote(
    i: usize,
    row: &[(usize, f32)],
    labels: &[usize],
    classes: usize,
) -> Result<Option<Vec<f64>>> {
    let mut vote = vec![0.0; classes];
    let mut total = 0.0;
    for &(j, sim) in row {
        if j >= labels.len() {
            return Err(Error::InvalidItem {
                what: "label-noise neighbours".into(),
                index: i,
                reason: format!("neighbour {j} is not an item (there are {})", labels.len()),
            });
        }
        if !sim.is_finite() {
            return Err(Error::InvalidItem {
                what: "label-noise neighbours".into(),
                index: i,
                reason: format!("similarity to neighbour {j} is {sim}"),
            });
        }
        if j == i || sim <= 0.0 {
            continue;
        }
        vote[labels[j]] += f64::from(sim);
        total += f64::from(sim);
    }
    if total <= 0.0 {
        return Ok(None);
    }
    vote.iter_mut().for_each(|v| *v /= total);
    Ok(Some(vote))
}

/// cleanlab's fuzzy-equality tolerance (`FLOATING_POINT_COMPARISON`).
const FLOAT_TOLERANCE: f64 = 1e-6;
/// Lower bound of the per-class thresholds (`CONFIDENT_THRESHOLDS_LOWER_BOUND`).
const THRESHOLD_FLOOR: f64 = 2.0 * FLOAT_TOLERANCE;
/// Threshold of a class no item is labelled with: no probability reaches it.
const ABSENT_CLASS_THRESHOLD: f64 = 2.0;

/// The `prune_by_noise_rate` label-issue mask, step for step as cleanlab computes it
/// (`filter.find_label_issues` → `count.compute_confident_joint` → `_prune_by_count`).
fn confident_learning_mask(labels: &[usize], probs: &ProbMatrix) -> Vec<bool> {
    let (n, k) = (labels.len(), probs.classes);
    let mut label_counts = vec![0usize; k];
    for &l in labels {
        label_counts[l] += 1;
    }

    // Per-class threshold: the average probability of class c among items labelled c.
    let mut sums = vec![0.0; k];
    for (i, &l) in labels.iter().enumerate() {
        sums[l] += probs.get(i, l);
    }
    let thresholds: Vec<f64> = (0..k)
        .map(|c| {
            if label_counts[c] == 0 {
                ABSENT_CLASS_THRESHOLD
            } else {
                (sums[c] / label_counts[c] as f64).max(THRESHOLD_FLOOR)
            }
        })
        .collect();

    // Confident joint: rows = given label, columns = confidently guessed true label.
    let mut joint = vec![vec![0.0f64; k]; k];
    for (i, &given) in labels.iter().enumerate() {
        let row = probs.row(i);
        let confident: Vec<usize> = (0..k)
            .filter(|&c| row[c] >= thresholds[c] - FLOAT_TOLERANCE)
            .collect();
        let guess = match confident.len() {
            0 => continue,
            1 => confident[0],
            _ => first_argmax(row),
        };
        joint[given][guess] += 1.0;
    }
    for (c, row) in joint.iter_mut().enumerate() {
        row[c] = row[c].max(1.0);
    }

    // Calibrate: each row sums to its label count, the whole to n; round keeping row sums.
    for (c, row) in joint.iter_mut().enumerate() {
        let row_sum: f64 = row.iter().sum::<f64>().max(1e-100);
        for v in row.iter_mut() {
            *v = *v / row_sum * label_counts[c] as f64;
        }
    }
    let total: f64 = joint.iter().flatten().sum::<f64>().max(1e-100);
    for v in joint.iter_mut().flatten() {
        *v = *v / total * n as f64;
    }
    let joint: Vec<Vec<i64>> = joint.iter().map(|r| round_preserving_sum(r)).collect();

    // Prune counts (`_keep_at_least_n_per_class` with n = 1, frac_noise = 1): the joint
    // transposed (rows = true label, columns = given label), every diagonal at least 1.
    let mut prune: Vec<Vec<f64>> = (0..k)
        .map(|t| (0..k).map(|g| joint[g][t] as f64).collect())
        .collect();
    for g in 0..k {
        let diagonal = prune[g][g];
        let raised = diagonal.max(1.0);
        let nonzero = prune.iter().filter(|row| row[g] != 0.0).count() as f64;
        let per_cell = (raised - diagonal) / (nonzero - 1.0).max(1.0);
        for row in prune.iter_mut() {
            row[g] = (row[g] - per_cell).max(0.0);
        }
        prune[g][g] = raised;
    }
    // `_reduce_prune_counts` truncates to integers (its rounding afterwards is a no-op).
    let prune: Vec<Vec<usize>> = prune
        .iter()
        .map(|r| r.iter().map(|&v| v.trunc() as usize).collect())
        .collect();

    // For each given class g and other class t, flag the prune[t][g] items labelled g with
    // the largest margin p[t] − p[g].
    let mut mask = vec![false; n];
    for g in 0..k {
        let members: Vec<usize> = (0..n).filter(|&i| labels[i] == g).collect();
        if members.len() <= 1 {
            continue; // min_examples_per_class = 1
        }
        for (t, counts) in prune.iter().enumerate() {
            let count = counts[g];
            if t == g || count == 0 {
                continue;
            }
            let mut by_margin = members.clone();
            by_margin.sort_by(|&a, &b| {
                let ma = probs.get(a, t) - probs.get(a, g);
                let mb = probs.get(b, t) - probs.get(b, g);
                mb.total_cmp(&ma).then(a.cmp(&b))
            });
            for &i in by_margin.iter().take(count) {
                mask[i] = true;
            }
        }
    }

    // `_reduce_issues`: never flag an item whose given label is (within tolerance) the
    // most probable one.
    for (i, &given) in labels.iter().enumerate() {
        let row = probs.row(i);
        let mut nudged = row.to_vec();
        nudged[given] += FLOAT_TOLERANCE;
        if first_argmax(&nudged) == given {
            mask[i] = false;
        }
    }
    mask
}

/// Index of the first largest value (numpy's `argmax`).
fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// cleanlab's `round_preserving_sum`: rounds half to even, then moves the rounding error
/// onto the entries that were rounded furthest, so the integers keep the (rounded) total.
fn round_preserving_sum(values: &[f64]) -> Vec<i64> {
    let mut ints: Vec<f64> = values.iter().map(|v| v.round_ties_even()).collect();
    let target = values.iter().sum::<f64>().round_ties_even();
    let mut int_sum = ints.iter().sum::<f64>().round_ties_even();
    while (int_sum - target).abs() > FLOAT_TOLERANCE {
        let diff = (target - int_sum).round_ties_even();
        let step = if diff < 0.0 { -1.0 } else { 1.0 };
        let changes = (diff.abs() as usize).min(values.len());
        // numpy: argsort(floats − ints) (stable for the small K here), reversed when adding.
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| (values[a] - ints[a]).total_cmp(&(values[b] - ints[b])));
        if step > 0.0 {
            order.reverse();
        }
        for &i in order.iter().take(changes) {
            ints[i] += step;
        }
        int_sum = ints.iter().sum::<f64>().round_ties_even();
    }
    ints.iter().map(|&v| v as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_the_total() {
        assert_eq!(
            round_preserving_sum(&[0.4, 0.4, 0.4, 1.8]),
            vec![0, 0, 1, 2]
        );
        assert_eq!(round_preserving_sum(&[2.5, 0.5]), vec![2, 1]);
        assert_eq!(round_preserving_sum(&[0.6, 0.6, 0.8]), vec![0, 1, 1]);
        let r = round_preserving_sum(&[3.3, 3.3, 3.4]);
        assert_eq!(r.iter().sum::<i64>(), 10);
    }

    #[test]
    fn an_obviously_wrong_label_is_flagged() {
        // Ten confident items per class; item 0 is labelled 0 but the model says 1.
        let mut labels = vec![0; 10];
        labels.extend(vec![1; 10]);
        let mut probs: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                if i < 10 {
                    vec![0.9, 0.1]
                } else {
                    vec![0.1, 0.9]
                }
            })
            .collect();
        probs[0] = vec![0.05, 0.95];
        assert_eq!(
            find_label_issues_confident_learning(&labels, &probs).expect("valid"),
            vec![0]
        );
        let issues =
            rank_label_issues(&labels, &probs, &[], &LabelNoiseOptions::default()).expect("ok");
        assert_eq!(issues.len(), 1);
        assert_eq!(
            (
                issues[0].index,
                issues[0].suggested_label,
                issues[0].flagged
            ),
            (0, 1, true)
        );
        assert!((issues[0].score - 0.95).abs() < 1e-6);
        assert_eq!(issues[0].neighbour_agreement, None);
    }

    #[test]
    fn neighbours_can_outvote_an_unsure_model() {
        // The model cannot tell item 0 (labelled 0) apart; its neighbours are all class 1.
        // Class-1 items are less clear-cut (one neighbour of five is class 0), so class 1's
        // average confidence is low enough for item 0 to count as confidently class 1.
        let mut labels = vec![0; 10];
        labels.extend(vec![1; 10]);
        let mut probs: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                if i < 10 {
                    vec![0.8, 0.2]
                } else {
                    vec![0.4, 0.6]
                }
            })
            .collect();
        probs[0] = vec![0.5, 0.5];
        let neighbours: Vec<Vec<(usize, f32)>> = (0..20)
            .map(|i| match i {
                0 => (10..15).map(|j| (j, 0.9)).collect(),
                1..=9 => (1..10)
                    .filter(|&j| j != i)
                    .take(5)
                    .map(|j| (j, 0.9))
                    .collect(),
                _ => (10..20)
                    .filter(|&j| j != i)
                    .take(4)
                    .chain([1])
                    .map(|j| (j, 0.9))
                    .collect(),
            })
            .collect();
        let alone =
            rank_label_issues(&labels, &probs, &[], &LabelNoiseOptions::default()).expect("ok");
        assert!(alone.is_empty(), "{alone:?}");
        let off = rank_label_issues(&labels, &probs, &neighbours, &LabelNoiseOptions::default())
            .expect("ok");
        assert!(off.is_empty(), "the vote is off by default: {off:?}");
        let half = LabelNoiseOptions {
            neighbour_weight: 0.5,
            ..LabelNoiseOptions::default()
        };
        let with = rank_label_issues(&labels, &probs, &neighbours, &half).expect("ok");
        assert_eq!(with.iter().map(|i| i.index).collect::<Vec<_>>(), vec![0]);
        assert_eq!(with[0].neighbour_agreement, Some(0.0));
        assert!((with[0].score - 0.75).abs() < 1e-6, "{:?}", with[0]);
        assert_eq!(with[0].p_given, 0.5);
    }

    #[test]
    fn bad_inputs_name_the_item() {
        let labels = [0, 1, 2];
        let probs = vec![vec![0.5, 0.5], vec![0.5, 0.5], vec![0.5, 0.5]];
        match find_label_issues_confident_learning(&labels, &probs) {
            Err(Error::InvalidItem { index: 2, .. }) => {}
            other => panic!("expected item 2 to be refused, got {other:?}"),
        }
        let nan = vec![vec![0.5, 0.5], vec![f32::NAN, 0.5], vec![0.5, 0.5]];
        assert!(matches!(
            find_label_issues_confident_learning(&[0, 1, 0], &nan),
            Err(Error::InvalidItem { index: 1, .. })
        ));
        assert!(matches!(
            find_label_issues_confident_learning(&[0, 0], &probs[..2]),
            Err(Error::InvalidArgument(_))
        ));
        let bad_neighbour = vec![vec![(7, 0.9)], vec![], vec![]];
        assert!(matches!(
            rank_label_issues(
                &[0, 1, 0],
                &probs,
                &bad_neighbour,
                &LabelNoiseOptions::default()
            ),
            Err(Error::InvalidItem { index: 0, .. })
        ));
    }
}
