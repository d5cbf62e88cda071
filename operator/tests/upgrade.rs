//! Operator upgrades against an in-memory API: the worker image a KnowledgeBase runs is
//! kept across an operator upgrade (`status.workerImage`), `updatePolicy: supervised`
//! waits for an approval and reports `UpdateAvailable`, and rollouts the operator causes
//! run on one Ready KnowledgeBase at a time while changes a spec asks for go through.

mod common;

use common::{cluster, context, converge, create, get, kb, reconcile_once, set_ready_replicas};
use k8s_openapi::api::apps::v1::StatefulSet;
use kb_operator::crd::{ConditionType, KnowledgeBase, DEFAULT_IMAGE};
use kb_operator::reconcile::upgrade::{
    APPROVE_ANNOTATION, SPEC_GENERATION_ANNOTATION, TEMPLATE_HASH_ANNOTATION,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

fn image(sts: &StatefulSet) -> String {
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0].image.clone().unwrap()
}

async fn condition(client: &Client, name: &str, kind: ConditionType) -> (String, String) {
    let kb: KnowledgeBase = get(client, name).await.unwrap();
    let status = kb.status.unwrap();
    let c = status.condition(kind).unwrap();
    (c.status.clone(), c.reason.clone())
}

/// Makes `<name>-worker` look like an older operator made it: another image, no
/// template annotations, and a status that never recorded the image.
async fn made_by_an_older_operator(client: &Client, name: &str, old_image: &str) {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let patch = json!({
        "metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: null, SPEC_GENERATION_ANNOTATION: null}},
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": old_image}]}}},
    });
    sts.patch(
        &format!("{name}-worker"),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let status = json!({"status": {"workerImage": null}});
    kbs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test]
async fn supervised_keeps_the_running_image_until_the_update_is_approved() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb(
            "docs",
            "embedding:\n  device: cpu\nupdatePolicy: supervised\n",
        ),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let kb_now: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(
        kb_now.status.unwrap().worker_image.as_deref(),
        Some(DEFAULT_IMAGE),
        "a new KnowledgeBase takes this release's image"
    );

    made_by_an_older_operator(&client, "docs", "ghcr.io/knowledge-dev/kb-worker:0.0.9").await;
    set_ready_replicas(&client, "docs-worker", 1).await;
    converge(&ctx, &writes, "docs").await;
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        image(&sts),
        "ghcr.io/knowledge-dev/kb-worker:0.0.9",
        "no restart on upgrade"
    );
    let kb_now: KnowledgeBase = get(&client, "docs").await.unwrap();
    let status = kb_now.status.unwrap();
    assert_eq!(
        status.worker_image.as_deref(),
        Some("ghcr.io/knowledge-dev/kb-worker:0.0.9")
    );
    assert_eq!(
        status.available_worker_image.as_deref(),
        Some(DEFAULT_IMAGE)
    );
    assert_eq!(
        condition(&client, "docs", ConditionType::UpdateAvailable).await,
        ("True".into(), "UpdateAvailable".into())
    );

    // Approving the image moves to it.
    set_ready_replicas(&client, "docs-worker", 1).await;
    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let approve = json!({"metadata": {"annotations": {APPROVE_ANNOTATION: DEFAULT_IMAGE}}});
    kbs.patch("docs", &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(image(&sts), DEFAULT_IMAGE);
    assert_eq!(
        condition(&client, "docs", ConditionType::UpdateAvailable)
            .await
            .1,
        "UpToDate"
    );
}

#[tokio::test]
async fn operator_caused_rollouts_run_on_one_ready_knowledge_base_at_a_time() {
    let (client, writes) = cluster(None).await;
    let ctx = context(client.clone());
    for name in ["a", "b"] {
        create(&client, &kb(name, "embedding:\n  device: cpu\n")).await;
        converge(&ctx, &writes, name).await;
        set_ready_replicas(&client, &format!("{name}-worker"), 1).await;
        converge(&ctx, &writes, name).await;
        assert_eq!(
            condition(&client, name, ConditionType::Ready).await.0,
            "True"
        );
    }
    // A new operator release renders another pod template for both (the older release's
    // StatefulSets carry another template hash, for the same spec generation).
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    for name in ["a-worker", "b-worker"] {
        let patch =
            json!({"metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: "older-release"}}});
        sts.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let hash = |s: &StatefulSet| {
        s.metadata.annotations.as_ref().unwrap()[TEMPLATE_HASH_ANNOTATION].clone()
    };

    reconcile_once(&ctx, "a").await.unwrap();
    reconcile_once(&ctx, "b").await.unwrap();
    let a: StatefulSet = get(&client, "a-worker").await.unwrap();
    let b: StatefulSet = get(&client, "b-worker").await.unwrap();
    assert_ne!(hash(&a), "older-release", "a rolls first");
    assert_eq!(hash(&b), "older-release", "b waits for its turn");
    assert_eq!(
        condition(&client, "b", ConditionType::Progressing).await,
        ("True".into(), "UpgradeQueued".into())
    );

    // A change b's spec asks for is never held back.
    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    kbs.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"podLabels": {"team": "search"}}})),
    )
    .await
    .unwrap();
    reconcile_once(&ctx, "b").await.unwrap();
    let b: StatefulSet = get(&client, "b-worker").await.unwrap();
    assert_ne!(hash(&b), "older-release");

    // Once a's rollout is done (Ready again), the slot is free for the next one.
    set_ready_replicas(&client, "a-worker", 1).await;
    converge(&ctx, &writes, "a").await;
    assert_eq!(
        condition(&client, "a", ConditionType::Ready).await.0,
        "True"
    );
    assert!(
        ctx.rollouts.holders().is_empty(),
        "{:?}",
        ctx.rollouts.holders()
    );
}

#[tokio::test]
async fn a_knowledge_base_that_is_not_ready_is_not_upgraded_by_the_operator() {
    let (client, writes) = cluster(None).await;
    let ctx = context(client.clone());
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(
        condition(&client, "docs", ConditionType::Ready).await.0,
        "False"
    );
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let patch = json!({"metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: "older-release"}}});
    sts.patch(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    reconcile_once(&ctx, "docs").await.unwrap();
    let after: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        after.metadata.annotations.unwrap()[TEMPLATE_HASH_ANNOTATION],
        "older-release"
    );
    assert!(ctx.rollouts.holders().is_empty());
}
