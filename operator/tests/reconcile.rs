//! Reconcile against an in-memory API server: convergence, idempotence, drift repair,
//! cleanup of disabled features, status from child state, and fault tolerance. Pausing
//! is in pause.rs.

mod common;

use common::{
    cluster, condition, context, converge, create, get, inventory, kb, reconcile_once,
    set_ready_replicas, set_rollout, Faults,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kb_operator::crd::{ConditionType, KnowledgeBase};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

const MINIMAL: &str = "embedding:\n  device: cpu\n";
const FULL: &str = "embedding:\n  device: cpu\nredis:\n  managed: {}\nautoscaling:\n  minReplicas: 2\n  maxReplicas: 4\nbackup:\n  schedule: '@daily'\n  destination:\n    pvc:\n      claimName: backups\n";

fn minimal_children() -> Vec<&'static str> {
    vec![
        "ConfigMap/docs-worker",
        "NetworkPolicy/docs-default-deny",
        "NetworkPolicy/docs-worker",
        "Secret/docs-api-keys",
        "Service/docs",
        "Service/docs-headless",
        "ServiceAccount/docs-worker",
        "StatefulSet/docs-worker",
    ]
}

#[tokio::test]
async fn converges_from_empty_to_every_child() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let expected: Vec<String> = minimal_children().into_iter().map(String::from).collect();
    assert_eq!(
        inventory(&client).await.into_iter().collect::<Vec<_>>(),
        expected
    );
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(
        kb.metadata.finalizers,
        Some(vec!["knowledge.dev/cleanup".to_string()])
    );
    let status = kb.status.unwrap();
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://docs.default.svc:8080")
    );
    assert!(status
        .selector
        .unwrap()
        .contains("app.kubernetes.io/instance=docs"));
}

#[tokio::test]
async fn second_reconcile_changes_nothing() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", FULL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let before: KnowledgeBase = get(&client, "docs").await.unwrap();
    writes.take();
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(
        writes.take(),
        0,
        "a converged KnowledgeBase must cause no writes"
    );
    let after: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(before.status, after.status, "status must not churn");
}

#[tokio::test]
async fn deleted_child_is_recreated_and_edited_child_is_reverted() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .delete("docs-worker", &DeleteParams::default())
        .await
        .unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "evil:latest"}]}}}});
    sts.patch("docs-worker", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert!(get::<ConfigMap>(&client, "docs-worker").await.is_some());
    let image = get::<StatefulSet>(&client, "docs-worker")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some(kb_operator::crd::DEFAULT_IMAGE));
}

#[tokio::test]
async fn disabling_features_deletes_their_children() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", FULL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let all = inventory(&client).await;
    for child in [
        "CronJob/docs-backup",
        "HorizontalPodAutoscaler/docs-worker",
        "StatefulSet/docs-redis",
        "Secret/docs-redis",
        "PodDisruptionBudget/docs-worker",
        "NetworkPolicy/docs-backup",
    ] {
        assert!(all.contains(child), "{child} missing from {all:?}");
    }
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let off = json!({"spec": {"redis": null, "autoscaling": null, "backup": null}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    let expected: Vec<String> = minimal_children().into_iter().map(String::from).collect();
    assert_eq!(
        inventory(&client).await.into_iter().collect::<Vec<_>>(),
        expected
    );
}

#[tokio::test]
async fn objects_not_labelled_as_children_are_never_deleted() {
    let (client, writes) = cluster(None).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("docs-redis".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    create(&client, &kb("docs", MINIMAL)).await;
    converge(&context(client.clone()), &writes, "docs").await;
    assert!(get::<Secret>(&client, "docs-redis").await.is_some());
}

#[tokio::test]
async fn status_follows_child_readiness() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb(
            "docs",
            "embedding:\n  device: cpu\nreplicas: 2\nredis:\n  managed: {}\n",
        ),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "ReplicasNotReady".into())
    );
    assert_eq!(
        condition(&client, ConditionType::Progressing).await,
        ("True".into(), "RollingOut".into())
    );
    // A first deploy waits for Redis before it creates the workers.
    assert!(get::<StatefulSet>(&client, "docs-worker").await.is_none());
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    assert!(get::<StatefulSet>(&client, "docs-worker").await.is_some());
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "ReplicasNotReady".into())
    );
    set_ready_replicas(&client, "docs-worker", 2).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("True".into(), "AllReplicasReady".into())
    );
    assert_eq!(
        condition(&client, ConditionType::Progressing).await,
        ("False".into(), "Converged".into())
    );
    assert_eq!(
        condition(&client, ConditionType::Degraded).await,
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(
        condition(&client, ConditionType::RedisReady).await,
        ("True".into(), "ManagedRedisReady".into())
    );
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(kb.status.unwrap().ready_replicas, 2);
    // Redis going away later is reported; the workers are not held back any more.
    set_ready_replicas(&client, "docs-redis", 0).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "RedisNotReady".into())
    );
}

#[tokio::test]
async fn invalid_spec_is_degraded_with_a_reason_and_creates_nothing() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb("docs", "embedding:\n  device: cpu\nreplicas: 3\n"),
    )
    .await;
    converge(&context(client.clone()), &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Degraded).await,
        ("True".into(), "RedisRequired".into())
    );
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "RedisRequired".into())
    );
    assert!(inventory(&client).await.is_empty());
}

