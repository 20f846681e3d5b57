//! Robustness table, out-of-fold probabilities and the demo protocol on a synthetic catalogue.

use trio_engine::train::{cross_val_probabilities, Input, TrainConfig, Trainer};
use trio_engine::{DeviceChoice, NoProgress, Result};
use trio_lab::protocol::{run_protocol, CrossStyle, ProtocolConfig, ProtocolReport};
use trio_lab::robustness::robustness;
use trio_lab::synthetic::{catalogue, SyntheticSpec};
use trio_lab::Markdown;

/// One run of the protocol with `cfg.train.seed`.
fn run_once(
    examples: &[trio_engine::train::Example],
    cfg: &ProtocolConfig,
    device: &trio_engine::Device,
) -> Result<ProtocolReport> {
    let mut series = run_protocol(
        examples,
        &[],
        cfg,
        &[cfg.train.seed],
        device,
        &NoProgress,
        None,
    )?;
    Ok(series.runs.remove(0))
}

fn small() -> SyntheticSpec {
    SyntheticSpec {
        classes: 10,
        groups_per_class: 12,
        seed: 21,
        ..SyntheticSpec::default()
    }
}

fn fast() -> TrainConfig {
    TrainConfig {
        holdout: 0.3,
        epochs: 25,
        batch_size: 64,
        patience: 5,
        seed: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn robustness_rows_cover_every_input() -> anyhow::Result<()> {
    let examples = catalogue(&small());
    let trainer = Trainer::new(fast(), DeviceChoice::Cpu.resolve()?)?;
    let study = trainer.run_study(&examples, &NoProgress)?;
    let table = robustness(&trainer, &examples, &study, &NoProgress)?;
    eprintln!("{}", table.to_markdown());
    let removed: Vec<&Input> = table.rows.iter().map(|r| &r.removed).collect();
    assert_eq!(
        removed,
        vec![
            &Input::Image,
            &Input::Text("description".into()),
            &Input::Text("title".into()),
            &Input::AllText
        ]
    );
    let specialist = |i: &Input| {
        table
            .rows
            .iter()
            .find(|r| &r.removed == i)
            .map(|r| r.specialist_variant.clone())
    };
    assert_eq!(specialist(&Input::Image).as_deref(), Some("text-only"));
    assert_eq!(specialist(&Input::AllText).as_deref(), Some("image-only"));
    assert_eq!(
        specialist(&Input::Text("title".into())).as_deref(),
        Some("fused without title")
    );
    // The intact model is the study's fused row.
    let fused_row = study.report.row("fused").map(|r| r.test);
    assert_eq!(Some(table.intact), fused_row);
    for r in &table.rows {
        assert_eq!(r.fused.n, study.split.test.len());
        // Modality dropout keeps a model with an input removed above chance (1/10). Removing the
        // image costs the most: the text path is the weak one in this catalogue.
        assert!(
            r.fused.top1 >= 0.2,
            "{}: fused top-1 {}",
            r.removed,
            r.fused.top1
        );
        assert!(r.test_items_with_input > 0);
    }
    Ok(())
}

#[test]
fn out_of_fold_probabilities_cover_every_labelled_item() -> anyhow::Result<()> {
    let mut examples = catalogue(&small());
    examples[3].label = None;
    let oof = cross_val_probabilities(
        &examples,
        4,
        &fast(),
        &DeviceChoice::Cpu.resolve()?,
        &NoProgress,
    )?;
    assert_eq!(oof.rows.len(), examples.len() - 1);
    assert!(oof.rows.iter().all(|r| r.key != examples[3].key));
    assert!(oof
        .rows
        .iter()
        .all(|r| r.fold < 4 && r.probs.len() == oof.labels.len()));
    assert!(oof
        .rows
        .iter()
        .all(|r| (r.probs.iter().sum::<f32>() - 1.0).abs() < 1e-4));
    let agree = oof
        .rows
        .iter()
        .filter(|r| {
            r.probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                == Some(r.label_index)
        })
        .count() as f64
        / oof.rows.len() as f64;
    eprintln!("out-of-fold agreement with given labels: {agree:.3}");
    // 20% of labels are noise, so agreement tops out near 0.8; chance is 0.1.
    assert!(agree >= 0.55, "agreement {agree}");
    Ok(())
}

#[test]
fn demo_protocol_keeps_test_groups_unseen() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        label_noise: 0.0,
        missing_text: 0.0,
        ..small()
    });
    let cfg = ProtocolConfig {
        train: fast(),
        ..ProtocolConfig::default()
    };
    let report = run_once(&examples, &cfg, &DeviceChoice::Cpu.resolve()?)?;
    eprintln!("{}", report.to_markdown());
    assert_eq!(report.test_groups_in_training, 0);
    let catalogue_items = (report.report.train_items + report.report.val_items) as f64;
    let flipped = report.noisy_labels as f64 / catalogue_items;
    assert!((0.14..=0.26).contains(&flipped), "flipped {flipped}");
    let dropped =
        report.dropped_text.get("description").copied().unwrap_or(0) as f64 / catalogue_items;
    assert!(
        (0.27..=0.41).contains(&dropped),
        "descriptions dropped {dropped}"
    );
    assert_eq!(report.report.rows.len(), 4);
    assert_eq!(report.robustness.rows.len(), 4);
    let fused = report
        .report
        .row("fused")
        .map(|r| r.test.top1)
        .unwrap_or(0.0);
    assert!(fused >= 0.6, "fused top-1 on clean unseen groups {fused}");
    Ok(())
}

