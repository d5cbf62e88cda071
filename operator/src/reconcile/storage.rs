//! Data volumes grow in place.
//!
//! A StatefulSet's `volumeClaimTemplates` (like its selector and service name) cannot be
//! updated: the API server refuses the whole apply, so every later change to the
//! KnowledgeBase would fail too. Before the plan is applied, each StatefulSet of the plan
//! that exists is compared with the live one on those frozen fields. When they differ:
//!
//! 1. every existing claim of the StatefulSet (`<template>-<statefulset>-<ordinal>`,
//!    scaled-down ordinals included) that is smaller than the new size is expanded (a
//!    patch of its storage request; the StorageClass must allow volume expansion);
//! 2. once every claim asks for the new size, the StatefulSet is deleted with
//!    `propagationPolicy: Orphan`, so its pods and their volumes stay and keep serving,
//!    and the next pass creates it again from the plan, adopting the same pods (the
//!    pattern other stateful operators use, since Kubernetes cannot do it in place).
//!
//! A change that cannot be made (the class refuses expansion, a claim would shrink or
//! change class) is reported as a refusal; the plan then keeps the live frozen fields, so
//! the rest of the KnowledgeBase (image, configuration, replicas) is still applied.

use super::apply::is_subset;
use super::build::{Child, Plan};
use crate::quantity::{self, Quantity};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

/// StatefulSet spec fields the API server never updates.
const FROZEN: &[&str] = &[
    "volumeClaimTemplates",
    "selector",
    "serviceName",
    "podManagementPolicy",
];

/// Why a volume change was not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `StorageExpansionRefused`, `StorageShrinkRefused` or `StorageClassChangeRefused`.
    pub reason: &'static str,
    pub message: String,
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volumes {
    /// Claims whose storage request was raised in this pass.
    pub expanded: Vec<String>,
    /// StatefulSets deleted (orphaning their pods) to be created again with new templates;
    /// they were left out of the plan of this pass.
    pub replacing: Vec<String>,
    /// The first change that could not be made.
    pub refusal: Option<Refusal>,
}

/// Makes the StatefulSets of `plan` appliable: expands claims and replaces StatefulSets
/// whose frozen fields changed, or keeps the live frozen fields when it cannot.
pub async fn prepare(client: &Client, namespace: &str, plan: &mut Plan) -> Result<Volumes> {
    let mut volumes = Volumes::default();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut keep = Vec::new();
    for (index, child) in plan.children.iter_mut().enumerate() {
        let Child::StatefulSet(desired) = child else {
            continue;
        };
        let name = desired.name_any();
        let Some(live) = statefulsets.get_opt(&name).await.map_err(read(&name))? else {
            keep.push(index);
            continue;
        };
        if live.metadata.deletion_timestamp.is_some() {
            // Deleted (orphaning) by an earlier pass; created again once it is gone.
            volumes.replacing.push(name);
            continue;
        }
        keep.push(index);
        let wanted = Child::StatefulSet(desired.clone()).to_json();
        let live_json = serde_json::to_value(&live).map_err(|e| Error::Read {
            what: name.clone(),
            source: Box::new(kube::Error::SerdeError(e)),
        })?;
        if frozen_fields_match(&wanted, &live_json) {
            continue;
        }
        match grow_claims(&claims, &name, &wanted, &mut volumes.expanded).await? {
            None => {
                let orphan = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Orphan),
                    ..DeleteParams::default()
                };
                statefulsets
                    .delete(&name, &orphan)
                    .await
                    .map_err(|source| Error::Delete {
                        kind: super::build::ChildKind::StatefulSet,
                        name: name.clone(),
                        source: Box::new(source),
                    })?;
                tracing::info!(statefulset = %name, "claim templates changed: StatefulSet deleted with its pods orphaned, to be created again");
                keep.pop();
                volumes.replacing.push(name);
            }
            Some(refusal) => {
                keep_live_frozen_fields(desired, &live);
                volumes.refusal.get_or_insert(refusal);
            }
        }
    }
    let mut index = 0;
    plan.children.retain(|child| {
        let kept = !matches!(child, Child::StatefulSet(_)) || keep.contains(&index);
        index += 1;
        kept
    });
    Ok(volumes)
}

