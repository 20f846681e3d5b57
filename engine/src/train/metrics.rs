//! Top-k accuracy and cross-entropy, computed on the host from logits.

use serde::{Deserialize, Serialize};

/// Scores of one model on one part of the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Number of labelled examples scored; the other figures are 0 when this is 0.
    pub n: usize,
    /// Fraction whose label is the top class.
    pub top1: f64,
    /// Fraction whose label is among the five top classes.
    pub top5: f64,
    /// Mean cross-entropy (natural log).
    pub loss: f64,
}

impl SplitMetrics {
    /// Scores `logits` (one row per example) against class indices `labels`. Ties are broken at
    /// random in expectation: with `h` classes scoring strictly higher than the label and `t`
    /// classes (the label included) scoring the same, the label is within the top k with
    /// probability `(k − h) / t`, clamped to [0, 1]. So a model that scores every class alike
    /// earns chance, not full marks.
    pub fn from_logits(logits: &[Vec<f32>], labels: &[u32]) -> Self {
        let n = labels.len().min(logits.len());
        if n == 0 {
            return Self::default();
        }
        let (mut top1, mut top5, mut loss) = (0f64, 0f64, 0f64);
        for (row, &label) in logits.iter().zip(labels) {
            let Some(&target) = row.get(label as usize) else {
                continue;
            };
            let higher = row.iter().filter(|&&x| x > target).count();
            let tied = row.iter().filter(|&&x| x == target).count().max(1);
            let within = |k: usize| (k.saturating_sub(higher) as f64 / tied as f64).min(1.0);
            top1 += within(1);
            top5 += within(5);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum: f64 = row
                .iter()
                .map(|&x| f64::from(x - max).exp())
                .sum::<f64>()
                .ln();
            loss += log_sum - f64::from(target - max);
        }
        Self {
            n,
            top1: top1 / n as f64,
            top5: top5 / n as f64,
            loss: loss / n as f64,
        }
    }

    /// Whether `self` is a better validation result than `other`: higher top-1, or equal top-1
    /// and lower loss.
    pub fn better_than(&self, other: &SplitMetrics) -> bool {
        if (self.top1 - other.top1).abs() > 1e-12 {
            self.top1 > other.top1
        } else {
            self.loss < other.loss
        }
    }
}

/// Row-wise softmax on the host.
pub(crate) fn softmax_rows(logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.into_iter().map(|e| e / sum).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_loss_by_hand() {
        // Row 0: label 0 is the top class. Row 1: label 2 ranks third (two classes higher).
        let logits = vec![vec![2.0, 1.0, 0.0], vec![3.0, 2.0, 1.0]];
        let m = SplitMetrics::from_logits(&logits, &[0, 2]);
        assert_eq!(m.n, 2);
        assert!((m.top1 - 0.5).abs() < 1e-12);
        assert!((m.top5 - 1.0).abs() < 1e-12);
        // Cross-entropy of [2,1,0] at 0 and of [3,2,1] at 2: ln(1+e^-1+e^-2) and that + 2.
        let l0 = (1.0 + (-1f64).exp() + (-2f64).exp()).ln();
        assert!((m.loss - (l0 + l0 + 2.0) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn ties_earn_their_expected_share_not_full_marks() {
        // Every class scores alike: top-1 is chance (1/10), top-5 half.
        let m = SplitMetrics::from_logits(&[vec![0.0; 10]], &[3]);
        assert!((m.top1 - 0.1).abs() < 1e-12, "{m:?}");
        assert!((m.top5 - 0.5).abs() < 1e-12, "{m:?}");
        // One class higher, the label tied with one other: top-1 0, top-5 1.
        let m = SplitMetrics::from_logits(&[vec![2.0, 1.0, 1.0, 0.0]], &[1]);
        assert_eq!((m.top1, m.top5), (0.0, 1.0));
    }
}
