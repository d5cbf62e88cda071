//! Reads the children's state and writes `status` (server-side apply, same field manager)
//! only when it differs from what is stored.

use super::build::Component;
use super::build::{Names, MANAGER};
use super::conditions::{
    self, BackupJobs, BackupObserved, BackupReport, Observed, Outcome, RedisObserved, Rollout,
    Surge,
};
use super::progress::ReindexSeen;
use super::storage::Refusal;
use crate::crd::{BackupStatus, ClaimStatus, KnowledgeBase, KnowledgeBaseStatus, StorageStatus};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

/// What a reconcile pass found that the children's state does not tell.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// The on-demand backup request a Job exists or was just started for.
    pub backup_request: Option<String>,
    /// A volume change that could not be made.
    pub storage_refusal: Option<Refusal>,
    /// The worker image applied; `None` keeps what status says.
    pub worker_image: Option<String>,
    /// A newer default worker image not moved to yet.
    pub available_image: Option<String>,
    /// Why an operator-caused rollout waits.
    pub upgrade_queued: Option<String>,
}

/// Observes the children of `kb` and writes its status when it changed. Returns the new
/// status and whether it was written.
pub async fn update(
    ctx: &super::Context,
    kb: &KnowledgeBase,
    namespace: &str,
    outcome: &Outcome,
    found: Found,
) -> Result<(KnowledgeBaseStatus, bool)> {
    let names = Names::new(kb, namespace);
    let now = Time(jiff::Timestamp::now());
    let client = &ctx.client;
    let mut observed = observe(ctx, kb, &names, &now).await?;
    observed.backup_request = found.backup_request;
    observed.storage_refusal = found.storage_refusal;
    observed.upgrade = conditions::UpgradeObserved {
        worker_image: found
            .worker_image
            .or_else(|| kb.status.as_ref().and_then(|s| s.worker_image.clone())),
        available: found.available_image,
        queued: found.upgrade_queued,
        supervised: kb.spec.update_policy == crate::crd::UpdatePolicy::Supervised,
    };
    let base = KnowledgeBaseStatus {
        endpoint: Some(names.endpoint()),
        selector: Some(names.selector_string()),
        ..KnowledgeBaseStatus::default()
    };
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

async fn observe(
    ctx: &super::Context,
    kb: &KnowledgeBase,
    names: &Names,
    now: &Time,
) -> Result<Observed> {
    let client = &ctx.client;
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
    let backup_jobs = match kb.spec.backup {
        Some(_) => {
            let known = kb.status.as_ref().and_then(|s| s.backup.as_ref());
            Some(backup_jobs(client, names, known).await?)
        }
        None => None,
    };
    let generation = workers.as_ref().and_then(|s| s.metadata.generation);
    let worker_pods = pods_of(client, names, &names.selector_string()).await?;
    let updated: Vec<&Pod> = match &worker_status.update_revision {
        Some(revision) => worker_pods
            .iter()
            .filter(|pod| pod.labels().get("controller-revision-hash") == Some(revision))
            .collect(),
        None => vec![],
    };
    let updated_ready = updated.iter().filter(|p| super::pods::is_ready(p)).count() as i32;
    // A model change under way: the new model's workers re-index and say how far.
    let model = kb.spec.embedding.model_ref();
    let stored = kb.status.as_ref().and_then(|s| s.model.as_ref());
    let previous = kb.status.as_ref();
    let reindex = match stored.is_some_and(|m| m != &model) {
        false => ReindexSeen::None,
        // A worker of the new model serves: its job swapped the data, nothing to ask.
        true if updated_ready > 0 || conditions::model::replacing(previous, &model) => {
            ReindexSeen::None
        }
        true if conditions::model::fresh_progress(previous, &model, now).is_some() => {
            ReindexSeen::Kept
        }
        true => ctx
            .workers
            .reindex(&updated)
            .await
            .map_or(ReindexSeen::None, ReindexSeen::Reported),
    };
    let rollout = Rollout {
        observed: workers.is_some()
            && generation.is_some()
            && worker_status.observed_generation == generation,
        updated_replicas: worker_status.updated_replicas.unwrap_or(0),
        on_newest_revision: match (
            &worker_status.current_revision,
            &worker_status.update_revision,
        ) {
            (Some(current), Some(update)) => current == update,
            // A controller that reports no revisions yet has not rolled anything out.
            _ => false,
        },
        updated_ready,
    };
    let storage = Some(storage_status(client, kb, names).await?);
    // Pods added for a change of the model that no node fits: the rollout waits for
    // capacity while the current workers serve, which is its phase, not a fault.
    let surge_replicas = kb.spec.model_surge();
    // Autoscaled, the pods added are those above the count the change started from.
    let added_from = workers
        .as_ref()
        .and_then(super::surge::base_of)
        .unwrap_or(desired_replicas);
    let added_refused = |pod: &Pod| {
        let ordinal = pod.name_any().rsplit_once('-').map(|(_, n)| n.to_string());
        let added = ordinal.and_then(|n| n.parse::<i32>().ok()) >= Some(added_from);
        (surge_replicas > 0 && added)
            .then(|| super::pods::scheduler_refusal(pod))
            .flatten()
    };
    let surge = Surge {
        replicas: surge_replicas,
        gpus: surge_replicas * kb.spec.embedding.gpus(),
        unschedulable: worker_pods.iter().find_map(added_refused),
    };
    let placed: Vec<Pod> = worker_pods
        .iter()
        .filter(|p| added_refused(p).is_none())
        .cloned()
        .collect();
    Ok(Observed {
        upgrade: Default::default(),
        autoscaling_min: kb
            .spec
            .autoscaling
            .as_ref()
            .filter(|a| a.enabled)
            .map(|a| a.min_replicas),
        storage,
        storage_refusal: None,
        pod_problem: super::pods::first_problem(&placed, now),
        desired_replicas,
        replicas: worker_status.replicas,
        ready_replicas: worker_status.ready_replicas.unwrap_or(0),
        rollout,
        redis,
        backup,
        backup_jobs,
        backup_request: None,
        model,
        reindex,
        surge,
    })
}

/// The size the spec asks for and every data claim of this KnowledgeBase (workers' and
/// managed Redis'), with where an expansion stands.
async fn storage_status(
    client: &Client,
    kb: &KnowledgeBase,
    names: &Names,
) -> Result<StorageStatus> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let selector = names.children_selector();
    let list = claims
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            what: "PersistentVolumeClaims".into(),
            source: Box::new(source),
        })?;
    let mut claims: Vec<ClaimStatus> = list
        .items
        .iter()
        .map(|claim| {
            let storage =
                |map: Option<
                    &std::collections::BTreeMap<
                        String,
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                    >,
                >| { map.and_then(|m| m.get("storage")).map(|q| q.0.clone()) };
            let spec = claim.spec.as_ref();
            let status = claim.status.as_ref();
            let conditions = status.and_then(|s| s.conditions.as_ref());
            let resize = conditions
                .into_iter()
                .flatten()
                .filter(|c| c.status == "True")
                .map(|c| c.type_.as_str())
                .find(|t| matches!(*t, "FileSystemResizePending" | "Resizing"))
                .map(String::from);
            ClaimStatus {
                name: claim.name_any(),
                requested: storage(
                    spec.and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref()),
                ),
                capacity: storage(status.and_then(|s| s.capacity.as_ref())),
                resize,
            }
        })
        .collect();
    claims.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StorageStatus {
        requested: Some(crate::quantity::canonical(&kb.spec.storage.size.0)),
        claims,
    })
}

