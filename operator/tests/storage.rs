//! Day 2 storage against an in-memory API that validates like a real server (a
//! StatefulSet's claim templates cannot be updated; a claim grows only where its class
//! allows): raising `spec.storage.size` expands every existing claim, replaces the
//! StatefulSet with its pods orphaned, and other changes made at the same time still
//! apply; a class without expansion is reported as Degraded and blocks nothing else.

mod common;

use common::{cluster_with_model, context, converge, create, get, kb, reconcile_once};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kb_operator::crd::{ConditionType, KnowledgeBase};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const SPEC: &str =
    "embedding:\n  device: cpu\nstorage:\n  size: 10Gi\n  storageClassName: standard\n";

/// A claim as the StatefulSet controller creates it from the template.
async fn claim(client: &Client, name: &str, size: &str) {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/instance": "docs",
            "app.kubernetes.io/managed-by": "kb-operator",
        }},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": size}}},
        "status": {"phase": "Bound", "capacity": {"storage": size}},
    }))
    .unwrap();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &claim).await.unwrap();
}

async fn requested(client: &Client, name: &str) -> String {
    let claim: PersistentVolumeClaim = get(client, name).await.unwrap();
    claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"]
        .0
        .clone()
}

fn template_size(sts: &StatefulSet) -> String {
    let templates = sts.spec.as_ref().unwrap().volume_claim_templates.as_ref();
    let spec = templates.unwrap()[0].spec.as_ref().unwrap();
    spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"]
        .0
        .clone()
}

fn image(sts: &StatefulSet) -> String {
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0].image.clone().unwrap()
}

async fn edit_spec(client: &Client, spec: serde_json::Value) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    api.patch(
        "docs",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await
    .unwrap();
}

async fn degraded(client: &Client) -> (String, String, String) {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    let status = kb.status.unwrap();
    let c = status.condition(ConditionType::Degraded).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn raising_the_size_expands_every_claim_and_replaces_the_statefulset() {
    let (client, writes, _) = cluster_with_model().await;
    create(&client, &kb("docs", SPEC)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    // Two running replicas' claims and one of a scaled-down ordinal (retained).
    for n in 0..3 {
        claim(&client, &format!("data-docs-worker-{n}"), "10Gi").await;
    }
    // An unrelated claim whose name only looks similar is left alone.
    claim(&client, "data-docs-worker-old", "10Gi").await;

    // Grow (written non-canonically) and change the image in the same edit.
    edit_spec(
        &client,
        json!({"storage": {"size": "20480Mi"}, "image": "registry.example/kb-worker:2"}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;

    for n in 0..3 {
        assert_eq!(
            requested(&client, &format!("data-docs-worker-{n}")).await,
            "20Gi"
        );
    }
    assert_eq!(requested(&client, "data-docs-worker-old").await, "10Gi");
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(template_size(&sts), "20Gi");
    assert_eq!(image(&sts), "registry.example/kb-worker:2");
    assert_eq!(
        writes.orphaning_deletes(),
        vec!["docs-worker".to_string()],
        "the StatefulSet is replaced with its pods orphaned, once"
    );
    assert_eq!(degraded(&client).await.0, "False");
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    let storage = kb.status.unwrap().storage.unwrap();
    assert_eq!(storage.requested.as_deref(), Some("20Gi"));
    let names: Vec<_> = storage.claims.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"data-docs-worker-0"), "{names:?}");
    let first = &storage.claims[0];
    assert_eq!(first.requested.as_deref(), Some("20Gi"));
    // The volume has not grown yet (no CSI driver here): capacity still shows 10Gi.
    assert_eq!(first.capacity.as_deref(), Some("10Gi"));
}

#[tokio::test]
async fn a_class_without_expansion_is_degraded_and_blocks_nothing_else() {
    let (client, writes, model) = cluster_with_model().await;
    model.refuse_expansion("standard");
    create(&client, &kb("docs", SPEC)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    claim(&client, "data-docs-worker-0", "10Gi").await;

    edit_spec(
        &client,
        json!({"storage": {"size": "20Gi"}, "image": "registry.example/kb-worker:2"}),
    )
    .await;
    reconcile_once(&ctx, "docs").await.unwrap();
    reconcile_once(&ctx, "docs").await.unwrap();

    let (status, reason, message) = degraded(&client).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "StorageExpansionRefused")
    );
    assert!(
        message.contains("data-docs-worker-0") && message.contains("allowVolumeExpansion"),
        "{message}"
    );
    assert_eq!(requested(&client, "data-docs-worker-0").await, "10Gi");
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        template_size(&sts),
        "10Gi",
        "the live claim template is kept"
    );
    assert_eq!(
        image(&sts),
        "registry.example/kb-worker:2",
        "the image change applied"
    );
    assert!(writes.orphaning_deletes().is_empty());

    // Setting the size back clears the condition.
    edit_spec(&client, json!({"storage": {"size": "10Gi"}})).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(degraded(&client).await.0, "False");
}

#[tokio::test]
async fn a_claim_larger_than_the_spec_is_never_shrunk() {
    // The CRD refuses shrinking at admission; a spec that got past it (an older CRD, a
    // claim grown by hand) is reported and the claim is left as it is.
    let (client, writes, _) = cluster_with_model().await;
    create(&client, &kb("docs", SPEC)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    claim(&client, "data-docs-worker-0", "30Gi").await;
    edit_spec(&client, json!({"storage": {"size": "20Gi"}})).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let (status, reason, _) = degraded(&client).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "StorageShrinkRefused")
    );
    assert_eq!(requested(&client, "data-docs-worker-0").await, "30Gi");
}

#[tokio::test]
async fn bootstrapping_several_replicas_from_a_claim_one_node_can_mount_is_refused() {
    let spec = "embedding:\n  device: cpu\nreplicas: 2\nredis:\n  managed: {}\nbootstrap:\n  fromBackup:\n    destination:\n      pvc:\n        claimName: backups\n";
    for (modes, refused) in [(vec!["ReadWriteOnce"], true), (vec!["ReadOnlyMany"], false)] {
        let (client, writes, _) = cluster_with_model().await;
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "backups"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": "5Gi"}}},
        }))
        .unwrap();
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
        create(&client, &kb("docs", spec)).await;
        converge(&context(client.clone()), &writes, "docs").await;
        let (status, reason, message) = degraded(&client).await;
        if refused {
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("True", "BootstrapClaimNotShared")
            );
            assert!(
                message.contains("backups") && message.contains("ReadWriteOnce"),
                "{message}"
            );
            assert!(
                get::<StatefulSet>(&client, "docs-redis").await.is_none(),
                "nothing applied"
            );
        } else {
            assert_eq!(status, "False", "{reason}: {message}");
        }
    }
}
