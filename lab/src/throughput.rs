//! Measuring the towers where they run: items per second at a batch size, and how far two
//! devices' outputs drift apart. `trio bench` prints these; they are how a user checks that a
//! GPU build is both faster and faithful to the CPU path before trusting it.

use std::time::{Duration, Instant};

use serde::Serialize;

use trio_engine::towers::image::{ImageEmbeddings, ImageTower, PreparedImage};
use trio_engine::towers::text::TextTower;
use trio_engine::{Error, Result};

/// Throughput of one tower at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `image` or `text`.
    pub tower: &'static str,
    pub device: &'static str,
    pub batch: usize,
    /// Items embedded while timing (whole batches, after one warm-up batch).
    pub items: usize,
    pub seconds: f64,
    pub items_per_second: f64,
    /// Wall time of one batch: median and slowest.
    pub batch_ms_p50: f64,
    pub batch_ms_max: f64,
}

/// Runs `run` on batches of `batch` items, cycling through `count` inputs, until at least
/// `min_items` items and `min_time` have passed. One untimed warm-up batch comes first: on a
/// GPU it loads kernels, on a CPU it fills caches and thread pools.
fn measure(
    tower: &'static str,
    device: &'static str,
    batch: usize,
    count: usize,
    min_items: usize,
    min_time: Duration,
    mut run: impl FnMut(&[usize]) -> Result<()>,
) -> Result<Throughput> {
    if batch == 0 || count == 0 {
        return Err(Error::InvalidArgument(format!(
            "{tower} throughput needs a batch size and inputs above zero (batch {batch}, {count} inputs)"
        )));
    }
    let mut next = 0usize;
    let mut take = || -> Vec<usize> {
        (0..batch)
            .map(|_| {
                let i = next % count;
                next += 1;
                i
            })
            .collect()
    };
    run(&take())?;
    let mut batch_times = Vec::new();
    let start = Instant::now();
    let mut items = 0;
    while items < min_items || start.elapsed() < min_time {
        let indices = take();
        let t = Instant::now();
        run(&indices)?;
        batch_times.push(t.elapsed().as_secs_f64() * 1e3);
        items += batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    batch_times.sort_by(f64::total_cmp);
    Ok(Throughput {
        tower,
        device,
        batch,
        items,
        seconds,
        items_per_second: items as f64 / seconds,
        batch_ms_p50: batch_times[batch_times.len() / 2],
        batch_ms_max: *batch_times.last().unwrap_or(&0.0),
    })
}

/// Images per second through `tower` (network only: `images` are already preprocessed).
pub fn image_throughput(
    tower: &ImageTower,
    images: &[PreparedImage],
    batch: usize,
    min_items: usize,
    min_time: Duration,
) -> Result<Throughput> {
    let device = trio_engine::device::device_name(tower.device());
    measure(
        "image",
        device,
        batch,
        images.len(),
        min_items,
        min_time,
        |indices| {
            let chunk: Vec<&PreparedImage> = indices.iter().map(|&i| &images[i]).collect();
            tower.embed(&chunk).map(|_| ())
        },
    )
}

/// Sentences per second through `tower` (tokenising included, as every caller pays it).
pub fn text_throughput(
    tower: &TextTower,
    texts: &[String],
    batch: usize,
    min_items: usize,
    min_time: Duration,
) -> Result<Throughput> {
    let device = trio_engine::device::device_name(tower.device());
    measure(
        "text",
        device,
        batch,
        texts.len(),
        min_items,
        min_time,
        |indices| {
            let chunk: Vec<&str> = indices.iter().map(|&i| texts[i].as_str()).collect();
            tower.embed(&chunk).map(|_| ())
        },
    )
}

/// How far one device's outputs are from another's on the same inputs.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    pub image_features_max_abs_diff: f32,
    pub image_probabilities_max_abs_diff: f32,
    pub text_max_abs_diff: f32,
    /// Images whose ImageNet top-1 differs between the devices.
    pub image_top1_disagreements: usize,
}

/// Compares the outputs of two image embeddings and two sets of text vectors of the same inputs.
pub fn parity(
    images_a: &ImageEmbeddings,
    images_b: &ImageEmbeddings,
    texts_a: &[Vec<f32>],
    texts_b: &[Vec<f32>],
) -> Result<Parity> {
    let top1 = |p: &[f32]| {
        p.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    Ok(Parity {
        image_features_max_abs_diff: max_abs_diff(&images_a.features, &images_b.features)?,
        image_probabilities_max_abs_diff: max_abs_diff(
            &images_a.probabilities,
            &images_b.probabilities,
        )?,
        text_max_abs_diff: max_abs_diff(texts_a, texts_b)?,
        image_top1_disagreements: images_a
            .probabilities
            .iter()
            .zip(&images_b.probabilities)
            .filter(|(a, b)| top1(a) != top1(b))
            .count(),
    })
}

/// The largest element-wise difference between two lists of equally shaped vectors.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f32> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return Err(Error::InvalidArgument(
            "parity needs outputs of the same shape from both devices".into(),
        ));
    }
    Ok(a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_cycles_inputs_in_whole_batches_after_a_warm_up() {
        let mut seen = Vec::new();
        let t = measure("text", "cpu", 3, 2, 7, Duration::ZERO, |idx| {
            seen.push(idx.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[0], vec![0, 1, 0], "warm-up batch");
        assert_eq!(seen[1], vec![1, 0, 1]);
        assert_eq!(t.items, 9, "7 items round up to three timed batches of 3");
        assert_eq!(seen.len(), 4);
        assert!(t.items_per_second > 0.0);
    }

    #[test]
    fn measure_refuses_empty_work() {
        assert!(measure("image", "cpu", 0, 5, 1, Duration::ZERO, |_| Ok(())).is_err());
        assert!(measure("image", "cpu", 4, 0, 1, Duration::ZERO, |_| Ok(())).is_err());
    }

    #[test]
    fn max_abs_diff_finds_the_largest_gap_and_checks_shapes() {
        let a = vec![vec![1.0, 2.0], vec![0.5, 0.0]];
        let b = vec![vec![1.0, 2.25], vec![0.0, 0.0]];
        assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.5);
        assert!(max_abs_diff(&a, &b[..1]).is_err());
        assert!(max_abs_diff(&a, &[vec![1.0], vec![0.0, 0.0]]).is_err());
    }

    #[test]
    fn parity_counts_top1_disagreements() {
        let a = ImageEmbeddings {
            features: vec![vec![0.0; 2]; 2],
            probabilities: vec![vec![0.9, 0.1], vec![0.2, 0.8]],
        };
        let b = ImageEmbeddings {
            features: vec![vec![0.0; 2]; 2],
            probabilities: vec![vec![0.9, 0.1], vec![0.6, 0.4]],
        };
        let p = parity(&a, &b, &[vec![1.0]], &[vec![1.0]]).unwrap();
        assert_eq!(p.image_top1_disagreements, 1);
        assert!((p.image_probabilities_max_abs_diff - 0.4).abs() < 1e-6);
        assert_eq!(p.text_max_abs_diff, 0.0);
    }
}
