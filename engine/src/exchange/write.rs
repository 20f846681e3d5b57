//! Writing a feature file: rows in, one Parquet file out, renamed into place only when complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::schema::{self, ExchangeRow, Precision, FORMAT_KEY, FORMAT_VERSION, TOWERS_KEY};
use crate::error::{Error, Result};
use crate::towers::service::TowerFingerprint;

/// Rows per row group: a reader can stream a file group by group, and a group of 8,192 rows
/// with its 2,048 floats each stays under 70 MB in memory while it is written.
const ROW_GROUP_ROWS: usize = 8192;

/// Writes one feature file. Nothing appears at `path` until [`FeatureFileWriter::finish`]; a
/// writer dropped unfinished (an error, a panic) removes its temporary file, and a killed one
/// leaves only a temporary name that readers skip (it does not end in `.parquet`).
pub struct FeatureFileWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    schema: SchemaRef,
    image_dim: usize,
    text_dim: usize,
    precision: Precision,
    rows: u64,
}

impl FeatureFileWriter {
    pub fn create(
        path: &Path,
        towers: &TowerFingerprint,
        precision: Precision,
    ) -> Result<FeatureFileWriter> {
        let tmp = temp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let schema = schema::arrow_schema(towers.image_dim, towers.text_dim, precision);
        let fingerprint = serde_json::to_string(towers).map_err(|source| Error::Json {
            context: "the towers' fingerprint".into(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(FORMAT_KEY.into(), FORMAT_VERSION.to_string()),
                KeyValue::new(TOWERS_KEY.into(), fingerprint),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| parquet_error(&tmp, e))?;
        Ok(FeatureFileWriter {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
            schema,
            image_dim: towers.image_dim,
            text_dim: towers.text_dim,
            precision,
            rows: 0,
        })
    }

    /// Appends rows. Every vector must have the fingerprint's size.
    pub fn write(&mut self, rows: &[ExchangeRow]) -> Result<()> {
        for row in rows {
            for (name, field) in schema::VECTOR_COLUMNS {
                let want = if field.is_none() {
                    self.image_dim
                } else {
                    self.text_dim
                };
                if let Some(v) = schema::vector_of(&row.features, field) {
                    if v.len() != want {
                        return Err(Error::FeatureDim {
                            item: row.item.id.clone(),
                            field: name.into(),
                            expected: want,
                            got: v.len(),
                        });
                    }
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let batch = schema::to_batch(
            rows,
            &self.schema,
            self.image_dim,
            self.text_dim,
            self.precision,
        )
        .map_err(|e| Error::Internal(format!("building a feature batch: {e}")))?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Internal("feature file already finished".into()))?;
        writer
            .write(&batch)
            .map_err(|e| parquet_error(&self.tmp, e))?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Closes the file, syncs it to disk and renames it into place. Returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::Internal("feature file already finished".into()))?;
        let file = writer
            .into_inner()
            .map_err(|e| parquet_error(&self.tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_parent(&self.path);
        Ok(self.rows)
    }
}

impl Drop for FeatureFileWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `part-0.parquet` → `part-0.parquet.tmp-<pid>`: beside the target (so the rename stays on one
/// file system), unique per process, and not a `.parquet` name.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Makes a rename durable. Best effort: not every platform can open a folder to sync it.
pub(crate) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

pub(crate) fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::FeatureFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
