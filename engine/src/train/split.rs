//! Splitting labelled examples the way the study did: per class, a small holdout halved into
//! validation and test, label noise kept. Items sharing a `group` move together.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::Example;
use crate::error::{Error, Result};

/// Indices into the example slice, ascending. Unlabelled examples are in none of the parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// A set of examples that must stay together, with the class it counts towards.
struct Unit {
    members: Vec<usize>,
    label: String,
}

/// Groups the labelled examples into units (one per `group`, one per ungrouped example), each
/// counted towards its members' majority label (ties: the smallest label), ordered by first
/// member.
fn units(examples: &[Example], rows: &[usize]) -> Vec<Unit> {
    let mut by_group: BTreeMap<&str, usize> = BTreeMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for &i in rows {
        let Some(e) = examples.get(i) else { continue };
        if e.label.is_none() {
            continue;
        }
        match e.group.as_deref() {
            Some(g) => {
                let slot = *by_group.entry(g).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[slot].push(i);
            }
            None => members.push(vec![i]),
        }
    }
    members
        .into_iter()
        .map(|m| {
            let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
            for &i in &m {
                if let Some(l) = examples[i].label.as_deref() {
                    *votes.entry(l).or_default() += 1;
                }
            }
            // BTreeMap iterates labels in order, and max_by_key keeps the last maximum, so
            // iterate in reverse to keep the smallest label on ties.
            let label = votes
                .iter()
                .rev()
                .max_by_key(|(_, n)| **n)
                .map(|(l, _)| l.to_string())
                .unwrap_or_default();
            Unit { members: m, label }
        })
        .collect()
}

/// Units per class, classes in label order, units in first-member order.
fn units_by_class(examples: &[Example], rows: &[usize]) -> BTreeMap<String, Vec<Unit>> {
    let mut by_class: BTreeMap<String, Vec<Unit>> = BTreeMap::new();
    for u in units(examples, rows) {
        by_class.entry(u.label.clone()).or_default().push(u);
    }
    by_class
}

/// Splits per class: `holdout` of each class's items is held out (rounded), the held part
/// split half test, half validation (test takes the odd one). A class with at least three
/// units (groups, or items when ungrouped) always gets at least one unit in validation and one
/// in test, and always keeps at least one unit for training.
pub fn per_class(examples: &[Example], holdout: f64, seed: u64) -> Result<Split> {
    let all: Vec<usize> = (0..examples.len()).collect();
    per_class_among(examples, &all, holdout, seed)
}

/// [`per_class`] restricted to the examples at `rows`.
pub fn per_class_among(
    examples: &[Example],
    rows: &[usize],
    holdout: f64,
    seed: u64,
) -> Result<Split> {
    if !(0.0..0.5).contains(&holdout) {
        return Err(Error::InvalidTrainConfig {
            field: "holdout",
            reason: format!("must be in [0, 0.5), got {holdout}"),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut split = Split::default();
    for (_, mut class_units) in units_by_class(examples, rows) {
        class_units.shuffle(&mut rng);
        let items: usize = class_units.iter().map(|u| u.members.len()).sum();
        let held = (holdout * items as f64).round() as usize;
        let mut want_test = held.div_ceil(2);
        let mut want_val = held - want_test;
        if class_units.len() >= 3 {
            want_test = want_test.max(1);
            want_val = want_val.max(1);
        }
        let (mut got_test, mut got_val) = (0, 0);
        let total = class_units.len();
        for (n, unit) in class_units.into_iter().enumerate() {
            let left_after = total - n - 1;
            let size = unit.members.len();
            if got_test < want_test && left_after >= 1 {
                got_test += size;
                split.test.extend(unit.members);
            } else if got_val < want_val && left_after >= 1 {
                got_val += size;
                split.val.extend(unit.members);
            } else {
                split.train.extend(unit.members);
            }
        }
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    Ok(split)
}

/// Stratified group folds: every labelled example in exactly one of `k` folds, groups kept
/// together, each class's units dealt round-robin (the dealer's position carries over between
/// classes so small classes do not all start at fold 0).
pub fn group_folds(examples: &[Example], k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        return Err(Error::InvalidTrainConfig {
            field: "k_folds",
            reason: format!("needs at least 2 folds, got {k}"),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut folds = vec![Vec::new(); k];
    let mut dealer = 0usize;
    let all: Vec<usize> = (0..examples.len()).collect();
    for (_, mut class_units) in units_by_class(examples, &all) {
        class_units.shuffle(&mut rng);
        for unit in class_units {
            folds[dealer % k].extend(unit.members);
            dealer += 1;
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(key: u64, label: &str, group: Option<&str>) -> Example {
        Example {
            key,
            image: Some(vec![0.0]),
            text: BTreeMap::new(),
            label: Some(label.to_string()),
            group: group.map(str::to_string),
        }
    }

    #[test]
    fn small_classes_get_val_and_test_and_keep_train() -> Result<()> {
        let mut examples = Vec::new();
        for c in 0..5u64 {
            for i in 0..(3 + c) {
                examples.push(ex(c * 100 + i, &format!("c{c}"), None));
            }
        }
        let s = per_class(&examples, 0.04, 1)?;
        for c in 0..5 {
            let label = format!("c{c}");
            let count = |part: &[usize]| {
                part.iter()
                    .filter(|&&i| examples[i].label.as_deref() == Some(&label))
                    .count()
            };
            assert_eq!(count(&s.val), 1, "class {label}");
            assert_eq!(count(&s.test), 1, "class {label}");
            assert!(count(&s.train) >= 1, "class {label}");
        }
        Ok(())
    }

    #[test]
    fn two_item_class_stays_in_train() -> Result<()> {
        let examples = vec![ex(1, "a", None), ex(2, "a", None)];
        let s = per_class(&examples, 0.04, 0)?;
        assert_eq!(s.train, vec![0, 1]);
        Ok(())
    }

    #[test]
    fn majority_label_decides_a_groups_class() {
        let examples = vec![
            ex(1, "b", Some("g")),
            ex(2, "a", Some("g")),
            ex(3, "a", Some("g")),
        ];
        let u = units(&examples, &[0, 1, 2]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].label, "a");
        let tie = vec![ex(1, "b", Some("g")), ex(2, "a", Some("g"))];
        assert_eq!(units(&tie, &[0, 1])[0].label, "a");
    }

    #[test]
    fn folds_cover_every_labelled_example_once() -> Result<()> {
        let mut examples: Vec<Example> = (0..50)
            .map(|i| ex(i, &format!("c{}", i % 4), Some(&format!("g{}", i / 2))))
            .collect();
        examples[7].label = None;
        let folds = group_folds(&examples, 5, 3)?;
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        let expected: Vec<usize> = (0..50).filter(|&i| i != 7).collect();
        assert_eq!(all, expected);
        Ok(())
    }
}
