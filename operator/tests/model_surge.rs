//! A change of the embedding model with added workers (`embedding.rollout.maxSurge`, 1 by
//! default with Redis), against an in-memory API server playing the StatefulSet
//! controller's part by hand: the worker StatefulSet grows by the added worker with the
//! rolling update's partition holding every current worker on the old model; the rollout
//! waits (and says why) while no node fits the added worker; once it serves the new model
//! the partition goes and the current workers are replaced; at the end the StatefulSet
//! shrinks back, deleting the added worker's claim with it (autoscaled: the autoscaler's
//! floor is raised instead and the count stays its own). A revert keeps the added worker until it runs the old model again (its
//! start cancels the re-index it owned). (The workers' side is tested in `kb-worker`; the
//! real-cluster run is `e2e/`.)

mod common;

use common::{
    cluster, converge, create, events, get, kb, reconcile_once, set_model, set_ready_replicas,
    set_rollout, status, worker_pod,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kb_operator::crd::ConditionType;
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::surge::{SURGE_ANNOTATION, SURGE_BASE_ANNOTATION};
use kb_operator::reconcile::Context;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

const SPEC: &str = "replicas: 2\nembedding:\n  device: cuda\nredis:\n  managed: {}\n";
const NEW_MODEL: &str = "pvc:models/e5";
const AUTOSCALED: &str = "replicas: 2\nembedding:\n  device: cuda\nredis:\n  managed: {}\n\
                          autoscaling:\n  minReplicas: 2\n  maxReplicas: 3\n";

/// "docs" (two GPU workers, managed Redis) deployed and serving model `image:/opt/kb/model`
/// on revision rev-2.
async fn serving() -> (Client, Arc<Context>) {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", SPEC)).await;
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(Metrics::default())));
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    worker_pod(&client, 0, "rev-2", true).await;
    worker_pod(&client, 1, "rev-2", true).await;
    set_rollout(&client, "docs-worker", 2, 2, true).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(
        status(&client).await.model.as_deref(),
        Some("image:/opt/kb/model")
    );
    (client, ctx)
}

/// The worker StatefulSet's replicas, partition and surge annotation.
async fn shape(client: &Client) -> (i32, i32, Option<String>) {
    let sts: StatefulSet = get(client, "docs-worker").await.unwrap();
    let annotation = sts.annotations().get(SURGE_ANNOTATION).cloned();
    let spec = sts.spec.unwrap();
    let partition = spec
        .update_strategy
        .and_then(|s| s.rolling_update)
        .and_then(|r| r.partition)
        .unwrap_or(0);
    (spec.replicas.unwrap(), partition, annotation)
}

/// The StatefulSet controller's report of its three pods (for the generation it has
/// now): `ready` ready, `updated` on the update revision, `[current, update]` revisions.
async fn report(client: &Client, ready: i32, updated: i32, revisions: [&str; 2]) {
    report_of(client, 3, ready, updated, revisions).await;
}

