//! Reviewers' decisions, stored beside the items: item edits, pairs dismissed as "not
//! duplicates", and labels confirmed as right.
//!
//! Every write here bumps the store generation: the duplicate and label-noise reports read these
//! tables, and a report is known to be current only while the generation it was computed at
//! is. The tables are created by their first write, so stores made before them open unchanged
//! and read as "nothing reviewed yet". Records name item keys, which are never reused, so the
//! records of a deleted item are inert.

use std::collections::{BTreeSet, HashMap};

use redb::{ReadableTable, TableDefinition, TableError};

use super::{
    bump_generation, corrupt, decode_item, meta_key, meta_u64, AtTable, Store, IDS, ITEMS, META,
};
use crate::error::{Error, Result};
use crate::store::types::Item;

/// `(smaller key, larger key)` of a pair a reviewer said is not a duplicate.
const DISMISSED: TableDefinition<(u64, u64), ()> = TableDefinition::new("dismissed_pairs");
/// `(item key, label field)` → the label a reviewer confirmed for it.
const KEPT_LABELS: TableDefinition<(u64, &str), &str> = TableDefinition::new("kept_labels");

impl Store {
    /// Applies `edit` to the stored item `id` in one transaction and returns the item as
    /// written with the generation the write committed. `edit` may refuse (its error is
    /// returned, nothing is written) and may not change the item's key, id or content hash,
    /// which the indexes and re-ingest rely on. `NotFound` when there is no such item.
    pub fn update_item(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Item) -> Result<()>,
    ) -> Result<(Item, u64)> {
        let txn = self.write_txn()?;
        let (item, generation) = {
            let ids = txn.open_table(IDS).at("ids", || "opening".into())?;
            let key = ids
                .get(id)
                .at("ids", || format!("looking up item {id:?}"))?
                .map(|k| k.value())
                .ok_or_else(|| Error::NotFound {
                    what: "item".into(),
                    id: id.to_string(),
                })?;
            let mut items = txn.open_table(ITEMS).at("items", || "opening".into())?;
            let json = items
                .get(key)
                .at("items", || format!("reading item {id:?}"))?
                .ok_or_else(|| corrupt("ids", id, format!("points at missing item key {key}")))?
                .value()
                .to_vec();
            let mut item = decode_item(key, &json)?;
            let (old_id, old_hash) = (item.id.clone(), item.content_hash.clone());
            edit(&mut item)?;
            if item.key != key || item.id != old_id || item.content_hash != old_hash {
                return Err(Error::Internal(format!(
                    "an edit of item {id:?} changed its key, id or content hash"
                )));
            }
            let json = serde_json::to_vec(&item).map_err(|source| Error::Json {
                context: format!("encoding item {id:?}"),
                source,
            })?;
            items
                .insert(key, json.as_slice())
                .at("items", || format!("writing item {id:?}"))?;
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            bump_generation(&mut meta)?;
            let generation = meta_u64(&meta, meta_key::GENERATION)?.unwrap_or(0);
            (item, generation)
        };
        txn.commit()
            .at("items", || format!("committing an edit of {id:?}"))?;
        Ok((item, generation))
    }

    /// Records pairs of item keys as "not duplicates" (in either order; a pair of one key is
    /// ignored) and returns the generation the write committed.
    pub fn dismiss_pairs(&self, pairs: &[(u64, u64)]) -> Result<u64> {
        let txn = self.write_txn()?;
        let generation = {
            let mut table = txn
                .open_table(DISMISSED)
                .at("dismissed_pairs", || "opening".into())?;
            for &(a, b) in pairs.iter().filter(|(a, b)| a != b) {
                table
                    .insert((a.min(b), a.max(b)), ())
                    .at("dismissed_pairs", || format!("writing ({a}, {b})"))?;
            }
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            bump_generation(&mut meta)?;
            meta_u64(&meta, meta_key::GENERATION)?.unwrap_or(0)
        };
        txn.commit()
            .at("dismissed_pairs", || "committing dismissed pairs".into())?;
        Ok(generation)
    }

    /// Every dismissed pair, as `(smaller key, larger key)`.
    pub fn dismissed_pairs(&self) -> Result<BTreeSet<(u64, u64)>> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(DISMISSED) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(BTreeSet::new()),
            Err(e) => return Err(e).at("dismissed_pairs", || "opening".into()),
        };
        let mut out = BTreeSet::new();
        for entry in table
            .range::<(u64, u64)>(..)
            .at("dismissed_pairs", || "listing".into())?
        {
            let (pair, _) = entry.at("dismissed_pairs", || "listing".into())?;
            out.insert(pair.value());
        }
        Ok(out)
    }

    /// Records that the label `label` of item `key` in `field` was confirmed by a reviewer, and
    /// returns the generation the write committed. A later confirmation replaces it.
    pub fn keep_label(&self, key: u64, field: &str, label: &str) -> Result<u64> {
        let txn = self.write_txn()?;
        let generation = {
            let mut table = txn
                .open_table(KEPT_LABELS)
                .at("kept_labels", || "opening".into())?;
            table
                .insert((key, field), label)
                .at("kept_labels", || format!("writing key {key}"))?;
            let mut meta = txn.open_table(META).at("meta", || "opening".into())?;
            bump_generation(&mut meta)?;
            meta_u64(&meta, meta_key::GENERATION)?.unwrap_or(0)
        };
        txn.commit().at("kept_labels", || {
            format!("committing the label of key {key}")
        })?;
        Ok(generation)
    }

    /// The confirmed labels in `field`, by item key.
    pub fn kept_labels(&self, field: &str) -> Result<HashMap<u64, String>> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(KEPT_LABELS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(e).at("kept_labels", || "opening".into()),
        };
        let mut out = HashMap::new();
        for entry in table.iter().at("kept_labels", || "listing".into())? {
            let (key, label) = entry.at("kept_labels", || "listing".into())?;
            let (item, f) = key.value();
            if f == field {
                out.insert(item, label.value().to_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Features, NewItem, PutMode};

    fn store_with(ids: &[&str]) -> Store {
        let store = Store::in_memory().unwrap();
        let batch: Vec<_> = ids
            .iter()
            .map(|id| {
                let item = NewItem {
                    id: id.to_string(),
                    title: format!("title of {id}"),
                    label: Some("cat".into()),
                    content_hash: format!("hash-{id}"),
                    ..NewItem::default()
                };
                (item, Features::default())
            })
            .collect();
        store.put_items(&batch, PutMode::Skip).unwrap();
        store
    }

    #[test]
    fn an_edit_is_stored_and_bumps_the_generation() {
        let store = store_with(&["a"]);
        let before = store.generation().unwrap();
        let (item, generation) = store
            .update_item("a", |item| {
                item.label = Some("dog".into());
                Ok(())
            })
            .unwrap();
        assert_eq!(item.label.as_deref(), Some("dog"));
        assert_eq!(generation, before + 1);
        assert_eq!(store.generation().unwrap(), generation);
        assert_eq!(
            store.get("a").unwrap().unwrap().label.as_deref(),
            Some("dog")
        );
    }

    #[test]
    fn a_refused_or_identity_changing_edit_writes_nothing() {
        let store = store_with(&["a"]);
        let before = store.generation().unwrap();
        let refused = store.update_item("a", |item| {
            item.label = Some("dog".into());
            Err(Error::InvalidArgument("no".into()))
        });
        assert!(matches!(refused, Err(Error::InvalidArgument(_))));
        let renamed = store.update_item("a", |item| {
            item.id = "b".into();
            Ok(())
        });
        assert!(matches!(renamed, Err(Error::Internal(_))));
        assert!(matches!(
            store.update_item("missing", |_| Ok(())),
            Err(Error::NotFound { .. })
        ));
        assert_eq!(store.generation().unwrap(), before);
        assert_eq!(
            store.get("a").unwrap().unwrap().label.as_deref(),
            Some("cat")
        );
    }

    #[test]
    fn dismissed_pairs_are_kept_in_key_order() {
        let store = store_with(&["a", "b", "c"]);
        assert!(store.dismissed_pairs().unwrap().is_empty());
        let before = store.generation().unwrap();
        let generation = store.dismiss_pairs(&[(2, 0), (0, 2), (1, 1)]).unwrap();
        assert_eq!(generation, before + 1);
        assert_eq!(
            store
                .dismissed_pairs()
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [(0, 2)]
        );
    }

    #[test]
    fn kept_labels_are_per_field_and_the_latest_wins() {
        let store = store_with(&["a", "b"]);
        assert!(store.kept_labels("label").unwrap().is_empty());
        store.keep_label(0, "label", "cat").unwrap();
        store.keep_label(0, "label", "dog").unwrap();
        store.keep_label(1, "category", "pets").unwrap();
        assert_eq!(
            store.kept_labels("label").unwrap(),
            HashMap::from([(0, "dog".to_string())])
        );
        assert_eq!(
            store.kept_labels("category").unwrap(),
            HashMap::from([(1, "pets".to_string())])
        );
    }
}
