//! A fake backend for the HTTP tests: an in-memory catalogue with deterministic classification
//! and search, plus hooks to make a call wait, panic or report that it started, so tests can
//! create overload and timeouts without depending on a clock.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use base64::Engine as _;
use serde_json::{json, Value};
use trio_engine::catalog::{
    DuplicateGroupView, DuplicatePairView, DuplicatesOutcome, LabelIssueView, NoiseOutcome,
};
use trio_engine::quality::duplicates::{DuplicateKind, DuplicateOptions};
use trio_engine::quality::evidence::CopyEvidence;
use trio_engine::{Error, Result};
use trio_server::api::{
    self, ClaimCheck, Classification, ClassifyRequest, DuplicatesQuery, Evidence, ItemImage,
    ItemView, JobState, JobStatus, LabelScore, ModelInfo, NewItem, NoiseQuery, Page, Query, Search,
    SearchHit, SearchResults, Stats, TrainRequest,
};
use trio_server::{ApiError, ApiKey, Backend, ImageLimits, ReportState, ServerConfig};

/// The API key the HTTP tests configure for writes.
pub const KEY: &str = "test-key-0123";

/// Default settings, except that writes need [`KEY`].
pub fn keyed() -> ServerConfig {
    ServerConfig {
        api_key: Some(ApiKey::new(KEY).unwrap()),
        ..ServerConfig::default()
    }
}

/// The `Authorization` header that carries [`KEY`].
pub fn bearer() -> (header::HeaderName, String) {
    (header::AUTHORIZATION, format!("Bearer {KEY}"))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A keyed JSON `POST`.
pub fn post_json(path: &str, body: Value) -> TestRequest {
    TestRequest::post()
        .uri(path)
        .insert_header(bearer())
        .set_json(body)
}

/// A keyed multipart POST of an already built body (see [`multipart`]).
pub fn post_multipart(path: &str, body: Vec<u8>) -> TestRequest {
    TestRequest::post()
        .uri(path)
        .insert_header(bearer())
        .insert_header((
            actix_web::http::header::CONTENT_TYPE,
            multipart_content_type(),
        ))
        .set_payload(body)
}

/// The labels the fake model knows.
pub const LABELS: [&str; 6] = ["bird", "car", "cat", "dog", "fish", "tree"];

/// A text (title, query text, item id) that makes the fake wait at the gate.
pub const HOLD: &str = "hold";
/// A text that makes the fake panic.
pub const PANIC: &str = "panic";

/// Holds calls whose input is [`HOLD`] until opened, and tells the test each time one arrives.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    arrived: tokio::sync::Notify,
}

impl Gate {
    fn wait(&self) {
        self.arrived.notify_one();
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    /// Resolves once a call is waiting at the gate (one arrival per await).
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test does not leave blocking threads waiting
/// (the runtime waits for them on shutdown).
pub struct OpenOnDrop(pub Arc<FakeBackend>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.gate.open();
    }
}

struct Stored {
    view: ItemView,
    image: Option<ItemImage>,
}

#[derive(Default)]
pub struct FakeBackend {
    items: Mutex<BTreeMap<String, Stored>>,
    next_id: AtomicU64,
    jobs: Mutex<BTreeMap<String, JobStatus>>,
    models: Mutex<Vec<ModelInfo>>,
    not_ready: AtomicBool,
    pub gate: Gate,
    /// Size of every batch the batchers sent, by kind.
    pub batches: Mutex<Vec<(&'static str, usize)>>,
    /// Grows with every add and delete, like the store's write generation.
    generation: AtomicU64,
    /// How many duplicates and noise reports were computed.
    pub report_calls: AtomicUsize,
    /// Makes report computations wait at the gate.
    pub hold_reports: AtomicBool,
    /// Pairs of ids dismissed as not duplicates, smaller id first.
    dismissed: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Labels confirmed by a reviewer, by item id.
    kept: Mutex<BTreeMap<String, String>>,
}

impl FakeBackend {
    pub fn new() -> Arc<FakeBackend> {
        let backend = FakeBackend::default();
        backend.models.lock().unwrap().push(ModelInfo {
            version: "v1".into(),
            active: true,
            created_at: Some("2025-01-01T00:00:00Z".into()),
            metrics: Some(json!({"accuracy": 0.9})),
        });
        Arc::new(backend)
    }

