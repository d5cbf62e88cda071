//! Handing `spec.replicas` of the worker StatefulSet between the operator and the
//! HorizontalPodAutoscaler never lowers the running count, in either direction. The
//! in-memory API tracks server-side apply field ownership; a field that no manager owns
//! any more is what a real API server would reset.

mod common;

use common::{cluster_with_managed_fields, context, converge, create, get, kb};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kb_operator::crd::KnowledgeBase;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const FIXED: &str =
    "embedding:\n  device: cpu\nreplicas: 3\nredis:\n  external:\n    url: redis://r:6379\n";
const AUTOSCALED: &str = "embedding:\n  device: cpu\nreplicas: 3\nredis:\n  external:\n    url: redis://r:6379\nautoscaling:\n  minReplicas: 2\n  maxReplicas: 8\n";

/// Managers whose apply entries own `spec.replicas` of the worker StatefulSet.
fn replicas_owners(sts: &StatefulSet) -> Vec<String> {
    sts.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
            })
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

async fn set_autoscaling(client: &kube::Client, spec: serde_json::Value) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    api.patch(
        "docs",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn turning_autoscaling_on_keeps_an_owner_of_the_running_count() {
    let (client, writes) = cluster_with_managed_fields().await;
    create(&client, &kb("docs", FIXED)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(replicas_owners(&sts), vec!["kb-operator".to_string()]);

    set_autoscaling(
        &client,
        json!({"autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 8}}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    // The operator no longer sends replicas, yet the field keeps an owner (so it is not
    // reset to 1) and its value is the running count.
    assert_eq!(
        replicas_owners(&sts),
        vec!["kb-operator-replicas-handover".to_string()]
    );
    assert_eq!(sts.spec.unwrap().replicas, Some(3));
    assert!(get::<HorizontalPodAutoscaler>(&client, "docs-worker")
        .await
        .is_some());
}

#[tokio::test]
async fn turning_autoscaling_off_keeps_the_autoscalers_count() {
    let (client, writes) = cluster_with_managed_fields().await;
    create(&client, &kb("docs", AUTOSCALED)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    // The HPA scaled the workers to 6.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sts.patch(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 6}})),
    )
    .await
    .unwrap();

    set_autoscaling(&client, json!({"autoscaling": null})).await;
    converge(&ctx, &writes, "docs").await;
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(
        kb.spec.replicas, 6,
        "spec.replicas raised to the running count"
    );
    let live: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(live.spec.unwrap().replicas, Some(6));
    assert!(get::<HorizontalPodAutoscaler>(&client, "docs-worker")
        .await
        .is_none());

    // Below the running count nothing is raised: spec.replicas 8 applies as is.
    set_autoscaling(&client, json!({"replicas": 8})).await;
    converge(&ctx, &writes, "docs").await;
    let live: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(live.spec.unwrap().replicas, Some(8));
}
