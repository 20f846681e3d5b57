//! Image thumbnails kept beside the items: the pixels duplicate detection checks a candidate
//! pair against (see `quality::thumbnail`). A table of their own, raw bytes keyed by item
//! key, so listing items never reads them and a store written before they existed simply has
//! none yet (they are filled in on first use).

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition, TableError};

use super::{AtTable, Store};
use crate::error::Result;

pub(super) const THUMBNAILS: TableDefinition<u64, &[u8]> = TableDefinition::new("thumbnails");

impl Store {
    /// Stores thumbnails for items by key, replacing any there. Keys of items that are gone are
    /// skipped, so a thumbnail never outlives its item.
    pub fn put_thumbnails(&self, thumbnails: &[(u64, Vec<u8>)]) -> Result<()> {
        if thumbnails.is_empty() {
            return Ok(());
        }
        let txn = self.write_txn()?;
        {
            let items = txn
                .open_table(super::ITEMS)
                .at("items", || "opening".into())?;
            let mut table = txn
                .open_table(THUMBNAILS)
                .at("thumbnails", || "opening".into())?;
            for (key, bytes) in thumbnails {
                if items
                    .get(*key)
                    .at("items", || format!("looking up key {key}"))?
                    .is_none()
                {
                    continue;
                }
                table
                    .insert(*key, bytes.as_slice())
                    .at("thumbnails", || format!("writing key {key}"))?;
            }
        }
        txn.commit().at("thumbnails", || {
            format!("committing {} thumbnails", thumbnails.len())
        })
    }

    /// Every stored thumbnail, by item key.
    pub fn thumbnails(&self) -> Result<HashMap<u64, Vec<u8>>> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(THUMBNAILS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(e).at("thumbnails", || "opening".into()),
        };
        let mut out = HashMap::new();
        for entry in table
            .range::<u64>(..)
            .at("thumbnails", || "listing".into())?
        {
            let (key, value) = entry.at("thumbnails", || "listing".into())?;
            out.insert(key.value(), value.value().to_vec());
        }
        Ok(out)
    }
}
