//! Streaming sha256 of archives and of installed outputs.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::progress::Progress;

const CHUNK: usize = 1 << 20;

/// The lower-case hex sha256 of a file, read in chunks; each chunk is reported to `progress`.
pub(crate) fn sha256_file(path: &Path, progress: &dyn Progress) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A digest of an installed output: a file's sha256, or for a folder the sha256 of its sorted
/// `relative-path NUL file-sha256 LF` lines, so one value in the install record covers
/// thousands of small files.
pub(crate) fn tree_digest(path: &Path, progress: &dyn Progress) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return sha256_file(path, progress);
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in files {
        let digest = sha256_file(&path.join(&rel), progress)?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
        hasher.update([b'\n']);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Total bytes [`tree_digest`] will read, for a progress total.
pub(crate) fn tree_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    let mut total = 0;
    for rel in files {
        let p = path.join(rel);
        total += std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
    }
    Ok(total)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn sha256_matches_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        // The FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_file(&p, &NoProgress).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tree_digest_changes_when_any_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x.png"), b"1").unwrap();
        std::fs::write(dir.path().join("a/b/y.png"), b"2").unwrap();
        let before = tree_digest(&dir.path().join("a"), &NoProgress).unwrap();
        assert_eq!(
            before,
            tree_digest(&dir.path().join("a"), &NoProgress).unwrap()
        );
        std::fs::write(dir.path().join("a/b/y.png"), b"3").unwrap();
        assert_ne!(
            before,
            tree_digest(&dir.path().join("a"), &NoProgress).unwrap()
        );
        assert_eq!(tree_size(&dir.path().join("a")).unwrap(), 2);
    }
}
