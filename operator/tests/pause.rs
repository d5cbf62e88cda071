//! `spec.paused`: the operator leaves the children alone, except that backups are
//! suspended and the autoscaler pinned to the replicas running, until unpaused.

mod common;

use common::{cluster, condition, context, converge, create, get, kb, set_ready_replicas};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ConfigMap;
use kb_operator::crd::{ConditionType, KnowledgeBase};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const MINIMAL: &str = "embedding:\n  device: cpu\n";
const FULL: &str = "embedding:\n  device: cpu\nredis:\n  managed: {}\nautoscaling:\n  minReplicas: 2\n  maxReplicas: 4\nbackup:\n  schedule: '@daily'\n  destination:\n    pvc:\n      claimName: backups\n";

async fn set_paused(client: &Client, paused: bool) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    api.patch(
        "docs",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"paused": paused}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn paused_knowledge_base_is_left_alone() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    set_paused(&client, true).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .delete("docs-worker", &DeleteParams::default())
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert!(get::<ConfigMap>(&client, "docs-worker").await.is_none());
    assert_eq!(
        condition(&client, ConditionType::Progressing).await,
        ("False".into(), "Paused".into())
    );
}

#[tokio::test]
async fn pausing_suspends_backups_and_pins_the_autoscaler_until_unpaused() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", FULL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    // The autoscaler runs 3 replicas now.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sts.patch(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let state = || async {
        let cron: CronJob = get(&client, "docs-backup").await.unwrap();
        let hpa: HorizontalPodAutoscaler = get(&client, "docs-worker").await.unwrap();
        let hpa = hpa.spec.unwrap();
        (
            cron.spec.unwrap().suspend,
            hpa.min_replicas,
            hpa.max_replicas,
        )
    };
    assert_eq!(state().await, (Some(false), Some(2), 4));
    set_paused(&client, true).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        state().await,
        (Some(true), Some(3), 3),
        "suspended and pinned"
    );
    set_paused(&client, false).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(state().await, (Some(false), Some(2), 4), "restored");
}
