//! Catalogue reports (near-duplicates, label noise) as cached jobs.
//!
//! A report reads the whole catalogue, seconds of work on a few hundred items, and its answer
//! changes only when the catalogue or the active model does. So each report is computed once
//! per (report, parameters, store generation, model version): concurrent identical requests wait
//! for the same computation, later ones get the stored result with its age, and a write or a
//! model change makes the next request compute afresh. The computation runs on the blocking pool
//! holding a work-queue slot; it finishes and is stored even when the request that started it
//! timed out or went away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::backend::{Backend, ReportState};
use crate::error::ApiError;

/// Reports kept at once; the oldest is dropped beyond this (parameters vary per client).
const MAX_ENTRIES: usize = 64;

/// Which report, its parameters (canonical JSON) and the catalogue state it describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReportKey {
    pub kind: &'static str,
    pub params: String,
    pub state: ReportState,
}

/// A finished report.
#[derive(Debug)]
pub(crate) struct Report {
    pub value: Value,
    pub state: Option<ReportState>,
    pub computed_at: SystemTime,
    computed: Instant,
}

impl Report {
    fn new(value: Value, state: Option<ReportState>) -> Self {
        Report {
            value,
            state,
            computed_at: SystemTime::now(),
            computed: Instant::now(),
        }
    }

    /// Seconds since the report was computed.
    pub fn age_s(&self) -> f64 {
        self.computed.elapsed().as_secs_f64()
    }

    /// The report's JSON with what says how fresh it is: `generation` and `model_version` (the
    /// catalogue state it was computed at), `computed_at` (RFC 3339, UTC) and `age_s`.
    pub fn to_json(&self) -> Value {
        let mut value = self.value.clone();
        if let Value::Object(map) = &mut value {
            map.insert(
                "generation".into(),
                self.state.as_ref().map(|s| s.generation).into(),
            );
            map.insert(
                "model_version".into(),
                self.state.as_ref().and_then(|s| s.model.clone()).into(),
            );
            map.insert("computed_at".into(), rfc3339(self.computed_at).into());
            map.insert("age_s".into(), self.age_s().into());
        }
        value
    }
}

type Outcome = Option<Result<Arc<Report>, ApiError>>;

enum Entry {
    Running(watch::Receiver<Outcome>),
    Done(Arc<Report>),
}

/// The cache of reports, shared by every worker.
#[derive(Default)]
pub(crate) struct Reports {
    entries: Mutex<HashMap<ReportKey, Entry>>,
}

/// What [`Reports::join`] found for a key.
pub(crate) enum Joined {
    Done(Arc<Report>),
    /// Wait on this for the result.
    Wait(watch::Receiver<Outcome>),
    /// Nobody computes it yet: the caller must, reporting through [`Computation`].
    Compute(Computation, watch::Receiver<Outcome>),
}

impl Reports {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<ReportKey, Entry>>, ApiError> {
        self.entries
            .lock()
            .map_err(|_| ApiError::internal("the report cache", "lock poisoned"))
    }

    /// The stored report for `key`, the computation in progress, or the duty to compute it.
    pub fn join(self: &Arc<Self>, key: ReportKey) -> Result<Joined, ApiError> {
        let mut entries = self.lock()?;
        match entries.get(&key) {
            Some(Entry::Done(report)) => return Ok(Joined::Done(report.clone())),
            Some(Entry::Running(rx)) => return Ok(Joined::Wait(rx.clone())),
            None => {}
        }
        // Reports of an older catalogue state are never served again.
        entries.retain(|k, _| k.state == key.state);
        if entries.len() >= MAX_ENTRIES {
            let oldest = entries
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Done(r) => Some((k, r.computed)),
                    Entry::Running(_) => None,
                })
                .min_by_key(|(_, at)| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        let (tx, rx) = watch::channel(None);
        entries.insert(key.clone(), Entry::Running(rx.clone()));
        Ok(Joined::Compute(
            Computation {
                reports: self.clone(),
                key,
                tx,
                finished: false,
            },
            rx,
        ))
    }
}

/// The duty to compute one report. Dropped unfinished (the computation panicked, or never ran),
/// it removes its entry and wakes the waiters with an error, so the next request tries again.
pub(crate) struct Computation {
    reports: Arc<Reports>,
    key: ReportKey,
    tx: watch::Sender<Outcome>,
    finished: bool,
}

impl Computation {
    pub fn finish(mut self, result: Result<Value, ApiError>) {
        self.finished = true;
        let outcome =
            result.map(|value| Arc::new(Report::new(value, Some(self.key.state.clone()))));
        if let Ok(mut entries) = self.reports.entries.lock() {
            match &outcome {
                Ok(report) => {
                    entries.insert(self.key.clone(), Entry::Done(report.clone()));
                }
                // Errors are not cached: the next request computes again.
                Err(_) => {
                    entries.remove(&self.key);
                }
            }
        }
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Computation {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(mut entries) = self.reports.entries.lock() {
            entries.remove(&self.key);
        }
        self.tx.send_replace(Some(Err(ApiError::internal(
            "computing a report",
            "the computation stopped before it finished",
        ))));
    }
}

/// Waits for a computation's result.
pub(crate) async fn wait(mut rx: watch::Receiver<Outcome>) -> Result<Arc<Report>, ApiError> {
    let outcome = rx
        .wait_for(Option::is_some)
        .await
        .map_err(|e| ApiError::internal("waiting for a report", e))?;
    match &*outcome {
        Some(result) => result.clone(),
        None => Err(ApiError::internal("waiting for a report", "no result")),
    }
}

/// Runs `compute` on the blocking pool without waiting for it: the result goes to `job`, so it
/// is stored whether or not anyone still waits.
pub(crate) fn spawn<T, F>(
    backend: Arc<dyn Backend>,
    slot: tokio::sync::OwnedSemaphorePermit,
    job: Computation,
    compute: F,
) where
    F: FnOnce(&dyn Backend) -> trio_engine::Result<T> + Send + 'static,
    T: Serialize,
{
    drop(actix_web::rt::task::spawn_blocking(move || {
        let _slot = slot;
        let result = compute(&*backend)
            .map_err(ApiError::from)
            .and_then(|report| render(&report));
        job.finish(result);
    }));
}

/// A backend's report as the JSON object the routes serve.
pub(crate) fn render(report: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(report).map_err(|e| ApiError::internal("encoding a report", e))
}

/// A report computed without a cache, for backends that cannot say what state it describes.
pub(crate) fn uncached(value: Value) -> Arc<Report> {
    Arc::new(Report::new(value, None))
}

/// `t` as RFC 3339 in UTC, to the second, e.g. `2025-01-31T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951825600 +%FT%TZ` (a leap day) and `date -u -d @1767225599 +%FT%TZ`.
        assert_eq!(at(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(at(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
