//! The batched ingest pipeline: rows in, committed items out.
//!
//! Each chunk of rows goes through three stages: read, hash and decode images in parallel
//! (rayon); run both towers batched; commit the chunk in one store transaction. A chunk is the
//! unit of durability: once `on_commit` hears about its ids they survive any crash, and a re-run
//! skips them (same id and content hash) before any inference, which is how an interrupted ingest
//! resumes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ingest::manifest::{ManifestRow, RowError};
use crate::models::efficientnet_lite::Top;
use crate::progress::Progress;
use crate::quality::phash;
use crate::quality::thumbnail::Thumbnail;
use crate::store::{check_id, short_id, Features, NewItem, PutMode, Store};
use crate::towers::image::{PreparedImage, Preprocessor};
use crate::towers::service::EmbeddingService;

/// The text fields every item may carry, in the order the towers embed them.
pub const TEXT_FIELDS: [&str; 2] = ["title", "description"];

/// Settings of one ingest run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestOptions {
    /// What to do with an id already stored with different content.
    pub mode: PutMode,
    /// Rows per chunk: one tower batch and one commit each.
    pub batch_size: usize,
    /// Stop after this many rows (for samples of a big catalogue); `None` reads all.
    pub limit: Option<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            mode: PutMode::Skip,
            batch_size: 64,
            limit: None,
        }
    }
}

/// Where the time went, for the throughput figures in BENCHMARKS.md.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StageTimes {
    pub read_decode_s: f64,
    pub image_tower_s: f64,
    pub text_tower_s: f64,
    pub commit_s: f64,
    /// Building the indexes at the end of a bulk load (`trio ingest --features`).
    #[serde(default)]
    pub index_s: f64,
    pub total_s: f64,
}

/// What an ingest run did. `failed` rows are listed in `errors` with their row number and id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub rows: usize,
    pub inserted: usize,
    pub updated: usize,
    pub skipped: usize,
    pub failed: usize,
    pub warnings: usize,
    /// Texts cut at the text tower's token limit.
    pub truncated_texts: usize,
    pub errors: Vec<RowError>,
    pub times: StageTimes,
}

impl IngestReport {
    /// Items the store holds from this run: new plus replaced.
    pub fn stored(&self) -> usize {
        self.inserted + self.updated
    }
}

/// A row that survived reading and hashing, waiting for the towers.
struct Pending {
    /// The manifest row, for errors the store raises at commit.
    row: usize,
    /// The id as the manifest gave it (none when derived from the content).
    given_id: Option<String>,
    item: NewItem,
    image: Option<PreparedImage>,
}

/// One committed chunk, as `on_commit` hears it.
pub struct Committed<'a> {
    pub ids: &'a [String],
    /// Image features from the fine-tuned top `ingest` was given, by id: the model that owns
    /// the top reads them, while the store keeps the frozen tower's. Empty without a top.
    pub tuned_images: HashMap<&'a str, Vec<f32>>,
}

