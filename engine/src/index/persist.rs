//! Saving an HNSW index to a folder and loading it back, without ever trusting a bad file.
//!
//! hnsw_rs dumps a graph as `<basename>.hnsw.graph` + `<basename>.hnsw.data`, may pick another
//! basename than asked, and on reload asserts (panics) on malformed input. So a dump is a folder
//! we control:
//!
//! ```text
//! manifest.json                 format, dimension, m, point counts, store generation, and the
//!                               size and SHA-256 of every file below
//! graph-<stamp>.hnsw.graph      hnsw_rs's dump (its data ids are our point ids)
//! graph-<stamp>.hnsw.data
//! keys-<stamp>.bin              item key of each point id, u64 little-endian
//! tombstones-<stamp>.bin        deleted point ids as a bitset of u64 little-endian words
//! links-<stamp>.bin             the relinked level-0 lists of the frozen graph, `2m + 1` u32
//!                               little-endian per point (`[count, ids...]`); without it (older
//!                               dumps) loading relinks every point, which is slow
//! ```
//!
//! The manifest is written last, by an atomic rename, so a crash mid-dump leaves the previous
//! dump in force. Loading checks the manifest against the caller's store generation and every
//! file against its checksum *before* hnsw_rs reads anything; any mismatch is
//! [`Error::IndexRebuildNeeded`], and the caller rebuilds from the store.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hnsw::{new_graph, Graph, HnswIndex, HnswParams, Tombstones, UnitCosine};
use super::VectorIndex;
use crate::error::{Error, Result};

const FORMAT: &str = "trio-hnsw";
const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// Prefixes of the files a dump owns; only these are ever deleted from the folder.
const OWNED_PREFIXES: [&str; 4] = ["graph-", "keys-", "tombstones-", "links-"];

/// What a dump folder holds, as recorded in its `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpManifest {
    pub format: String,
    pub format_version: u32,
    pub dim: usize,
    pub m: usize,
    pub ef_construction: usize,
    /// Point ids in the graph, deleted ones included.
    pub points: u64,
    /// Live points.
    pub live: u64,
    /// The store generation the index was up to date with when dumped.
    pub store_generation: u64,
    /// hnsw_rs's basename (absent for an empty index).
    pub hnsw_basename: Option<String>,
    pub files: Vec<DumpFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

