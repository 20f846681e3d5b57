//! Checking each item against what it depends on: its image file outside the database, and its
//! features and fused vector inside it. What `trio items check` reports, so a user can find the
//! items a moved upload folder or a damaged database file affects before a query trips on them.

use serde::Serialize;

use super::Catalog;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::Item;

/// Items read from the store per page.
const PAGE: usize = 4096;

/// What is wrong with one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemFault {
    /// The item's image file is gone.
    ImageMissing,
    /// The image path names something other than a regular file.
    ImageNotAFile,
    /// The image file exists but cannot be read.
    ImageUnreadable,
    /// The item's tower features do not decode (the database file is damaged).
    FeaturesDamaged,
    /// The item has no tower features at all.
    FeaturesMissing,
    /// The active model's fused vector of the item does not decode.
    FusedDamaged,
}

/// One problem found on one item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemProblem {
    pub id: String,
    pub fault: ItemFault,
    /// What was found, for people.
    pub detail: String,
}

/// The outcome of [`Catalog::check_items`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub items: u64,
    pub problems: Vec<ItemProblem>,
}

impl Catalog {
    /// Checks every item's image file and stored vectors. Damage is reported per item; only a
    /// store that cannot be read at all is an error.
    pub fn check_items(&self, progress: &dyn Progress) -> Result<CheckReport> {
        let store = self.store();
        let active = store.active_version()?;
        let mut report = CheckReport::default();
        progress.start("check", Some(store.count()?));
        let mut offset = 0;
        loop {
            let page = store.list(offset, PAGE)?;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            for item in &page {
                report.items += 1;
                let mut found = |fault: ItemFault, detail: String| {
                    report.problems.push(ItemProblem {
                        id: item.id.clone(),
                        fault,
                        detail,
                    })
                };
                if let Some((fault, detail)) = image_fault(item) {
                    found(fault, detail);
                }
                match store.get_features(item.key) {
                    Ok(Some(_)) => {}
                    Ok(None) => found(ItemFault::FeaturesMissing, "no tower features".into()),
                    Err(e @ Error::CorruptRecord { .. }) => {
                        found(ItemFault::FeaturesDamaged, e.to_string())
                    }
                    Err(e) => return Err(e),
                }
                if let Some(version) = active {
                    match store.get_fused(version, item.key) {
                        Ok(_) => {}
                        Err(e @ Error::CorruptRecord { .. }) => {
                            found(ItemFault::FusedDamaged, e.to_string())
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            progress.advance(page.len() as u64);
        }
        progress.finish();
        Ok(report)
    }
}

fn image_fault(item: &Item) -> Option<(ItemFault, String)> {
    let path = item.image_path.as_deref()?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some((
            ItemFault::ImageNotAFile,
            format!("image {path} is not a regular file"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some((ItemFault::ImageMissing, format!("image {path} is missing")))
        }
        Err(e) => Some((
            ItemFault::ImageUnreadable,
            format!("image {path} cannot be read: {e}"),
        )),
    }
}
