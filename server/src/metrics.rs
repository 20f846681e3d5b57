//! Prometheus metrics, in a registry per server (not the global one) so that servers built by
//! tests do not share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::api::Stats;
use crate::state::{BLOCKING_QUEUE, CLASSIFY_QUEUE, SEARCH_QUEUE};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    shed: IntCounterVec,
    items: IntGauge,
    index_size: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("trio_http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "trio_http_request_duration_seconds",
                "Time from request to response",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route", "status"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new("trio_batch_size", "Requests per batch sent to the backend")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["batcher"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "trio_queue_depth",
                "Requests waiting for (batchers) or holding (blocking pool) a backend slot",
            ),
            &["queue"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "trio_requests_shed_total",
                "Requests refused with 503 because a queue was full",
            ),
            &["queue"],
        )?;
        let items = IntGauge::new("trio_items", "Items in the catalogue")?;
        let index_size = IntGaugeVec::new(
            Opts::new("trio_index_size", "Vectors in each index"),
            &["space"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(items.clone()))?;
        registry.register(Box::new(index_size.clone()))?;
        // A labelled series appears only once touched; Prometheus expects the known ones at
        // zero from start-up, so that `rate()` and alerts see the first increase.
        for queue in [BLOCKING_QUEUE, CLASSIFY_QUEUE, SEARCH_QUEUE] {
            shed.with_label_values(&[queue]);
            queue_depth.with_label_values(&[queue]);
        }
        for batcher in [CLASSIFY_QUEUE, SEARCH_QUEUE] {
            batch_size.with_label_values(&[batcher]);
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch_size,
            queue_depth,
            shed,
            items,
            index_size,
        })
    }

    /// `route` is the matched pattern (`/v1/items/{id}`), never the raw path, so ids do not
    /// multiply the series.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    pub fn observe_batch(&self, batcher: &str, size: usize) {
        self.batch_size
            .with_label_values(&[batcher])
            .observe(size as f64);
    }

    pub fn set_queue_depth(&self, queue: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[queue])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn count_shed(&self, queue: &str) {
        self.shed.with_label_values(&[queue]).inc();
    }

    pub fn set_stats(&self, stats: &Stats) {
        self.items
            .set(i64::try_from(stats.items).unwrap_or(i64::MAX));
        for (space, size) in &stats.indexes {
            self.index_size
                .with_label_values(&[space.as_str()])
                .set(i64::try_from(*size).unwrap_or(i64::MAX));
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> prometheus::Result<String> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_series_are_exported_at_zero_from_start_up() {
        let text = Metrics::new().unwrap().render().unwrap();
        for queue in [BLOCKING_QUEUE, CLASSIFY_QUEUE, SEARCH_QUEUE] {
            let shed = format!("trio_requests_shed_total{{queue=\"{queue}\"}} 0");
            assert!(text.contains(&shed), "{shed} missing from:\n{text}");
            let depth = format!("trio_queue_depth{{queue=\"{queue}\"}} 0");
            assert!(text.contains(&depth), "{depth} missing from:\n{text}");
        }
        for batcher in [CLASSIFY_QUEUE, SEARCH_QUEUE] {
            let count = format!("trio_batch_size_count{{batcher=\"{batcher}\"}} 0");
            assert!(text.contains(&count), "{count} missing from:\n{text}");
        }
    }
}
