//! The workers' PodDisruptionBudget (only when more than one replica can run).

use super::names::{Component, Names};
use super::Child;
use crate::crd::KnowledgeBaseSpec;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub(super) fn build(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Child> {
    if !spec.may_run_several() {
        return None;
    }
    Some(Child::PodDisruptionBudget(PodDisruptionBudget {
        metadata: names.meta(names.worker(), Component::Worker),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector(Component::Worker)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }))
}
