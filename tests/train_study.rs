//! The study on a synthetic catalogue: fused beats each single modality, runs are
//! deterministic, models survive a save/load round trip, and partial inputs classify.

use std::collections::BTreeMap;

use trio_engine::models::fusion::{FusionInput, ModalityInputs};
use trio_engine::train::trainer::{FUSED, IMAGE_ONLY, LOGISTIC_REGRESSION, TEXT_ONLY};
use trio_engine::train::{Example, Study, TrainConfig, TrainedModel, Trainer};
use trio_engine::{DeviceChoice, NoProgress};
use trio_lab::synthetic::{catalogue, SyntheticSpec};
use trio_lab::Markdown;

/// How far (top-1, as a fraction) the fused model with the image withheld may trail the
/// text-only model on this synthetic split. Measured with these seeds: 46.8% against 49.8%.
/// Both are the same text experts, but the fused model's share one early-stopping epoch chosen
/// on the pooled validation score, and on this catalogue the image carries the classes. Before
/// the per-input experts it was 33.9% (−15.2 points) without anything training the text path
/// to work alone.
const WITHOUT_IMAGE_SLACK: f64 = 0.05;

fn spec() -> SyntheticSpec {
    SyntheticSpec {
        seed: 11,
        ..SyntheticSpec::default()
    }
}

/// A larger holdout than the study's 4% so the test split (about 270 items) measures something.
fn config() -> TrainConfig {
    TrainConfig {
        holdout: 0.3,
        epochs: 40,
        batch_size: 64,
        seed: 5,
        ..TrainConfig::default()
    }
}

fn run(examples: &[Example]) -> anyhow::Result<Study> {
    let trainer = Trainer::new(config(), DeviceChoice::Cpu.resolve()?)?;
    Ok(trainer.run_study(examples, &NoProgress)?)
}

