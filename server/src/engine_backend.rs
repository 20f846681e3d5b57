//! The real backend: the HTTP API's operations on a [`Catalog`].
//!
//! Uploaded images are written beside the database (`<db>.images/<sha256>.<ext>`) and ingested
//! through the same pipeline as a manifest row, so HTTP and CLI items are indistinguishable.
//! Training runs as a background job on its own thread; its progress is readable at any time.
//!
//! One file, past 600 lines: every `Backend` method's engine side (validation, the blocking call,
//! upload claims) is the same pattern, kept together so the routes stay thin.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use sha2::{Digest, Sha256};
use trio_engine::catalog::{
    self, Catalog, ClassifyInput, DuplicatesOutcome, Filter, NoiseOptions, NoiseOutcome,
    SearchRequest, TrainOptions,
};
use trio_engine::ingest::manifest::ManifestRow;
use trio_engine::ingest::pipeline::{content_hash, IngestOptions};
use trio_engine::quality::duplicates::DuplicateOptions;
use trio_engine::towers::image::Preprocessor;
use trio_engine::{Error, Progress, Result};

use crate::api::{
    self, ClaimCheck, Classification, ClassifyRequest, DuplicatesQuery, Evidence, ItemImage,
    ItemView, JobState, JobStatus, LabelScore, ModelInfo, NewItem, NoiseQuery, Page, Query, Search,
    SearchHit, SearchResults, Stats, TrainRequest,
};
use crate::backend::{Backend, ImageLimits, ReportState};

/// The label field the API reads and reviews: the item's `label`, which the noise report
/// (engine defaults) checks and training uses unless told otherwise.
const REVIEWED_LABEL_FIELD: &str = "label";

/// A [`Backend`] over a catalogue opened with its towers.
pub struct EngineBackend {
    catalog: Arc<Catalog>,
    uploads: Uploads,
    jobs: Arc<Mutex<HashMap<String, JobStatus>>>,
    next_job: AtomicU64,
}

impl EngineBackend {
    /// `uploads` is where uploaded images are kept (created on first upload).
    pub fn new(catalog: Arc<Catalog>, uploads: PathBuf) -> Self {
        Self {
            catalog,
            uploads: Uploads {
                dir: uploads,
                in_flight: Mutex::new(HashMap::new()),
            },
            jobs: Arc::new(Mutex::new(HashMap::new())),
            next_job: AtomicU64::new(1),
        }
    }

    /// Whether the stored item `id` names the image file `path`; when unsure, yes.
    fn names_file(&self, id: &str, path: &Path) -> bool {
        match self.catalog.get(id) {
            Ok(Some(item)) => item.image_path.is_some_and(|p| Path::new(&p) == path),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    fn jobs(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, JobStatus>>> {
        self.jobs
            .lock()
            .map_err(|_| Error::Internal("job table lock poisoned".into()))
    }
}

/// Uploaded image files, named by the SHA-256 of their bytes, so items with the same image share
/// one file. A file is written only once its item passed every check, and a file this server
/// wrote is removed again when no call that used it stored an item: a refused or failed upload
/// leaves nothing behind, and a file a stored item names is never removed.
struct Uploads {
    dir: PathBuf,
    /// Files that calls in flight are using.
    in_flight: Mutex<HashMap<PathBuf, Claims>>,
}

/// The calls in flight on one upload file.
struct Claims {
    users: usize,
    /// The file did not exist before these calls: one of them wrote it.
    written: bool,
    /// One of these calls stored an item that names the file.
    kept: bool,
}

impl Uploads {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<PathBuf, Claims>>> {
        self.in_flight
            .lock()
            .map_err(|_| Error::Internal("upload table lock poisoned".into()))
    }

    /// Makes sure the file for `bytes` exists and claims it until the returned guard drops.
    fn claim(&self, bytes: &[u8], ext: &str) -> Result<UploadClaim<'_>> {
        let path = self
            .dir
            .join(format!("{}.{ext}", hex::encode(Sha256::digest(bytes))));
        let mut in_flight = self.lock()?;
        let fresh = !in_flight.contains_key(&path) && !path.exists();
        if fresh {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            let tmp = path.with_extension("partial");
            let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                // Best effort: the error below is what the caller needs to hear.
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(&path, e));
            }
        }
        let claims = in_flight.entry(path.clone()).or_insert(Claims {
            users: 0,
            written: fresh,
            kept: false,
        });
        claims.users += 1;
        Ok(UploadClaim {
            uploads: self,
            path,
            stored: false,
        })
    }
}

