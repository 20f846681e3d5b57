//! A synthetic catalogue for tests and benchmarks: class centroids in image space and in each
//! text field's space, per-group offsets (a group's items look alike, as one emoji drawn by
//! several vendors does), independent per-item noise in every modality, missing inputs, and
//! symmetric label noise. Because each modality's noise is independent, combining them carries
//! more evidence than any one, which is what fusion should exploit.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use trio_engine::train::Example;

/// Knobs of the generator. Class centroids and group offsets are random directions in the latent
/// space; noise figures are per-coordinate standard deviations in each modality's space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticSpec {
    pub classes: usize,
    pub groups_per_class: usize,
    pub items_per_group: usize,
    pub image_dim: usize,
    pub text_dim: usize,
    pub fields: Vec<String>,
    /// Width of the latent "meaning" space every modality is a view of.
    pub latent_dim: usize,
    /// Length of each group's offset from its class centroid.
    pub group_spread: f32,
    pub image_noise: f32,
    pub text_noise: f32,
    /// Probability that an item has no image.
    pub missing_image: f64,
    /// Probability that an item lacks a given text field.
    pub missing_text: f64,
    /// Probability that an item's label is replaced by a different class, uniformly.
    pub label_noise: f64,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            classes: 20,
            groups_per_class: 15,
            items_per_group: 3,
            image_dim: 64,
            text_dim: 32,
            fields: vec!["title".into(), "description".into()],
            latent_dim: 16,
            group_spread: 0.5,
            image_noise: 0.32,
            text_noise: 0.45,
            missing_image: 0.1,
            missing_text: 0.2,
            label_noise: 0.2,
            seed: 0,
        }
    }
}

/// A standard normal draw (Box–Muller), so the generator needs only `rand`.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| normal(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

fn around(rng: &mut StdRng, centre: &[f32], sd: f32) -> Vec<f32> {
    centre.iter().map(|c| c + sd * normal(rng)).collect()
}

fn add_scaled(a: &[f32], b: &[f32], scale: f32) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + scale * y).collect()
}

fn l2(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

/// A `rows × cols` matrix of standard normals scaled by `1/√cols`, so it roughly keeps lengths.
fn projection(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<Vec<f32>> {
    let scale = 1.0 / (cols.max(1) as f32).sqrt();
    (0..rows)
        .map(|_| (0..cols).map(|_| scale * normal(rng)).collect())
        .collect()
}

fn apply(matrix: &[Vec<f32>], v: &[f32]) -> Vec<f32> {
    matrix
        .iter()
        .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

/// Generates `classes × groups_per_class × items_per_group` examples with keys 0, 1, …, labels
/// `class-NN`, groups `group-NNNN`.
///
/// Each group has a meaning: a point in a small latent space (its class centroid plus an offset
/// of length `group_spread`). Each modality sees that meaning through its own fixed random
/// linear map plus independent per-item noise, as an image and a title describe the same emoji
/// differently. So image and text agree on more than the class, and what links them can be
/// learned from some groups and used on others.
pub fn catalogue(spec: &SyntheticSpec) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let latent = spec.latent_dim;
    let class_centroids: Vec<Vec<f32>> =
        (0..spec.classes).map(|_| unit(&mut rng, latent)).collect();
    let image_map = projection(&mut rng, spec.image_dim, latent);
    let text_maps: Vec<Vec<Vec<f32>>> = spec
        .fields
        .iter()
        .map(|_| projection(&mut rng, spec.text_dim, latent))
        .collect();
    let image_sd = spec.image_noise;
    let text_sd = spec.text_noise;
    let mut out = Vec::new();
    let mut key = 0u64;
    let mut group_id = 0usize;
    for (class, centroid) in class_centroids.iter().enumerate() {
        for _ in 0..spec.groups_per_class {
            let meaning = add_scaled(centroid, &unit(&mut rng, latent), spec.group_spread);
            let group_image = apply(&image_map, &meaning);
            let group_text: Vec<Vec<f32>> = text_maps.iter().map(|m| apply(m, &meaning)).collect();
            for _ in 0..spec.items_per_group {
                let image = around(&mut rng, &group_image, image_sd);
                let texts: Vec<Vec<f32>> = group_text
                    .iter()
                    .map(|t| l2(around(&mut rng, t, text_sd)))
                    .collect();
                let has_image = rng.gen::<f64>() >= spec.missing_image;
                let mut has_text: Vec<bool> = spec
                    .fields
                    .iter()
                    .map(|_| rng.gen::<f64>() >= spec.missing_text)
                    .collect();
                if !has_image && !has_text.iter().any(|h| *h) {
                    if let Some(first) = has_text.first_mut() {
                        *first = true;
                    }
                }
                let noisy = spec.classes > 1 && rng.gen::<f64>() < spec.label_noise;
                let label = if noisy {
                    let other = rng.gen_range(0..spec.classes - 1);
                    if other >= class {
                        other + 1
                    } else {
                        other
                    }
                } else {
                    class
                };
                let text: BTreeMap<String, Vec<f32>> = spec
                    .fields
                    .iter()
                    .zip(texts)
                    .zip(&has_text)
                    .filter(|(_, has)| **has)
                    .map(|((f, t), _)| (f.clone(), t))
                    .collect();
                out.push(Example {
                    key,
                    image: (has_image || spec.fields.is_empty()).then_some(image),
                    text,
                    label: Some(format!("class-{label:02}")),
                    group: Some(format!("group-{group_id:04}")),
                });
                key += 1;
            }
            group_id += 1;
        }
    }
    out
}