fn read(name: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Read {
        what: format!("StatefulSet {name}"),
        source: Box::new(source),
    }
}

/// Whether the live StatefulSet holds every frozen field as the plan has it (the server
/// adds defaults, such as `volumeMode`, inside them).
fn frozen_fields_match(wanted: &Value, live: &Value) -> bool {
    FROZEN.iter().all(
        |field| match (wanted["spec"].get(*field), live["spec"].get(*field)) {
            (None, _) => true,
            (Some(w), Some(l)) => is_subset(w, l),
            (Some(_), None) => false,
        },
    )
}

/// Raises every claim of `statefulset` that is smaller than its template asks. `None`
/// when every claim now asks for the template's size; a refusal otherwise.
async fn grow_claims(
    claims: &Api<PersistentVolumeClaim>,
    statefulset: &str,
    wanted: &Value,
    expanded: &mut Vec<String>,
) -> Result<Option<Refusal>> {
    let existing = claims
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: "PersistentVolumeClaims".into(),
            source: Box::new(source),
        })?;
    let templates = wanted["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for template in &templates {
        let template_name = template["metadata"]["name"].as_str().unwrap_or_default();
        let size = template["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap_or_default();
        let class = template["spec"]["storageClassName"].as_str();
        let prefix = format!("{template_name}-{statefulset}-");
        let of_this_set = existing.items.iter().filter(|claim| {
            claim
                .name_any()
                .strip_prefix(&prefix)
                .is_some_and(|ordinal| ordinal.parse::<u32>().is_ok())
        });
        for claim in of_this_set {
            let name = claim.name_any();
            let spec = claim.spec.clone().unwrap_or_default();
            let current = spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone()))
                .unwrap_or_default();
            if let (Some(class), Some(has)) = (class, spec.storage_class_name.as_deref()) {
                if class != has {
                    return Ok(Some(Refusal {
                        reason: "StorageClassChangeRefused",
                        message: format!(
                            "claim {name} has StorageClass {has}; the spec asks for {class}: a \
                             volume cannot change class (set it back, or restore a backup into \
                             a new KnowledgeBase)"
                        ),
                    }));
                }
            }
            let (Some(want), Some(has)) = (Quantity::parse(size), Quantity::parse(&current)) else {
                continue;
            };
            if want < has {
                return Ok(Some(Refusal {
                    reason: "StorageShrinkRefused",
                    message: format!(
                        "claim {name} has {current}; the spec asks for {size}: volumes cannot \
                         shrink (set the size back to at least {current})"
                    ),
                }));
            }
            if want > has {
                let patch = serde_json::json!({"spec": {"resources": {"requests": {
                    "storage": quantity::canonical(size)
                }}}});
                if let Err(error) = claims
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    let detail = match &error {
                        kube::Error::Api(status) => status.message.clone(),
                        other => other.to_string(),
                    };
                    return Ok(Some(Refusal {
                        reason: "StorageExpansionRefused",
                        message: format!(
                            "claim {name} could not grow from {current} to {size}: {detail} \
                             (the StorageClass needs allowVolumeExpansion: true)"
                        ),
                    }));
                }
                tracing::info!(claim = %name, from = %current, to = %size, "volume expansion requested");
                expanded.push(name);
            }
        }
    }
    Ok(None)
}

/// Sends the live StatefulSet's frozen fields instead of the plan's, so the rest applies.
fn keep_live_frozen_fields(desired: &mut StatefulSet, live: &StatefulSet) {
    let (Some(spec), Some(live_spec)) = (desired.spec.as_mut(), live.spec.as_ref()) else {
        return;
    };
    spec.volume_claim_templates = live_spec.volume_claim_templates.clone().map(|templates| {
        templates
            .into_iter()
            .map(|mut t| {
                t.status = None;
                t.metadata.creation_timestamp = None;
                t
            })
            .collect()
    });
    spec.selector = live_spec.selector.clone();
    spec.service_name = live_spec.service_name.clone();
    spec.pod_management_policy = live_spec.pod_management_policy.clone();
}
