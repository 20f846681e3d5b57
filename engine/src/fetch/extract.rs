//! Taking the pinned members out of a verified archive into a staging folder, hashing each
//! file as it is written so the install record costs no second pass.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::assets::{Asset, Extract};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// The archive formats the pinned assets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    TarGz,
}

fn format_of(file: &str) -> Option<Format> {
    if file.ends_with(".whl") || file.ends_with(".zip") {
        Some(Format::Zip)
    } else if file.ends_with(".tgz") || file.ends_with(".tar.gz") {
        Some(Format::TarGz)
    } else {
        None
    }
}

/// Where one archive member goes: the index of its [`Extract`] rule and the path below the
/// staging root.
struct Target {
    rule: usize,
    /// Relative to the staging root (which mirrors the home).
    dest: PathBuf,
    /// For folder rules: the path below the rule's destination folder.
    rel: Option<String>,
}

/// Collects per-output digests while members are written.
struct Digests<'a> {
    asset: &'a Asset,
    files: Vec<Option<String>>,
    folders: Vec<BTreeMap<String, String>>,
}

impl<'a> Digests<'a> {
    fn new(asset: &'a Asset) -> Self {
        Digests {
            asset,
            files: vec![None; asset.extract.len()],
            folders: vec![BTreeMap::new(); asset.extract.len()],
        }
    }

    fn record(&mut self, target: &Target, digest: String) {
        match &target.rel {
            Some(rel) => {
                self.folders[target.rule].insert(rel.clone(), digest);
            }
            None => self.files[target.rule] = Some(digest),
        }
    }

    /// One digest per rule, in rule order, matching [`super::verify::tree_digest`].
    fn finish(self, archive: &Path) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.asset.extract.len());
        for (i, rule) in self.asset.extract.iter().enumerate() {
            match rule {
                Extract::File { member, .. } => match &self.files[i] {
                    Some(d) => out.push(d.clone()),
                    None => {
                        return Err(archive_error(
                            self.asset,
                            archive,
                            format!("it has no member `{member}`"),
                        ))
                    }
                },
                Extract::Folder { prefix, suffix, .. } => {
                    let entries = &self.folders[i];
                    if entries.is_empty() {
                        return Err(archive_error(
                            self.asset,
                            archive,
                            format!("it has no `*{suffix}` members under `{prefix}`"),
                        ));
                    }
                    let mut hasher = Sha256::new();
                    for (rel, digest) in entries {
                        hasher.update(rel.as_bytes());
                        hasher.update([0]);
                        hasher.update(digest.as_bytes());
                        hasher.update([b'\n']);
                    }
                    out.push(hex::encode(hasher.finalize()));
                }
            }
        }
        Ok(out)
    }
}

fn archive_error(asset: &Asset, archive: &Path, reason: String) -> Error {
    Error::FetchArchive {
        asset: asset.name.to_string(),
        file: archive.to_path_buf(),
        reason,
    }
}

/// Decides where an archive member goes, if anywhere. Members whose relative part is not a
/// plain relative path (`..`, absolute, drive prefixes) are never written.
fn target_for(asset: &Asset, member: &str) -> Option<Target> {
    for (rule, extract) in asset.extract.iter().enumerate() {
        match *extract {
            Extract::File { member: m, to } if m == member => {
                return Some(Target {
                    rule,
                    dest: PathBuf::from(to),
                    rel: None,
                });
            }
            Extract::Folder { prefix, suffix, to } => {
                let Some(rel) = member.strip_prefix(prefix) else {
                    continue;
                };
                if !rel.ends_with(suffix) || !is_plain_relative(rel) {
                    continue;
                }
                return Some(Target {
                    rule,
                    dest: Path::new(to).join(rel),
                    rel: Some(rel.to_string()),
                });
            }
            Extract::File { .. } => {}
        }
    }
    None
}

