//! Reading feature files: the towers' fingerprint first, then rows batch by batch.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::schema::{BatchColumns, ExchangeRow, FORMAT_KEY, FORMAT_VERSION, TOWERS_KEY};
use super::write::parquet_error;
use crate::error::{Error, Result};
use crate::ingest::manifest::RowError;
use crate::towers::service::TowerFingerprint;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 1024;

/// The feature files named by `paths`: files as given, folders as their `*.parquet` files in
/// name order (temporary files of unfinished writers are skipped by their name).
pub fn feature_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
                let entry = entry.map_err(|e| Error::io(path, e))?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// One open feature file. Iterating gives its rows in order: `Err` for a file that cannot be
/// read on, `Ok(Err(row error))` for one bad row (the others still come).
pub struct FeatureFileReader {
    path: PathBuf,
    towers: TowerFingerprint,
    rows: u64,
    batches: ParquetRecordBatchReader,
    pending: std::vec::IntoIter<std::result::Result<ExchangeRow, RowError>>,
    /// Rows read so far, for the 1-based row numbers of errors.
    read: usize,
}

impl FeatureFileReader {
    /// Opens a file and reads its metadata; fails, naming the file, if it is not a Trio feature
    /// file of a format this build reads.
    pub fn open(path: &Path) -> Result<FeatureFileReader> {
        let bad = |reason: String| Error::FeatureFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
        let meta = builder.metadata().file_metadata();
        let value = |key: &str| -> Option<String> {
            meta.key_value_metadata()?
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
        };
        let format = value(FORMAT_KEY).ok_or_else(|| {
            bad(format!(
                "no `{FORMAT_KEY}` metadata: not a Trio feature file"
            ))
        })?;
        if format != FORMAT_VERSION.to_string() {
            return Err(bad(format!(
                "feature file format {format}; this build reads format {FORMAT_VERSION}"
            )));
        }
        let towers = value(TOWERS_KEY)
            .ok_or_else(|| bad(format!("no `{TOWERS_KEY}` metadata")))
            .and_then(|json| {
                serde_json::from_str::<TowerFingerprint>(&json)
                    .map_err(|e| bad(format!("unreadable `{TOWERS_KEY}` metadata: {e}")))
            })?;
        let rows = meta.num_rows().max(0) as u64;
        let batches = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_error(path, e))?;
        Ok(FeatureFileReader {
            path: path.to_path_buf(),
            towers,
            rows,
            batches,
            pending: Vec::new().into_iter(),
            read: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The towers that computed this file's vectors.
    pub fn towers(&self) -> &TowerFingerprint {
        &self.towers
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn next_batch(&mut self) -> Option<Result<()>> {
        let batch = match self.batches.next()? {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::FeatureFile {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }))
            }
        };
        let columns = match BatchColumns::new(&batch) {
            Ok(c) => c,
            Err(reason) => {
                return Some(Err(Error::FeatureFile {
                    path: self.path.clone(),
                    reason,
                }))
            }
        };
        let (image_dim, text_dim) = columns.dims();
        if (image_dim, text_dim) != (self.towers.image_dim, self.towers.text_dim) {
            return Some(Err(Error::FeatureFile {
                path: self.path.clone(),
                reason: format!(
                    "vectors of {image_dim} (image) and {text_dim} (text) values, but its towers \
                     make {} and {}",
                    self.towers.image_dim, self.towers.text_dim
                ),
            }));
        }
        let file = self.path.display().to_string();
        let rows: Vec<_> = (0..batch.num_rows())
            .map(|i| {
                columns.row(i).map_err(|(id, reason)| RowError {
                    row: self.read + i + 1,
                    id,
                    reason: format!("{file}: {reason}"),
                })
            })
            .collect();
        self.read += batch.num_rows();
        self.pending = rows.into_iter();
        Some(Ok(()))
    }
}

impl Iterator for FeatureFileReader {
    type Item = Result<std::result::Result<ExchangeRow, RowError>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.pending.next() {
                return Some(Ok(row));
            }
            match self.next_batch()? {
                Ok(()) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