/// Ingests rows into the store. `on_commit` hears each committed chunk (the CLI prints its ids
/// for crash tests; the server counts them). With `tuned_top` (the active model's fine-tuned
/// image top), each image also gets that top's features from the same pass through the
/// tower's bottom, so fusing new items never runs the image network twice.
pub fn ingest(
    rows: impl Iterator<Item = std::result::Result<ManifestRow, RowError>>,
    store: &Store,
    towers: &EmbeddingService,
    tuned_top: Option<&Top>,
    opts: &IngestOptions,
    progress: &dyn Progress,
    on_commit: &mut dyn FnMut(&Committed<'_>),
) -> Result<IngestReport> {
    let preprocessor = towers.image.preprocessor();
    let stored = Some((store, opts.mode));
    for_each_chunk(rows, opts, progress, |chunk, report| {
        let embedded = embed_chunk(
            chunk,
            stored,
            towers,
            tuned_top,
            &preprocessor,
            report,
            progress,
        )?;
        commit_chunk(embedded, store, opts.mode, report, progress, on_commit)
    })
}

/// Runs rows through both towers without a store: `on_chunk` gets each chunk's items with
/// their features (what `trio embed` writes to a feature file). In the report, `inserted`
/// counts the rows embedded.
pub fn embed(
    rows: impl Iterator<Item = std::result::Result<ManifestRow, RowError>>,
    towers: &EmbeddingService,
    opts: &IngestOptions,
    progress: &dyn Progress,
    on_chunk: &mut dyn FnMut(Vec<EmbeddedRow>) -> Result<()>,
) -> Result<IngestReport> {
    let preprocessor = towers.image.preprocessor();
    for_each_chunk(rows, opts, progress, |chunk, report| {
        let embedded = embed_chunk(chunk, None, towers, None, &preprocessor, report, progress)?;
        report.inserted += embedded.len();
        on_chunk(
            embedded
                .into_iter()
                .map(|e| EmbeddedRow {
                    row: e.row,
                    item: e.item,
                    features: e.features,
                })
                .collect(),
        )
    })
}

/// One row through the towers: the item as the store would keep it, and its features.
#[derive(Debug, Clone)]
pub struct EmbeddedRow {
    /// The manifest row it came from.
    pub row: usize,
    pub item: NewItem,
    pub features: Features,
}

/// Reads rows into chunks of `opts.batch_size`, reporting the reader's row errors, and hands
/// each chunk to `run`. Errors end up in row order.
fn for_each_chunk(
    rows: impl Iterator<Item = std::result::Result<ManifestRow, RowError>>,
    opts: &IngestOptions,
    progress: &dyn Progress,
    mut run: impl FnMut(Vec<ManifestRow>, &mut IngestReport) -> Result<()>,
) -> Result<IngestReport> {
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let mut report = IngestReport::default();
    let mut rows = rows.take(opts.limit.unwrap_or(usize::MAX));
    loop {
        let mut chunk = Vec::with_capacity(opts.batch_size);
        for row in rows.by_ref() {
            report.rows += 1;
            match row {
                Ok(row) => {
                    report.warnings += row.warnings.len();
                    for w in &row.warnings {
                        progress.warn(&format!("row {}: {w}", row.row));
                    }
                    chunk.push(row);
                    if chunk.len() == opts.batch_size {
                        break;
                    }
                }
                Err(e) => {
                    progress.warn(&e.to_string());
                    progress.advance(1);
                    report.failed += 1;
                    report.errors.push(e);
                }
            }
        }
        if chunk.is_empty() {
            break;
        }
        let chunk_len = chunk.len() as u64;
        run(chunk, &mut report)?;
        progress.advance(chunk_len);
    }
    // Rows fail in two places (reading the manifest, then the chunk's stages): report them in
    // row order.
    report.errors.sort_by_key(|e| e.row);
    report.times.total_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// An item with its features, waiting for its commit.
pub(crate) struct Embedded {
    /// The row it came from (manifest or feature file), for errors.
    pub(crate) row: usize,
    /// The id as the row gave it (none when derived from the content).
    pub(crate) given_id: Option<String>,
    pub(crate) item: NewItem,
    pub(crate) features: Features,
    /// Image features from the fine-tuned top, if one was given.
    pub(crate) tuned: Option<Vec<f32>>,
}

/// Stages 1 and 2 of a chunk: read, hash and decode (parallel), then both towers batched.
/// With `stored` (a store and the put mode), rows whose stored copy stays are dropped in stage
/// 1, before their image is decoded (for a known id in skip mode, before it is even read):
/// that is what makes a re-run cheap and an interrupted run resume.
fn embed_chunk(
    chunk: Vec<ManifestRow>,
    stored: Option<(&Store, PutMode)>,
    towers: &EmbeddingService,
    tuned_top: Option<&Top>,
    preprocessor: &Preprocessor,
    report: &mut IngestReport,
    progress: &dyn Progress,
) -> Result<Vec<Embedded>> {
    let t = Instant::now();
    let prepared: Vec<std::result::Result<Prepared, RowError>> = chunk
        .into_par_iter()
        .map(|row| prepare_row(row, preprocessor, stored))
        .collect();
    let mut pending: Vec<Pending> = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Err(e) => {
                progress.warn(&e.to_string());
                report.failed += 1;
                report.errors.push(e);
            }
            Ok(Prepared::Stored) => report.skipped += 1,
            Ok(Prepared::New(p)) => pending.push(*p),
        }
    }
    report.times.read_decode_s += t.elapsed().as_secs_f64();
    if pending.is_empty() {
        return Ok(Vec::new());
    }

    let t = Instant::now();
    let with_image: Vec<usize> = (0..pending.len())
        .filter(|&i| pending[i].image.is_some())
        .collect();
    // The prepared pixels are needed once, by the tower: move them out.
    let images: Vec<PreparedImage> = with_image
        .iter()
        .filter_map(|&i| pending[i].image.take())
        .collect();
    let mut image_features: Vec<Option<Vec<f32>>> = vec![None; pending.len()];
    let mut tuned_features: Vec<Option<Vec<f32>>> = vec![None; pending.len()];
    if !images.is_empty() {
        let (frozen, tuned) = match tuned_top {
            Some(top) => {
                let both = towers.image.embed_with_tuned(&images, top)?;
                (both.frozen, Some(both.tuned))
            }
            None => (towers.image.embed(&images)?.features, None),
        };
        for (&i, f) in with_image.iter().zip(frozen) {
            image_features[i] = Some(f);
        }
        for (&i, f) in with_image.iter().zip(tuned.into_iter().flatten()) {
            tuned_features[i] = Some(f);
        }
    }
    report.times.image_tower_s += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut text_features: Vec<BTreeMap<String, Vec<f32>>> = vec![BTreeMap::new(); pending.len()];
    for field in TEXT_FIELDS {
        let texts: Vec<Option<&str>> = pending.iter().map(|p| text_field(&p.item, field)).collect();
        let out = towers.text.embed_with_report(&texts)?;
        report.truncated_texts += out.truncated.len();
        for (i, v) in out.vectors.into_iter().enumerate() {
            if let Some(v) = v {
                text_features[i].insert(field.to_string(), v);
            }
        }
    }
    report.times.text_tower_s += t.elapsed().as_secs_f64();
    Ok(pending
        .into_iter()
        .zip(image_features)
        .zip(text_features)
        .zip(tuned_features)
        .map(|(((p, image), text), tuned)| Embedded {
            row: p.row,
            given_id: p.given_id,
            item: p.item,
            features: Features { image, text },
            tuned,
        })
        .collect())
}

