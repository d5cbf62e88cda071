//! Horizontal autoscaling settings.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// HorizontalPodAutoscaler settings; when enabled the HPA owns the replica count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    #[serde(default = "crate::crd::default_true")]
    pub enabled: bool,
    #[serde(default = "default_min")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Target average CPU utilisation (% of requests).
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Target average memory utilisation (% of requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// Target queries per second per pod (needs a custom-metrics adapter serving
    /// `kb_worker_http_requests_per_second`, served by prometheus-adapter with the rules in
    /// charts/knowledgebase-operator/extras/prometheus-adapter-values.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_qps_per_pod: Option<i32>,
    /// Target query texts waiting for the embedding batcher per pod: a signal of query
    /// load that CPU utilisation misses (served by prometheus-adapter as
    /// `kb_worker_interactive_queue_depth` from the workers' `kb_worker_embed_queue_depth`
    /// of the interactive lane only, so a bulk ingest does not scale the fleet out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_embed_queue_depth_per_pod: Option<i32>,
    /// Scale-up and scale-down policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,
}

fn default_min() -> i32 {
    1
}

/// Scale-up and scale-down rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// One direction of scaling: a stabilisation window and per-minute limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// At most this many pods added/removed per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pods_per_minute: Option<i32>,
    /// At most this percentage of pods added/removed per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_percent_per_minute: Option<i32>,
}
