//! The 2-D map layout: separated clusters stay separated, and a seed gives one map. Drawing
//! it is the command line's (`cli/src/render.rs` tests the PNG and HTML).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trio_engine::quality::map::layout;

/// `per_cluster` points around each of `clusters` random centres in `dim` dimensions.
fn clustered(
    seed: u64,
    clusters: usize,
    per_cluster: usize,
    dim: usize,
    spread: f32,
) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let mut vectors = Vec::new();
    let mut labels = Vec::new();
    for i in 0..clusters * per_cluster {
        let c = i % clusters;
        vectors.push(
            centres[c]
                .iter()
                .map(|&m| m + spread * rng.gen_range(-1.0..1.0))
                .collect(),
        );
        labels.push(c);
    }
    (vectors, labels)
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

#[test]
fn separated_clusters_stay_separated() {
    let (vectors, labels) = clustered(7, 2, 100, 32, 0.15);
    let points = layout(&vectors, 7).expect("layout");
    assert_eq!(points.len(), 200);
    assert!(points.iter().all(|p| p[0].is_finite() && p[1].is_finite()));

    // Every point's nearest neighbour on the map is from its own cluster.
    for i in 0..points.len() {
        let nearest = (0..points.len())
            .filter(|&j| j != i)
            .min_by(|&a, &b| {
                distance(points[i], points[a]).total_cmp(&distance(points[i], points[b]))
            })
            .expect("other points");
        assert_eq!(labels[i], labels[nearest], "point {i}");
    }
    // And the clusters are far apart compared with their size.
    let centroid = |c: usize| {
        let members: Vec<[f32; 2]> = (0..points.len())
            .filter(|&i| labels[i] == c)
            .map(|i| points[i])
            .collect();
        let n = members.len() as f32;
        let sum = members
            .iter()
            .fold([0.0, 0.0], |s, p| [s[0] + p[0], s[1] + p[1]]);
        ([sum[0] / n, sum[1] / n], members)
    };
    let (c0, m0) = centroid(0);
    let (c1, m1) = centroid(1);
    let radius = m0
        .iter()
        .chain(&m1)
        .map(|&p| distance(p, if m0.contains(&p) { c0 } else { c1 }))
        .fold(0.0, f32::max);
    let gap = distance(c0, c1);
    println!("centroid distance {gap:.2}, largest cluster radius {radius:.2}");
    assert!(gap > 2.0 * radius, "gap {gap} vs radius {radius}");
}

/// On one thread the seed fixes the map bit for bit. (With several threads, bhtsne's
/// parallel force sums may round differently from run to run; see `layout_with`.)
#[test]
fn the_same_seed_gives_the_same_map_on_one_thread() {
    let (vectors, _) = clustered(8, 3, 30, 16, 0.3);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let a = pool.install(|| layout(&vectors, 42)).expect("layout a");
    let b = pool.install(|| layout(&vectors, 42)).expect("layout b");
    assert_eq!(a, b);
    let c = pool.install(|| layout(&vectors, 43)).expect("layout c");
    assert_ne!(a, c);
}