#[test]
fn protocol_seeds_judge_targets_on_the_mean() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        groups_per_class: 6,
        ..small()
    });
    let cfg = ProtocolConfig {
        train: TrainConfig {
            epochs: 8,
            align_epochs: 0,
            ..fast()
        },
        ..ProtocolConfig::default()
    };
    let device = DeviceChoice::Cpu.resolve()?;
    let series = run_protocol(&examples, &[], &cfg, &[4, 9], &device, &NoProgress, None)?;
    eprintln!("{}\n{}", series.to_markdown(), series.targets_markdown());
    assert_eq!(series.seeds, [4, 9]);
    assert_eq!(series.runs.len(), 2);
    // Each run is the single protocol with its own seed: different splits, same shape.
    let single = run_once(
        &examples,
        &ProtocolConfig {
            train: TrainConfig {
                seed: 9,
                ..cfg.train.clone()
            },
            ..cfg.clone()
        },
        &device,
    )?;
    for (a, b) in series.runs[1].report.rows.iter().zip(&single.report.rows) {
        assert_eq!((&a.variant, &a.test, &a.val), (&b.variant, &b.test, &b.val));
    }
    assert_eq!(series.runs[0].report.seed, 4);
    // One target per single-run target, judged on the mean of the two runs' differences.
    let first = series.runs[0].targets();
    assert_eq!(series.targets.len(), first.len());
    let top1 = |run: usize, v: &str| 100.0 * series.runs[run].report.row(v).unwrap().test.top1;
    let margin = (top1(0, "fused") + top1(1, "fused")) / 2.0
        - (top1(0, "logistic regression") + top1(1, "logistic regression")) / 2.0;
    let lr_target = series.targets.last().unwrap();
    assert!(lr_target.target.contains("logistic regression"));
    assert_eq!(
        lr_target.met,
        margin >= 5.0 - 1e-9,
        "{lr_target:?} vs mean margin {margin}"
    );
    assert!(
        lr_target.measured.contains("2 seeds"),
        "{}",
        lr_target.measured
    );
    // The table has a row per seed plus the mean and its standard error.
    let table = series.to_markdown();
    assert_eq!(table.lines().count(), 2 + 2 + 2, "{table}");
    assert!(run_protocol(&examples, &[], &cfg, &[], &device, &NoProgress, None).is_err());
    Ok(())
}

#[test]
fn cross_style_protocol_trains_on_one_style_and_tests_on_the_others() -> anyhow::Result<()> {
    let examples = catalogue(&small());
    // Two styles in every group: even keys are drawn one way, odd keys another.
    let styles: Vec<Option<String>> = examples
        .iter()
        .map(|e| Some(if e.key % 2 == 0 { "even" } else { "odd" }.to_string()))
        .collect();
    let train = TrainConfig {
        epochs: 8,
        align_epochs: 0,
        ..fast()
    };
    let demo = ProtocolConfig {
        train: train.clone(),
        ..ProtocolConfig::default()
    };
    let cross = ProtocolConfig {
        cross_style: Some(CrossStyle {
            field: "style".into(),
            train: "even".into(),
        }),
        ..demo.clone()
    };
    let device = DeviceChoice::Cpu.resolve()?;
    let all = run_protocol(&examples, &styles, &demo, &[3], &device, &NoProgress, None)?;
    let styled = run_protocol(&examples, &styles, &cross, &[3], &device, &NoProgress, None)?;
    let (a, s) = (&all.runs[0].report, &styled.runs[0].report);
    // Same split, each side keeps about half its items: the even ones to train and validate,
    // the odd ones to test.
    let share = |n: usize, total: usize| (n as f64) / (total as f64);
    for (kept, of) in [
        (s.train_items, a.train_items),
        (s.val_items, a.val_items),
        (s.test_items, a.test_items),
    ] {
        assert!(
            (0.3..=0.7).contains(&share(kept, of)),
            "kept {kept} of {of}"
        );
    }
    assert_eq!(styled.runs[0].test_groups_in_training, 0);
    // A style nobody has is a clear error, not an empty run.
    let missing = ProtocolConfig {
        cross_style: Some(CrossStyle {
            field: "style".into(),
            train: "sepia".into(),
        }),
        ..demo
    };
    let err = run_protocol(
        &examples,
        &styles,
        &missing,
        &[3],
        &device,
        &NoProgress,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sepia"), "{err}");
    Ok(())
}
