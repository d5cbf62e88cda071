//! The workers' HorizontalPodAutoscaler (autoscaling/v2).

use super::names::{Component, Names};
use super::Child;
use crate::crd::{Autoscaling, KnowledgeBaseSpec, ScalingRules};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Per-pod request rate, served to the HPA by prometheus-adapter from the workers'
/// `kb_worker_http_requests_total` (rules: charts/knowledgebase-operator/extras/
/// prometheus-adapter-values.yaml).
pub const QPS_METRIC: &str = "kb_worker_http_requests_per_second";
/// Query texts waiting for the embedding batcher (the interactive lane), per pod (same
/// adapter rules): ingestion's bulk lane does not count, so a bulk ingest does not scale
/// the fleet out.
pub const QUEUE_METRIC: &str = "kb_worker_interactive_queue_depth";
/// CPU target when the spec sets no metric at all.
const DEFAULT_CPU_TARGET: i32 = 70;

pub(super) fn build(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Child> {
    let scaling = spec.autoscaling.as_ref().filter(|a| a.enabled)?;
    Some(Child::HorizontalPodAutoscaler(HorizontalPodAutoscaler {
        metadata: names.meta(names.worker(), Component::Worker),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "StatefulSet".to_string(),
                name: names.worker(),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(metrics(scaling)),
            behavior: scaling
                .behavior
                .as_ref()
                .map(|b| HorizontalPodAutoscalerBehavior {
                    scale_up: b.scale_up.as_ref().map(rules),
                    scale_down: b.scale_down.as_ref().map(rules),
                }),
        }),
        ..HorizontalPodAutoscaler::default()
    }))
}

fn metrics(scaling: &Autoscaling) -> Vec<MetricSpec> {
    let mut metrics = Vec::new();
    let cpu = match (
        scaling.target_cpu_utilization_percentage,
        scaling.target_memory_utilization_percentage,
        scaling.target_qps_per_pod,
        scaling.target_embed_queue_depth_per_pod,
    ) {
        (None, None, None, None) => Some(DEFAULT_CPU_TARGET),
        (cpu, ..) => cpu,
    };
    if let Some(cpu) = cpu {
        metrics.push(resource_metric("cpu", cpu));
    }
    if let Some(memory) = scaling.target_memory_utilization_percentage {
        metrics.push(resource_metric("memory", memory));
    }
    if let Some(qps) = scaling.target_qps_per_pod {
        metrics.push(pods_metric(QPS_METRIC, qps));
    }
    if let Some(depth) = scaling.target_embed_queue_depth_per_pod {
        metrics.push(pods_metric(QUEUE_METRIC, depth));
    }
    metrics
}

/// A per-pod custom metric with an average target.
fn pods_metric(name: &str, average: i32) -> MetricSpec {
    MetricSpec {
        type_: "Pods".to_string(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: name.to_string(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".to_string(),
                average_value: Some(Quantity(average.to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

fn resource_metric(name: &str, utilization: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".to_string(),
        resource: Some(ResourceMetricSource {
            name: name.to_string(),
            target: MetricTarget {
                type_: "Utilization".to_string(),
                average_utilization: Some(utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

fn rules(rules: &ScalingRules) -> HPAScalingRules {
    let mut policies = Vec::new();
    if let Some(pods) = rules.max_pods_per_minute {
        policies.push(policy("Pods", pods));
    }
    if let Some(percent) = rules.max_percent_per_minute {
        policies.push(policy("Percent", percent));
    }
    HPAScalingRules {
        stabilization_window_seconds: rules.stabilization_window_seconds,
        select_policy: (!policies.is_empty()).then(|| "Max".to_string()),
        policies: (!policies.is_empty()).then_some(policies),
        ..HPAScalingRules::default()
    }
}

fn policy(type_: &str, value: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.to_string(),
        value,
        period_seconds: 60,
    }
}