fn inputs_of(e: &Example, image: bool, fields: &[&str]) -> FusionInput {
    FusionInput {
        image: if image { e.image.clone() } else { None },
        text: fields
            .iter()
            .filter_map(|f| e.text.get(*f).map(|v| (f.to_string(), v.clone())))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn fused_beats_single_modalities_deterministically() -> anyhow::Result<()> {
    let examples = catalogue(&spec());
    let study = run(&examples)?;
    let report = &study.report;
    let top1 = |v: &str| report.row(v).map(|r| r.test.top1).unwrap_or(f64::NAN);
    eprintln!("{}", report.to_markdown());
    // Floors measured with this seed (see the report printed above), left some room; 20% of
    // test labels are noisy, so 80% is the ceiling. With the branch heads and the heavier image
    // dropout (chosen on the demo protocol, where text generalises better than images) this
    // image-dominated catalogue measured fused 64.8, image-only 62.4, text-only 49.1: the
    // fused model's lead over the image shrank from the former 3-point floor to 2.4 points.
    // With the baselines voting (and the width chosen on validation) it measured 71.5.
    assert!(
        top1(FUSED) > top1(IMAGE_ONLY) + 0.01,
        "fused should beat image-only"
    );
    assert!(
        top1(FUSED) > top1(TEXT_ONLY) + 0.03,
        "fused should beat text-only"
    );
    assert!(top1(FUSED) >= 0.62, "fused top-1 {}", top1(FUSED));
    assert!(
        top1(LOGISTIC_REGRESSION) >= 0.4,
        "logistic regression top-1 {}",
        top1(LOGISTIC_REGRESSION)
    );
    for row in &report.rows {
        assert!(row.test.top5 >= row.test.top1);
        assert!(row.best_epoch >= 1 && row.best_epoch <= row.epochs_run);
    }
    assert_eq!(report.test_items, study.split.test.len());

    // Same seed, same everything (wall-clock times aside).
    let again = run(&examples)?;
    for (a, b) in report.rows.iter().zip(&again.report.rows) {
        assert_eq!(
            (a.test, a.val, a.epochs_run, a.best_epoch),
            (b.test, b.val, b.epochs_run, b.best_epoch),
            "{}",
            a.variant
        );
    }
    assert_eq!(
        study.fused.weights_safetensors(),
        again.fused.weights_safetensors()
    );
    Ok(())
}

/// The study trains its models as concurrent jobs (and the fused model's alignment beside its
/// classifier) on rayon's thread count: one thread or several, the models must be the same.
#[test]
fn the_study_does_not_depend_on_the_thread_count() -> anyhow::Result<()> {
    let examples = catalogue(&spec());
    let on = |threads: usize| -> anyhow::Result<Study> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?
            .install(|| run(&examples))
    };
    let (one, several) = (on(1)?, on(3)?);
    for (a, b) in one.report.rows.iter().zip(&several.report.rows) {
        assert_eq!(
            (&a.variant, a.test, a.val, a.epochs_run, a.best_epoch),
            (&b.variant, b.test, b.val, b.epochs_run, b.best_epoch),
        );
    }
    assert_eq!(one.report.rows.len(), several.report.rows.len());
    assert!(
        one.fused.weights_safetensors() == several.fused.weights_safetensors(),
        "the fused model's weights differ between one thread and three"
    );
    Ok(())
}

#[test]
fn save_load_roundtrip_and_partial_inputs() -> anyhow::Result<()> {
    let examples = catalogue(&spec());
    let study = run(&examples)?;
    let device = DeviceChoice::Cpu.resolve()?;
    // The fused model carries the image-only and text-only baselines, for `trio eval`.
    let variants: Vec<&str> = study
        .fused
        .baselines
        .iter()
        .map(|b| b.variant.as_str())
        .collect();
    assert_eq!(variants, [IMAGE_ONLY, TEXT_ONLY]);
    let model = study.fused.load(&device)?;
    let test: Vec<&Example> = study.split.test.iter().map(|&i| &examples[i]).collect();
    let full: Vec<FusionInput> = test
        .iter()
        .map(|e| inputs_of(e, true, &["title", "description"]))
        .collect();
    let before = model.predict(&full)?;

    let bytes = study.fused.to_bytes()?;
    let restored = TrainedModel::from_bytes(&bytes)?;
    assert_eq!(restored.labels, study.fused.labels);
    assert_eq!(restored.config, study.fused.config);
    assert_eq!(restored.metrics, study.fused.metrics);
    assert_eq!(restored.fingerprint, study.fused.fingerprint);
    let after = restored.load(&device)?.predict(&full)?;
    assert_eq!(before, after, "predictions changed across save/load");
    assert!(
        TrainedModel::from_bytes(&restored.to_bytes()?)? == restored,
        "second round trip differs"
    );
    assert!(TrainedModel::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    assert!(TrainedModel::from_bytes(b"not a model").is_err());

    // Partial inputs: every kind of input classifies, well above chance (1/20). Measured with
    // this seed: image only 70.5%, text only 50.6% (35% before the baselines voted, 31% before
    // the branch heads; the text-only model gets 49%, the study row above), title only 38.0%,
    // image + description 70.2%.
    let label_index = |e: &Example| {
        study
            .fused
            .labels
            .iter()
            .position(|l| Some(l) == e.label.as_ref())
    };
    for (what, image, fields) in [
        ("image only", true, vec![]),
        ("text only", false, vec!["title", "description"]),
        ("title only", false, vec!["title"]),
        ("image + description", true, vec!["description"]),
    ] {
        let (inputs, kept): (Vec<FusionInput>, Vec<&&Example>) = test
            .iter()
            .map(|e| (inputs_of(e, image, &fields), e))
            .filter(|(i, _)| i.image().is_some() || !i.text.is_empty())
            .unzip();
        let probs = model.predict(&inputs)?;
        let correct = probs
            .iter()
            .zip(&kept)
            .filter(|(p, e)| {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i);
                best.is_some() && best == label_index(e)
            })
            .count();
        let acc = correct as f64 / kept.len() as f64;
        eprintln!("{what}: top-1 {acc:.3} on {} items", kept.len());
        let floor = match (image, fields.len()) {
            (true, _) => 0.6,
            (false, 2) => 0.4,
            (false, _) => 0.3,
        };
        assert!(acc >= floor, "{what}: top-1 {acc}");
        assert!(probs
            .iter()
            .all(|p| (p.iter().sum::<f32>() - 1.0).abs() < 1e-4));
    }
    Ok(())
}

/// The fused model with the image withheld from every test item, against the text-only model
/// trained on the same split: the text experts are trained to classify alone (see
/// `WITHOUT_IMAGE_SLACK` for the measured figures).
#[test]
fn fused_without_image_stays_near_text_only() -> anyhow::Result<()> {
    use trio_engine::train::Input;

    let examples = catalogue(&spec());
    let study = run(&examples)?;
    let trainer = Trainer::new(config(), DeviceChoice::Cpu.resolve()?)?;
    let hidden = trainer.evaluate(
        &study.fused,
        &examples,
        &study.split.test,
        Some(&Input::Image),
    )?;
    let text_only = study
        .report
        .row(TEXT_ONLY)
        .map(|r| r.test.top1)
        .unwrap_or(f64::NAN);
    // The study's fused row is the pooled prediction that a stored model makes.
    let intact = trainer.evaluate(&study.fused, &examples, &study.split.test, None)?;
    assert_eq!(Some(intact), study.report.row(FUSED).map(|r| r.test));
    eprintln!(
        "fused without image: top-1 {:.3}; text-only model: {text_only:.3}",
        hidden.top1
    );
    assert!(
        hidden.top1 >= text_only - WITHOUT_IMAGE_SLACK,
        "fused without image {:.3} vs text-only {text_only:.3}",
        hidden.top1
    );
    Ok(())
}

#[test]
fn text_query_finds_images_of_its_class() -> anyhow::Result<()> {
    let examples = catalogue(&spec());
    let study = run(&examples)?;
    let model = study.fused.load(&DeviceChoice::Cpu.resolve()?)?;
    let test: Vec<&Example> = study
        .split
        .test
        .iter()
        .map(|&i| &examples[i])
        .filter(|e| e.image.is_some() && e.text.contains_key("title"))
        .collect();
    let images: Vec<FusionInput> = test.iter().map(|e| inputs_of(e, true, &[])).collect();
    let queries: Vec<FusionInput> = test
        .iter()
        .map(|e| inputs_of(e, false, &["title"]))
        .collect();
    let image_vecs = model.fused_vectors(&images)?;
    let query_vecs = model.fused_vectors(&queries)?;
    let dim = model.config().search_dim();
    assert!(image_vecs.iter().chain(&query_vecs).all(|v| v.len() == dim));
    // Judged by true class, not by the (20% noisy) label: the generator numbers groups class by
    // class, so a group's number gives its true class.
    let true_class = |e: &Example| e.group.as_deref().map(group_class);
    let mut hits = 0;
    for (i, (q, e)) in query_vecs.iter().zip(&test).enumerate() {
        // The item's own image is left out: the question is whether a title finds *other*
        // images of its class.
        let best = image_vecs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, v)| (j, v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(j, _)| j);
        if let Some(j) = best {
            hits +=
                usize::from(true_class(test[j]).is_some() && true_class(test[j]) == true_class(e));
        }
    }
    let rate = hits as f64 / test.len() as f64;
    eprintln!(
        "text→image top-1 same-class rate {rate:.3} over {} queries",
        test.len()
    );
    // Chance is 1/20. Measured 0.393 with the joint heads on frozen features aligned item by
    // item (`train::align`, the default); the earlier heads on the classifier's branch outputs
    // cleared 0.45 here, because they carried the class and little else. The floor leaves room
    // under the measured figure; the class-level loss is a known trade-off (BENCHMARKS.md,
    // "Cross-modal search").
    assert!(rate >= 0.33, "text→image same-class rate {rate}");
    Ok(())
}

