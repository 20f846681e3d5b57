//! Deterministic clustered vectors for index tests and benchmarks: `clusters` random unit
//! centres, each point a centre plus isotropic Gaussian noise, so neighbourhoods are as
//! structured as real embeddings yet every run (and the hnswlib reference) sees the same data.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `n` points of `dim` values around `clusters` centres; `noise` is the noise's norm relative to
/// the (unit) centre. The same `seed` gives the same centres, whatever `n`.
pub struct Clustered {
    centres: Vec<Vec<f32>>,
    noise: f32,
    rng: StdRng,
}

impl Clustered {
    pub fn new(dim: usize, clusters: usize, noise: f32, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = (0..clusters)
            .map(|_| unit((0..dim).map(|_| normal(&mut rng)).collect()))
            .collect();
        Clustered {
            centres,
            noise,
            rng,
        }
    }

    /// The next point (unit length).
    pub fn point(&mut self) -> Vec<f32> {
        let c = self.rng.gen_range(0..self.centres.len());
        let dim = self.centres[c].len();
        let scale = self.noise / (dim as f32).sqrt();
        let centre = &self.centres[c];
        let v = (0..dim)
            .map(|i| centre[i] + scale * normal(&mut self.rng))
            .collect();
        unit(v)
    }

    pub fn points(&mut self, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| self.point()).collect()
    }
}
