//! Server-side apply of a plan with one field manager, and deletion of the children of
//! disabled features.
//!
//! Every apply sends the whole desired object, so a field removed from the spec (a node
//! selector, a toleration, an annotation) is removed from the child by the API server:
//! server-side apply drops fields the manager owned and no longer sends. A write is
//! skipped only when the child carries the hash of exactly this desired object
//! (annotation [`DESIRED_HASH`]) and still holds every desired field with its value, so
//! removals (the hash changes) and edits by others (the values differ) are written.
//!
//! An existing object with a child's name that this operator did not create (no
//! `managed-by` / `instance` labels of this KnowledgeBase) is never adopted: that child is
//! reported as refused, and the others are still applied. The one exception are the
//! generated Secrets (API keys, managed-Redis password): their existing data is reused
//! as it is, so that keys clients hold stay valid when a KnowledgeBase is recreated. One failing child does not stop
//! the rest; the failures are returned together.

use super::build::{Child, ChildKind, ChildRef, Plan, PrometheusRule, ServiceMonitor, MANAGER};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Debug;

/// Annotation on every child: SHA-256 of the desired object it was last applied from.
pub const DESIRED_HASH: &str = "knowledge.dev/desired-hash";

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Children whose stored object changed (created or repaired).
    pub changed: Vec<ChildRef>,
    /// Children of disabled features that were deleted.
    pub deleted: Vec<ChildRef>,
}

/// Children that could not be applied or deleted; the others were.
#[derive(Debug, Default)]
pub struct Failures {
    /// Objects with a child's name that this operator did not create.
    pub refused: Vec<ChildRef>,
    /// API errors, per child.
    pub errors: Vec<Error>,
}

impl Failures {
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.errors.is_empty()
    }

    /// One line for a condition message.
    pub fn summary(&self) -> String {
        let refused = self.refused.iter().map(|r| {
            format!(
                "{:?} {} exists and was not created by this KnowledgeBase; refusing to adopt it (rename or delete it)",
                r.kind, r.name
            )
        });
        let errors = self.errors.iter().map(|e| e.to_string());
        refused.chain(errors).collect::<Vec<_>>().join("; ")
    }
}

/// Why one child was not applied.
enum ChildError {
    Refused,
    Api(kube::Error),
}

impl From<kube::Error> for ChildError {
    fn from(e: kube::Error) -> Self {
        ChildError::Api(e)
    }
}

/// Applies every child of `plan` and deletes the children it prunes. `instance` is the
/// KnowledgeBase's name: only objects labelled as its children are ever deleted or
/// overwritten. Every child is attempted; what failed comes back with what changed.
pub async fn apply(
    client: &Client,
    namespace: &str,
    instance: &str,
    plan: &Plan,
) -> (Applied, Failures) {
    let mut applied = Applied::default();
    let mut failures = Failures::default();
    for child in &plan.children {
        let reference = child.reference();
        match apply_child(client, namespace, instance, child).await {
            Ok(true) => applied.changed.push(reference),
            Ok(false) => {}
            Err(ChildError::Refused) => failures.refused.push(reference),
            Err(ChildError::Api(source)) => failures.errors.push(Error::Apply {
                kind: reference.kind,
                name: reference.name.clone(),
                source: Box::new(source),
            }),
        }
    }
    for reference in &plan.prune {
        match delete_child(client, namespace, instance, reference).await {
            Ok(true) => applied.deleted.push(reference.clone()),
            Ok(false) => {}
            Err(source) => failures.errors.push(Error::Delete {
                kind: reference.kind,
                name: reference.name.clone(),
                source: Box::new(source),
            }),
        }
    }
    (applied, failures)
}

async fn apply_child(
    client: &Client,
    ns: &str,
    instance: &str,
    child: &Child,
) -> Result<bool, ChildError> {
    let owner = Some(instance);
    let desired = child.to_json();
    match child {
        Child::ServiceAccount(_) => {
            server_side_apply::<ServiceAccount>(client, ns, owner, desired).await
        }
        Child::ConfigMap(_) => server_side_apply::<ConfigMap>(client, ns, owner, desired).await,
        Child::Secret(_) => server_side_apply::<Secret>(client, ns, owner, desired).await,
        Child::Service(_) => server_side_apply::<Service>(client, ns, owner, desired).await,
        Child::StatefulSet(_) => server_side_apply::<StatefulSet>(client, ns, owner, desired).await,
        Child::PodDisruptionBudget(_) => {
            server_side_apply::<PodDisruptionBudget>(client, ns, owner, desired).await
        }
        Child::HorizontalPodAutoscaler(_) => {
            server_side_apply::<HorizontalPodAutoscaler>(client, ns, owner, desired).await
        }
        Child::NetworkPolicy(_) => {
            server_side_apply::<NetworkPolicy>(client, ns, owner, desired).await
        }
        Child::CronJob(_) => server_side_apply::<CronJob>(client, ns, owner, desired).await,
        Child::ServiceMonitor(_) => {
            server_side_apply::<ServiceMonitor>(client, ns, owner, desired).await
        }
        Child::PrometheusRule(_) => {
            server_side_apply::<PrometheusRule>(client, ns, owner, desired).await
        }
    }
}

