//! Deletion: the finalizer applies `spec.storage.reclaimPolicy` to the data volumes and
//! then lets the KnowledgeBase go.

mod common;

use common::{cluster, context, converge, create, get, kb};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kb_operator::crd::KnowledgeBase;
use kb_operator::reconcile::{reconcile, Context};
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::Arc;

const MINIMAL: &str = "embedding:\n  device: cpu\n";

async fn create_claim(client: &Client, labels: &[(&str, &str)]) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let mut claim = PersistentVolumeClaim::default();
    claim.metadata.name = Some("data-docs-worker-0".into());
    claim.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    claims.create(&PostParams::default(), &claim).await.unwrap();
}

/// The in-memory server deletes at once instead of setting deletionTimestamp while
/// finalizers remain, so hand the reconciler the object as a real server would.
async fn reconcile_deletion(client: &Client, ctx: &Arc<Context>) {
    let mut deleting: KnowledgeBase = get(client, "docs").await.unwrap();
    deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    reconcile(Arc::new(deleting), ctx.clone()).await.unwrap();
}

#[tokio::test]
async fn reclaim_policy_delete_removes_claims_and_the_finalizer() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb(
            "docs",
            &format!("{MINIMAL}storage:\n  reclaimPolicy: Delete\n"),
        ),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    create_claim(
        &client,
        &[
            ("app.kubernetes.io/instance", "docs"),
            ("app.kubernetes.io/managed-by", "kb-operator"),
        ],
    )
    .await;
    reconcile_deletion(&client, &ctx).await;
    assert!(get::<PersistentVolumeClaim>(&client, "data-docs-worker-0")
        .await
        .is_none());
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert!(
        kb.metadata.finalizers.unwrap_or_default().is_empty(),
        "finalizer removed"
    );
}

#[tokio::test]
async fn reclaim_policy_retain_keeps_claims() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", MINIMAL)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    create_claim(
        &client,
        &[
            ("app.kubernetes.io/instance", "docs"),
            ("app.kubernetes.io/managed-by", "kb-operator"),
        ],
    )
    .await;
    reconcile_deletion(&client, &ctx).await;
    assert!(get::<PersistentVolumeClaim>(&client, "data-docs-worker-0")
        .await
        .is_some());
}