/// Stage 3: one transaction for the chunk. If the store refuses the chunk for one item's sake,
/// the chunk is committed row by row, so the row at fault fails alone.
pub(crate) fn commit_chunk(
    embedded: Vec<Embedded>,
    store: &Store,
    mode: PutMode,
    report: &mut IngestReport,
    progress: &dyn Progress,
    on_commit: &mut dyn FnMut(&Committed<'_>),
) -> Result<()> {
    if embedded.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    let mut committed: Vec<Embedded> = Vec::with_capacity(embedded.len());
    let batch: Vec<(NewItem, Features)> = embedded
        .iter()
        .map(|e| (e.item.clone(), e.features.clone()))
        .collect();
    match store.put_items(&batch, mode) {
        Ok(put) => {
            report.add_put(&put);
            committed = embedded;
        }
        Err(e) if is_item_error(&e) => {
            drop(batch);
            for e in embedded {
                let one = [(e.item.clone(), e.features.clone())];
                match store.put_items(&one, mode) {
                    Ok(put) => {
                        report.add_put(&put);
                        committed.push(e);
                    }
                    Err(err) if is_item_error(&err) => {
                        let err = RowError {
                            row: e.row,
                            id: e.given_id,
                            reason: err.to_string(),
                        };
                        progress.warn(&err.to_string());
                        report.failed += 1;
                        report.errors.push(err);
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Err(e) => return Err(e),
    }
    report.times.commit_s += t.elapsed().as_secs_f64();
    let ids: Vec<String> = committed.iter().map(|e| e.item.id.clone()).collect();
    let tuned_images = ids
        .iter()
        .zip(committed)
        .filter_map(|(id, e)| Some((id.as_str(), e.tuned?)))
        .collect();
    on_commit(&Committed {
        ids: &ids,
        tuned_images,
    });
    Ok(())
}

/// Errors the store raises about one item's content (its id, its vectors), as opposed to the
/// database failing: those stay the row's problem.
fn is_item_error(e: &Error) -> bool {
    matches!(
        e,
        Error::BadItemId { .. } | Error::BadVector { .. } | Error::FeatureDim { .. }
    )
}

impl IngestReport {
    fn add_put(&mut self, put: &crate::store::PutReport) {
        self.inserted += put.inserted;
        self.updated += put.updated;
        self.skipped += put.skipped;
    }
}

fn text_field<'a>(item: &'a NewItem, field: &str) -> Option<&'a str> {
    match field {
        "title" => Some(item.title.as_str()),
        "description" => item.description.as_deref(),
        _ => None,
    }
    .filter(|s| !s.trim().is_empty())
}

/// What reading a row gave: an item for the towers, or the stored copy that stays.
enum Prepared {
    New(Box<Pending>),
    Stored,
}

/// Reads the row's image (if any), hashes the content, decodes and prepares the pixels. A row
/// whose stored copy stays is recognised as early as its id allows: a given id already stored
/// in skip mode before the image is read, any other unchanged row before it is decoded.
fn prepare_row(
    row: ManifestRow,
    preprocessor: &Preprocessor,
    stored: Option<(&Store, PutMode)>,
) -> std::result::Result<Prepared, RowError> {
    let fail = |reason: String| RowError {
        row: row.row,
        id: row.id.as_deref().map(short_id),
        reason,
    };
    let is_stored = |id: &str, hash: Option<&str>| -> std::result::Result<bool, RowError> {
        let Some((store, mode)) = stored else {
            return Ok(false);
        };
        let item = store.get(id).map_err(|e| fail(e.to_string()))?;
        Ok(match item {
            Some(item) => mode == PutMode::Skip || Some(item.content_hash.as_str()) == hash,
            None => false,
        })
    };
    let skip_mode = matches!(stored, Some((_, PutMode::Skip)));
    if let Some(id) = &row.id {
        check_id(id).map_err(|e| fail(e.to_string()))?;
        if skip_mode && is_stored(id, None)? {
            return Ok(Prepared::Stored);
        }
    }
    let bytes = match &row.image {
        Some(path) => Some(
            preprocessor
                .read_file(path)
                .map_err(|problem| fail(format!("image {}: {problem}", path.display())))?,
        ),
        None => None,
    };
    let content_hash = content_hash(&row, bytes.as_deref());
    let id = row
        .id
        .clone()
        .unwrap_or_else(|| content_hash[..16].to_string());
    if is_stored(&id, Some(&content_hash))? {
        return Ok(Prepared::Stored);
    }
    let (image, image_phash, image_thumbnail) = match (&bytes, &row.image) {
        (Some(bytes), Some(path)) => {
            let decoded = preprocessor
                .decode_bytes(bytes, &path.display().to_string())
                .map_err(|e| fail(e.to_string()))?;
            (
                Some(preprocessor.prepare_image(&decoded)),
                Some(phash::phash(&decoded)),
                Some(Thumbnail::of(&decoded).as_bytes().to_vec()),
            )
        }
        _ => (None, None, None),
    };
    let item = NewItem {
        id,
        title: row.title.unwrap_or_default(),
        description: row.description,
        tags: row.tags,
        label: row.label,
        image_path: row.image.as_deref().map(path_string),
        content_hash,
        image_phash,
        metadata: row.metadata,
        image_thumbnail,
    };
    Ok(Prepared::New(Box::new(Pending {
        row: row.row,
        given_id: row.id.as_deref().map(short_id),
        item,
        image,
    })))
}

fn path_string(p: &Path) -> String {
    p.display().to_string()
}

/// A hash over everything an item's features and labels depend on, so an unchanged row is
/// recognised on a re-run and a changed one is not.
pub fn content_hash(row: &ManifestRow, image_bytes: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("image", image_bytes.unwrap_or_default());
    field("title", row.title.as_deref().unwrap_or_default().as_bytes());
    field(
        "description",
        row.description.as_deref().unwrap_or_default().as_bytes(),
    );
    field("tags", row.tags.join("\u{1f}").as_bytes());
    field("label", row.label.as_deref().unwrap_or_default().as_bytes());
    field(
        "metadata",
        serde_json::Value::Object(row.metadata.clone())
            .to_string()
            .as_bytes(),
    );
    hex::encode(h.finalize())
}