async fn delete_child(
    client: &Client,
    ns: &str,
    instance: &str,
    child: &ChildRef,
) -> kube::Result<bool> {
    let name = child.name.as_str();
    match child.kind {
        ChildKind::ServiceAccount => {
            delete_owned::<ServiceAccount>(client, ns, instance, name).await
        }
        ChildKind::ConfigMap => delete_owned::<ConfigMap>(client, ns, instance, name).await,
        ChildKind::Secret => delete_owned::<Secret>(client, ns, instance, name).await,
        ChildKind::Service => delete_owned::<Service>(client, ns, instance, name).await,
        ChildKind::StatefulSet => delete_owned::<StatefulSet>(client, ns, instance, name).await,
        ChildKind::PodDisruptionBudget => {
            delete_owned::<PodDisruptionBudget>(client, ns, instance, name).await
        }
        ChildKind::HorizontalPodAutoscaler => {
            delete_owned::<HorizontalPodAutoscaler>(client, ns, instance, name).await
        }
        ChildKind::NetworkPolicy => delete_owned::<NetworkPolicy>(client, ns, instance, name).await,
        ChildKind::CronJob => delete_owned::<CronJob>(client, ns, instance, name).await,
        // Without the Prometheus Operator's CRDs there is nothing to delete.
        ChildKind::ServiceMonitor => {
            absent_kind_is_empty(delete_owned::<ServiceMonitor>(client, ns, instance, name).await)
        }
        ChildKind::PrometheusRule => {
            absent_kind_is_empty(delete_owned::<PrometheusRule>(client, ns, instance, name).await)
        }
    }
}

/// Applies the whole of `desired` with the operator's field manager, forcing ownership so
/// that edits by others are reverted (see the module docs for when the write is skipped).
/// With `owner`, an existing object not labelled as that KnowledgeBase's child is refused.
/// Returns whether it wrote.
async fn server_side_apply<K>(
    client: &Client,
    ns: &str,
    owner: Option<&str>,
    desired: Value,
) -> Result<bool, ChildError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = desired["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let desired = with_desired_hash(desired);
    if let Some(existing) = api.get_opt(&name).await? {
        if owner.is_some_and(|instance| !is_child_of(existing.labels(), instance)) {
            return Err(ChildError::Refused);
        }
        let existing = serde_json::to_value(&existing).map_err(kube::Error::SerdeError)?;
        let hash = |v: &Value| v["metadata"]["annotations"][DESIRED_HASH].clone();
        if hash(&existing) == hash(&desired) && is_subset(&desired, &existing) {
            return Ok(false);
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&desired)).await?;
    Ok(true)
}

/// `desired` with [`DESIRED_HASH`]: the SHA-256 of its JSON without that annotation.
fn with_desired_hash(mut desired: Value) -> Value {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(desired.to_string().as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(DESIRED_HASH.to_string(), Value::String(hash));
        }
    }
    desired
}

/// Whether `labels` mark an object as made by this operator for `instance`.
pub fn is_child_of(labels: &std::collections::BTreeMap<String, String>, instance: &str) -> bool {
    labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(MANAGER)
        && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(instance)
}

/// True when every field of `desired` is present in `actual` with the same value. Lists
/// must match element by element (the server may add fields inside elements).
pub(super) fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| is_subset(v, av))),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| is_subset(dv, av))
        }
        _ => desired == actual,
    }
}

/// A 404 for a whole kind (its CRD is not installed) means there is nothing to delete.
fn absent_kind_is_empty(result: kube::Result<bool>) -> kube::Result<bool> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        other => other,
    }
}

/// Deletes `name` if it exists and is labelled as a child of `instance`.
async fn delete_owned<K>(
    client: &Client,
    ns: &str,
    instance: &str,
    name: &str,
) -> kube::Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !is_child_of(existing.labels(), instance) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_added_by_the_server_do_not_count_as_drift() {
        let desired = json!({"spec": {"ports": [{"port": 8080}], "type": "ClusterIP"}});
        let actual = json!({"spec": {"ports": [{"port": 8080, "protocol": "TCP"}], "type": "ClusterIP", "clusterIP": "10.0.0.1"}});
        assert!(is_subset(&desired, &actual));
    }

    #[test]
    fn edited_or_missing_fields_count_as_drift() {
        let desired = json!({"spec": {"ports": [{"port": 8080}], "type": "ClusterIP"}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 9999}], "type": "ClusterIP"}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [], "type": "ClusterIP"}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 8080}]}})
        ));
    }
}
