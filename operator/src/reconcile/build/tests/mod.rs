//! Unit tests of `plan`: every spec option reaches the children.

mod access;
mod features;
mod workload;

use super::fixtures::{self, kb};
use super::*;
use crate::crd::{Device, ReclaimPolicy};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kb_config::WorkerConfig;

fn plan_for(kb: &KnowledgeBase) -> Plan {
    plan(kb, &fixtures::inputs(kb))
}

fn statefulset<'a>(plan: &'a Plan, name: &str) -> &'a StatefulSet {
    match plan.get(ChildKind::StatefulSet, name) {
        Some(Child::StatefulSet(s)) => s,
        other => panic!("no StatefulSet {name}: {other:?}"),
    }
}

fn worker_pod(plan: &Plan) -> &PodSpec {
    let sts = statefulset(plan, "docs-worker");
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn worker_container(plan: &Plan) -> &Container {
    &worker_pod(plan).containers[0]
}

fn config(plan: &Plan) -> WorkerConfig {
    match plan.get(ChildKind::ConfigMap, "docs-worker") {
        Some(Child::ConfigMap(cm)) => {
            WorkerConfig::from_yaml(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap()
        }
        other => panic!("no worker ConfigMap: {other:?}"),
    }
}

fn json(plan: &Plan, kind: ChildKind, name: &str) -> serde_json::Value {
    plan.get(kind, name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}"))
        .to_json()
}

fn pruned(plan: &Plan, kind: ChildKind, name: &str) -> bool {
    plan.prune.contains(&ChildRef {
        kind,
        name: name.into(),
    })
}

#[test]
fn minimal_cpu_plans_core_children_and_prunes_optional_ones() {
    let plan = plan_for(&kb("docs"));
    let mut names: Vec<_> = plan
        .children
        .iter()
        .map(|c| c.reference())
        .map(|r| format!("{:?}/{}", r.kind, r.name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ConfigMap/docs-worker",
            "NetworkPolicy/docs-default-deny",
            "NetworkPolicy/docs-worker",
            "Secret/docs-api-keys",
            "Service/docs",
            "Service/docs-headless",
            "ServiceAccount/docs-worker",
            "StatefulSet/docs-worker",
        ]
    );
    for (kind, name) in [
        (ChildKind::PodDisruptionBudget, "docs-worker"),
        (ChildKind::HorizontalPodAutoscaler, "docs-worker"),
        (ChildKind::CronJob, "docs-backup"),
        (ChildKind::StatefulSet, "docs-redis"),
        (ChildKind::Secret, "docs-redis"),
        (ChildKind::NetworkPolicy, "docs-redis"),
        (ChildKind::NetworkPolicy, "docs-backup"),
    ] {
        assert!(
            pruned(&plan, kind, name),
            "{kind:?} {name} should be pruned"
        );
    }
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::managed_redis());
    kb.spec.autoscaling = Some(fixtures::autoscaling(2, 8));
    kb.spec.backup = Some(fixtures::s3_backup());
    for child in plan_for(&kb).children {
        let value = child.to_json();
        let meta = &value["metadata"];
        assert_eq!(meta["namespace"], "default", "{value}");
        assert_eq!(meta["ownerReferences"][0]["uid"], "uid-docs", "{value}");
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "kb-operator"
        );
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "docs");
    }
}

#[test]
fn paused_plan_touches_nothing() {
    let mut kb = kb("docs");
    kb.spec.paused = true;
    assert_eq!(plan_for(&kb), Plan::default());
}
