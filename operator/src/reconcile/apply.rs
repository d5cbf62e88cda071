//! Server-side apply of a plan with one field manager, and deletion of the children of
//! disabled features.

use super::build::{Child, ChildKind, ChildRef, Plan, MANAGER};
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

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Children whose stored object changed (created or repaired).
    pub changed: Vec<ChildRef>,
    /// Children of disabled features that were deleted.
    pub deleted: Vec<ChildRef>,
}

/// Applies every child of `plan` and deletes the children it prunes. `instance` is the
/// KnowledgeBase's name: only objects labelled as its children are ever deleted.
pub async fn apply(
    client: &Client,
    namespace: &str,
    instance: &str,
    plan: &Plan,
) -> Result<Applied> {
    let mut applied = Applied::default();
    for child in &plan.children {
        let reference = child.reference();
        let changed = apply_child(client, namespace, child)
            .await
            .map_err(|source| Error::Apply {
                kind: reference.kind,
                name: reference.name.clone(),
                source: Box::new(source),
            })?;
        if changed {
            applied.changed.push(reference);
        }
    }
    for reference in &plan.prune {
        let deleted = delete_child(client, namespace, instance, reference)
            .await
            .map_err(|source| Error::Delete {
                kind: reference.kind,
                name: reference.name.clone(),
                source: Box::new(source),
            })?;
        if deleted {
            applied.deleted.push(reference.clone());
        }
    }
    Ok(applied)
}

async fn apply_child(client: &Client, ns: &str, child: &Child) -> kube::Result<bool> {
    match child {
        Child::ServiceAccount(o) => server_side_apply(client, ns, o).await,
        Child::ConfigMap(o) => server_side_apply(client, ns, o).await,
        Child::Secret(o) => server_side_apply(client, ns, o).await,
        Child::Service(o) => server_side_apply(client, ns, o).await,
        Child::StatefulSet(o) => server_side_apply(client, ns, o.as_ref()).await,
        Child::PodDisruptionBudget(o) => server_side_apply(client, ns, o).await,
        Child::HorizontalPodAutoscaler(o) => server_side_apply(client, ns, o).await,
        Child::NetworkPolicy(o) => server_side_apply(client, ns, o).await,
        Child::CronJob(o) => server_side_apply(client, ns, o.as_ref()).await,
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
    }
}

/// Applies `desired` with the operator's field manager, forcing ownership so that edits by
/// others are reverted. An object that already holds every field of `desired` is left
/// alone, so a converged KnowledgeBase costs reads only. Returns whether it wrote.
async fn server_side_apply<K>(client: &Client, ns: &str, desired: &K) -> kube::Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = desired.name_any();
    if let Some(existing) = api.get_opt(&name).await? {
        let desired = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
        let existing = serde_json::to_value(&existing).map_err(kube::Error::SerdeError)?;
        if is_subset(&desired, &existing) {
            return Ok(false);
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(desired)).await?;
    Ok(true)
}

/// True when every field of `desired` is present in `actual` with the same value. Lists
/// must match element by element (the server may add fields inside elements).
fn is_subset(desired: &Value, actual: &Value) -> bool {
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
    let labels = existing.labels();
    let ours = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(MANAGER)
        && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(instance);
    if !ours {
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
