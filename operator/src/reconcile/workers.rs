//! The worker StatefulSet's place among the other children: who owns `spec.replicas`
//! while autoscaling is switched, and waiting for managed Redis on a first deploy.

use super::build::{self, Names};
use super::{publish, Context};
use crate::crd::KnowledgeBase;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

/// On a first deploy with managed Redis, the workers are created only once Redis is
/// ready: started before it, they would fail to connect, restart and be reported as
/// crash-looping for the minute Redis takes to start. Once the workers exist they are
/// never held back (they retry Redis themselves). Returns whether they were held back.
pub(super) async fn hold_workers_for_redis(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
    plan: &mut build::Plan,
) -> Result<bool> {
    let managed = kb.spec.redis.as_ref().is_some_and(|r| r.managed.is_some());
    if !managed {
        return Ok(false);
    }
    let names = Names::new(kb, namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let read = |source| Error::Read {
        what: "StatefulSets".into(),
        source: Box::new(source),
    };
    if statefulsets
        .get_opt(&names.worker())
        .await
        .map_err(read)?
        .is_some()
    {
        return Ok(false);
    }
    let redis_ready = statefulsets
        .get_opt(&names.redis())
        .await
        .map_err(read)?
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    if redis_ready {
        return Ok(false);
    }
    let worker = names.worker();
    plan.children.retain(|child| {
        child.reference()
            != build::ChildRef {
                kind: build::ChildKind::StatefulSet,
                name: worker.clone(),
            }
    });
    Ok(true)
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
pub(super) async fn hand_over_replicas(
    kb: &KnowledgeBase,
    ctx: &Context,
    namespace: &str,
) -> Result<bool> {
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
