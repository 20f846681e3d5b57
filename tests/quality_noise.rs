//! Label-noise ranking: the confident-learning re-implementation agrees with cleanlab, and
//! adding the neighbours' vote finds flipped labels at least as well.

use std::collections::HashSet;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use trio_engine::quality::noise::{
    find_label_issues_confident_learning, rank_label_issues, LabelNoiseOptions,
};

#[derive(Deserialize)]
struct Golden {
    produced_by: String,
    labels: Vec<usize>,
    probs: Vec<Vec<f32>>,
    /// cleanlab as installed: exact ties broken by numpy's default (SIMD, CPU-dependent) sort.
    cleanlab_issues_ranked: Vec<usize>,
    /// cleanlab with numpy's argsort made stable, i.e. ties broken by index as Trio does.
    cleanlab_stable_ties_issues_ranked: Vec<usize>,
}

/// The fixtures hold a synthetic data set and cleanlab's answers; how each was produced is
/// in its `produced_by` field (lab/reference/noise_reference.py golden …, cleanlab 2.9.0). Trio
/// must give exactly cleanlab's answer with ties broken by index; cleanlab as shipped may
/// differ by the items of a tied rounding decision (one item in the 12-class fixture).
#[test]
fn confident_learning_matches_cleanlab() {
    for file in [
        "noise_cleanlab_golden.json",
        "noise_cleanlab_golden_k12.json",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let golden: Golden = serde_json::from_str(&text).expect("parse fixture");
        let ours = find_label_issues_confident_learning(&golden.labels, &golden.probs)
            .expect("confident learning");
        assert_eq!(
            ours, golden.cleanlab_stable_ties_issues_ranked,
            "{file} ({}): ours differ from cleanlab's",
            golden.produced_by
        );
        let a: HashSet<usize> = ours.iter().copied().collect();
        let b: HashSet<usize> = golden.cleanlab_issues_ranked.iter().copied().collect();
        let differing: Vec<usize> = a.symmetric_difference(&b).copied().collect();
        println!(
            "{file}: {} issues; cleanlab as shipped differs on {differing:?}",
            ours.len()
        );
        assert!(
            differing.len() <= golden.labels.len() / 100,
            "{differing:?}"
        );
    }
}

/// A catalogue-like synthetic set: each of `classes` classes is `modes` Gaussian clusters
/// (noise `sigma` per dimension) in `dim` dimensions; 20% of the labels are flipped to another
/// class; out-of-fold probabilities come from a 5-fold nearest-centroid classifier (one
/// centroid per class) trained on the noisy labels; neighbours are the 10 nearest by cosine.
/// With `modes > 1` the model underfits (a class is not one blob) while neighbours still see
/// the sub-clusters: the case neighbours are meant for.
struct Synthetic {
    labels: Vec<usize>,
    flipped: HashSet<usize>,
    probs: Vec<Vec<f32>>,
    neighbours: Vec<Vec<(usize, f32)>>,
}