    pub fn set_ready(&self, ready: bool) {
        self.not_ready.store(!ready, Ordering::SeqCst);
    }

    pub fn batch_sizes(&self, kind: &str) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| *n)
            .collect()
    }

    fn hold_or_panic(&self, text: Option<&str>) {
        match text {
            Some(HOLD) => self.gate.wait(),
            Some(PANIC) => panic!("the fake backend was asked to panic"),
            _ => {}
        }
    }

    fn report_started(&self) {
        self.report_calls.fetch_add(1, Ordering::SeqCst);
        if self.hold_reports.load(Ordering::SeqCst) {
            self.gate.wait();
        }
    }

    /// `Conflict` unless the item's label is `expected` (when given), as the engine answers.
    fn check_label(view: &ItemView, expected: Option<&str>) -> Result<()> {
        match expected {
            Some(expected) if view.label.as_deref() != Some(expected) => Err(Error::Conflict {
                what: "item".into(),
                id: view.id.clone(),
                reason: format!("its label is not `{expected}`"),
            }),
            _ => Ok(()),
        }
    }

    fn not_found(id: &str) -> Error {
        Error::NotFound {
            what: "item".into(),
            id: id.into(),
        }
    }
}

/// A PNG signature and IHDR chunk: enough for the fake "decoder", which only reads the size.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 6, 0, 0, 0]);
    bytes
}

/// The fake decoder: PNG signature or `NotAnImage`; `width * height` within the limit or
/// `TooLarge`.
fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(Error::NotAnImage {
            reason: format!("{} bytes without a PNG signature", bytes.len()),
        });
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(Error::TooLarge {
            what: format!("image of {width}x{height} pixels"),
            limit: limits.max_pixels,
        });
    }
    Ok((width, height))
}

/// Deterministic "model": each label named in the text scores 2, an image adds 1 to `cat`;
/// softmax over the scores.
fn probabilities(text: &str, has_image: bool) -> Vec<LabelScore> {
    let text = text.to_lowercase();
    let logits: Vec<f32> = LABELS
        .iter()
        .map(|label| {
            let named = text.matches(label).count() as f32 * 2.0;
            named
                + if has_image && *label == "cat" {
                    1.0
                } else {
                    0.0
                }
        })
        .collect();
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut scores: Vec<LabelScore> = LABELS
        .iter()
        .zip(exps)
        .map(|(label, e)| LabelScore {
            label: label.to_string(),
            probability: e / sum,
        })
        .collect();
    scores.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.label.cmp(&b.label))
    });
    scores
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn item_text(view: &ItemView) -> String {
    format!(
        "{} {} {}",
        view.title.as_deref().unwrap_or(""),
        view.description.as_deref().unwrap_or(""),
        view.label.as_deref().unwrap_or("")
    )
}

fn passes(view: &ItemView, filters: &BTreeMap<String, String>) -> bool {
    filters.iter().all(|(field, value)| match field.as_str() {
        "label" => view.label.as_deref() == Some(value.as_str()),
        "tag" => view.tags.contains(value),
        other => view.metadata.get(other) == Some(value),
    })
}

impl Backend for FakeBackend {
    fn ready(&self) -> std::result::Result<(), ApiError> {
        if self.not_ready.load(Ordering::SeqCst) {
            return Err(ApiError::not_ready("the fake is loading"));
        }
        Ok(())
    }

