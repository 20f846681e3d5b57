//! Feature files in and out of a catalogue: loading what `trio embed` computed elsewhere without
//! running the towers, and exporting the catalogue in the same schema.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{Catalog, Space, WriteInFlight};
use crate::error::{Error, Result};
use crate::exchange::{ExchangeRow, FeatureFileReader, FeatureFileWriter, Precision};
use crate::ingest::pipeline::{commit_chunk, Committed, Embedded, IngestReport};
use crate::progress::Progress;
use crate::store::{check_id, short_id, PutMode};
use crate::towers::service::TowerFingerprint;

/// Rows per transaction when loading feature files: larger than ingest's chunks, since no
/// tower runs between commits.
pub const DEFAULT_LOAD_BATCH: usize = 1024;

/// What [`Catalog::export_features`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportReport {
    pub items: u64,
    pub files: Vec<PathBuf>,
    pub seconds: f64,
}

impl Catalog {
    /// The fingerprint of the towers this catalogue was opened with (hashes their files once).
    pub fn towers_fingerprint(&self) -> Result<TowerFingerprint> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let settings = self.towers.as_ref().ok_or(Error::NoTowers {
            what: "reading or writing feature files",
        })?;
        let f = settings.fingerprint()?;
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }

    /// Loads feature files into the store without running the towers. Every file is opened and
    /// its towers checked before anything is stored: a file from other towers is refused,
    /// naming it. Rows are committed `batch_size` at a time, each batch in one transaction, and
    /// ids already stored are skipped, so a killed load resumes like an ingest. The indexes are
    /// built once at the end from the store, in bulk, instead of item by item.
    pub fn ingest_features(
        &self,
        files: &[PathBuf],
        batch_size: usize,
        progress: &dyn Progress,
        on_commit: &mut dyn FnMut(&[String]),
    ) -> Result<IngestReport> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let started = Instant::now();
        let own = self.towers_fingerprint()?;
        let mut readers = Vec::with_capacity(files.len());
        for path in files {
            let reader = FeatureFileReader::open(path)?;
            own.compatible(reader.towers())
                .map_err(|reason| Error::FeatureFile {
                    path: path.clone(),
                    reason: format!("computed by other towers than this catalogue's: {reason}"),
                })?;
            readers.push(reader);
        }
        let total: u64 = readers.iter().map(FeatureFileReader::rows).sum();
        let mut report = IngestReport::default();
        {
            let _writing = WriteInFlight::start(&self.writes_in_flight);
            progress.start("load features", Some(total));
            let mut commit = |chunk: Vec<Embedded>, report: &mut IngestReport| {
                let n = chunk.len() as u64;
                let mut heard = |c: &Committed<'_>| on_commit(c.ids);
                commit_chunk(
                    chunk,
                    &self.store,
                    PutMode::Skip,
                    report,
                    progress,
                    &mut heard,
                )?;
                progress.advance(n);
                Ok::<(), Error>(())
            };
            for reader in readers {
                let file = reader.path().display().to_string();
                let mut chunk = Vec::with_capacity(batch_size);
                for (i, row) in reader.enumerate() {
                    let row_number = i + 1;
                    report.rows += 1;
                    match row?.and_then(|r| self.new_row(r, row_number, &file)) {
                        Ok(Some(e)) => chunk.push(e),
                        Ok(None) => {
                            report.skipped += 1;
                            progress.advance(1);
                        }
                        Err(e) => {
                            progress.warn(&e.to_string());
                            progress.advance(1);
                            report.failed += 1;
                            report.errors.push(e);
                        }
                    }
                    if chunk.len() == batch_size {
                        commit(std::mem::take(&mut chunk), &mut report)?;
                    }
                }
                commit(chunk, &mut report)?;
            }
            progress.finish();
            // Reading the files and committing their rows: the two interleave, chunk by chunk.
            report.times.commit_s = started.elapsed().as_secs_f64();
        }
        // Items loaded get fused vectors from the active model, then every index is built once.
        let t = Instant::now();
        self.fuse_missing()?;
        self.drop_indexes()?;
        let mut spaces = vec![Space::Image, Space::Text];
        if self.store.active_version()?.is_some() {
            spaces.push(Space::Fused);
        }
        for space in spaces {
            self.index(space, progress)?;
        }
        report.times.index_s = t.elapsed().as_secs_f64();
        report.times.total_s = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A feature-file row as an item to commit, or `None` when its id is stored already.
    fn new_row(
        &self,
        row: ExchangeRow,
        row_number: usize,
        file: &str,
    ) -> std::result::Result<Option<Embedded>, crate::ingest::manifest::RowError> {
        let id = row.item.id.clone();
        let fail = |e: Error| crate::ingest::manifest::RowError {
            row: row_number,
            id: Some(short_id(&id)),
            reason: format!("{file}: {e}"),
        };
        check_id(&id).map_err(fail)?;
        if self.store.get(&id).map_err(fail)?.is_some() {
            return Ok(None);
        }
        Ok(Some(Embedded {
            row: row_number,
            given_id: Some(short_id(&id)),
            item: row.item,
            features: row.features,
            tuned: None,
        }))
    }

    /// Writes every item with its features to `dir` as feature files of at most
    /// `rows_per_file` rows (`part-00000.parquet`, …), in the order items were added. Loading
    /// them into an empty catalogue (`ingest_features`) gives the same items and vectors.
    pub fn export_features(
        &self,
        dir: &Path,
        precision: Precision,
        rows_per_file: usize,
        progress: &dyn Progress,
    ) -> Result<ExportReport> {
        const PAGE: usize = 1024;
        if rows_per_file == 0 {
            return Err(Error::InvalidArgument(
                "rows per file must be at least 1".into(),
            ));
        }
        let started = Instant::now();
        let towers = self.towers_fingerprint()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut report = ExportReport::default();
        progress.start("export", Some(self.store.count()?));
        let mut writer: Option<FeatureFileWriter> = None;
        let mut in_file = 0;
        let mut offset = 0;
        loop {
            let items = self.store.list(offset, PAGE)?;
            if items.is_empty() {
                break;
            }
            offset += items.len();
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                let features = self.store.get_features(item.key)?.unwrap_or_default();
                rows.push(ExchangeRow {
                    source_row: None,
                    item: crate::store::NewItem {
                        id: item.id,
                        title: item.title,
                        description: item.description,
                        tags: item.tags,
                        label: item.label,
                        image_path: item.image_path,
                        content_hash: item.content_hash,
                        image_phash: item.image_phash,
                        metadata: item.metadata,
                        image_thumbnail: None,
                    },
                    features,
                });
            }
            let mut rows = rows.as_slice();
            while !rows.is_empty() {
                if writer.is_none() {
                    let path = dir.join(format!("part-{:05}.parquet", report.files.len()));
                    writer = Some(FeatureFileWriter::create(&path, &towers, precision)?);
                    report.files.push(path);
                    in_file = 0;
                }
                let take = rows.len().min(rows_per_file - in_file);
                if let Some(w) = writer.as_mut() {
                    w.write(&rows[..take])?;
                }
                in_file += take;
                report.items += take as u64;
                progress.advance(take as u64);
                rows = &rows[take..];
                if in_file == rows_per_file {
                    if let Some(w) = writer.take() {
                        w.finish()?;
                    }
                }
            }
        }
        if let Some(w) = writer.take() {
            w.finish()?;
        }
        progress.finish();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}