fn synthetic(
    seed: u64,
    n: usize,
    classes: usize,
    modes: usize,
    dim: usize,
    sigma: f32,
) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let gauss = |rng: &mut StdRng| -> f32 {
        let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    };
    let centres: Vec<Vec<f32>> = (0..classes * modes)
        .map(|_| (0..dim).map(|_| gauss(&mut rng)).collect())
        .collect();
    let cluster: Vec<usize> = (0..n).map(|i| i % (classes * modes)).collect();
    let truth: Vec<usize> = cluster.iter().map(|c| c % classes).collect();
    let vectors: Vec<Vec<f32>> = cluster
        .iter()
        .map(|&c| {
            centres[c]
                .iter()
                .map(|&m| m + sigma * gauss(&mut rng))
                .collect()
        })
        .collect();
    let mut labels = truth.clone();
    let mut flipped = HashSet::new();
    while flipped.len() < n / 5 {
        let i = rng.gen_range(0..n);
        if flipped.insert(i) {
            labels[i] = (truth[i] + rng.gen_range(1..classes)) % classes;
        }
    }

    let folds = 5;
    // Folds cut across classes (item i is in fold (i / classes) mod 5), so every fold's
    // training part holds every class.
    let fold_of = |i: usize| (i / classes) % folds;
    let mut probs = vec![Vec::new(); n];
    for fold in 0..folds {
        let mut sums = vec![vec![0.0f32; dim]; classes];
        let mut counts = vec![0usize; classes];
        for i in (0..n).filter(|&i| fold_of(i) != fold) {
            counts[labels[i]] += 1;
            for (s, x) in sums[labels[i]].iter_mut().zip(&vectors[i]) {
                *s += x;
            }
        }
        let centroids: Vec<Vec<f32>> = sums
            .iter()
            .zip(&counts)
            .map(|(s, &c)| s.iter().map(|x| x / c.max(1) as f32).collect())
            .collect();
        for i in (0..n).filter(|&i| fold_of(i) == fold) {
            let logits: Vec<f32> = centroids
                .iter()
                .map(|c| {
                    -c.iter()
                        .zip(&vectors[i])
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f32>()
                        / 3.0
                })
                .collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f32 = exp.iter().sum();
            probs[i] = exp.iter().map(|e| e / total).collect();
        }
    }

    let norms: Vec<f32> = vectors
        .iter()
        .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let neighbours: Vec<Vec<(usize, f32)>> = (0..n)
        .map(|i| {
            let mut sims: Vec<(usize, f32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let d: f32 = vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum();
                    (j, d / (norms[i] * norms[j]))
                })
                .collect();
            sims.sort_by(|a, b| b.1.total_cmp(&a.1));
            sims.truncate(10);
            sims
        })
        .collect();
    Synthetic {
        labels,
        flipped,
        probs,
        neighbours,
    }
}

/// (precision, recall, F1) of `found` against the flipped items.
fn scores(found: &[usize], flipped: &HashSet<usize>) -> (f64, f64, f64) {
    let correct = found.iter().filter(|i| flipped.contains(i)).count() as f64;
    let p = if found.is_empty() {
        1.0
    } else {
        correct / found.len() as f64
    };
    let r = correct / flipped.len() as f64;
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f1)
}

/// Precision, recall and F1 of the flagged set, and precision at N = number flipped.
#[derive(Debug)]
#[allow(dead_code)] // fields are printed
struct Quality {
    flagged: usize,
    precision: f64,
    recall: f64,
    f1: f64,
    precision_at_n: f64,
}

/// The neighbours' vote at half weight (the library's default is 0, chosen on the demo, where
/// the model fits its classes; these tests are about what the vote adds).
const VOTE_WEIGHT: f32 = 0.5;

/// Confident learning alone and combined with neighbours, on `data`.
fn compare(data: &Synthetic) -> (Quality, Quality) {
    let n_flipped = data.flipped.len();
    let cl_only = find_label_issues_confident_learning(&data.labels, &data.probs).expect("cl");
    let combined = rank_label_issues(
        &data.labels,
        &data.probs,
        &data.neighbours,
        &LabelNoiseOptions {
            neighbour_weight: VOTE_WEIGHT,
            rank_all: false,
        },
    )
    .expect("combined");
    let combined_flagged: Vec<usize> = combined.iter().map(|i| i.index).collect();

    // Rankings of every item, for precision at N.
    let top_n = |weight: f32| -> Vec<usize> {
        let opts = LabelNoiseOptions {
            neighbour_weight: weight,
            rank_all: true,
        };
        rank_label_issues(&data.labels, &data.probs, &data.neighbours, &opts)
            .expect("rank")
            .into_iter()
            .take(n_flipped)
            .map(|i| i.index)
            .collect()
    };
    let quality = |flagged: &[usize], weight: f32| {
        let (precision, recall, f1) = scores(flagged, &data.flipped);
        Quality {
            flagged: flagged.len(),
            precision,
            recall,
            f1,
            precision_at_n: scores(&top_n(weight), &data.flipped).0,
        }
    };

    // Weight 0 is confident learning alone: the same flagged set.
    let zero = rank_label_issues(
        &data.labels,
        &data.probs,
        &data.neighbours,
        &LabelNoiseOptions {
            neighbour_weight: 0.0,
            rank_all: false,
        },
    )
    .expect("weight 0");
    let mut a: Vec<usize> = zero.iter().map(|i| i.index).collect();
    let mut b = cl_only.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);

    // Issues are sorted and carry consistent fields.
    assert!(combined.windows(2).all(|w| w[0].score >= w[1].score));
    for issue in &combined {
        assert_ne!(issue.suggested_label, issue.given_label);
        assert_eq!(issue.given_label, data.labels[issue.index]);
        assert!(issue.flagged);
        assert!(issue.neighbour_agreement.is_some());
    }
    (
        quality(&cl_only, 0.0),
        quality(&combined_flagged, VOTE_WEIGHT),
    )
}