fn is_plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\\')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// A writer that hashes what passes through it and reports bytes to `progress`.
struct HashingWriter<'p, W> {
    inner: W,
    hasher: Sha256,
    progress: Option<&'p dyn Progress>,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(p) = self.progress {
            p.advance(n as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that reports bytes consumed, for progress over a compressed stream.
struct CountingReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Copies `reader` into `staging/target.dest`, returning the sha256 of what was written.
fn write_member(
    reader: &mut dyn Read,
    staging: &Path,
    target: &Target,
    progress: Option<&dyn Progress>,
) -> Result<String> {
    let path = staging.join(&target.dest);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut writer = HashingWriter {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
        progress,
    };
    io::copy(reader, &mut writer).map_err(|e| Error::io(&path, e))?;
    writer.flush().map_err(|e| Error::io(&path, e))?;
    // Single large files (weights) are synced so a rename never publishes an empty file after a
    // crash; the thousands of small demo images are not, which keeps extraction fast.
    if target.rel.is_none() {
        let file = writer
            .inner
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        return Ok(hex::encode(writer.hasher.finalize()));
    }
    Ok(hex::encode(writer.hasher.finalize()))
}

/// Extracts `asset`'s members from `archive` into `staging` (a folder mirroring the home) and
/// returns one digest per extract rule, in rule order.
pub(crate) fn extract(
    asset: &Asset,
    archive: &Path,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let format = format_of(asset.file).ok_or_else(|| {
        archive_error(
            asset,
            archive,
            "its file name has no known archive extension".into(),
        )
    })?;
    match format {
        Format::Zip => extract_zip(asset, archive, staging, progress),
        Format::TarGz => extract_tgz(asset, archive, staging, progress),
    }
}

fn extract_zip(
    asset: &Asset,
    archive: &Path,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| archive_error(asset, archive, format!("not a readable zip: {e}")))?;

    let mut selected = Vec::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| archive_error(asset, archive, format!("bad entry #{i}: {e}")))?;
        if !entry.is_file() {
            continue;
        }
        if let Some(target) = target_for(asset, entry.name()) {
            total += entry.size();
            selected.push((i, target));
        }
    }

    progress.start(&format!("extract {}", asset.name), Some(total));
    let mut digests = Digests::new(asset);
    for (i, target) in selected {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| archive_error(asset, archive, format!("bad entry #{i}: {e}")))?;
        let name = entry.name().to_string();
        let digest = write_member(&mut entry, staging, &target, Some(progress)).map_err(|e| {
            archive_error(asset, archive, format!("could not extract `{name}`: {e}"))
        })?;
        digests.record(&target, digest);
    }
    progress.finish();
    digests.finish(archive)
}

fn extract_tgz(
    asset: &Asset,
    archive: &Path,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let size = file.metadata().map_err(|e| Error::io(archive, e))?.len();
    progress.start(&format!("extract {}", asset.name), Some(size));
    let counted = CountingReader {
        inner: BufReader::new(file),
        progress,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(counted));
    let mut digests = Digests::new(asset);
    let entries = tar
        .entries()
        .map_err(|e| archive_error(asset, archive, format!("not a readable tar.gz: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_error(asset, archive, format!("damaged tar.gz: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().replace('\\', "/"),
            Err(_) => continue,
        };
        let Some(target) = target_for(asset, &name) else {
            continue;
        };
        let digest = write_member(&mut entry, staging, &target, None).map_err(|e| {
            archive_error(asset, archive, format!("could not extract `{name}`: {e}"))
        })?;
        digests.record(&target, digest);
    }
    progress.finish();
    digests.finish(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::assets::{Group, Source};

    const RULES: &[Extract] = &[
        Extract::File {
            member: "pkg/model.bin",
            to: "models/m/model.bin",
        },
        Extract::Folder {
            prefix: "pkg/img/",
            suffix: ".png",
            to: "data/img",
        },
    ];

    fn asset(file: &'static str) -> Asset {
        Asset {
            name: "test",
            group: Group::Demo,
            source: Source::Npm {
                package: "test",
                version: "1",
            },
            file,
            size: 0,
            sha256: "",
            extract: RULES,
        }
    }

    #[test]
    fn member_selection_rejects_traversal_and_other_files() {
        let a = asset("x.tgz");
        assert!(target_for(&a, "pkg/model.bin").is_some());
        assert!(target_for(&a, "pkg/img/a.png").is_some());
        assert!(target_for(&a, "pkg/img/sub/a.png").is_some());
        assert!(target_for(&a, "pkg/img/../../etc/a.png").is_none());
        assert!(target_for(&a, "pkg/img//etc/a.png").is_none());
        assert!(target_for(&a, "pkg/img/a.txt").is_none());
        assert!(target_for(&a, "pkg/other.bin").is_none());
    }
}
