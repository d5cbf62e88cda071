//! Prometheus Operator objects for the workers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A `ServiceMonitor` and a `PrometheusRule` for the workers (needs the
/// `monitoring.coreos.com` CRDs of the Prometheus Operator in the cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Render the ServiceMonitor and the PrometheusRule.
    #[serde(default = "crate::crd::default_true")]
    pub enabled: bool,
    /// Labels on both objects, for the Prometheus `serviceMonitorSelector` and
    /// `ruleSelector` (for example `release: kube-prometheus-stack`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval of the workers' metrics port.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// p99 query latency above which `KnowledgeBaseQueryLatencyHigh` fires.
    #[serde(default = "default_slo")]
    #[schemars(range(min = 0.001, max = 600.0))]
    pub query_latency_slo_seconds: f64,
    /// Age of the last successful backup above which `KnowledgeBaseBackupTooOld` fires.
    #[serde(default = "default_backup_age")]
    #[schemars(range(min = 1, max = 8760))]
    pub backup_max_age_hours: i32,
}

fn default_interval() -> String {
    "30s".to_string()
}

fn default_slo() -> f64 {
    1.0
}

fn default_backup_age() -> i32 {
    26
}