/// One call's claim on an upload file; set `stored` once an item naming the file is committed.
struct UploadClaim<'a> {
    uploads: &'a Uploads,
    path: PathBuf,
    stored: bool,
}

impl Drop for UploadClaim<'_> {
    fn drop(&mut self) {
        let Ok(mut in_flight) = self.uploads.lock() else {
            return;
        };
        let Some(claims) = in_flight.get_mut(&self.path) else {
            return;
        };
        claims.users -= 1;
        claims.kept |= self.stored;
        if claims.users > 0 {
            return;
        }
        let remove = claims.written && !claims.kept;
        in_flight.remove(&self.path);
        if remove {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an unused upload");
            }
        }
    }
}

/// The engine names an image by its path in row errors; clients must not see server paths.
fn without_path(reason: &str, path: &Path) -> String {
    reason.replace(&path.display().to_string(), "the uploaded image")
}

fn image_ext(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        image::ImageFormat::Png => Some("png"),
        image::ImageFormat::Jpeg => Some("jpg"),
        image::ImageFormat::Gif => Some("gif"),
        image::ImageFormat::WebP => Some("webp"),
        image::ImageFormat::Bmp => Some("bmp"),
        _ => None,
    }
}

fn view(item: trio_engine::store::Item) -> ItemView {
    ItemView {
        id: item.id,
        title: catalog::non_empty(item.title),
        description: item.description,
        tags: item.tags,
        label: item.label,
        metadata: item
            .metadata
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        has_image: item.image_path.is_some(),
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "item".into(),
        id: id.to_string(),
    }
}

/// Decodes the whole image, as ingest will: a header that reads well can hide a truncated or
/// corrupt body, and the item must be refused before its file is written.
fn check_decodes(bytes: &[u8], limits: &ImageLimits) -> Result<()> {
    check_pixels(bytes, limits)?;
    Preprocessor::new(1, limits.max_pixels)
        .decode_bytes(bytes, "uploaded image")
        .map(drop)
}

fn check_pixels(bytes: &[u8], limits: &ImageLimits) -> Result<()> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::NotAnImage {
            reason: e.to_string(),
        })?;
    if reader.format().is_none() {
        return Err(Error::NotAnImage {
            reason: "not a PNG, JPEG, GIF, WebP or BMP file".into(),
        });
    }
    let (w, h) = reader.into_dimensions().map_err(|e| Error::NotAnImage {
        reason: e.to_string(),
    })?;
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(Error::TooLarge {
            what: format!("image of {w}x{h} pixels"),
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// Progress of a training job, written into the job table.
///
/// Training runs some stages at once on different threads (the fused model's alignment beside
/// the other models), so stages are kept per thread: the job's progress is the mean of the open
/// stages' fractions and its message lists each open stage's latest report. Reports from a
/// thread that started no stage (a worker helping one) count towards the newest stage.
struct JobProgress {
    id: String,
    jobs: Arc<Mutex<HashMap<String, JobStatus>>>,
    stages: Mutex<Vec<StageProgress>>,
}

/// One open stage of a job.
struct StageProgress {
    thread: ThreadId,
    total: u64,
    done: u64,
    stage: String,
    /// The stage's latest report, if any.
    message: Option<String>,
}

impl StageProgress {
    fn describe(&self) -> String {
        match &self.message {
            Some(m) => format!("{}: {m}", self.stage),
            None => self.stage.clone(),
        }
    }
}

impl JobProgress {
    /// Applies `f` to the job's status (the final outcome, once training returns).
    fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut jobs) = self.jobs.lock() {
            if let Some(job) = jobs.get_mut(&self.id) {
                f(job);
            }
        }
    }

    fn new(id: String, jobs: Arc<Mutex<HashMap<String, JobStatus>>>) -> Self {
        JobProgress {
            id,
            jobs,
            stages: Mutex::new(Vec::new()),
        }
    }

    /// Applies `f` to the calling thread's stage (or the newest), then writes the job's figures.
    fn with_stage(&self, f: impl FnOnce(&mut Vec<StageProgress>, Option<usize>)) {
        let Ok(mut stages) = self.stages.lock() else {
            return;
        };
        let me = std::thread::current().id();
        let at = stages
            .iter()
            .position(|s| s.thread == me)
            .or_else(|| stages.len().checked_sub(1));
        f(&mut stages, at);
        let fractions: Vec<f32> = stages
            .iter()
            .filter(|s| s.total > 0)
            .map(|s| (s.done as f32 / s.total as f32).min(1.0))
            .collect();
        let message = stages
            .iter()
            .map(StageProgress::describe)
            .collect::<Vec<_>>()
            .join(" | ");
        let progress =
            (!fractions.is_empty()).then(|| fractions.iter().sum::<f32>() / fractions.len() as f32);
        self.update(|job| {
            job.state = JobState::Running;
            if let Some(p) = progress {
                job.progress = p;
            }
            if !message.is_empty() {
                job.message = Some(message);
            }
        });
    }
}