/// The generator numbers groups class by class, `groups_per_class` at a time.
fn group_class(group: &str) -> usize {
    let n: usize = group
        .trim_start_matches("group-")
        .parse()
        .unwrap_or(usize::MAX);
    n / spec().groups_per_class
}

/// The gain of alignment, instance-level: each test item's title (text only, through the same
/// query path as `trio search --text`) must find an image of its own group (one "emoji" drawn
/// several times) among image-only vectors of every test item. The model whose joint heads are
/// aligned (the default, `train::align`) is compared with the same model without alignment
/// (`align_epochs` 0): the unaligned joint heads are untrained projections, so text and images
/// do not meet. Floors sit under the figures printed (measured with these seeds: see the
/// assertions).
#[test]
fn alignment_lets_a_title_find_its_own_images() -> anyhow::Result<()> {
    use trio_engine::train::InputSet;
    use trio_lab::crossmodal::{image_only_vectors, text_to_image_recall, TextQuery};

    let examples = catalogue(&spec());
    let device = DeviceChoice::Cpu.resolve()?;
    let split = trio_engine::train::split::per_class(&examples, config().holdout, config().seed)?;
    let test: Vec<&Example> = split
        .test
        .iter()
        .map(|&i| &examples[i])
        .filter(|e| e.image.is_some())
        .collect();
    let gallery_features: Vec<Vec<f32>> = test.iter().filter_map(|e| e.image.clone()).collect();
    let queries: Vec<TextQuery> = test
        .iter()
        .filter_map(|e| {
            let embedding = e.text.get("title")?.clone();
            let relevant = test
                .iter()
                .enumerate()
                .filter(|(_, o)| o.group == e.group)
                .map(|(j, _)| j)
                .collect();
            Some(TextQuery {
                embedding,
                relevant,
            })
        })
        .collect();
    let inputs = InputSet {
        image: true,
        text_fields: vec!["description".into(), "title".into()],
    };
    let mut recall_at_10 = Vec::new();
    for align_epochs in [config().align_epochs, 0] {
        let cfg = TrainConfig {
            align_epochs,
            ..config()
        };
        let trained = Trainer::new(cfg, device.clone())?.train_variant(
            &examples,
            &split,
            FUSED,
            &inputs,
            &NoProgress,
        )?;
        let model = trained.load(&device)?;
        let gallery = image_only_vectors(&model, &gallery_features)?;
        let r = text_to_image_recall(&model, &gallery, &queries, &[1, 10])?;
        eprintln!(
            "align_epochs {align_epochs}: {} queries over {} images, R@1 {:.3}, R@10 {:.3}, MRR {:.3}",
            r.queries,
            r.gallery,
            r.at(1).unwrap_or(0.0),
            r.at(10).unwrap_or(0.0),
            r.mean_reciprocal_rank
        );
        // The per-query ranks are what the figures summarise.
        assert_eq!(r.ranks.len(), r.queries);
        let within_10 = r.ranks.iter().filter(|&&rank| rank <= 10).count();
        assert_eq!(r.at(10), Some(within_10 as f64 / r.queries as f64));
        recall_at_10.push(r.at(10).unwrap_or(0.0));
    }
    let (aligned, unaligned) = (recall_at_10[0], recall_at_10[1]);
    assert!(aligned >= ALIGNED_R10_FLOOR, "aligned R@10 {aligned}");
    assert!(
        aligned >= unaligned + ALIGNMENT_GAIN_FLOOR,
        "aligned R@10 {aligned} vs unaligned {unaligned}"
    );
    Ok(())
}