    fn add_item(&self, item: NewItem, limits: &ImageLimits) -> Result<ItemView> {
        self.hold_or_panic(item.title.as_deref());
        if let Some(label) = &item.label {
            if !LABELS.contains(&label.as_str()) {
                return Err(Error::UnknownLabel {
                    label: label.clone(),
                });
            }
        }
        let image = match &item.image {
            Some(bytes) => {
                decode(bytes, limits)?;
                Some(ItemImage {
                    bytes: bytes.clone(),
                    content_type: "image/png".into(),
                })
            }
            None => None,
        };
        let id = item
            .id
            .clone()
            .unwrap_or_else(|| format!("item-{}", self.next_id.fetch_add(1, Ordering::SeqCst)));
        let view = ItemView {
            id: id.clone(),
            title: item.title,
            description: item.description,
            tags: item.tags,
            label: item.label,
            metadata: item.metadata,
            has_image: image.is_some(),
        };
        let mut items = self.items.lock().unwrap();
        if items.contains_key(&id) {
            return Err(Error::Conflict {
                what: "item".into(),
                id,
                reason: "an item with this id exists".into(),
            });
        }
        items.insert(
            id,
            Stored {
                view: view.clone(),
                image,
            },
        );
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(view)
    }

    fn get_item(&self, id: &str) -> Result<ItemView> {
        self.hold_or_panic(Some(id));
        let items = self.items.lock().unwrap();
        items
            .get(id)
            .map(|s| s.view.clone())
            .ok_or_else(|| Self::not_found(id))
    }

    fn item_image(&self, id: &str) -> Result<ItemImage> {
        let items = self.items.lock().unwrap();
        let stored = items.get(id).ok_or_else(|| Self::not_found(id))?;
        stored.image.clone().ok_or_else(|| Error::NotFound {
            what: "image of item".into(),
            id: id.into(),
        })
    }

    fn list_items(&self, offset: usize, limit: usize) -> Result<Page<ItemView>> {
        let items = self.items.lock().unwrap();
        Ok(Page {
            items: items
                .values()
                .skip(offset)
                .take(limit)
                .map(|s| s.view.clone())
                .collect(),
            offset,
            limit,
            total: items.len() as u64,
        })
    }

    fn delete_item(&self, id: &str) -> Result<()> {
        self.items
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| Self::not_found(id))?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn classify(&self, request: ClassifyRequest, limits: &ImageLimits) -> Result<Classification> {
        self.hold_or_panic(request.title.as_deref());
        if let Some(bytes) = &request.image {
            decode(bytes, limits)?;
        }
        let text = format!(
            "{} {}",
            request.title.as_deref().unwrap_or(""),
            request.description.as_deref().unwrap_or("")
        );
        let scores = probabilities(&text, request.image.is_some());
        let claimed = match &request.claimed {
            None => None,
            Some(label) => {
                let Some(entry) = scores.iter().find(|s| &s.label == label) else {
                    return Err(Error::UnknownLabel {
                        label: label.clone(),
                    });
                };
                let model_choice = scores[0].label.clone();
                let items = self.items.lock().unwrap();
                let evidence = items
                    .values()
                    .filter(|s| s.view.label.as_deref() == Some(model_choice.as_str()))
                    .take(3)
                    .map(|s| Evidence {
                        id: s.view.id.clone(),
                        title: s.view.title.clone(),
                        label: s.view.label.clone(),
                        score: 1.0,
                    })
                    .collect();
                Some(ClaimCheck {
                    label: label.clone(),
                    probability: entry.probability,
                    agrees: model_choice == *label,
                    model_choice,
                    evidence,
                })
            }
        };
        let mut labels = scores;
        labels.truncate(request.top_k);
        Ok(Classification { labels, claimed })
    }

    fn classify_batch(
        &self,
        requests: Vec<ClassifyRequest>,
        limits: &ImageLimits,
    ) -> Result<Vec<Result<Classification>>> {
        self.batches
            .lock()
            .unwrap()
            .push(("classify", requests.len()));
        Ok(requests
            .into_iter()
            .map(|r| self.classify(r, limits))
            .collect())
    }

