//! Where worker pods run: resources, GPUs, node selection, spreading.

use super::names::{Component, Names};
use crate::crd::{Device, KnowledgeBaseSpec};
use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, PodSpec, ResourceRequirements, Toleration,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Container resources: the spec's, plus `<gpu.resourceName>: gpusPerReplica` as a limit on
/// CUDA (extended resources must be limits; requests default to them).
/// Requests of a worker that the spec sets neither a request nor a limit for: the HPA's
/// CPU and memory targets are percentages of requests, and the scheduler needs them to
/// place a worker that embeds on CPU (one core, the model and an index in memory).
pub const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "1"), ("memory", "2Gi")];

pub(super) fn resources(spec: &KnowledgeBaseSpec) -> Option<ResourceRequirements> {
    let gpus = spec.embedding.gpus();
    let mut resources = spec.resources.clone().unwrap_or_default();
    for (name, quantity) in DEFAULT_REQUESTS {
        let limited = resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key(name));
        let requests = resources.requests.get_or_insert_with(Default::default);
        if !limited && !requests.contains_key(name) {
            requests.insert(name.to_string(), Quantity(quantity.to_string()));
        }
    }
    if gpus == 0 {
        return Some(resources);
    }
    resources
        .limits
        .get_or_insert_with(Default::default)
        .insert(spec.gpu.resource_name.clone(), Quantity(gpus.to_string()));
    Some(resources)
}

/// Node selection, tolerations, runtime class, affinity and topology spread of the pod.
pub(super) fn apply(spec: &KnowledgeBaseSpec, names: &Names, pod: &mut PodSpec) {
    let cuda = spec.embedding.device == Device::Cuda;
    let mut node_selector = spec.node_selector.clone();
    let mut tolerations = spec.tolerations.clone();
    if cuda {
        node_selector.extend(spec.gpu.node_selector.clone());
        tolerations.extend(gpu_tolerations(spec));
        pod.runtime_class_name = spec.gpu.runtime_class_name.clone();
    }
    pod.node_selector = (!node_selector.is_empty()).then_some(node_selector);
    pod.tolerations = (!tolerations.is_empty()).then_some(tolerations);
    pod.affinity = Some(affinity(spec, names, cuda));
    pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: ZONE.to_string(),
        when_unsatisfiable: "ScheduleAnyway".to_string(),
        label_selector: Some(worker_selector(names)),
        ..TopologySpreadConstraint::default()
    }]);
}

/// The spec's GPU tolerations, or one for the `<resourceName>` taint GPU nodes usually carry.
fn gpu_tolerations(spec: &KnowledgeBaseSpec) -> Vec<Toleration> {
    if !spec.gpu.tolerations.is_empty() {
        return spec.gpu.tolerations.clone();
    }
    vec![Toleration {
        key: Some(spec.gpu.resource_name.clone()),
        operator: Some("Exists".to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Toleration::default()
    }]
}

/// The spec's affinity, else replicas spread across nodes; GPU node affinity is added when
/// the spec's affinity has none.
fn affinity(spec: &KnowledgeBaseSpec, names: &Names, cuda: bool) -> Affinity {
    let mut affinity = spec.affinity.clone().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(spread_across_nodes(names)),
        ..Affinity::default()
    });
    if cuda && affinity.node_affinity.is_none() {
        affinity.node_affinity = spec.gpu.node_affinity.clone();
    }
    affinity
}

fn spread_across_nodes(names: &Names) -> PodAntiAffinity {
    PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                topology_key: HOSTNAME.to_string(),
                label_selector: Some(worker_selector(names)),
                ..PodAffinityTerm::default()
            },
        }]),
        ..PodAntiAffinity::default()
    }
}

fn worker_selector(names: &Names) -> LabelSelector {
    LabelSelector {
        match_labels: Some(names.selector(Component::Worker)),
        ..LabelSelector::default()
    }
}
