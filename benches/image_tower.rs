//! Image tower throughput (images/s) at batch 1, 8 and 32 on the CPU.
//!
//! `TRIO_HOME=... cargo bench --bench image_tower` (needs the EfficientNet-Lite0 weights and
//! demo photos from `trio fetch`). Images are decoded and prepared once, outside the timed
//! loop, so this measures the network. Set `RAYON_NUM_THREADS` to pin the thread count;
//! `lab/reference/bench_image_reference.py` measures PyTorch on the same inputs for comparison.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trio_engine::towers::image::{ImageTower, ImageTowerConfig, PreparedImage};
use trio_engine::DeviceChoice;

const PHOTOS: [&str; 5] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "motorcycle_left.png",
];

fn trio_home() -> PathBuf {
    std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trio")))
        .expect("set TRIO_HOME")
}

fn image_tower(c: &mut Criterion) {
    let home = trio_home();
    let weights = home.join("models/efficientnet-lite0/efficientnet-lite0.pth");
    assert!(
        weights.exists(),
        "missing {}: run `trio fetch`",
        weights.display()
    );
    let cpu = DeviceChoice::Cpu
        .resolve()
        .expect("the CPU is always there");
    let tower = ImageTower::load(&weights, &ImageTowerConfig::lite0(), &cpu)
        .expect("load EfficientNet-Lite0");
    let pre = tower.preprocessor();
    let photos: Vec<PreparedImage> = PHOTOS
        .iter()
        .map(|name| {
            pre.prepare_path(&home.join("data/photos").join(name))
                .expect("prepare a demo photo")
        })
        .collect();
    let images: Vec<PreparedImage> = photos.iter().cycle().take(32).cloned().collect();

    let mut group = c.benchmark_group("image_tower_lite0_cpu");
    group.sample_size(10);
    for batch in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("embed", batch), &batch, |b, &batch| {
            b.iter(|| tower.embed(&images[..batch]).expect("embed"))
        });
    }
    group.finish();
}

criterion_group!(benches, image_tower);
criterion_main!(benches);