    fn search(&self, search: Search, limits: &ImageLimits) -> Result<SearchResults> {
        let score: Box<dyn Fn(&ItemView) -> f32> = match &search.query {
            Query::Text(text) => {
                self.hold_or_panic(Some(text));
                let query = words(text);
                Box::new(move |view: &ItemView| {
                    let have = words(&item_text(view));
                    let hits = query.iter().filter(|w| have.contains(w)).count();
                    hits as f32 / query.len().max(1) as f32
                })
            }
            Query::Image(bytes) => {
                decode(bytes, limits)?;
                Box::new(|view: &ItemView| if view.has_image { 1.0 } else { 0.0 })
            }
            Query::Item(id) => {
                let label = self
                    .items
                    .lock()
                    .unwrap()
                    .get(id)
                    .ok_or_else(|| Self::not_found(id))?
                    .view
                    .label
                    .clone();
                let id = id.clone();
                Box::new(move |view: &ItemView| {
                    if view.id == id {
                        0.0
                    } else if view.label == label {
                        1.0
                    } else {
                        0.1
                    }
                })
            }
        };
        let items = self.items.lock().unwrap();
        let mut hits: Vec<SearchHit> = items
            .values()
            .filter(|s| passes(&s.view, &search.filters))
            .map(|s| SearchHit {
                id: s.view.id.clone(),
                score: score(&s.view),
                title: s.view.title.clone(),
                label: s.view.label.clone(),
                has_image: s.view.has_image,
            })
            .filter(|h| h.score > 0.0)
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(SearchResults {
            hits: hits
                .into_iter()
                .skip(search.offset)
                .take(search.k)
                .collect(),
        })
    }

    fn search_batch(
        &self,
        searches: Vec<Search>,
        limits: &ImageLimits,
    ) -> Result<Vec<Result<SearchResults>>> {
        self.batches
            .lock()
            .unwrap()
            .push(("search", searches.len()));
        Ok(searches
            .into_iter()
            .map(|s| self.search(s, limits))
            .collect())
    }

    fn report_state(&self) -> Result<Option<ReportState>> {
        Ok(Some(ReportState {
            generation: self.generation.load(Ordering::SeqCst),
            model: self.stats()?.active_model,
        }))
    }

    /// Items with the same title (any case) are near-duplicates of similarity 1.
    fn duplicates(&self, query: DuplicatesQuery) -> Result<DuplicatesOutcome> {
        self.report_started();
        let items = self.items.lock().unwrap();
        let mut by_title: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for stored in items.values() {
            if let Some(title) = &stored.view.title {
                by_title
                    .entry(title.to_lowercase())
                    .or_default()
                    .push(stored.view.id.clone());
            }
        }
        let similarity = 1.0;
        let threshold = query
            .threshold
            .unwrap_or(DuplicateOptions::default().threshold);
        let dismissed = self.dismissed.lock().unwrap();
        let groups = by_title
            .into_values()
            .filter(|ids| {
                let linked = ids.iter().enumerate().any(|(i, a)| {
                    ids[i + 1..].iter().any(|b| {
                        !dismissed.contains(&(a.clone().min(b.clone()), a.clone().max(b.clone())))
                    })
                });
                ids.len() > 1 && similarity >= threshold && linked
            })
            .take(query.limit.unwrap_or(usize::MAX))
            .map(|members| DuplicateGroupView {
                kind: DuplicateKind::Near,
                pairs: members
                    .windows(2)
                    .map(|pair| DuplicatePairView {
                        a: pair[0].clone(),
                        b: pair[1].clone(),
                        score: similarity,
                        evidence: CopyEvidence {
                            similarity: Some(similarity),
                            ..CopyEvidence::default()
                        },
                    })
                    .collect(),
                members,
            })
            .collect();
        Ok(DuplicatesOutcome {
            space: Some(query.space.unwrap_or(api::DEFAULT_DUPLICATES_SPACE).into()),
            groups,
            refused_merges: 0,
            without_thumbnail: 0,
        })
    }

