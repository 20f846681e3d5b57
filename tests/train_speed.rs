//! The speed budget: the whole study (logistic regression, image-only, text-only, fused) on a
//! demo-sized catalogue (7,500 items, 100 classes, real feature widths) within 60 s on 2 CPU
//! cores. Ignored by default: it is a timing, and only means something on an otherwise idle
//! machine. The test profile is enough (dependencies, where the work happens, are optimised):
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo test -p trio-suite --test train_speed -- --ignored --nocapture
//! ```
//!
//! Measured on the shared 2-core development machine (load average about 15): 23.6 s of CPU
//! time with `RAYON_NUM_THREADS=1` (user 21.5 s, sys 2.1 s), so under a minute on one idle core.

use std::time::Instant;

use trio_engine::train::synthetic::{catalogue, SyntheticSpec};
use trio_engine::train::{TrainConfig, Trainer};
use trio_engine::{DeviceChoice, NoProgress};

#[test]
#[ignore = "timing test; run alone with RAYON_NUM_THREADS=2"]
fn study_on_demo_sized_catalogue_takes_under_a_minute() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        classes: 100,
        groups_per_class: 25,
        items_per_group: 3,
        image_dim: 1280,
        text_dim: 384,
        // Wider features spread the same noise over more coordinates; scale it down so the
        // task stays about as hard as the small default.
        image_noise: 0.08,
        text_noise: 0.12,
        seed: 1,
        ..SyntheticSpec::default()
    });
    let trainer = Trainer::new(TrainConfig::default(), DeviceChoice::Cpu.resolve()?)?;
    let started = Instant::now();
    let study = trainer.run_study(&examples, &NoProgress)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} items: {seconds:.1} s\n{}",
        examples.len(),
        study.report.to_markdown()
    );
    assert!(seconds < 60.0, "study took {seconds:.1} s");
    Ok(())
}
