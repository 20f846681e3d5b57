//! The seam between the HTTP service and the engine. The engine's facade implements
//! [`Backend`]; tests implement it with an in-memory fake.
//!
//! Every method is blocking: the server calls them from a blocking thread pool (or from a
//! batcher's worker thread), never on the async executor, so an implementation may run model
//! inference or index searches inline. The backend is shared as `Arc<dyn Backend>` by every
//! request at once: methods take `&self` and must do their own fine-grained synchronisation.

use trio_engine::catalog::{DuplicatesOutcome, NoiseOutcome};
use trio_engine::Result;

use crate::api::{
    Classification, ClassifyRequest, DuplicatesQuery, ItemImage, ItemView, JobStatus, ModelInfo,
    NewItem, NoiseQuery, Page, Search, SearchResults, Stats, TrainRequest,
};
use crate::error::ApiError;

/// Limits the server passes with every image so the decoder can refuse a decompression bomb
/// from its header, before allocating the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width * height` accepted; more is [`trio_engine::Error::TooLarge`].
    pub max_pixels: u64,
}

/// The catalogue state a report describes: it is stale once either part moves on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportState {
    /// The store's write generation: grows with every change to items or their vectors.
    pub generation: u64,
    /// The active model version, if any.
    pub model: Option<String>,
}

/// What the HTTP service needs from the engine.
///
/// Errors are [`trio_engine::Error`]; the server maps each variant to a status code in one place
/// (`server/src/error.rs`). The `-- service --` variants are the ones a backend returns for
/// conditions a client can act on: `NotFound`, `Conflict`, `UnknownLabel`, `TooLarge`,
/// `NotAnImage`, and `InvalidArgument` for bad input. Conditions of the service rather than of
/// the engine are the server's own [`ApiError`]s: readiness here, overload from the server's
/// queues.
pub trait Backend: Send + Sync + 'static {
    /// [`ApiError::not_ready`] while models or indexes are still loading; `/healthz` reports it
    /// as 503.
    fn ready(&self) -> std::result::Result<(), ApiError> {
        Ok(())
    }

    /// Stores a new item, embeds it and adds it to the indexes. An image that does not decode is
    /// `NotAnImage`; an existing `id` is `Conflict`.
    fn add_item(&self, item: NewItem, limits: &ImageLimits) -> Result<ItemView>;

    fn get_item(&self, id: &str) -> Result<ItemView>;

    /// The item's stored image file. `NotFound` when the item or its image does not exist.
    fn item_image(&self, id: &str) -> Result<ItemImage>;

    fn list_items(&self, offset: usize, limit: usize) -> Result<Page<ItemView>>;

    /// Removes the item from the store and the indexes. Of several concurrent deletes of one id,
    /// exactly one succeeds and the others get `NotFound`.
    fn delete_item(&self, id: &str) -> Result<()>;

    fn classify(&self, request: ClassifyRequest, limits: &ImageLimits) -> Result<Classification>;

    /// Classifies requests gathered by the server's batcher from concurrent clients. Override it
    /// to run the towers once over the whole batch; the outer `Err` fails every request, an inner
    /// one only its own. The answer must hold one result per request, in order.
    fn classify_batch(
        &self,
        requests: Vec<ClassifyRequest>,
        limits: &ImageLimits,
    ) -> Result<Vec<Result<Classification>>> {
        Ok(requests
            .into_iter()
            .map(|request| self.classify(request, limits))
            .collect())
    }

    fn search(&self, search: Search, limits: &ImageLimits) -> Result<SearchResults>;

    /// Searches gathered by the batcher; same contract as [`Backend::classify_batch`].
    fn search_batch(
        &self,
        searches: Vec<Search>,
        limits: &ImageLimits,
    ) -> Result<Vec<Result<SearchResults>>> {
        Ok(searches
            .into_iter()
            .map(|search| self.search(search, limits))
            .collect())
    }

    /// The state [`Backend::duplicates`] and [`Backend::noise`] read, so the server can serve a
    /// stored report until it changes. `None` (the default) means the backend cannot tell, and
    /// every request computes its report.
    fn report_state(&self) -> Result<Option<ReportState>> {
        Ok(None)
    }

    /// Near-duplicate groups: the engine's report, which the route serves as JSON with its
    /// freshness. `space` absent is the image space, as for `trio duplicates`. Groups whose
    /// members were dismissed with [`Backend::dismiss_duplicates`] are not reported.
    fn duplicates(&self, query: DuplicatesQuery) -> Result<DuplicatesOutcome>;

    /// Items whose stored label the model doubts, every flagged one when `limit` is absent: the
    /// engine's report, served like [`Backend::duplicates`]. Labels confirmed with
    /// [`Backend::keep_label`] are not reported.
    fn noise(&self, query: NoiseQuery) -> Result<NoiseOutcome>;

    /// Sets an item's label. With `if_label`, `Conflict` unless the item's label is that one;
    /// `NotFound` for an unknown item. Reports change with it (a new catalogue state).
    fn set_label(&self, id: &str, label: &str, if_label: Option<&str>) -> Result<ItemView>;

    /// Records that the item's current label is right (`if_label` as for
    /// [`Backend::set_label`]); `InvalidArgument` when it has none.
    fn keep_label(&self, id: &str, if_label: Option<&str>) -> Result<ItemView>;

    /// Records that no two of these items are duplicates. `NotFound` for an unknown item.
    fn dismiss_duplicates(&self, members: &[String]) -> Result<()>;

    /// Starts training on the backend's own thread and returns at once with the job's id.
    /// `Conflict` when a training job is already running.
    fn start_train(&self, request: TrainRequest) -> Result<String>;

    fn job(&self, id: &str) -> Result<JobStatus>;

    fn models(&self) -> Result<Vec<ModelInfo>>;

    /// Makes a trained model version the one that classifies and embeds. `NotFound` for an
    /// unknown version.
    fn activate_model(&self, version: &str) -> Result<ModelInfo>;

    fn stats(&self) -> Result<Stats>;

    /// Called once after the server stopped serving: flush, stop background jobs.
    fn shutdown(&self) {}
}