/// [`report`] of `replicas` pods.
async fn report_of(
    client: &Client,
    replicas: i32,
    ready: i32,
    updated: i32,
    [current, update]: [&str; 2],
) {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let sts: StatefulSet = get(client, "docs-worker").await.unwrap();
    let status = json!({"status": {"replicas": replicas, "readyReplicas": ready,
        "updatedReplicas": updated, "currentRevision": current, "updateRevision": update,
        "observedGeneration": sts.metadata.generation.unwrap()}});
    api.patch_status(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

/// The workers' PodDisruptionBudget's `maxUnavailable`.
async fn budget(client: &Client) -> IntOrString {
    let pdb: PodDisruptionBudget = get(client, "docs-worker").await.unwrap();
    pdb.spec.unwrap().max_unavailable.unwrap()
}

/// The worker StatefulSet's `persistentVolumeClaimRetentionPolicy.whenScaled`.
async fn claims_when_scaled(client: &Client) -> String {
    let sts: StatefulSet = get(client, "docs-worker").await.unwrap();
    let policy = sts.spec.unwrap().persistent_volume_claim_retention_policy;
    policy.unwrap().when_scaled.unwrap()
}

/// The StatefulSet controller removes the added pod after the shrink (with
/// `whenScaled: Delete` the garbage collector then deletes its claim); the operator then
/// drops the surge annotation and the policy goes back to `Retain`.
async fn added_pod_removed(client: &Client, ctx: &Arc<Context>) {
    assert_eq!(shape(client).await, (2, 0, Some("0".into())));
    assert_eq!(claims_when_scaled(client).await, "Delete");
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("docs-worker-2", &Default::default())
        .await
        .unwrap();
    reconcile_once(ctx, "docs").await.unwrap();
    assert_eq!(shape(client).await, (2, 0, None));
    assert_eq!(claims_when_scaled(client).await, "Retain");
}

/// The worker ConfigMap's pinned configurations (key -> the `model:` line of each), and
/// the key the live worker pod template mounts as its `config.yaml`.
async fn configs(client: &Client) -> (BTreeMap<String, String>, String) {
    let cm: ConfigMap = get(client, "docs-worker").await.unwrap();
    let pinned = cm
        .data
        .unwrap()
        .into_iter()
        .filter(|(key, _)| key.starts_with("config-"))
        .map(|(key, config)| {
            let model = config.lines().find(|l| l.starts_with("model:")).unwrap();
            (key, model.to_string())
        })
        .collect();
    let sts: StatefulSet = get(client, "docs-worker").await.unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "config");
    let items = volume.unwrap().config_map.unwrap().items.unwrap();
    (pinned, items[0].key.clone())
}

/// `status.modelRollout.phase`.
async fn phase(client: &Client) -> String {
    status(client)
        .await
        .model_rollout
        .expect("a model rollout")
        .phase
}

/// The added worker of the new model, pending: no node has a free GPU.
async fn unschedulable_pod(client: &Client, ordinal: i32, revision: &str) {
    worker_pod(client, ordinal, revision, false).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let refused = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable", "lastTransitionTime": "2026-01-01T00:00:00Z",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}});
    api.patch_status(
        &format!("docs-worker-{ordinal}"),
        &PatchParams::default(),
        &Patch::Merge(&refused),
    )
    .await
    .unwrap();
}

fn e5() -> Value {
    json!({"modelVolume": {"persistentVolumeClaim": {"claimName": "models"}, "subPath": "e5"}})
}

#[tokio::test]
async fn a_model_change_adds_a_worker_of_the_new_model_replaces_the_others_once_it_serves_and_shrinks_back(
) {
    let (client, ctx) = serving().await;
    assert_eq!(
        shape(&client).await,
        (2, 0, None),
        "no change: as the spec says"
    );

    let (before, old_key) = configs(&client).await;
    assert_eq!(before.len(), 1, "{before:?}");

    set_model(&client, e5()).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(
        shape(&client).await,
        (3, 2, Some("1".into())),
        "one worker added; the current two held on their revision"
    );
    // The new template mounts the new configuration; a current worker that restarts
    // meanwhile still finds its own (the old model), not the new one.
    let (during, new_key) = configs(&client).await;
    assert_ne!(new_key, old_key);
    assert_eq!(during[&new_key], "model: /models/e5");
    assert_eq!(during[&old_key], before[&old_key]);
    assert_eq!(during[&old_key], "model: /opt/kb/model");
    assert_eq!(
        budget(&client).await,
        IntOrString::Int(2),
        "the added worker, unready while it re-indexes, does not use up the budget"
    );
    let change = status(&client)
        .await
        .model_rollout
        .expect("a model rollout");
    assert_eq!(
        (
            change.to.as_str(),
            change.phase.as_str(),
            change.surge_replicas,
            change.surge_gpus
        ),
        (NEW_MODEL, "Reindexing", 1, 1)
    );

    // No node has a GPU free for it: the rollout waits and says why; nothing is degraded.
    unschedulable_pod(&client, 2, "rev-3").await;
    report(&client, 2, 0, ["rev-2", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let waiting = status(&client).await;
    let change = waiting.model_rollout.clone().unwrap();
    assert_eq!(change.phase, "WaitingForCapacity");
    assert!(
        change
            .message
            .as_deref()
            .unwrap()
            .contains("Insufficient nvidia.com/gpu"),
        "{change:?}"
    );
    let degraded = waiting.condition(ConditionType::Degraded).unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    let progressing = waiting.condition(ConditionType::Progressing).unwrap();
    assert!(
        progressing.message.contains("adds 1 worker(s) with 1 GPUs")
            && progressing.message.contains("Insufficient nvidia.com/gpu"),
        "{progressing:?}"
    );
    assert_eq!(shape(&client).await, (3, 2, Some("1".into())));
    assert!(events(&client)
        .await
        .contains(&"ModelRolloutWaitingForCapacity".to_string()));

    // Scheduled: it re-indexes (not ready) while the current two serve.
    worker_pod(&client, 2, "rev-3", false).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Reindexing");
    assert_eq!(shape(&client).await.1, 2);

    // It serves the new model: the partition goes, the current two are replaced.
    worker_pod(&client, 2, "rev-3", true).await;
    report(&client, 3, 1, ["rev-2", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Replacing");
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(shape(&client).await, (3, 0, Some("1".into())));
    assert_eq!(claims_when_scaled(&client).await, "Delete");
    // The controller has not seen the partition go yet: the phase and the shape hold.
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Replacing");
    assert_eq!(shape(&client).await, (3, 0, Some("1".into())));

    // Every worker runs the new model ready: the change is done and the added one goes.
    worker_pod(&client, 1, "rev-3", true).await;
    worker_pod(&client, 0, "rev-3", true).await;
    assert!(
        configs(&client).await.0.contains_key(&old_key),
        "kept while pods of the old revision remain"
    );
    report(&client, 3, 3, ["rev-3", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    // Every pod on the new revision: the old configuration, which no pod can mount any
    // more, goes.
    let (after, key) = configs(&client).await;
    assert_eq!(key, new_key);
    assert_eq!(after.keys().collect::<Vec<_>>(), vec![&new_key]);
    let done = status(&client).await;
    assert_eq!(
        (done.model.as_deref(), done.model_rollout),
        (Some(NEW_MODEL), None)
    );
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(budget(&client).await, IntOrString::Int(1));
    added_pod_removed(&client, &ctx).await;
    let reasons = events(&client).await;
    for reason in [
        "ModelRolloutStarted",
        "ModelRolloutServing",
        "ModelRolloutFinished",
    ] {
        assert!(reasons.contains(&reason.to_string()), "{reasons:?}");
    }
}

#[tokio::test]
async fn a_revert_keeps_the_added_worker_until_it_runs_the_old_model_again() {
    let (client, ctx) = serving().await;
    set_model(&client, e5()).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    worker_pod(&client, 2, "rev-3", false).await;
    report(&client, 2, 1, ["rev-2", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Reindexing");

    // Reverted: the template is rev-2's again; the added pod still runs the other model
    // and owns its re-index, so it stays until it has restarted on rev-2.
    set_model(&client, json!({"modelVolume": null})).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let after = status(&client).await;
    assert_eq!(
        (after.model.as_deref(), after.model_rollout),
        (Some("image:/opt/kb/model"), None)
    );
    assert!(events(&client)
        .await
        .contains(&"ModelRolloutReverted".to_string()));
    report(&client, 2, 2, ["rev-2", "rev-2"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(
        shape(&client).await,
        (3, 0, Some("1".into())),
        "kept, every pod on the newest revision"
    );
    // Restarted on rev-2, it cancelled its job and is ready: now it goes.
    worker_pod(&client, 2, "rev-2", true).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    added_pod_removed(&client, &ctx).await;
}

#[tokio::test]
async fn an_added_worker_no_node_fits_does_not_hold_a_revert() {
    let (client, ctx) = serving().await;
    set_model(&client, e5()).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    unschedulable_pod(&client, 2, "rev-3").await;
    set_model(&client, json!({"modelVolume": null})).await;
    report(&client, 2, 2, ["rev-2", "rev-2"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    added_pod_removed(&client, &ctx).await;
}

/// The autoscaler sets the worker count (in a cluster through the scale subresource).
async fn autoscaler_scales(client: &Client, replicas: i32) {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
}

/// The workers' HorizontalPodAutoscaler's `minReplicas` and `maxReplicas`.
async fn autoscaler_bounds(client: &Client) -> (i32, i32) {
    let hpa: HorizontalPodAutoscaler = get(client, "docs-worker").await.unwrap();
    let spec = hpa.spec.unwrap();
    (spec.min_replicas.unwrap(), spec.max_replicas)
}

#[tokio::test]
async fn an_autoscaled_change_adds_a_worker_above_the_autoscalers_count_and_leaves_the_count_to_it()
{
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", AUTOSCALED)).await;
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(Metrics::default())));
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    // Under load the autoscaler runs three workers.
    autoscaler_scales(&client, 3).await;
    for ordinal in 0..3 {
        worker_pod(&client, ordinal, "rev-2", true).await;
    }
    report_of(&client, 3, 3, 3, ["rev-2", "rev-2"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(autoscaler_bounds(&client).await, (2, 3));

    set_model(&client, e5()).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        sts.annotations()
            .get(SURGE_BASE_ANNOTATION)
            .map(String::as_str),
        Some("3"),
        "the count the change started from"
    );
    assert_eq!(
        shape(&client).await,
        (3, 3, Some("1".into())),
        "the three held on the old model; the count is still the autoscaler's"
    );
    assert_eq!(
        autoscaler_bounds(&client).await,
        (4, 4),
        "the autoscaler's floor (and ceiling) make room for the added worker"
    );
    assert_eq!(claims_when_scaled(&client).await, "Retain");
    assert_eq!(budget(&client).await, IntOrString::Int(2));
    assert_eq!(phase(&client).await, "Reindexing");

    // The autoscaler adds the fourth; no node has a GPU for it: the rollout waits.
    autoscaler_scales(&client, 4).await;
    unschedulable_pod(&client, 3, "rev-3").await;
    report_of(&client, 4, 3, 0, ["rev-2", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "WaitingForCapacity");
    let degraded = status(&client).await;
    let degraded = degraded.condition(ConditionType::Degraded).unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    assert_eq!(shape(&client).await, (4, 3, Some("1".into())));

    // Scheduled, it re-indexes, then serves the new model: the three are replaced.
    worker_pod(&client, 3, "rev-3", false).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Reindexing");
    worker_pod(&client, 3, "rev-3", true).await;
    report_of(&client, 4, 4, 1, ["rev-2", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(phase(&client).await, "Replacing");
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(shape(&client).await, (4, 0, Some("1".into())));
    assert_eq!(autoscaler_bounds(&client).await, (4, 4));

    for ordinal in 0..3 {
        worker_pod(&client, ordinal, "rev-3", true).await;
    }
    report_of(&client, 4, 4, 4, ["rev-3", "rev-3"]).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let done = status(&client).await;
    assert_eq!(
        (done.model.as_deref(), done.model_rollout),
        (Some(NEW_MODEL), None)
    );
    // Done: the autoscaler's bounds are the spec's again and it scales in as it likes.
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(autoscaler_bounds(&client).await, (2, 3));
    assert_eq!(shape(&client).await, (4, 0, None));
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert!(!sts.annotations().contains_key(SURGE_BASE_ANNOTATION));
    assert_eq!(budget(&client).await, IntOrString::Int(1));
}