impl Progress for JobProgress {
    fn start(&self, stage: &str, total: Option<u64>) {
        let fresh = StageProgress {
            thread: std::thread::current().id(),
            total: total.unwrap_or(0),
            done: 0,
            stage: stage.to_string(),
            message: None,
        };
        self.with_stage(|stages, _| {
            stages.retain(|s| s.thread != fresh.thread);
            stages.push(fresh);
        });
    }

    fn advance(&self, n: u64) {
        self.with_stage(|stages, at| {
            if let Some(s) = at.and_then(|i| stages.get_mut(i)) {
                s.done += n;
            }
        });
    }

    fn message(&self, msg: &str) {
        self.with_stage(|stages, at| {
            if let Some(s) = at.and_then(|i| stages.get_mut(i)) {
                s.message = Some(msg.to_string());
            }
        });
    }

    fn finish(&self) {
        let me = std::thread::current().id();
        self.with_stage(|stages, _| stages.retain(|s| s.thread != me));
    }
}

impl Backend for EngineBackend {
    fn add_item(&self, item: NewItem, limits: &ImageLimits) -> Result<ItemView> {
        // Every check runs before the image is written: the decode, then the id.
        let ext = match &item.image {
            Some(bytes) => {
                check_decodes(bytes, limits)?;
                Some(image_ext(bytes).ok_or_else(|| Error::NotAnImage {
                    reason: "not a PNG, JPEG, GIF, WebP or BMP file".into(),
                })?)
            }
            None => None,
        };
        let mut row = ManifestRow {
            row: 1,
            id: item.id.clone(),
            image: None,
            title: item.title.clone().filter(|t| !t.trim().is_empty()),
            description: item.description.clone().filter(|t| !t.trim().is_empty()),
            tags: item.tags.clone(),
            label: item.label.clone(),
            metadata: item
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            warnings: Vec::new(),
        };
        if item.image.is_none() && row.title.is_none() && row.description.is_none() {
            return Err(Error::InvalidArgument(
                "an item needs an image, a title or a description".into(),
            ));
        }
        // The id ingest would derive, fixed here so that a conflict can name it.
        let id = match &item.id {
            Some(id) => id.clone(),
            None => content_hash(&row, item.image.as_deref())[..16].to_string(),
        };
        row.id = Some(id.clone());
        let conflict = || Error::Conflict {
            what: "item".into(),
            id: id.clone(),
            reason: "an item with this id exists".into(),
        };
        // Cheap early answer; the store's transaction below is what decides a race.
        if self.catalog.get(&id)?.is_some() {
            return Err(conflict());
        }
        let mut claim = match (&item.image, ext) {
            (Some(bytes), Some(ext)) => Some(self.uploads.claim(bytes, ext)?),
            _ => None,
        };
        row.image = claim.as_ref().map(|c| c.path.clone());
        let ingested = self.catalog.ingest(
            std::iter::once(Ok(row)),
            &IngestOptions::default(),
            &trio_engine::NoProgress,
            &mut |_| {},
        );
        let report = match ingested {
            Ok(report) => report,
            Err(e) => {
                // A failure after the commit (an index update) leaves the item stored.
                if let Some(c) = claim.as_mut() {
                    c.stored = self.names_file(&id, &c.path);
                }
                return Err(e);
            }
        };
        if let Some(e) = report.errors.first() {
            let reason = match &claim {
                Some(c) => without_path(&e.reason, &c.path),
                None => e.reason.clone(),
            };
            return Err(Error::InvalidArgument(reason));
        }
        // Skip mode stores an id only if the store does not hold it yet, in the same write
        // transaction as the insert: of concurrent adds of one id exactly one inserts.
        if report.inserted == 0 {
            return Err(conflict());
        }
        if let Some(c) = claim.as_mut() {
            c.stored = true;
        }
        self.get_item(&id)
    }

