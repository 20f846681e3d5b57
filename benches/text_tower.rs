//! Text tower throughput: sentences per second at batch sizes 1, 8 and 32.
//!
//! Each iteration embeds the same 32 catalogue titles and descriptions (8–40 tokens,
//! `benches/text_sentences.txt`) in calls of `batch` texts, as the PyTorch reference
//! `lab/reference/bench_text_reference.py` does, so the two rates compare directly:
//!
//!     TRIO_HOME=... cargo bench --bench text_tower
//!     HF_HUB_OFFLINE=1 python lab/reference/bench_text_reference.py $TRIO_HOME/models/all-MiniLM-L6-v2
//!
//! `fused` is the default CPU backend; `candle` runs the same model with candle tensor ops
//! (the path used on GPUs), for comparison.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trio_engine::models::minilm::Backend;
use trio_engine::towers::text::TextTower;
use trio_engine::DeviceChoice;

const SENTENCES: &str = include_str!("text_sentences.txt");

fn model_dir() -> PathBuf {
    let home = std::env::var_os("TRIO_HOME")
        .unwrap_or_else(|| panic!("TRIO_HOME is not set: run `trio fetch` first"));
    PathBuf::from(home).join("models").join("all-MiniLM-L6-v2")
}

fn text_tower(c: &mut Criterion) {
    let sentences: Vec<&str> = SENTENCES.lines().filter(|l| !l.trim().is_empty()).collect();
    let device = DeviceChoice::Cpu
        .resolve()
        .unwrap_or_else(|e| panic!("no CPU device: {e}"));
    let mut group = c.benchmark_group("text_tower");
    group
        .throughput(Throughput::Elements(sentences.len() as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for (name, backend) in [("fused", Backend::Auto), ("candle", Backend::Candle)] {
        let tower = TextTower::load_with(&model_dir(), &device, backend)
            .unwrap_or_else(|e| panic!("loading {}: {e}", model_dir().display()));
        for batch in [1usize, 8, 32] {
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for chunk in sentences.chunks(batch) {
                        let v = tower.embed(chunk).unwrap_or_else(|e| panic!("embed: {e}"));
                        std::hint::black_box(v);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, text_tower);
criterion_main!(benches);
