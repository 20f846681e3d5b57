//! Splits keep groups together and give small classes validation and test items.

use std::collections::{BTreeMap, BTreeSet};

use trio_engine::train::split::{group_folds, per_class};
use trio_engine::train::Example;
use trio_lab::synthetic::{catalogue, SyntheticSpec};

fn groups_of(examples: &[Example], rows: &[usize]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|&r| examples[r].group.clone())
        .collect()
}

#[test]
fn groups_never_straddle_parts() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        seed: 3,
        ..SyntheticSpec::default()
    });
    for holdout in [0.04, 0.2, 0.4] {
        let s = per_class(&examples, holdout, 9)?;
        let (tr, va, te) = (
            groups_of(&examples, &s.train),
            groups_of(&examples, &s.val),
            groups_of(&examples, &s.test),
        );
        assert!(
            tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te),
            "holdout {holdout}"
        );
        let mut all: Vec<usize> = [s.train.clone(), s.val.clone(), s.test.clone()].concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..examples.len()).collect::<Vec<_>>(),
            "every labelled item once"
        );
    }
    Ok(())
}

#[test]
fn every_class_with_three_items_gets_val_and_test() -> anyhow::Result<()> {
    // Ungrouped items, class sizes 1..=12: the study's 4% rounds to zero for all of them.
    let mut examples = Vec::new();
    for class in 1..=12u64 {
        for i in 0..class {
            examples.push(Example {
                key: class * 100 + i,
                image: Some(vec![0.0; 4]),
                text: BTreeMap::new(),
                label: Some(format!("c{class}")),
                group: None,
            });
        }
    }
    let s = per_class(&examples, 0.04, 1)?;
    let count = |rows: &[usize], label: &str| {
        rows.iter()
            .filter(|&&r| examples[r].label.as_deref() == Some(label))
            .count()
    };
    for class in 1..=12u64 {
        let label = format!("c{class}");
        let (tr, va, te) = (
            count(&s.train, &label),
            count(&s.val, &label),
            count(&s.test, &label),
        );
        if class >= 3 {
            assert_eq!((va, te), (1, 1), "class {label}");
        } else {
            assert_eq!((va, te), (0, 0), "class {label}");
        }
        assert!(tr >= 1, "class {label} keeps a training item");
    }
    // Deterministic for a seed, different for another.
    assert_eq!(per_class(&examples, 0.04, 1)?, s);
    assert_ne!(per_class(&examples, 0.04, 2)?, s);
    Ok(())
}

#[test]
fn study_holdout_is_about_four_percent_split_evenly() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        classes: 10,
        groups_per_class: 100,
        items_per_group: 1,
        seed: 4,
        ..SyntheticSpec::default()
    });
    let s = per_class(&examples, 0.04, 0)?;
    let n = examples.len() as f64;
    let held = (s.val.len() + s.test.len()) as f64 / n;
    assert!((0.03..=0.05).contains(&held), "held out {held}");
    assert!(
        s.test.len().abs_diff(s.val.len()) <= 10,
        "val {} test {}",
        s.val.len(),
        s.test.len()
    );
    Ok(())
}

#[test]
fn folds_are_stratified_and_group_disjoint() -> anyhow::Result<()> {
    let examples = catalogue(&SyntheticSpec {
        seed: 8,
        ..SyntheticSpec::default()
    });
    let folds = group_folds(&examples, 5, 2)?;
    for (i, a) in folds.iter().enumerate() {
        for b in &folds[i + 1..] {
            assert!(groups_of(&examples, a).is_disjoint(&groups_of(&examples, b)));
        }
        let n = a.len() as f64 / examples.len() as f64;
        assert!((0.15..=0.25).contains(&n), "fold {i} holds {n}");
    }
    Ok(())
}