    fn get_item(&self, id: &str) -> Result<ItemView> {
        self.catalog.get(id)?.map(view).ok_or_else(|| not_found(id))
    }

    fn item_image(&self, id: &str) -> Result<ItemImage> {
        let item = self.catalog.get(id)?.ok_or_else(|| not_found(id))?;
        let path = item.image_path.ok_or_else(|| Error::NotFound {
            what: "image of item".into(),
            id: id.to_string(),
        })?;
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ImageMissing { id: id.to_string() },
            _ => Error::io(&path, e),
        })?;
        let content_type = match image::guess_format(&bytes) {
            Ok(f) => f.to_mime_type().to_string(),
            Err(_) => "application/octet-stream".to_string(),
        };
        Ok(ItemImage {
            bytes,
            content_type,
        })
    }

    fn list_items(&self, offset: usize, limit: usize) -> Result<Page<ItemView>> {
        Ok(Page {
            items: self
                .catalog
                .list(offset, limit)?
                .into_iter()
                .map(view)
                .collect(),
            offset,
            limit,
            total: self.catalog.count()?,
        })
    }

    fn delete_item(&self, id: &str) -> Result<()> {
        if self.catalog.delete(id)? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    fn classify(&self, request: ClassifyRequest, limits: &ImageLimits) -> Result<Classification> {
        // An image that does not decode is the client's error, whatever state the model is in.
        if let Some(bytes) = &request.image {
            check_decodes(bytes, limits)?;
        }
        let input = ClassifyInput {
            image_path: None,
            image_bytes: request.image,
            title: request.title,
            description: request.description,
        };
        let c = self
            .catalog
            .classify(&input, request.top_k, request.claimed.as_deref())?;
        let evidence = |e: Vec<catalog::Evidence>| {
            e.into_iter()
                .map(|e| Evidence {
                    id: e.id,
                    title: e.title,
                    label: e.label,
                    score: e.score,
                })
                .collect::<Vec<_>>()
        };
        Ok(Classification {
            labels: c
                .labels
                .into_iter()
                .map(|l| LabelScore {
                    label: l.label,
                    probability: l.probability,
                })
                .collect(),
            claimed: c.claimed.map(|k| {
                let mut ev = evidence(k.evidence_claimed);
                ev.extend(evidence(k.evidence_model));
                ClaimCheck {
                    label: k.label,
                    probability: k.probability,
                    agrees: k.agrees,
                    model_choice: k.model_choice,
                    evidence: ev,
                }
            }),
        })
    }

    fn search(&self, search: Search, limits: &ImageLimits) -> Result<SearchResults> {
        let query = match search.query {
            Query::Text(t) => catalog::Query::Text(t),
            Query::Image(b) => {
                check_decodes(&b, limits)?;
                catalog::Query::ImageBytes(b)
            }
            Query::Item(id) => catalog::Query::Id(id),
        };
        let req = SearchRequest {
            query,
            space: search.space.into(),
            k: search.k,
            offset: search.offset,
            filters: search
                .filters
                .into_iter()
                .map(|(field, value)| Filter { field, value })
                .collect(),
        };
        let hits = self.catalog.search(&req)?;
        Ok(SearchResults {
            hits: hits
                .into_iter()
                .map(|h| SearchHit {
                    id: h.id,
                    score: h.score,
                    title: h.title,
                    label: h.label,
                    has_image: h.image_path.is_some(),
                })
                .collect(),
        })
    }

    fn report_state(&self) -> Result<Option<ReportState>> {
        let store = self.catalog.store();
        Ok(Some(ReportState {
            generation: store.generation()?,
            model: store.active_version()?.map(|v| v.to_string()),
        }))
    }

    fn duplicates(&self, query: DuplicatesQuery) -> Result<DuplicatesOutcome> {
        let mut opts = DuplicateOptions::default();
        if let Some(t) = query.threshold {
            opts.threshold = t;
        }
        let space = query.space.unwrap_or(api::DEFAULT_DUPLICATES_SPACE);
        let mut out =
            self.catalog
                .duplicates(Some(space.into()), &opts, &trio_engine::NoProgress)?;
        if let Some(limit) = query.limit {
            out.groups.truncate(limit);
        }
        Ok(out)
    }

    fn noise(&self, query: NoiseQuery) -> Result<NoiseOutcome> {
        let opts = NoiseOptions {
            top: query.limit.unwrap_or(usize::MAX),
            ..NoiseOptions::default()
        };
        let mut out = self.catalog.noise(&opts, &trio_engine::NoProgress)?;
        if let Some(min) = query.min_confidence {
            out.issues.retain(|i| i.score >= min);
        }
        Ok(out)
    }

    fn set_label(&self, id: &str, label: &str, if_label: Option<&str>) -> Result<ItemView> {
        self.catalog
            .set_label(id, REVIEWED_LABEL_FIELD, label, if_label)
            .map(view)
    }

    fn keep_label(&self, id: &str, if_label: Option<&str>) -> Result<ItemView> {
        self.catalog
            .keep_label(id, REVIEWED_LABEL_FIELD, if_label)
            .map(view)
    }

    fn dismiss_duplicates(&self, members: &[String]) -> Result<()> {
        self.catalog.dismiss_group(members)
    }

    fn start_train(&self, request: TrainRequest) -> Result<String> {
        let mut opts = TrainOptions::default();
        if let Some(e) = request.epochs {
            opts.config.epochs = e as usize;
        }
        if let Some(lr) = request.learning_rate {
            opts.config.lr = lr;
        }
        if let Some(b) = request.batch_size {
            opts.config.batch_size = b;
        }
        if let Some(s) = request.seed {
            opts.config.seed = s;
        }
        if let Some(v) = request.validation_fraction {
            opts.config.holdout = 2.0 * v as f64;
        }
        if request.finetune_image == Some(true) {
            opts.config.finetune_image = Some(trio_engine::train::FinetuneConfig {
                blocks: request.finetune_blocks,
                ..Default::default()
            });
        }
        opts.keep_active = request.activate == Some(false);
        // Refused here, not by a job that fails later.
        opts.config.validate()?;
        // The check and the registration under one lock: two requests cannot both start.
        let mut jobs = self.jobs()?;
        if jobs
            .values()
            .any(|j| matches!(j.state, JobState::Queued | JobState::Running))
        {
            return Err(Error::Conflict {
                what: "training job".into(),
                id: "train".into(),
                reason: "a training job is already running".into(),
            });
        }
        let id = format!("train-{}", self.next_job.fetch_add(1, Ordering::Relaxed));
        jobs.insert(
            id.clone(),
            JobStatus {
                id: id.clone(),
                kind: "train".into(),
                state: JobState::Queued,
                progress: 0.0,
                message: None,
                result: None,
            },
        );
        drop(jobs);
        let activates = !opts.keep_active;
        let progress = JobProgress::new(id.clone(), self.jobs.clone());
        let catalog = self.catalog.clone();
        std::thread::Builder::new()
            .name(id.clone())
            .spawn(move || {
                let result = catalog.train(&opts, &progress);
                progress.update(|j| match result {
                    Ok(outcome) => {
                        j.state = JobState::Succeeded;
                        j.progress = 1.0;
                        j.message = Some(if activates {
                            format!("model v{} is active", outcome.version)
                        } else {
                            format!("model v{} is stored, not active", outcome.version)
                        });
                        j.result = serde_json::to_value(outcome).ok();
                    }
                    Err(e) => {
                        j.state = JobState::Failed;
                        j.message = Some(e.to_string());
                    }
                });
            })
            .map_err(|e| Error::Internal(format!("cannot start the training thread: {e}")))?;
        Ok(id)
    }

    fn job(&self, id: &str) -> Result<JobStatus> {
        self.jobs()?
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "job".into(),
                id: id.to_string(),
            })
    }

    fn models(&self) -> Result<Vec<ModelInfo>> {
        let store = self.catalog.store();
        let active = store.active_version()?;
        Ok(store
            .list_models()?
            .into_iter()
            .map(|m| ModelInfo {
                version: m.version.to_string(),
                active: Some(m.version) == active,
                created_at: Some(m.created_at.to_string()),
                metrics: Some(m.metrics),
            })
            .collect())
    }

    fn activate_model(&self, version: &str) -> Result<ModelInfo> {
        let v: u32 = version.trim_start_matches('v').parse().map_err(|_| {
            Error::InvalidArgument(format!("model version `{version}` is not a number"))
        })?;
        self.catalog.store().activate(v)?;
        self.models()?
            .into_iter()
            .find(|m| m.version == v.to_string())
            .ok_or_else(|| Error::NotFound {
                what: "model".into(),
                id: version.to_string(),
            })
    }

    fn stats(&self) -> Result<Stats> {
        let mut indexes = BTreeMap::new();
        for s in catalog::Space::ALL {
            if let Some(n) = self.catalog.loaded_index_len(s) {
                indexes.insert(s.as_str().to_string(), n as u64);
            }
        }
        Ok(Stats {
            items: self.catalog.count()?,
            indexes,
            active_model: self
                .catalog
                .store()
                .active_version()?
                .map(|v| v.to_string()),
        })
    }
}

