//! Reads the children's state and writes `status` (server-side apply, same field manager)
//! only when it differs from what is stored.

use super::build::{Names, MANAGER};
use super::conditions::{self, BackupObserved, Observed, Outcome, RedisObserved};
use crate::crd::{KnowledgeBase, KnowledgeBaseStatus};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

/// Observes the children of `kb` and writes its status when it changed. Returns the new
/// status and whether it was written.
pub async fn update(
    client: &Client,
    kb: &KnowledgeBase,
    namespace: &str,
    outcome: &Outcome,
) -> Result<(KnowledgeBaseStatus, bool)> {
    let names = Names::new(kb, namespace);
    let observed = observe(client, kb, &names).await?;
    let base = KnowledgeBaseStatus {
        endpoint: Some(names.endpoint()),
        selector: Some(names.selector_string()),
        ..KnowledgeBaseStatus::default()
    };
    let now = Time(jiff::Timestamp::now());
    let generation = kb.metadata.generation;
    let status = conditions::status(
        generation,
        outcome,
        &observed,
        kb.status.as_ref(),
        base,
        &now,
    );
    if kb.status.as_ref() == Some(&status) {
        return Ok((status, false));
    }
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": KnowledgeBase::api_version(&()),
        "kind": KnowledgeBase::kind(&()),
        "status": status,
    });
    api.patch_status(
        &kb.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::Status(Box::new(e)))?;
    Ok((status, true))
}

async fn observe(client: &Client, kb: &KnowledgeBase, names: &Names) -> Result<Observed> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let workers = get(&statefulsets, &names.worker()).await?;
    let worker_status = workers
        .as_ref()
        .and_then(|s| s.status.clone())
        .unwrap_or_default();
    let desired_replicas = match kb.spec.autoscaling_enabled() {
        true => workers
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        false => kb.spec.replicas,
    };
    let redis = match kb.spec.redis.as_ref() {
        None => RedisObserved::NotConfigured,
        Some(r) if r.managed.is_none() => RedisObserved::External,
        Some(_) => {
            let redis = get(&statefulsets, &names.redis()).await?;
            let ready = redis
                .and_then(|s| s.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            RedisObserved::Managed { ready: ready >= 1 }
        }
    };
    let backup = match kb.spec.backup.as_ref() {
        None => BackupObserved::NotConfigured,
        Some(b) if b.suspend => BackupObserved::Suspended,
        Some(_) => {
            let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &names.namespace);
            let status = get(&cronjobs, &names.backup())
                .await?
                .and_then(|c| c.status)
                .unwrap_or_default();
            BackupObserved::Scheduled {
                last_schedule: status.last_schedule_time,
                last_success: status.last_successful_time,
                running: status.active.is_some_and(|a| !a.is_empty()),
            }
        }
    };
    Ok(Observed {
        desired_replicas,
        replicas: worker_status.replicas,
        ready_replicas: worker_status.ready_replicas.unwrap_or(0),
        redis,
        backup,
    })
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!(
            "{} {name}",
            std::any::type_name::<K>()
                .rsplit("::")
                .next()
                .unwrap_or("object")
        ),
        source: Box::new(source),
    })
}
