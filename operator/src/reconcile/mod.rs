//! The reconcile pipeline: `dereference -> validate -> build -> apply -> update_status`.

pub mod apply;
pub mod build;
pub mod conditions;
pub mod dereference;
pub mod finalizer;
pub mod status;
pub mod validate;

use crate::crd::{ConditionType, KnowledgeBase, KnowledgeBaseStatus, ReclaimPolicy};
use crate::metrics::Metrics;
use crate::{Error, Result};
use build::{Names, MANAGER};
use conditions::Outcome;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
        return finish(kb, ctx, namespace, Outcome::Paused).await;
    }
    let deref = dereference::gather(&ctx.client, kb, namespace).await?;
    if let Err(invalid) = validate::check(kb, &deref.missing) {
        return finish(kb, ctx, namespace, Outcome::Invalid(invalid)).await;
    }
    if hand_over_replicas(kb, ctx, namespace).await? {
        // spec.replicas was raised to the autoscaler's count; the next pass applies it.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let plan = build::plan(kb, &deref.inputs);
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
    finish_with(kb, ctx, namespace, Outcome::Applied, requested).await
}

/// Field manager that holds the worker StatefulSet's `spec.replicas` while autoscaling
/// takes over from the operator.
pub const REPLICAS_HANDOVER_MANAGER: &str = "kb-operator-replicas-handover";

/// Moves `spec.replicas` of the worker StatefulSet between the operator and the
/// HorizontalPodAutoscaler without ever lowering the running count:
///
/// - Autoscaling turned on (the HPA does not exist yet): before the operator stops
///   sending `replicas`, a second field manager applies the current count, so the field
///   keeps an owner and server-side apply does not reset it to 1 (which would kill pods);
///   the HPA then takes it over.
/// - Autoscaling turned off (the HPA still exists): when the HPA's current count is above
///   `spec.replicas`, the KnowledgeBase's `spec.replicas` is raised to it first (as
///   `kubectl scale` would), so the StatefulSet keeps its pods; lower it yourself after.
///
/// Returns true when it changed the KnowledgeBase (the caller stops this pass).
async fn hand_over_replicas(kb: &KnowledgeBase, ctx: &Context, namespace: &str) -> Result<bool> {
    let names = Names::new(kb, namespace);
    let read = |what: &str| {
        let what = what.to_string();
        move |source| Error::Read {
            what,
            source: Box::new(source),
        }
    };
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(live) = statefulsets
        .get_opt(&names.worker())
        .await
        .map_err(read("the worker StatefulSet"))?
    else {
        return Ok(false);
    };
    let running = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), namespace);
    let hpa_exists = hpas
        .get_opt(&names.worker())
        .await
        .map_err(read("the worker HorizontalPodAutoscaler"))?
        .is_some();
    let apply_error = |source| Error::Apply {
        kind: build::ChildKind::StatefulSet,
        name: names.worker(),
        source: Box::new(source),
    };
    if kb.spec.autoscaling_enabled() && !hpa_exists {
        let patch = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": names.worker(), "namespace": namespace},
            "spec": {"replicas": running},
        });
        statefulsets
            .patch(
                &names.worker(),
                &PatchParams::apply(REPLICAS_HANDOVER_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(apply_error)?;
        tracing::info!(kb = %kb.name_any(), replicas = running, "autoscaling takes over spec.replicas");
        return Ok(false);
    }
    if !kb.spec.autoscaling_enabled() && hpa_exists && running > kb.spec.replicas {
        let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), namespace);
        let patch = serde_json::json!({"spec": {"replicas": running}});
        api.patch(
            &kb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(apply_error)?;
        let note = format!(
            "autoscaling turned off at {running} replicas: spec.replicas raised from {} to {running}",
            kb.spec.replicas
        );
        publish(kb, ctx, EventType::Normal, "ReplicasKept", note).await;
        return Ok(true);
    }
    Ok(false)
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
    finish_with(kb, ctx, namespace, outcome, None).await
}

/// [`finish`], with the on-demand backup request a Job exists for.
async fn finish_with(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
    outcome: Outcome,
    backup_request: Option<String>,
) -> Result<Action> {
    let (status, _) = status::update(&ctx.client, kb, namespace, &outcome, backup_request).await?;
    if let Some(time) = &status.last_backup {
        ctx.metrics
            .last_backup(namespace, &kb.name_any(), time.0.as_second());
    }
    publish_transition(kb, ctx, kb.status.as_ref(), &status).await;
    Ok(match outcome {
        Outcome::Paused | Outcome::Invalid(_) => Action::requeue(RESYNC),
        _ if is_ready(Some(&status)) => Action::requeue(RESYNC),
        _ => Action::requeue(PROGRESS_RESYNC),
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
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGER}",
        names.base
    );
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

/// What the controller does after a failed reconcile: retry with exponential backoff and
/// jitter per KnowledgeBase (1 s doubling to 5 min), reset by the next clean apply.
pub fn error_policy(kb: Arc<KnowledgeBase>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.next(&kb);
    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(delay)
}

/// Consecutive failures per KnowledgeBase, for [`error_policy`].
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    fn key(kb: &KnowledgeBase) -> String {
        format!("{}/{}", kb.namespace().unwrap_or_default(), kb.name_any())
    }

    /// The wait before the next attempt: `BASE * 2^(failures - 1)`, capped at `MAX`, then
    /// scaled by a random factor in [0.5, 1.0] so that many failing KnowledgeBases do not
    /// retry in lockstep.
    pub fn next(&self, kb: &KnowledgeBase) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(Self::key(kb)).or_insert(0);
        *n = n.saturating_add(1);
        let exp = Self::BASE
            .saturating_mul(1u32 << (*n - 1).min(16))
            .min(Self::MAX);
        let jitter = 0.5 + 0.5 * (jitter_unit());
        exp.mul_f64(jitter)
    }

    /// Forgets the failures of `kb` (it converged).
    pub fn reset(&self, kb: &KnowledgeBase) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Self::key(kb));
    }
}

/// A number in [0, 1) from the clock's nanoseconds (jitter needs spread, not secrecy).
fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb(name: &str) -> KnowledgeBase {
        serde_yaml::from_str(&format!(
            "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  embedding: {{device: cpu}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_per_knowledge_base_and_reset() {
        let backoff = Backoff::default();
        let (a, b) = (kb("a"), kb("b"));
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next(&a)).collect();
        for (n, delay) in delays.iter().enumerate() {
            let full = Backoff::BASE
                .saturating_mul(1 << n.min(16) as u32)
                .min(Backoff::MAX);
            // Jitter keeps each wait between half and all of the exponential step.
            assert!(
                *delay >= full / 2 && *delay <= full,
                "{n}: {delay:?} vs {full:?}"
            );
        }
        assert!(delays[11] >= Backoff::MAX / 2, "capped at the maximum");
        // Another KnowledgeBase starts from the beginning; a reset forgets the failures.
        assert!(backoff.next(&b) <= Backoff::BASE);
        backoff.reset(&a);
        assert!(backoff.next(&a) <= Backoff::BASE);
    }
}