#[tokio::test]
async fn missing_referenced_secret_is_degraded() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb(
            "docs",
            "embedding:\n  device: cpu\nauth:\n  apiKeysSecretRef: my-keys\n",
        ),
    )
    .await;
    converge(&context(client.clone()), &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Degraded).await,
        ("True".into(), "SecretNotFound".into())
    );
}

#[tokio::test]
async fn generated_api_keys_are_never_regenerated() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let first = get::<Secret>(&client, "docs-api-keys").await.unwrap().data;
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .delete("docs-worker", &DeleteParams::default())
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        get::<Secret>(&client, "docs-api-keys").await.unwrap().data,
        first
    );
}

#[tokio::test]
async fn injected_errors_and_conflicts_still_converge_without_duplicates() {
    let (client, writes) = cluster(Some(Faults { every: 40 })).await;
    create(&client, &kb("docs", FULL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    let keys = get::<Secret>(&client, "docs-api-keys").await.unwrap().data;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        get::<Secret>(&client, "docs-api-keys").await.unwrap().data,
        keys
    );
    let all = inventory(&client).await;
    assert_eq!(all.len(), 17, "{all:?}");
    assert!(
        writes.faults() >= 3,
        "only {} faults injected",
        writes.faults()
    );
    assert_eq!(condition(&client, ConditionType::Degraded).await.0, "False");
}

#[tokio::test]
async fn removing_a_field_from_the_spec_sends_the_child_without_it() {
    let (client, writes) = cluster(None).await;
    let with = "embedding:\n  device: cpu\nnodeSelector:\n  pool: inference\n";
    create(&client, &kb("docs", with)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let hash =
        |sts: StatefulSet| sts.metadata.annotations.unwrap()["knowledge.dev/desired-hash"].clone();
    let before = hash(get::<StatefulSet>(&client, "docs-worker").await.unwrap());
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let off = json!({"spec": {"nodeSelector": null}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    // The desired StatefulSet is now a subset of the live one (the in-memory API merges,
    // so the old selector stays there); it must still be written, because server-side
    // apply removes the fields a manager stops sending.
    writes.take();
    reconcile_once(&ctx, "docs").await.unwrap();
    assert!(writes.take() > 0, "the removal was not sent");
    let after = hash(get::<StatefulSet>(&client, "docs-worker").await.unwrap());
    assert_ne!(before, after);
    // And once applied, nothing is written again.
    converge(&ctx, &writes, "docs").await;
    writes.take();
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(writes.take(), 0);
}

#[tokio::test]
async fn an_object_of_someone_else_is_not_adopted_and_the_rest_still_converges() {
    let (client, writes) = cluster(None).await;
    let theirs = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("docs-worker".into()),
            ..Default::default()
        },
        data: Some([("owner".to_string(), "another team".to_string())].into()),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    let result = reconcile_once(&ctx, "docs").await;
    assert!(result.is_err(), "a refused child is retried");
    // Their ConfigMap is untouched, every other child exists, and the status names it.
    let cm: ConfigMap = get(&client, "docs-worker").await.unwrap();
    assert_eq!(cm.data, theirs.data);
    assert!(get::<StatefulSet>(&client, "docs-worker").await.is_some());
    assert_eq!(
        condition(&client, ConditionType::Degraded).await,
        ("True".into(), "AdoptionRefused".into())
    );
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    let degraded = kb.status.unwrap();
    let message = &degraded.condition(ConditionType::Degraded).unwrap().message;
    assert!(message.contains("ConfigMap docs-worker"), "{message}");
    let _ = writes;
}

#[tokio::test]
async fn ready_waits_for_a_rollout_to_reach_every_replica() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb("docs", "embedding:\n  device: cpu\nreplicas: 2\nredis:\n  external:\n    url: redis://r:6379\n"),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-worker", 2).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("True".into(), "AllReplicasReady".into())
    );
    // A new image: the StatefulSet's spec changes; its controller has not caught up yet.
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let image = json!({"spec": {"image": "ghcr.io/knowledge-dev/kb-worker:next"}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "RolloutPending".into())
    );
    // Both old pods are still ready, one runs the new revision.
    set_rollout(&client, "docs-worker", 2, 1, true).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("False".into(), "RollingOut".into())
    );
    assert_eq!(
        condition(&client, ConditionType::Progressing).await,
        ("True".into(), "RollingOut".into())
    );
    set_rollout(&client, "docs-worker", 2, 2, true).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, ConditionType::Ready).await,
        ("True".into(), "AllReplicasReady".into())
    );
}

#[tokio::test]
async fn monitoring_objects_follow_spec_monitoring() {
    use kb_operator::reconcile::build::{PrometheusRule, ServiceMonitor};
    let (client, writes) = cluster(None).await;
    let spec = "embedding:\n  device: cpu\nmonitoring:\n  labels: {release: prom}\n";
    create(&client, &kb("docs", spec)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let monitor = get::<ServiceMonitor>(&client, "docs-worker").await.unwrap();
    assert_eq!(monitor.metadata.labels.unwrap()["release"], "prom");
    assert!(get::<PrometheusRule>(&client, "docs-worker")
        .await
        .is_some());
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let off = json!({"spec": {"monitoring": null}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert!(get::<ServiceMonitor>(&client, "docs-worker")
        .await
        .is_none());
    assert!(get::<PrometheusRule>(&client, "docs-worker")
        .await
        .is_none());
}
