//! Added workers for a change of the model (`spec.embedding.rollout.maxSurge`;
//! docs/operator.md, "Changing the model").
//!
//! While `status.model` differs from the model the spec names, the worker StatefulSet runs
//! `replicas + maxSurge` pods with the rolling update's `partition` at `replicas`: the
//! StatefulSet controller creates the added ordinals on the new pod template (the new
//! model) and leaves every current worker as it is. The added workers bootstrap from a
//! peer and the Redis stream, re-index the stored texts for their model and turn ready
//! once their job has swapped the collections (on every replica, through the log). Once
//! `status.modelRollout` says `Replacing` (an added worker of the new model serves), the
//! partition goes and the controller replaces the current workers, highest ordinal first.
//! When every pod runs the new model ready, the rollout ends and the StatefulSet shrinks
//! back to `replicas`.
//!
//! The added pods' PersistentVolumeClaims go with them: while the StatefulSet has added
//! pods, and until they are gone after the shrink, its
//! `persistentVolumeClaimRetentionPolicy.whenScaled` is `Delete` (the StatefulSet
//! controller then deletes the claims of the ordinals a scale-down removes), else the
//! `Retain` every worker StatefulSet has.
//!
//! A revert of the spec mid-way keeps the added pods until they have restarted on the
//! reverted template and turned ready: at that start each one cancels the re-index it
//! owns (the half-built collection is dropped on every replica), so nothing is left behind
//! when they go. An added pod that no node fits never ran and does not hold the shrink.
//!
//! The StatefulSet carries [`SURGE_ANNOTATION`] while it has added pods, so the operator
//! tells its own added pods from a plain rollout of the spec's replicas.
//!
//! With autoscaling the HorizontalPodAutoscaler owns the worker count, so the operator
//! never writes `replicas`: the count the autoscaler ran when the change started is the
//! number of current workers held on the old model (the partition, kept in
//! [`SURGE_BASE_ANNOTATION`]), and the autoscaler's `minReplicas` (and `maxReplicas`
//! where lower) is raised to that count plus `maxSurge` until the added pods have settled.
//! The autoscaler then adds the pods (it scales below its floor up at its next sync,
//! whatever its scale-up policies say) and may add more on load, which take the new model
//! too; nothing shrinks at the end: the floor goes back to the spec's and the autoscaler
//! scales in as the load says, and the claims follow the StatefulSet's ordinary policy.

use super::build::{Child, ChildKind, Names, Plan};
use super::pods;
use crate::crd::{KnowledgeBaseSpec, KnowledgeBaseStatus};
use k8s_openapi::api::apps::v1::{RollingUpdateStatefulSetStrategy, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

/// StatefulSet annotation: the number of workers added for a change of the model.
pub const SURGE_ANNOTATION: &str = "knowledge.dev/model-surge";

/// StatefulSet annotation of an autoscaled KnowledgeBase's change: the worker count when
/// it started (the ordinals held on the old model).
pub const SURGE_BASE_ANNOTATION: &str = "knowledge.dev/model-surge-base";

/// The rollout phase after which the current workers are replaced.
pub const REPLACING: &str = "Replacing";

/// The worker StatefulSet's shape while it has added pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Workers the StatefulSet runs (autoscaled: at least, the autoscaler's floor).
    pub replicas: i32,
    /// Ordinals below it keep their revision; `None`: every pod takes the newest.
    pub partition: Option<i32>,
    /// Workers added (the annotation's value).
    pub added: i32,
    /// Autoscaled: the worker count the change started from ([`SURGE_BASE_ANNOTATION`]);
    /// `None`: the spec's replicas.
    pub base: Option<i32>,
}

/// What the live worker StatefulSet and its pods tell about added pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// `spec.replicas` of the live StatefulSet.
    pub replicas: i32,
    /// Whether it carries [`SURGE_ANNOTATION`].
    pub surged: bool,
    /// [`SURGE_BASE_ANNOTATION`]'s value.
    pub base: Option<i32>,
    /// Whether every pod at or above the spec's replicas runs the newest revision ready,
    /// or is one no node fits (the StatefulSet's controller has seen its spec).
    pub added_settled: bool,
    /// Whether a pod at or above the spec's replicas exists (after the shrink: until it
    /// is gone, its claim's deletion depends on the retention policy).
    pub added_pods: bool,
}

/// The shape the StatefulSet takes, or `None` for the spec's plain shape.
pub fn shape(
    spec: &KnowledgeBaseSpec,
    status: Option<&KnowledgeBaseStatus>,
    live: Option<&Live>,
) -> Option<Shape> {
    let autoscaled = spec.autoscaling_enabled();
    let base = match autoscaled {
        true => {
            let live = live?;
            Some(live.base.unwrap_or(live.replicas))
        }
        false => None,
    };
    let wanted = base.unwrap_or(spec.replicas);
    let surge = spec.model_surge();
    let model = spec.embedding.model_ref();
    let rolling = status
        .and_then(|s| s.model.as_ref())
        .is_some_and(|m| m != &model);
    if rolling && surge > 0 {
        let replacing = status
            .and_then(|s| s.model_rollout.as_ref())
            .is_some_and(|r| r.to == model && r.phase == REPLACING);
        return Some(Shape {
            replicas: wanted + surge,
            partition: (!replacing).then_some(wanted),
            added: surge,
            base,
        });
    }
    let live = live?;
    if !live.surged {
        return None;
    }
    if live.replicas > wanted && !live.added_settled {
        return Some(Shape {
            replicas: live.replicas,
            partition: None,
            added: live.replicas - wanted,
            base,
        });
    }
    if autoscaled {
        // The autoscaler scales the added pods in like any other.
        return None;
    }
    // The shrink: the spec's replicas, still marked (and deleting the added pods' claims)
    // until the added pods are gone.
    (live.replicas > wanted || live.added_pods).then_some(Shape {
        replicas: wanted,
        partition: None,
        added: 0,
        base: None,
    })
}

