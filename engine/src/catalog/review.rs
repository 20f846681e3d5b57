//! Reviewing the quality reports: a reviewer relabels an item or confirms its label, and says
//! of a duplicate group that its members are not duplicates. The decisions are stored (see
//! `store::review`), and [`Catalog::duplicates`] and [`Catalog::noise`] read them, so the next
//! reports show only what is still open.
//!
//! Every decision bumps the store generation, so reports cached per generation are computed
//! afresh. No vector changes, so the indexes in memory stay valid and are restamped with the new
//! generation rather than rebuilt.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::quality::{DuplicateGroupView, DuplicatesOutcome};
use super::{BuiltIndex, Catalog, WriteInFlight};
use crate::error::{Error, Result};
use crate::store::Item;

/// The id of a duplicate group: the first 12 hex digits of the SHA-256 of its sorted member ids.
/// It names the group by what it holds, so it stays the same across report runs while the
/// members do, and a group that gained or lost a member is another group.
pub fn group_id(members: &[String]) -> String {
    let mut sorted: Vec<&str> = members.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for id in sorted {
        // Length-prefixed, so no two lists of ids hash the same bytes.
        hasher.update((id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
    }
    hex::encode(&hasher.finalize()[..6])
}

/// An item's label in `field`: `label`, or a metadata field, read as training reads it.
pub fn label_in(item: &Item, field: &str) -> Option<String> {
    if field == "label" {
        item.label.clone().filter(|l| !l.is_empty())
    } else {
        item.metadata.get(field).and_then(super::model::json_text)
    }
}

impl Catalog {
    /// Sets item `id`'s label in `field` (`label`, or the metadata field a model is trained on).
    /// With `expected`, the change is a `Conflict` unless the stored label is that one, so a
    /// reviewer's decision about a label someone else has changed meanwhile is not applied.
    pub fn set_label(
        &self,
        id: &str,
        field: &str,
        label: &str,
        expected: Option<&str>,
    ) -> Result<Item> {
        if label.trim().is_empty() {
            return Err(Error::InvalidArgument("a label must not be blank".into()));
        }
        let _writing = WriteInFlight::start(&self.writes_in_flight);
        let (item, generation) = self.store.update_item(id, |item| {
            check_expected(item, field, expected)?;
            if field == "label" {
                item.label = Some(label.to_string());
            } else {
                item.metadata
                    .insert(field.to_string(), serde_json::Value::String(label.into()));
            }
            Ok(())
        })?;
        self.restamp_indexes(generation)?;
        Ok(item)
    }

    /// Records that item `id`'s current label in `field` is right: label-noise reports on
    /// `field` leave the item out while it keeps that label. `expected` as for
    /// [`Catalog::set_label`]; an item without a label there is an `InvalidArgument`.
    pub fn keep_label(&self, id: &str, field: &str, expected: Option<&str>) -> Result<Item> {
        let item = self.store.get(id)?.ok_or_else(|| Error::NotFound {
            what: "item".into(),
            id: id.to_string(),
        })?;
        check_expected(&item, field, expected)?;
        let label = label_in(&item, field).ok_or_else(|| {
            Error::InvalidArgument(format!("item '{id}' has no `{field}` label to keep"))
        })?;
        // Recorded with the label it confirms: if the label changes meanwhile, the record
        // does not match it and hides nothing.
        let _writing = WriteInFlight::start(&self.writes_in_flight);
        let generation = self.store.keep_label(item.key, field, &label)?;
        self.restamp_indexes(generation)?;
        Ok(item)
    }

    /// Confirmed labels in `field`, by item key.
    pub fn kept_labels(&self, field: &str) -> Result<HashMap<u64, String>> {
        self.store.kept_labels(field)
    }

    /// Records that no two of these items are duplicates of each other: every pair among them is
    /// dismissed. `NotFound` names the first id that is not stored.
    pub fn dismiss_group(&self, members: &[String]) -> Result<()> {
        let mut keys = Vec::with_capacity(members.len());
        for id in members {
            keys.push(self.store.key_of(id)?.ok_or_else(|| Error::NotFound {
                what: "item".into(),
                id: id.clone(),
            })?);
        }
        let pairs: Vec<(u64, u64)> = keys
            .iter()
            .enumerate()
            .flat_map(|(i, &a)| keys[i + 1..].iter().map(move |&b| (a, b)))
            .collect();
        self.dismiss_pairs(&pairs)
    }

    /// Records pairs of item keys as not duplicates.
    pub fn dismiss_pairs(&self, pairs: &[(u64, u64)]) -> Result<()> {
        let _writing = WriteInFlight::start(&self.writes_in_flight);
        let generation = self.store.dismiss_pairs(pairs)?;
        self.restamp_indexes(generation)
    }

    /// Every dismissed pair, as `(smaller key, larger key)`.
    pub fn dismissed_pairs(&self) -> Result<BTreeSet<(u64, u64)>> {
        self.store.dismissed_pairs()
    }

    /// The report without what reviewers dismissed. A group with no dismissed pair among its
    /// members is left as found; one with some is split, members in order, each joining the
    /// first part holding no member it was dismissed against, and parts of one item dropped.
    /// So no dismissed pair is ever shown as a duplicate, and a group dismissed whole is gone.
    pub(super) fn without_dismissed(
        &self,
        mut outcome: DuplicatesOutcome,
    ) -> Result<DuplicatesOutcome> {
        let dismissed = self.dismissed_pairs()?;
        if dismissed.is_empty() {
            return Ok(outcome);
        }
        let mut groups = Vec::with_capacity(outcome.groups.len());
        for group in outcome.groups {
            let mut keys = Vec::with_capacity(group.members.len());
            for id in &group.members {
                keys.push(self.store.key_of(id)?);
            }
            let apart = |i: usize, j: usize| match (keys[i], keys[j]) {
                (Some(a), Some(b)) => dismissed.contains(&(a.min(b), a.max(b))),
                _ => false,
            };
            groups.extend(split_group(group, apart));
        }
        outcome.groups = groups;
        Ok(outcome)
    }

    /// Marks every in-memory index that was current just before the review write which
    /// committed `generation` as current at it: the write changed no vector.
    fn restamp_indexes(&self, generation: u64) -> Result<()> {
        let mut indexes = self.write_indexes()?;
        for built in indexes.values_mut() {
            if built.generation + 1 == generation {
                *built = Arc::new(BuiltIndex {
                    index: built.index.clone(),
                    generation,
                    model_version: built.model_version,
                });
            }
        }
        Ok(())
    }
}

fn check_expected(item: &Item, field: &str, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current = label_in(item, field);
    if current.as_deref() == Some(expected) {
        return Ok(());
    }
    Err(Error::Conflict {
        what: "item".into(),
        id: item.id.clone(),
        reason: match current {
            Some(label) => format!("its `{field}` is now `{label}`, not `{expected}`"),
            None => format!("it has no `{field}` now, not `{expected}`"),
        },
    })
}

/// Splits a group so that no two members `apart(i, j)` share a part (see
/// [`Catalog::without_dismissed`]); the pairs follow their members.
fn split_group(
    group: DuplicateGroupView,
    apart: impl Fn(usize, usize) -> bool,
) -> Vec<DuplicateGroupView> {
    let n = group.members.len();
    if !(0..n).any(|i| (i + 1..n).any(|j| apart(i, j))) {
        return vec![group];
    }
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        match parts.iter_mut().find(|p| p.iter().all(|&j| !apart(i, j))) {
            Some(part) => part.push(i),
            None => parts.push(vec![i]),
        }
    }
    parts
        .into_iter()
        .filter(|p| p.len() > 1)
        .map(|part| {
            let members: Vec<String> = part.iter().map(|&i| group.members[i].clone()).collect();
            let pairs = group
                .pairs
                .iter()
                .filter(|p| members.contains(&p.a) && members.contains(&p.b))
                .cloned()
                .collect();
            DuplicateGroupView {
                kind: group.kind,
                members,
                pairs,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalog::DuplicatePairView;
    use crate::quality::duplicates::DuplicateKind;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn pair(a: &str, b: &str, score: f32) -> DuplicatePairView {
        DuplicatePairView {
            a: a.into(),
            b: b.into(),
            score,
            evidence: Default::default(),
        }
    }

    fn group(members: &[&str]) -> DuplicateGroupView {
        DuplicateGroupView {
            kind: DuplicateKind::Near,
            members: ids(members),
            pairs: vec![
                pair("a", "b", 0.99),
                pair("a", "c", 0.98),
                pair("b", "c", 0.97),
            ],
        }
    }

    #[test]
    fn group_ids_name_the_member_set() {
        let id = group_id(&ids(&["b", "a"]));
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, group_id(&ids(&["a", "b"])));
        assert_ne!(id, group_id(&ids(&["a", "b", "c"])));
        // Length prefixes: moving a character between ids is another group.
        assert_ne!(group_id(&ids(&["ab", "c"])), group_id(&ids(&["a", "bc"])));
    }

    #[test]
    fn an_untouched_group_is_left_as_found() {
        let g = group(&["a", "b", "c"]);
        assert_eq!(split_group(g.clone(), |_, _| false), vec![g]);
    }

    #[test]
    fn a_dismissed_pair_is_never_in_one_group() {
        // a–b dismissed: a and c stay together with their link, b alone is dropped.
        let split = split_group(group(&["a", "b", "c"]), |i, j| {
            (i.min(j), i.max(j)) == (0, 1)
        });
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].members, ids(&["a", "c"]));
        assert_eq!(split[0].pairs, vec![pair("a", "c", 0.98)]);
    }

    #[test]
    fn a_group_dismissed_whole_is_gone() {
        assert!(split_group(group(&["a", "b", "c"]), |_, _| true).is_empty());
    }
}