/// Floors for seed 11 (3000 items, 10 classes of 3 sub-clusters, 600 flipped): the measured
/// figures are printed by the test; the floors sit a few points under them.
const UNDERFIT_COMBINED_F1_FLOOR: f64 = 0.85;
const UNDERFIT_COMBINED_PRECISION_AT_N_FLOOR: f64 = 0.85;

#[test]
fn neighbours_help_when_the_model_underfits() {
    let data = synthetic(11, 3000, 10, 3, 16, 0.8);
    let (cl, combined) = compare(&data);
    println!(
        "{} flipped\nconfident learning alone: {cl:?}\nwith neighbours:          {combined:?}",
        data.flipped.len()
    );
    assert!(
        combined.f1 >= cl.f1,
        "combined F1 below confident learning alone"
    );
    assert!(combined.precision_at_n >= cl.precision_at_n);
    assert!(combined.f1 >= UNDERFIT_COMBINED_F1_FLOOR, "{combined:?}");
    assert!(
        combined.precision_at_n >= UNDERFIT_COMBINED_PRECISION_AT_N_FLOOR,
        "{combined:?}"
    );
}

/// When one centroid per class is already the right model, the neighbours add little; the
/// mix must not cost more than a few points of F1.
#[test]
fn neighbours_cost_little_when_the_model_fits() {
    let data = synthetic(12, 3000, 10, 1, 16, 1.3);
    let (cl, combined) = compare(&data);
    println!(
        "{} flipped\nconfident learning alone: {cl:?}\nwith neighbours:          {combined:?}",
        data.flipped.len()
    );
    assert!(
        combined.f1 >= cl.f1 - 0.03,
        "combined {combined:?} vs {cl:?}"
    );
    assert!(
        cl.f1 >= 0.7,
        "the data set is meant to be learnable: {cl:?}"
    );
}

#[test]
fn hundred_thousand_items_rank_in_seconds() {
    let (n, classes, k) = (100_000, 20, 10);
    let mut rng = StdRng::seed_from_u64(5);
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let probs: Vec<Vec<f32>> = labels
        .iter()
        .map(|&l| {
            let mut row: Vec<f32> = (0..classes).map(|_| rng.gen::<f32>()).collect();
            row[if rng.gen_bool(0.8) {
                l
            } else {
                rng.gen_range(0..classes)
            }] += 5.0;
            let total: f32 = row.iter().sum();
            row.iter().map(|p| p / total).collect()
        })
        .collect();
    let neighbours: Vec<Vec<(usize, f32)>> = (0..n)
        .map(|_| {
            (0..k)
                .map(|_| (rng.gen_range(0..n), rng.gen_range(0.5..1.0)))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let opts = LabelNoiseOptions {
        neighbour_weight: VOTE_WEIGHT,
        rank_all: false,
    };
    let issues = rank_label_issues(&labels, &probs, &neighbours, &opts).expect("rank");
    let elapsed = start.elapsed();
    println!(
        "100k items, 20 classes: {:.2} s, {} issues",
        elapsed.as_secs_f64(),
        issues.len()
    );
    assert!(!issues.is_empty());
}