/// The worker count an autoscaled KnowledgeBase's change started from, off the live
/// StatefulSet ([`SURGE_BASE_ANNOTATION`]): the ordinals at or above it were added.
pub fn base_of(statefulset: &StatefulSet) -> Option<i32> {
    let base = statefulset.annotations().get(SURGE_BASE_ANNOTATION)?;
    base.parse().ok()
}

/// Reads [`Live`] off the live StatefulSet and its pods (`wanted`: the spec's replicas;
/// autoscaled: the count the change started from, else the live count).
pub fn live(statefulset: &StatefulSet, pods: &[Pod], wanted: i32) -> Live {
    let replicas = statefulset
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = statefulset.status.clone().unwrap_or_default();
    let seen = statefulset.metadata.generation.is_some()
        && status.observed_generation == statefulset.metadata.generation;
    let name = statefulset.name_any();
    let settled = |ordinal: i32| {
        let pod = pods
            .iter()
            .find(|p| p.name_any() == format!("{name}-{ordinal}"));
        pod.is_some_and(|pod| {
            let newest = status.update_revision.is_some()
                && pod.labels().get("controller-revision-hash") == status.update_revision.as_ref();
            (newest && pods::is_ready(pod)) || pods::scheduler_refusal(pod).is_some()
        })
    };
    let ordinal = |pod: &Pod| {
        let pod_name = pod.name_any();
        let suffix = pod_name.strip_prefix(&name)?.strip_prefix('-')?;
        suffix.parse::<i32>().ok()
    };
    Live {
        replicas,
        surged: statefulset.annotations().contains_key(SURGE_ANNOTATION),
        base: base_of(statefulset),
        added_settled: seen && (wanted..replicas).all(settled),
        added_pods: pods.iter().filter_map(ordinal).any(|o| o >= wanted),
    }
}

/// [`Live`] for the KnowledgeBase's live worker StatefulSet, listing its pods only when it
/// has added ones.
pub async fn observe(
    client: &kube::Client,
    names: &Names,
    spec: &KnowledgeBaseSpec,
    statefulset: Option<&StatefulSet>,
) -> crate::Result<Option<Live>> {
    let Some(statefulset) = statefulset else {
        return Ok(None);
    };
    let wanted = match spec.autoscaling_enabled() {
        true => base_of(statefulset).unwrap_or_else(|| {
            let spec = statefulset.spec.as_ref();
            spec.and_then(|s| s.replicas).unwrap_or(1)
        }),
        false => spec.replicas,
    };
    if !statefulset.annotations().contains_key(SURGE_ANNOTATION) {
        return Ok(Some(live(statefulset, &[], wanted)));
    }
    let pods = super::status::pods_of(client, names, &names.selector_string()).await?;
    Ok(Some(live(statefulset, &pods, wanted)))
}

/// Gives the plan's worker StatefulSet `shape` (left as planned for `None`) with the
/// claims of scaled-down ordinals deleted, and lets the workers' PodDisruptionBudget count
/// the added pods as unavailable on top of its one: they are not ready until their
/// re-index swaps (hours on a large collection), and a budget of one would block every
/// node drain meanwhile. Autoscaled, the count goes to the autoscaler's floor instead,
/// and the claims keep their policy.
pub fn reshape(plan: &mut Plan, worker: &str, shape: Option<&Shape>) {
    let Some(shape) = shape else {
        return;
    };
    if shape.base.is_some() {
        if let Some(Child::HorizontalPodAutoscaler(hpa)) =
            plan.get_mut(ChildKind::HorizontalPodAutoscaler, worker)
        {
            if let Some(spec) = hpa.spec.as_mut() {
                spec.min_replicas = Some(spec.min_replicas.unwrap_or(1).max(shape.replicas));
                spec.max_replicas = spec.max_replicas.max(shape.replicas);
            }
        }
    }
    if let Some(Child::PodDisruptionBudget(pdb)) =
        plan.get_mut(ChildKind::PodDisruptionBudget, worker)
    {
        if let Some(spec) = pdb.spec.as_mut() {
            let allowed = match &spec.max_unavailable {
                Some(IntOrString::Int(n)) => *n,
                _ => 1,
            };
            spec.max_unavailable = Some(IntOrString::Int(allowed + shape.added));
        }
    }
    let Some(Child::StatefulSet(statefulset)) = plan.get_mut(ChildKind::StatefulSet, worker) else {
        return;
    };
    statefulset
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SURGE_ANNOTATION.to_string(), shape.added.to_string());
    if let Some(base) = shape.base {
        let annotations = statefulset
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(SURGE_BASE_ANNOTATION.to_string(), base.to_string());
    }
    if let Some(spec) = statefulset.spec.as_mut() {
        if shape.base.is_none() {
            spec.replicas = Some(shape.replicas);
            if let Some(retention) = spec.persistent_volume_claim_retention_policy.as_mut() {
                retention.when_scaled = Some("Delete".to_string());
            }
        }
        if let (Some(partition), Some(strategy)) = (shape.partition, spec.update_strategy.as_mut())
        {
            strategy.rolling_update = Some(RollingUpdateStatefulSetStrategy {
                partition: Some(partition),
                ..RollingUpdateStatefulSetStrategy::default()
            });
        }
    }
}

#[cfg(test)]
mod tests;