fn rebuild(dir: &Path, reason: impl Into<String>) -> Error {
    Error::IndexRebuildNeeded {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn dump_error(dir: &Path, reason: impl Into<String>) -> Error {
    Error::IndexDump {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Size and SHA-256 of a file, read in 1 MiB pieces.
fn checksum(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn u64s_to_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_to_u64s(bytes: &[u8]) -> Option<Vec<u64>> {
    bytes.len().is_multiple_of(8).then(|| {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    })
}

impl HnswIndex {
    /// Writes the index to `dir` (created if needed), recording `store_generation`, the store
    /// state it is up to date with. Replaces an earlier dump in the folder atomically. Inserts
    /// wait while it runs; searches do not.
    pub fn dump(&self, dir: &Path, store_generation: u64) -> Result<DumpManifest> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let manifest = self.with_writer(|w| {
            // Under the writer lock the published view matches the writer exactly.
            let tombstones = self.tombstone_words();
            let live = w.live.len() as u64;
            let stamp = format!(
                "{store_generation}-{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            let mut names = Vec::new();
            let hnsw_basename = if w.keys.is_empty() {
                None
            } else {
                let graph = &w.graph;
                let asked = format!("graph-{stamp}");
                let dumped = catch_unwind(AssertUnwindSafe(|| graph.file_dump(dir, &asked)))
                    .map_err(|_| dump_error(dir, "hnsw_rs panicked while dumping"))?
                    .map_err(|e| dump_error(dir, format!("hnsw_rs: {e}")))?;
                names.push(format!("{dumped}.hnsw.graph"));
                names.push(format!("{dumped}.hnsw.data"));
                Some(dumped)
            };
            let keys_name = format!("keys-{stamp}.bin");
            write_synced(&dir.join(&keys_name), &u64s_to_bytes(&w.keys))?;
            let tomb_name = format!("tombstones-{stamp}.bin");
            write_synced(&dir.join(&tomb_name), &u64s_to_bytes(&tombstones))?;
            names.push(keys_name);
            names.push(tomb_name);
            let links_name = format!("links-{stamp}.bin");
            let links: Vec<u8> = self
                .level0_slots()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            write_synced(&dir.join(&links_name), &links)?;
            names.push(links_name);

            let mut files = Vec::new();
            for name in names {
                let path = dir.join(&name);
                sync_file(&path)?;
                let (bytes, sha256) = checksum(&path).map_err(|e| Error::io(&path, e))?;
                files.push(DumpFile {
                    name,
                    bytes,
                    sha256,
                });
            }
            Ok(DumpManifest {
                format: FORMAT.into(),
                format_version: FORMAT_VERSION,
                dim: self.dim(),
                m: self.params().m,
                ef_construction: self.params().ef_construction,
                points: w.keys.len() as u64,
                live,
                store_generation,
                hnsw_basename,
                files,
            })
        })?;

        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Json {
            context: format!("encoding {}", dir.join(MANIFEST).display()),
            source,
        })?;
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        write_synced(&tmp, &json)?;
        fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| Error::io(dir.join(MANIFEST), e))?;
        sync_file(dir)?;
        remove_unlisted(dir, &manifest);
        Ok(manifest)
    }

    /// Reads the manifest of a dump folder.
    pub fn read_manifest(dir: &Path) -> Result<DumpManifest> {
        let path = dir.join(MANIFEST);
        let bytes =
            fs::read(&path).map_err(|e| rebuild(dir, format!("no readable manifest: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| rebuild(dir, format!("manifest unreadable: {e}")))
    }

    /// Loads a dump made by [`HnswIndex::dump`] if, and only if, it matches: same format, `dim`
    /// and `params.m`, built at `store_generation`, every file present with its recorded size and
    /// checksum. Anything else is [`Error::IndexRebuildNeeded`]; nothing is loaded from a file
    /// that failed its checks.
    pub fn load(
        dir: &Path,
        dim: usize,
        params: HnswParams,
        store_generation: u64,
    ) -> Result<HnswIndex> {
        let manifest = Self::read_manifest(dir)?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            return Err(rebuild(
                dir,
                format!(
                    "format {} v{} is not {FORMAT} v{FORMAT_VERSION}",
                    manifest.format, manifest.format_version
                ),
            ));
        }
        if manifest.dim != dim || manifest.m != params.m {
            return Err(rebuild(
                dir,
                format!(
                    "built for dim {} with m {}, wanted dim {dim} with m {}",
                    manifest.dim, manifest.m, params.m
                ),
            ));
        }
        if manifest.store_generation != store_generation {
            return Err(rebuild(
                dir,
                format!(
                    "built at store generation {}, the store is at {store_generation}",
                    manifest.store_generation
                ),
            ));
        }
        for file in &manifest.files {
            if file.name.contains(['/', '\\']) || file.name.starts_with('.') {
                return Err(rebuild(dir, format!("manifest names {:?}", file.name)));
            }
            let path = dir.join(&file.name);
            match checksum(&path) {
                Ok((bytes, sha)) if bytes == file.bytes && sha == file.sha256 => {}
                Ok(_) => return Err(rebuild(dir, format!("{} fails its checksum", file.name))),
                Err(e) => return Err(rebuild(dir, format!("{} unreadable: {e}", file.name))),
            }
        }
        let listed = |prefix: &str| {
            manifest
                .files
                .iter()
                .find(|f| f.name.starts_with(prefix))
                .map(|f| dir.join(&f.name))
                .ok_or_else(|| rebuild(dir, format!("manifest lists no {prefix}* file")))
        };
        let read_u64s = |path: PathBuf| -> Result<Vec<u64>> {
            let bytes =
                fs::read(&path).map_err(|e| rebuild(dir, format!("{}: {e}", path.display())))?;
            bytes_to_u64s(&bytes)
                .ok_or_else(|| rebuild(dir, format!("{} is not whole u64s", path.display())))
        };
        let keys = read_u64s(listed("keys-")?)?;
        let tombstones = Tombstones::from_words(read_u64s(listed("tombstones-")?)?);
        let level0 = match listed("links-") {
            Ok(path) => {
                let bytes = fs::read(&path)
                    .map_err(|e| rebuild(dir, format!("{}: {e}", path.display())))?;
                if bytes.len() % 4 != 0 {
                    return Err(rebuild(
                        dir,
                        format!("{} is not whole u32s", path.display()),
                    ));
                }
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )
            }
            Err(_) => None,
        };
        if keys.len() as u64 != manifest.points {
            return Err(rebuild(
                dir,
                format!("{} keys for {} points", keys.len(), manifest.points),
            ));
        }

        let mut graph: Graph = match &manifest.hnsw_basename {
            None if keys.is_empty() => new_graph(&params, 0),
            None => return Err(rebuild(dir, "points but no graph files")),
            Some(basename) => {
                if !manifest
                    .files
                    .iter()
                    .any(|f| f.name == format!("{basename}.hnsw.graph"))
                {
                    return Err(rebuild(dir, "the graph files are not checksummed"));
                }
                // hnsw_rs's reloaded graph borrows its loader for its whole life (the loader may
                // own a memory map). We load without a map, so nothing is really borrowed; the
                // loader (a few hundred bytes) is leaked to give the graph a 'static lifetime.
                let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
                catch_unwind(AssertUnwindSafe(move || {
                    let loader = loader;
                    loader.load_hnsw::<f32, UnitCosine>()
                }))
                .map_err(|_| rebuild(dir, "hnsw_rs panicked while reading the graph"))?
                .map_err(|e| rebuild(dir, format!("hnsw_rs could not read the graph: {e}")))?
            }
        };
        // hnsw_rs switches this on when reloading; keep inserts behaving as at build time.
        graph.set_extend_candidates(false);
        let index = HnswIndex::from_parts(dim, params, graph, keys, tombstones, level0).map_err(
            |e| match e {
                Error::IndexRebuildNeeded { reason, .. } => rebuild(dir, reason),
                other => other,
            },
        )?;
        if index.len() as u64 != manifest.live {
            return Err(rebuild(
                dir,
                format!(
                    "{} live points, manifest says {}",
                    index.len(),
                    manifest.live
                ),
            ));
        }
        Ok(index)
    }
}

/// Deletes files of earlier dumps: those with our prefixes that the manifest does not list.
/// Failing to delete one only wastes space, so errors are logged, not returned.
fn remove_unlisted(dir: &Path, manifest: &DumpManifest) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = OWNED_PREFIXES.iter().any(|p| name.starts_with(p));
        if ours && !manifest.files.iter().any(|f| f.name == name) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(
                    "could not remove old index file {}: {e}",
                    entry.path().display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_relinked_graph_instead_of_relinking() {
        let dim = 8;
        let points: Vec<(u64, Vec<f32>)> = (0..300u64)
            .map(|i| {
                let v = (0..dim)
                    .map(|j| ((i * 31 + j as u64 * 17) % 23) as f32 - 11.0)
                    .collect();
                (i, v)
            })
            .collect();
        let index = HnswIndex::build(dim, HnswParams::default(), &points).expect("build");
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = index.dump(dir.path(), 7).expect("dump");
        assert!(manifest.files.iter().any(|f| f.name.starts_with("links-")));
        let loaded = HnswIndex::load(dir.path(), dim, HnswParams::default(), 7).expect("load");
        assert_eq!(loaded.level0_slots(), index.level0_slots());
    }
}
