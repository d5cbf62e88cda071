//! `spec.paused`: the operator stops changing the children, and what would still act on
//! its own is held too: the backup CronJob is suspended and the HorizontalPodAutoscaler
//! is pinned to the replicas running now (`minReplicas = maxReplicas`).
//!
//! Both are written by a field manager of their own, with only those fields, so nothing
//! else of the children changes; unpausing applies the children again with the
//! operator's manager, which takes the fields back (forced apply) and restores them.

use super::apply::is_child_of;
use super::build::{ChildKind, Names};
use crate::crd::KnowledgeBase;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// Field manager of what a pause holds.
pub const PAUSE_MANAGER: &str = "kb-operator-pause";

/// Suspends the backup CronJob and pins the autoscaler of a paused `kb`.
pub async fn hold(client: &Client, kb: &KnowledgeBase, namespace: &str) -> Result<()> {
    let names = Names::new(kb, namespace);
    let params = PatchParams::apply(PAUSE_MANAGER).force();
    let read = |what: String| {
        move |source| Error::Read {
            what,
            source: Box::new(source),
        }
    };
    let write = |kind: ChildKind, name: String| {
        move |source| Error::Apply {
            kind,
            name,
            source: Box::new(source),
        }
    };
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), namespace);
    let backup = names.backup();
    if let Some(cron) = cronjobs
        .get_opt(&backup)
        .await
        .map_err(read(backup.clone()))?
    {
        let suspended = cron.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        if is_child_of(cron.labels(), &names.base) && !suspended {
            let patch = serde_json::json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": backup},
                "spec": {"suspend": true},
            });
            cronjobs
                .patch(&backup, &params, &Patch::Apply(&patch))
                .await
                .map_err(write(ChildKind::CronJob, backup.clone()))?;
        }
    }
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let worker = names.worker();
    let Some(hpa) = hpas.get_opt(&worker).await.map_err(read(worker.clone()))? else {
        return Ok(());
    };
    if !is_child_of(hpa.labels(), &names.base) {
        return Ok(());
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let running = statefulsets
        .get_opt(&worker)
        .await
        .map_err(read(worker.clone()))?
        .and_then(|s| s.spec?.replicas)
        .unwrap_or(1)
        .max(1);
    let spec = hpa.spec.unwrap_or_default();
    if spec.min_replicas == Some(running) && spec.max_replicas == running {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": worker},
        "spec": {"minReplicas": running, "maxReplicas": running},
    });
    hpas.patch(&worker, &params, &Patch::Apply(&patch))
        .await
        .map_err(write(ChildKind::HorizontalPodAutoscaler, worker.clone()))?;
    Ok(())
}