    /// Labelled items whose content the fake model gives another label, most doubted first;
    /// `limit` and `min_confidence` apply as in the engine backend.
    fn noise(&self, query: NoiseQuery) -> Result<NoiseOutcome> {
        self.report_started();
        let items = self.items.lock().unwrap();
        let kept = self.kept.lock().unwrap();
        let labelled: Vec<&Stored> = items.values().filter(|s| s.view.label.is_some()).collect();
        let mut issues: Vec<LabelIssueView> = labelled
            .iter()
            .filter_map(|s| {
                let given = s.view.label.clone()?;
                let content = format!(
                    "{} {}",
                    s.view.title.as_deref().unwrap_or(""),
                    s.view.description.as_deref().unwrap_or("")
                );
                let scores = probabilities(&content, s.view.has_image);
                let p_given = scores.iter().find(|l| l.label == given)?.probability;
                let top = scores.into_iter().next()?;
                let confirmed = kept.get(&s.view.id) == Some(&given);
                (top.label != given && !confirmed).then(|| LabelIssueView {
                    id: s.view.id.clone(),
                    title: s.view.title.clone(),
                    given_label: given,
                    suggested_label: top.label,
                    score: 1.0 - p_given,
                    p_given,
                    p_suggested: top.probability,
                    neighbour_agreement: None,
                })
            })
            .collect();
        issues.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        let flagged = issues.len();
        issues.truncate(query.limit.unwrap_or(usize::MAX));
        if let Some(min) = query.min_confidence {
            issues.retain(|i| i.score >= min);
        }
        Ok(NoiseOutcome {
            labelled_items: labelled.len(),
            flagged,
            issues,
            out_of_fold: None,
        })
    }

    fn set_label(&self, id: &str, label: &str, if_label: Option<&str>) -> Result<ItemView> {
        let mut items = self.items.lock().unwrap();
        let stored = items.get_mut(id).ok_or_else(|| Self::not_found(id))?;
        Self::check_label(&stored.view, if_label)?;
        stored.view.label = Some(label.to_string());
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(stored.view.clone())
    }

    fn keep_label(&self, id: &str, if_label: Option<&str>) -> Result<ItemView> {
        let items = self.items.lock().unwrap();
        let stored = items.get(id).ok_or_else(|| Self::not_found(id))?;
        Self::check_label(&stored.view, if_label)?;
        let label = stored
            .view
            .label
            .clone()
            .ok_or_else(|| Error::InvalidArgument(format!("item '{id}' has no label")))?;
        self.kept.lock().unwrap().insert(id.to_string(), label);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(stored.view.clone())
    }