/// Where uploads go for a database file: `catalog.trio` → `catalog.trio.images/`.
pub fn uploads_dir_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".images");
    db.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_table() -> Arc<Mutex<HashMap<String, JobStatus>>> {
        let job = JobStatus {
            id: "train-1".into(),
            kind: "train".into(),
            state: JobState::Queued,
            progress: 0.0,
            message: None,
            result: None,
        };
        Arc::new(Mutex::new(HashMap::from([("train-1".to_string(), job)])))
    }

    fn status(jobs: &Arc<Mutex<HashMap<String, JobStatus>>>) -> (f32, Option<String>) {
        let jobs = jobs.lock().unwrap();
        let job = &jobs["train-1"];
        (job.progress, job.message.clone())
    }

    #[test]
    fn stages_on_two_threads_are_tracked_apart() {
        let jobs = job_table();
        let progress = JobProgress::new("train-1".into(), jobs.clone());
        progress.start("train fused", Some(10));
        progress.advance(5);
        std::thread::scope(|s| {
            s.spawn(|| {
                progress.start("align fused", Some(4));
                progress.advance(4);
                progress.message("epoch 4");
                let (fraction, message) = status(&jobs);
                // Mean of 5/10 and 4/4; both stages named.
                assert!((fraction - 0.75).abs() < 1e-6, "{fraction}");
                assert_eq!(
                    message.as_deref(),
                    Some("train fused | align fused: epoch 4")
                );
                progress.finish();
            });
        });
        progress.advance(1);
        let (fraction, message) = status(&jobs);
        assert!((fraction - 0.6).abs() < 1e-6, "{fraction}");
        assert_eq!(message.as_deref(), Some("train fused"));
    }
}
