//! What every handler shares: the backend, the settings, the metrics, the bounded work queue
//! for blocking calls and the batchers.

use std::io;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest};
use tokio::sync::Semaphore;
use trio_engine::Error as EngineError;

use crate::api::{Classification, ClassifyRequest, Search, SearchResults};
use crate::backend::{Backend, ImageLimits};
use crate::batcher::Batcher;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::reports::{self, Report, ReportKey, Reports};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, the web page, the API description.
    Open,
    /// Anyone, or key holders when `read_auth` is set.
    Read,
    /// Key holders only.
    Write,
}

/// Queue names, as they appear in metrics and 503 messages.
pub(crate) const BLOCKING_QUEUE: &str = "blocking";
pub(crate) const CLASSIFY_QUEUE: &str = "classify";
pub(crate) const SEARCH_QUEUE: &str = "search";

/// The server's shared state. Build it once with [`AppState::new`] and hand the same
/// `web::Data` to every worker's `App`.
pub struct AppState {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    work: Arc<Semaphore>,
    classify: Batcher<ClassifyRequest, Classification, EngineError>,
    search: Batcher<Search, SearchResults, EngineError>,
    reports: Arc<Reports>,
}

impl AppState {
    /// Validates `config` and starts the batch workers.
    pub fn new(backend: Arc<dyn Backend>, config: ServerConfig) -> io::Result<web::Data<AppState>> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let metrics = Arc::new(Metrics::new().map_err(io::Error::other)?);
        let limits = ImageLimits {
            max_pixels: config.limits.max_pixels,
        };
        let classify = {
            let backend = backend.clone();
            let metrics = metrics.clone();
            Batcher::spawn(CLASSIFY_QUEUE, config.batch, move |requests| {
                metrics.observe_batch(CLASSIFY_QUEUE, requests.len());
                backend.classify_batch(requests, &limits)
            })?
        };
        let search = {
            let backend = backend.clone();
            let metrics = metrics.clone();
            Batcher::spawn(SEARCH_QUEUE, config.batch, move |searches| {
                metrics.observe_batch(SEARCH_QUEUE, searches.len());
                backend.search_batch(searches, &limits)
            })?
        };
        Ok(web::Data::new(AppState {
            backend,
            work: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            metrics,
            classify,
            search,
            reports: Arc::new(Reports::default()),
        }))
    }

    /// The state registered by `configure`; its absence is a wiring bug, not a client error.
    pub(crate) fn of(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
        req.app_data::<web::Data<AppState>>()
            .cloned()
            .ok_or_else(|| ApiError::internal("request setup", "AppState is not registered"))
    }

    pub(crate) fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.config.limits.max_pixels,
        }
    }

    /// Runs a blocking backend call on the blocking pool, holding one of `max_in_flight` slots
    /// (none free: 503 at once) and waiting at most `request_timeout` (504). A panic in the call
    /// becomes a 500.
    pub(crate) async fn blocking<T, E, F>(&self, what: &'static str, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Backend) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        let Ok(permit) = self.work.clone().try_acquire_owned() else {
            self.metrics.count_shed(BLOCKING_QUEUE);
            return Err(ApiError::overloaded("the backend work queue"));
        };
        let backend = self.backend.clone();
        // The slot travels with the call: a call that outlives its request's timeout still
        // occupies the backend, so it still counts against the queue.
        let task = web::block(move || {
            let _slot = permit;
            call(&*backend)
        });
        self.finish(what, task).await
    }

    /// Like [`AppState::blocking`] without taking a slot: for health checks and metrics, which
    /// must answer while the queue is full.
    pub(crate) async fn unqueued<T, E, F>(&self, what: &'static str, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Backend) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        let backend = self.backend.clone();
        self.finish(what, web::block(move || call(&*backend))).await
    }

    async fn finish<T, E: Into<ApiError>>(
        &self,
        what: &'static str,
        task: impl std::future::Future<Output = Result<Result<T, E>, actix_web::error::BlockingError>>,
    ) -> Result<T, ApiError> {
        match actix_web::rt::time::timeout(self.config.request_timeout, task).await {
            Err(_) => Err(ApiError::timeout(what, self.config.request_timeout)),
            Ok(Err(panicked)) => Err(ApiError::internal(what, panicked)),
            Ok(Ok(result)) => result.map_err(Into::into),
        }
    }

    /// A catalogue report (`kind` with `params`, canonical JSON of its options): the stored one
    /// when the catalogue has not changed since it was computed, else computed once however
    /// many requests ask at the same time (see [`crate::reports`]). The report is stored as
    /// the JSON it is served as.
    pub(crate) async fn report<T, F>(
        &self,
        kind: &'static str,
        params: String,
        compute: F,
    ) -> Result<Arc<Report>, ApiError>
    where
        F: FnOnce(&dyn Backend) -> trio_engine::Result<T> + Send + 'static,
        T: serde::Serialize + Send + 'static,
    {
        let Some(state) = self
            .blocking("reading the catalogue state", |backend| {
                backend.report_state()
            })
            .await?
        else {
            let report = self.blocking("computing a report", compute).await?;
            return reports::render(&report).map(reports::uncached);
        };
        let key = ReportKey {
            kind,
            params,
            state,
        };
        let rx = match self.reports.join(key)? {
            reports::Joined::Done(report) => return Ok(report),
            reports::Joined::Wait(rx) => rx,
            reports::Joined::Compute(job, rx) => {
                // Dropping `job` unfinished wakes any waiter with an error.
                let Ok(slot) = self.work.clone().try_acquire_owned() else {
                    self.metrics.count_shed(BLOCKING_QUEUE);
                    return Err(ApiError::overloaded("the backend work queue"));
                };
                reports::spawn(self.backend.clone(), slot, job, compute);
                rx
            }
        };
        match actix_web::rt::time::timeout(self.config.request_timeout, reports::wait(rx)).await {
            Err(_) => Err(ApiError::timeout(kind, self.config.request_timeout)),
            Ok(result) => result,
        }
    }

    pub(crate) async fn classify(
        &self,
        request: ClassifyRequest,
    ) -> Result<Classification, ApiError> {
        let call = self.classify.call(request);
        match actix_web::rt::time::timeout(self.config.request_timeout, call).await {
            Err(_) => Err(ApiError::timeout(
                "classification",
                self.config.request_timeout,
            )),
            Ok(result) => result.map_err(|e| self.batch_error(CLASSIFY_QUEUE, e)),
        }
    }

    pub(crate) async fn search(&self, search: Search) -> Result<SearchResults, ApiError> {
        let call = self.search.call(search);
        match actix_web::rt::time::timeout(self.config.request_timeout, call).await {
            Err(_) => Err(ApiError::timeout("search", self.config.request_timeout)),
            Ok(result) => result.map_err(|e| self.batch_error(SEARCH_QUEUE, e)),
        }
    }

    fn batch_error(&self, queue: &str, e: crate::batcher::BatchError<EngineError>) -> ApiError {
        if matches!(e, crate::batcher::BatchError::Overloaded { .. }) {
            self.metrics.count_shed(queue);
        }
        ApiError::from(e)
    }

    /// Brings the queue-depth gauges up to date (called when metrics are scraped).
    pub(crate) fn record_queue_depths(&self) {
        let busy = self
            .config
            .max_in_flight
            .saturating_sub(self.work.available_permits());
        self.metrics.set_queue_depth(BLOCKING_QUEUE, busy);
        self.metrics
            .set_queue_depth(CLASSIFY_QUEUE, self.classify.queued());
        self.metrics
            .set_queue_depth(SEARCH_QUEUE, self.search.queued());
    }

    /// Checks the `Authorization: Bearer` header against the route's access level.
    pub(crate) fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        let needs_key = match access {
            Access::Open => false,
            Access::Read => self.config.read_auth,
            Access::Write => true,
        };
        if !needs_key {
            return Ok(());
        }
        let Some(key) = &self.config.api_key else {
            return Err(ApiError::writes_disabled());
        };
        let token = headers
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                ApiError::unauthorized("this route needs an `Authorization: Bearer <key>` header")
            })?;
        if !key.matches(token) {
            return Err(ApiError::unauthorized("the API key is not valid"));
        }
        Ok(())
    }
}
