//! The install record (`installed.json` in the home): which assets are installed, from which
//! pinned archive, with a digest per output. An asset counts as installed only once its
//! outputs are in place *and* the record names it, so an interrupted fetch never looks complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::assets::Asset;
use crate::error::{Error, Result};

pub(crate) const RECORD_FILE: &str = "installed.json";
const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstalledAsset {
    pub package: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
    /// Output path (relative to the home) → digest (see `verify::tree_digest`).
    pub outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub format: u32,
    pub assets: BTreeMap<String, InstalledAsset>,
}

impl Record {
    /// Reads the record; a missing file is an empty record. An unreadable or foreign record is
    /// also treated as empty (with a warning), which only costs a reinstall.
    pub fn load(home: &Path) -> (Record, Option<String>) {
        let path = home.join(RECORD_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Record::empty(), None),
            Err(e) => {
                return (
                    Record::empty(),
                    Some(format!("cannot read {}: {e}; reinstalling", path.display())),
                )
            }
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.format == RECORD_FORMAT => (r, None),
            Ok(r) => (
                Record::empty(),
                Some(format!(
                    "{} has format {} (this Trio writes {RECORD_FORMAT}); reinstalling",
                    path.display(),
                    r.format
                )),
            ),
            Err(e) => (
                Record::empty(),
                Some(format!("{} is damaged ({e}); reinstalling", path.display())),
            ),
        }
    }

    fn empty() -> Record {
        Record {
            format: RECORD_FORMAT,
            assets: BTreeMap::new(),
        }
    }

    /// The entry for `asset` if it was installed from the archive pinned now.
    pub fn entry(&self, asset: &Asset) -> Option<&InstalledAsset> {
        self.assets
            .get(asset.name)
            .filter(|e| e.sha256 == asset.sha256 && e.file == asset.file)
    }

    /// Writes the record atomically: a temporary file, synced, then renamed over the old one.
    pub fn save(&self, home: &Path) -> Result<()> {
        let path = home.join(RECORD_FILE);
        let tmp: PathBuf = home.join(format!(".{RECORD_FILE}.tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Json {
            context: format!("writing {}", path.display()),
            source: e,
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&json).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}