/// The backup Jobs of this KnowledgeBase (the CronJob's and on-demand ones): the newest
/// success with the report its pod left as termination message, and the failures since.
/// The pod is read only for a success the status (`known`) does not describe yet.
async fn backup_jobs(
    client: &Client,
    names: &Names,
    known: Option<&BackupStatus>,
) -> Result<BackupJobs> {
    let selector = names
        .selector(Component::Backup)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &names.namespace);
    let list = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            what: "backup Jobs".into(),
            source: Box::new(source),
        })?;
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    for job in &list.items {
        let Some(status) = &job.status else { continue };
        if status.succeeded.unwrap_or(0) > 0 {
            if let Some(done) = &status.completion_time {
                successes.push((done.clone(), job.name_any()));
            }
        } else if let Some(failed) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True")
        {
            let at = failed
                .last_transition_time
                .clone()
                .or_else(|| status.start_time.clone());
            failures.extend(at);
        }
    }
    let last_success = successes.into_iter().max_by(|a, b| a.0 .0.cmp(&b.0 .0));
    let since = last_success.as_ref().map(|(t, _)| t.0);
    let failed_since: Vec<Time> = failures
        .into_iter()
        .filter(|t| since.is_none_or(|s| t.0 > s))
        .collect();
    let last_failure = failed_since.iter().max_by(|a, b| a.0.cmp(&b.0)).cloned();
    let last_success = match last_success {
        Some((time, job)) => {
            let described = known.is_some_and(|k| {
                k.last_job.as_deref() == Some(job.as_str()) && k.last_backup_name.is_some()
            });
            let report = match described {
                // `conditions` keeps what the status says about this same Job.
                true => None,
                false => job_report(client, names, &job).await?,
            };
            Some((time, job, report))
        }
        None => None,
    };
    Ok(BackupJobs {
        last_success,
        failures_since_success: failed_since.len() as i32,
        last_failure,
    })
}

/// The pods matching `selector`.
pub(super) async fn pods_of(client: &Client, names: &Names, selector: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| Error::Read {
            what: format!("pods {selector}"),
            source: Box::new(source),
        })?;
    Ok(list.items)
}

/// The report of a finished backup Job: its pod's termination message.
async fn job_report(client: &Client, names: &Names, job: &str) -> Result<Option<BackupReport>> {
    let pods = pods_of(client, names, &format!("job-name={job}")).await?;
    let report = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .find_map(|t| serde_json::from_str::<BackupReport>(t.message.as_deref()?).ok());
    Ok(report)
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
