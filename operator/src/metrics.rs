//! Prometheus metrics of the controller.

use crate::Error;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KnowledgeBaseLabels {
    namespace: String,
    knowledgebase: String,
}

/// Reconcile counters and the duration histogram.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    last_backup: Family<KnowledgeBaseLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let last_backup = Family::<KnowledgeBaseLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("kb_operator");
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "last_backup_timestamp_seconds",
            "Completion time (Unix seconds) of the last successful backup of a KnowledgeBase",
            last_backup.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            last_backup,
        }
    }
}

impl Metrics {
    /// Counts a reconcile; its duration is recorded when the returned timer drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label(),
            })
            .inc();
    }

    /// Records the last successful backup of a KnowledgeBase (from its status).
    pub fn last_backup(&self, namespace: &str, name: &str, unix_seconds: i64) {
        self.last_backup
            .get_or_create(&KnowledgeBaseLabels {
                namespace: namespace.to_string(),
                knowledgebase: name.to_string(),
            })
            .set(unix_seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Records the duration of one reconcile on drop.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_label() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed(&Error::MissingField("metadata.namespace"));
        let text = metrics.encode();
        assert!(text.contains("kb_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("kb_operator_reconcile_errors_total{error=\"missing_field\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kb_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
