//! Each revision of the worker pod template reads its own configuration.
//!
//! The worker ConfigMap holds the configuration of the current spec under a key named by
//! its hash ([`pinned_key`]), and every pod template mounts the key of its own hash. A
//! rolling update keeps the pods of the old revision for a while (a model change with
//! added workers keeps them until the new model serves: hours on a large collection), and
//! one of them that restarts meanwhile (a crash, a liveness failure, a node reboot) must
//! come back with the configuration it was created with: with a single `config.yaml` it
//! read the new one, so it loaded the new model (or a model path its volume does not
//! have) on the old pod template.
//!
//! So the pinned keys of the live ConfigMap are applied again, with their values, for as
//! long as a pod may mount them: all of them while the live worker StatefulSet has not
//! converged (its controller has not seen its spec, or pods of another revision remain:
//! the controller recreates a deleted one from its own revision's template), and the one
//! of the live template once it has. Keys no pod can mount any more are left out of the
//! apply, and server-side apply removes them.

use super::build::{is_pinned_key, Child, ChildKind, Plan, CONFIG_HASH_ANNOTATION};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use std::collections::BTreeMap;

/// Reads the live worker ConfigMap (`None` before the first apply).
pub async fn observe(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: "the worker ConfigMap".into(),
        source: Box::new(source),
    })
}

/// Adds to the plan's worker ConfigMap `worker` the pinned keys of `live` that pods of
/// the live worker StatefulSet may still mount.
pub fn keep(
    plan: &mut Plan,
    worker: &str,
    live: Option<&ConfigMap>,
    statefulset: Option<&StatefulSet>,
) {
    let Some(live) = live else {
        return;
    };
    let kept = still_mounted(live, statefulset);
    if let Some(Child::ConfigMap(planned)) = plan.get_mut(ChildKind::ConfigMap, worker) {
        let data = planned.data.get_or_insert_with(Default::default);
        for (key, value) in kept {
            data.entry(key).or_insert(value);
        }
    }
}

/// The pinned keys of `live` that a pod of `statefulset` (the live one) may mount.
pub fn still_mounted(
    live: &ConfigMap,
    statefulset: Option<&StatefulSet>,
) -> BTreeMap<String, String> {
    let pinned = live
        .data
        .iter()
        .flatten()
        .filter(|(key, _)| is_pinned_key(key));
    match statefulset.filter(|s| converged(s)) {
        // Without a live StatefulSet (created again with new claim templates, its pods
        // still running) or mid-rollout, any of them.
        None => pinned.map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(statefulset) => {
            let own = template_key(statefulset);
            pinned
                .filter(|(key, _)| own.as_deref() == Some(key.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }
}

/// Whether every pod of the StatefulSet runs its current template: its controller has
/// seen the spec, one revision, all replicas on it.
fn converged(statefulset: &StatefulSet) -> bool {
    let (Some(spec), Some(status)) = (&statefulset.spec, &statefulset.status) else {
        return false;
    };
    let generation = statefulset.metadata.generation;
    generation.is_some()
        && status.observed_generation == generation
        && status.current_revision.is_some()
        && status.current_revision == status.update_revision
        && status.replicas == spec.replicas.unwrap_or(1)
        && status.updated_replicas == Some(status.replicas)
}

/// The pinned key the StatefulSet's pod template mounts (by its config hash).
fn template_key(statefulset: &StatefulSet) -> Option<String> {
    let template = &statefulset.spec.as_ref()?.template;
    let hash = template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)?;
    Some(super::build::pinned_key(hash))
}

#[cfg(test)]
mod tests;
