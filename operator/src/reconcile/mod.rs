//! The reconcile pipeline: `dereference -> validate -> build -> apply -> update_status`.

pub mod apply;
mod backoff;
pub mod build;
pub mod conditions;
pub mod configs;
pub mod dereference;
pub mod finalizer;
pub mod pause;
pub mod pods;
pub mod progress;
pub mod rotation;
pub mod status;
pub mod storage;
pub mod surge;
pub mod upgrade;
pub mod validate;
mod workers;

pub use backoff::{error_policy, Backoff};
pub use workers::REPLICAS_HANDOVER_MANAGER;
use workers::{hand_over_replicas, hold_workers_for_redis};

use crate::crd::{ConditionType, KnowledgeBase, KnowledgeBaseStatus, ReclaimPolicy};
use crate::metrics::Metrics;
use crate::{Error, Result};
use build::{Names, MANAGER};
use conditions::Outcome;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Annotation asking for a backup now: each new value starts one backup Job (for example
/// `kubectl annotate kb docs knowledge.dev/backup-now="$(date +%s)" --overwrite`).
pub const BACKUP_NOW_ANNOTATION: &str = "knowledge.dev/backup-now";

/// Periodic re-check of a converged KnowledgeBase.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check of a KnowledgeBase whose children are not ready yet.
const PROGRESS_RESYNC: Duration = Duration::from_secs(15);

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events; `None` where nobody reads them (benchmarks).
    pub recorder: Option<Recorder>,
    /// Upper bound of the best-effort cleanup on deletion.
    pub cleanup_timeout: Duration,
    /// Retry delays after failed reconciles.
    pub backoff: Backoff,
    /// Slots for rollouts the operator causes (`--max-concurrent-upgrades`).
    pub rollouts: upgrade::Rollouts,
    /// Reads a model change's re-index progress from the workers.
    pub workers: progress::WorkerProbe,
}

impl Context {
    /// A context with Events reported as `kb-operator`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), MANAGER.into());
        Self {
            client,
            metrics,
            recorder: Some(recorder),
            cleanup_timeout: Duration::from_secs(20),
            backoff: Backoff::default(),
            rollouts: upgrade::Rollouts::default(),
            workers: progress::WorkerProbe::default(),
        }
    }
}

/// Reconciles one KnowledgeBase (entry point of the controller).
pub async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = kb
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), &namespace);
    if kb.metadata.deletion_timestamp.is_some() {
        ctx.rollouts
            .release(&format!("{namespace}/{}", kb.name_any()));
        if finalizer::present(&kb) {
            cleanup(&kb, &ctx, &namespace).await;
            finalizer::remove(&api, &kb).await?;
        }
        return Ok(Action::await_change());
    }
    if !finalizer::present(&kb) {
        finalizer::add(&api, &kb).await?;
    }
    converge(&kb, &ctx, &namespace).await
}