    fn dismiss_duplicates(&self, members: &[String]) -> Result<()> {
        let items = self.items.lock().unwrap();
        if let Some(missing) = members.iter().find(|id| !items.contains_key(*id)) {
            return Err(Self::not_found(missing));
        }
        let mut dismissed = self.dismissed.lock().unwrap();
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                dismissed.insert((a.clone().min(b.clone()), a.clone().max(b.clone())));
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn start_train(&self, request: TrainRequest) -> Result<String> {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(running) = jobs.values().find(|j| j.state == JobState::Running) {
            return Err(Error::Conflict {
                what: "training job".into(),
                id: running.id.clone(),
                reason: "is still running".into(),
            });
        }
        let id = format!("job-{}", jobs.len() + 1);
        jobs.insert(
            id.clone(),
            JobStatus {
                id: id.clone(),
                kind: "train".into(),
                state: JobState::Running,
                progress: 0.5,
                message: Some(format!("epoch 1 of {}", request.epochs.unwrap_or(10))),
                result: None,
            },
        );
        Ok(id)
    }

    fn job(&self, id: &str) -> Result<JobStatus> {
        self.jobs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "job".into(),
                id: id.into(),
            })
    }

    fn models(&self) -> Result<Vec<ModelInfo>> {
        Ok(self.models.lock().unwrap().clone())
    }

    fn activate_model(&self, version: &str) -> Result<ModelInfo> {
        let mut models = self.models.lock().unwrap();
        if !models.iter().any(|m| m.version == version) {
            return Err(Error::NotFound {
                what: "model version".into(),
                id: version.into(),
            });
        }
        for model in models.iter_mut() {
            model.active = model.version == version;
        }
        Ok(models
            .iter()
            .find(|m| m.active)
            .cloned()
            .expect("just activated"))
    }

    fn stats(&self) -> Result<Stats> {
        let items = self.items.lock().unwrap();
        let with_image = items.values().filter(|s| s.image.is_some()).count() as u64;
        let total = items.len() as u64;
        Ok(Stats {
            items: total,
            indexes: BTreeMap::from([
                ("fused".to_string(), total),
                ("image".to_string(), with_image),
                ("text".to_string(), total),
            ]),
            active_model: self
                .models
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.active)
                .map(|m| m.version.clone()),
        })
    }
}

/// Builds the service over `backend` with `config` (a macro because `init_service`'s type
/// cannot be named).
#[macro_export]
macro_rules! app {
    ($backend:expr, $config:expr) => {{
        let backend: std::sync::Arc<dyn trio_server::Backend> = $backend;
        let state = trio_server::AppState::new(backend, $config).unwrap();
        actix_web::test::init_service(
            actix_web::App::new().configure(|cfg| trio_server::configure(cfg, &state)),
        )
        .await
    }};
}

/// Sends `request` to a test service and checks the JSON error it answers: the status, the
/// error code, and a word the message must name.
#[macro_export]
macro_rules! assert_error {
    ($app:expr, $request:expr, $status:expr, $code:expr, $mentions:expr) => {
        $crate::support::expect_error(
            actix_web::test::call_service(&$app, $request).await,
            $status,
            $code,
            $mentions,
        )
        .await
    };
}

/// Sends eight concurrent `DELETE /v1/items/{id}` and checks that exactly one deletes the item
/// (204) and the other seven find nothing (404): a delete is atomic under concurrency. `$auth`
/// is the `Authorization` header (name, value) the service expects.
#[macro_export]
macro_rules! assert_delete_race {
    ($app:expr, $id:expr, $auth:expr) => {{
        let auth = $auth;
        let deletes = (0..8).map(|_| {
            let request = actix_web::test::TestRequest::delete()
                .uri(&format!("/v1/items/{}", $id))
                .insert_header(auth.clone())
                .to_request();
            actix_web::test::call_service(&$app, request)
        });
        let statuses: Vec<u16> = futures_util::future::join_all(deletes)
            .await
            .into_iter()
            .map(|r| r.status().as_u16())
            .collect();
        let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
        assert_eq!(count(204), 1, "{statuses:?}");
        assert_eq!(count(404), 7, "{statuses:?}");
    }};
}

/// Status and JSON body of a response.
pub async fn json_of<B: MessageBody>(response: ServiceResponse<B>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// Asserts an error response: status, `error.code`, and a message mentioning `mentions`.
pub async fn expect_error<B: MessageBody>(
    response: ServiceResponse<B>,
    status: u16,
    code: &str,
    mentions: &str,
) -> String {
    let (got, body) = json_of(response).await;
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        (got, body["error"]["code"].as_str().unwrap_or_default()),
        (status, code),
        "body: {body}"
    );
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
    message
}

/// A multipart body with a fixed boundary: `(name, filename, content type, bytes)` per part.
pub const BOUNDARY: &str = "trio-test-boundary";

/// One part: name, file name, content type, bytes.
pub type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

pub fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(filename) = filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn multipart_content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}