/// Measured R@10 0.672 aligned (122 queries over 149 images; R@1 0.180), 0.148 unaligned
/// (chance is about 3 / 149 per image, ~0.07 for a group of three).
const ALIGNED_R10_FLOOR: f64 = 0.40;
const ALIGNMENT_GAIN_FLOOR: f64 = 0.25;

/// The fused model tries each image projection width (`image_proj_candidates` beside
/// `model.image_proj_dim`) on the same split and keeps the best on validation; the others are
/// recorded in its metrics. The kept model is the one a run configured with that width alone
/// trains, so the search changes which width, never how a width trains. Run with each width
/// configured first, so that the kept one is once the first candidate (whose joint heads were
/// aligned) and once a later one (which takes them over).
#[test]
fn the_image_width_is_chosen_on_validation() -> anyhow::Result<()> {
    use trio_engine::models::fusion::FusionConfig;

    let examples = catalogue(&spec());
    let device = DeviceChoice::Cpu.resolve()?;
    let study = |cfg: TrainConfig| -> anyhow::Result<Study> {
        Ok(Trainer::new(cfg, device.clone())?.run_study(&examples, &NoProgress)?)
    };
    // The width is chosen on the fused network's own validation score, which is the model's.
    let with_width = |first: usize, others: Vec<usize>| TrainConfig {
        image_proj_candidates: others,
        model: FusionConfig {
            image_proj_dim: first,
            ..config().model
        },
        ..config()
    };
    let mut kept = Vec::new();
    for (first, other) in [(128, 32), (32, 128)] {
        let searched = study(with_width(first, vec![other, first]))?;
        let trials = &searched.fused.metrics.width_trials;
        let widths: Vec<usize> = trials.iter().map(|t| t.image_proj_dim).collect();
        // The configured width first; a repeated one is tried once.
        assert_eq!(widths, [first, other]);
        let best = trials.iter().fold(
            &trials[0],
            |b, t| if t.val_top1 > b.val_top1 { t } else { b },
        );
        eprintln!("{trials:?}");
        assert_eq!(searched.fused.config.image_proj_dim, best.image_proj_dim);
        assert_eq!(searched.fused.metrics.val.top1, best.val_top1);

        let alone = study(with_width(best.image_proj_dim, Vec::new()))?;
        assert!(alone.fused.metrics.width_trials.is_empty());
        assert_eq!(alone.fused.metrics.val, searched.fused.metrics.val);
        assert_eq!(alone.fused.metrics.test, searched.fused.metrics.test);
        // Single-modality models have no width to choose between.
        for m in searched.image_only.iter().chain(&searched.text_only) {
            assert!(m.metrics.width_trials.is_empty(), "{}", m.variant);
        }
        kept.push(best.image_proj_dim);
    }
    // The same two widths on the same split: the same one wins whichever is listed first
    // (unless they tie exactly, when the configured one stays).
    assert_eq!(kept[0], kept[1]);
    Ok(())
}