/// The pipeline for a live KnowledgeBase.
async fn converge(kb: &KnowledgeBase, ctx: &Context, namespace: &str) -> Result<Action> {
    if kb.spec.paused {
        pause::hold(&ctx.client, kb, namespace).await?;
        return finish(kb, ctx, namespace, Outcome::Paused).await;
    }
    let deref = dereference::gather(&ctx.client, kb, namespace).await?;
    let checked = validate::check(kb, &deref.missing)
        .and_then(|()| validate::check_bootstrap_claim(kb, deref.bootstrap_claim_modes.as_deref()));
    if let Err(invalid) = checked {
        return finish(kb, ctx, namespace, Outcome::Invalid(invalid)).await;
    }
    if hand_over_replicas(kb, ctx, namespace).await? {
        // spec.replicas was raised to the autoscaler's count; the next pass applies it.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let key = format!("{namespace}/{}", kb.name_any());
    let names = Names::new(kb, namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let live_workers = statefulsets
        .get_opt(&names.worker())
        .await
        .map_err(|source| Error::Read {
            what: "the worker StatefulSet".into(),
            source: Box::new(source),
        })?;
    let live_image = live_workers.as_ref().and_then(upgrade::live_image);
    let choice = upgrade::choose_image(kb, live_image, crate::crd::DEFAULT_IMAGE);
    let mut resolved = kb.clone();
    resolved.spec.image = Some(choice.image.clone());
    let mut plan = build::plan(&resolved, &deref.inputs);
    let gate = upgrade::gate(
        kb,
        &key,
        is_ready(kb.status.as_ref()),
        live_workers.as_ref(),
        &mut plan,
        &ctx.rollouts,
    );
    let (worker_image, available_image) = match (&gate, live_image) {
        (upgrade::Gate::Queued(_), Some(live)) => {
            let waiting = (live != choice.image).then(|| choice.image.clone());
            (live.to_string(), waiting.or(choice.available.clone()))
        }
        _ => (choice.image.clone(), choice.available.clone()),
    };
    let added = surge::observe(&ctx.client, &names, &kb.spec, live_workers.as_ref()).await?;
    let shape = surge::shape(&kb.spec, kb.status.as_ref(), added.as_ref());
    surge::reshape(&mut plan, &names.worker(), shape.as_ref());
    let live_config = configs::observe(&ctx.client, namespace, &names.worker()).await?;
    configs::keep(
        &mut plan,
        &names.worker(),
        live_config.as_ref(),
        live_workers.as_ref(),
    );
    let waiting_for_redis = hold_workers_for_redis(kb, ctx, namespace, &mut plan).await?;
    let volumes = storage::prepare(&ctx.client, namespace, &mut plan).await?;
    for claim in &volumes.expanded {
        let note = format!("expanding claim {claim} to the size the spec asks for");
        publish(kb, ctx, EventType::Normal, "VolumeExpansion", note).await;
    }
    for statefulset in &volumes.replacing {
        let note = format!(
            "StatefulSet {statefulset} is created again with new volume claim templates; its pods keep running"
        );
        publish(kb, ctx, EventType::Normal, "StatefulSetReplaced", note).await;
    }
    let (applied, failures) = apply::apply(&ctx.client, namespace, &kb.name_any(), &plan).await;
    if applied != apply::Applied::default() {
        tracing::info!(
            kb = %kb.name_any(),
            namespace,
            changed = ?applied.changed,
            deleted = ?applied.deleted,
            "children updated"
        );
    }
    if !failures.is_empty() {
        let summary = failures.summary();
        for refused in &failures.refused {
            let note = format!(
                "{:?} {} exists and was not created by this KnowledgeBase; it is left alone (rename or delete it)",
                refused.kind, refused.name
            );
            publish(kb, ctx, EventType::Warning, "AdoptionRefused", note).await;
        }
        let outcome = if failures.errors.is_empty() {
            Outcome::AdoptionRefused(summary.clone())
        } else {
            Outcome::ApplyFailed(summary.clone())
        };
        // Best effort: the error below is what the controller retries on (with backoff).
        if let Err(status_error) = finish(kb, ctx, namespace, outcome).await {
            tracing::warn!(%status_error, "could not report the apply failure in status");
        }
        return Err(Error::Children {
            count: failures.refused.len() + failures.errors.len(),
            summary,
        });
    }
    ctx.backoff.reset(kb);
    let requested = backup_on_demand(kb, ctx, namespace).await?;
    let found = status::Found {
        backup_request: requested,
        storage_refusal: volumes.refusal,
        worker_image: Some(worker_image),
        available_image,
        upgrade_queued: match &gate {
            upgrade::Gate::Queued(why) => Some(why.clone()),
            _ => None,
        },
    };
    let (action, ready) = finish_with(kb, ctx, namespace, Outcome::Applied, found).await?;
    if ready && gate == upgrade::Gate::Open {
        ctx.rollouts.release(&key);
    }
    if !volumes.replacing.is_empty() {
        // The StatefulSet left out of this pass is created again once it is gone.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if waiting_for_redis {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(action)
}

/// Starts the backup the `knowledge.dev/backup-now` annotation asks for, once per value
/// (the Job's name derives from the value, so a retry finds the Job it started). Returns
/// the value a Job exists for.
async fn backup_on_demand(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<String>> {
    let Some(request) = kb
        .annotations()
        .get(BACKUP_NOW_ANNOTATION)
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let done = kb
        .status
        .as_ref()
        .and_then(|s| s.backup.as_ref())
        .and_then(|b| b.last_request.as_ref());
    if done == Some(request) {
        return Ok(Some(request.clone()));
    }
    let names = Names::new(kb, namespace);
    let Some(job) = build::backup_job(&kb.spec, &names, request) else {
        tracing::warn!(kb = %kb.name_any(), "{BACKUP_NOW_ANNOTATION} ignored: spec.backup is not set");
        return Ok(None);
    };
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..PostParams::default()
    };
    match jobs.create(&params, &job).await {
        Ok(_) => {
            tracing::info!(kb = %kb.name_any(), job = %name, request, "on-demand backup started");
            publish(
                kb,
                ctx,
                EventType::Normal,
                "BackupRequested",
                format!("started backup Job {name} for {BACKUP_NOW_ANNOTATION}={request}"),
            )
            .await;
        }
        // Started by an earlier pass whose status write did not land.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(source) => {
            return Err(Error::BackupJob {
                name,
                source: Box::new(source),
            })
        }
    }
    Ok(Some(request.clone()))
}

async fn publish(kb: &KnowledgeBase, ctx: &Context, type_: EventType, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &kb.object_ref(&())).await {
        tracing::warn!(%error, "could not publish event");
    }
}

/// Writes status, publishes an Event when readiness changed, and picks the next check.
async fn finish(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
    outcome: Outcome,
) -> Result<Action> {
    Ok(
        finish_with(kb, ctx, namespace, outcome, status::Found::default())
            .await?
            .0,
    )
}

/// [`finish`], with what this pass found besides the children's state (the on-demand
/// backup request a Job exists for, a volume change that was refused).
async fn finish_with(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
    outcome: Outcome,
    found: status::Found,
) -> Result<(Action, bool)> {
    let (status, _) = status::update(ctx, kb, namespace, &outcome, found).await?;
    if let Some(time) = &status.last_backup {
        ctx.metrics
            .last_backup(namespace, &kb.name_any(), time.0.as_second());
    }
    publish_transition(kb, ctx, kb.status.as_ref(), &status).await;
    let ready = is_ready(Some(&status));
    let action = match outcome {
        Outcome::Paused | Outcome::Invalid(_) => Action::requeue(RESYNC),
        // A volume expansion in progress is followed like a rollout.
        _ if ready && !resizing(&status) => Action::requeue(RESYNC),
        _ => Action::requeue(PROGRESS_RESYNC),
    };
    Ok((action, ready))
}

/// Whether a data claim is still growing (asks for more than it has, or waits for its
/// file system).
fn resizing(status: &KnowledgeBaseStatus) -> bool {
    let claims = status.storage.iter().flat_map(|s| &s.claims);
    claims.into_iter().any(|c| {
        c.resize.is_some()
            || match (&c.requested, &c.capacity) {
                (Some(r), Some(c)) => {
                    crate::quantity::Quantity::parse(r) > crate::quantity::Quantity::parse(c)
                }
                _ => false,
            }
    })
}

fn is_ready(status: Option<&KnowledgeBaseStatus>) -> bool {
    status
        .and_then(|s| s.condition(ConditionType::Ready))
        .is_some_and(|c| c.status == "True")
}

/// An Event when `Ready` or `Degraded` changed reason, so `kubectl describe` tells the story.
async fn publish_transition(
    kb: &KnowledgeBase,
    ctx: &Context,
    before: Option<&KnowledgeBaseStatus>,
    after: &KnowledgeBaseStatus,
) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    if let Some((reason, note)) = conditions::model::event(before, after) {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &kb.object_ref(&())).await {
            tracing::warn!(%error, "could not publish event");
        }
    }
    for kind in [ConditionType::Ready, ConditionType::Degraded] {
        let old = before
            .and_then(|s| s.condition(kind))
            .map(|c| (&c.status, &c.reason));
        let Some(new) = after.condition(kind) else {
            continue;
        };
        if old == Some((&new.status, &new.reason)) {
            continue;
        }
        let warning = (kind == ConditionType::Degraded) == (new.status == "True");
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: new.reason.clone(),
            note: Some(new.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &kb.object_ref(&())).await {
            tracing::warn!(%error, "could not publish event");
        }
    }
}

/// Deletion: children go with their owner; PVCs follow `spec.storage.reclaimPolicy`. Best
/// effort and bounded, so a finalizer never wedges deletion.
async fn cleanup(kb: &KnowledgeBase, ctx: &Context, namespace: &str) {
    if kb.spec.storage.reclaim_policy == ReclaimPolicy::Delete {
        let names = Names::new(kb, namespace);
        let work = delete_claims(&ctx.client, &names);
        match tokio::time::timeout(ctx.cleanup_timeout, work).await {
            Ok(Ok(deleted)) => tracing::info!(deleted, kb = %names.base, "deleted data volumes"),
            Ok(Err(error)) => {
                tracing::warn!(%error, kb = %names.base, "volume cleanup failed; leaving the rest")
            }
            Err(_) => {
                tracing::warn!(kb = %names.base, "volume cleanup timed out; leaving the rest")
            }
        }
    }
}

async fn delete_claims(client: &Client, names: &Names) -> kube::Result<usize> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let selector = names.children_selector();
    let list = claims
        .list(&ListParams::default().labels(&selector))
        .await?;
    for claim in &list.items {
        claims
            .delete(&claim.name_any(), &DeleteParams::background())
            .await?;
    }
    Ok(list.items.len())
}
