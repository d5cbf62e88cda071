//! A change of the embedding model on a KnowledgeBase replaced in place
//! (`embedding.rollout.maxSurge: 0`), as the operator reports it against an in-memory API
//! server: `status.modelRollout` goes `Reindexing` (no worker of the new
//! model ready) -> `Replacing` -> gone with `status.model` the new model once every worker
//! runs it ready; `Progressing` says `ModelRollout` meanwhile; an Event marks each phase;
//! and a revert of the spec ends it with the old model kept. The re-index figures come from
//! the new model's worker over HTTP (a local server answering as its metrics port). (The workers' re-index is
//! tested in `kb-worker`; the real-cluster run is `e2e/`.)

mod common;

use common::{
    cluster, converge, create, events, get, kb, reconcile_once, set_model, set_ready_replicas,
    set_rollout, status, worker_pod,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kb_config::progress::{JobProgress, JobsProgress};
use kb_operator::crd::{ConditionType, KnowledgeBaseStatus};
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::progress::WorkerProbe;
use kb_operator::reconcile::Context;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// In place: no worker added for the change (`tests/model_surge.rs` adds one).
const SPEC: &str =
    "replicas: 2\nembedding:\n  device: cpu\n  rollout:\n    maxSurge: 0\nredis:\n  managed: {}\n";
const NEW_MODEL: &str = "pvc:models/e5 queryPrefix=\"query: \"";

/// A worker's metrics port on 127.0.0.1 answering `GET /jobs` with what `jobs` holds,
/// counting the requests; its port.
async fn jobs_port(jobs: Arc<Mutex<JobsProgress>>, asked: Arc<AtomicUsize>) -> u16 {
    let app = axum::Router::new().route(
        kb_config::progress::JOBS_PATH,
        axum::routing::get(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            let answer = serde_json::to_string(&*jobs.lock().unwrap()).unwrap();
            async move { ([("content-type", "application/json")], answer) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn set_pod_ip(client: &Client, name: &str, ip: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let patch = json!({"status": {"podIP": ip}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// "docs" (two workers, managed Redis) deployed: Redis ready, the workers created; the
/// operator reads the workers' progress on `metrics_port`.
async fn deployed_probing(metrics_port: u16) -> (Client, Arc<Context>) {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", SPEC)).await;
    let mut ctx = Context::new(client.clone(), Arc::new(Metrics::default()));
    ctx.workers = WorkerProbe::new(metrics_port, Duration::from_secs(2));
    let ctx = Arc::new(ctx);
    converge(&ctx, &writes, "docs").await;
    // A first deploy waits for Redis before it creates the workers.
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    (client, ctx)
}

async fn deployed() -> (Client, Arc<Context>) {
    deployed_probing(kb_operator::reconcile::build::METRICS_PORT as u16).await
}

fn progressing(status: &KnowledgeBaseStatus) -> (String, String) {
    let c = status.condition(ConditionType::Progressing).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn a_model_change_is_reported_phase_by_phase_until_every_worker_runs_it() {
    let jobs = Arc::new(Mutex::new(JobsProgress::default()));
    let asked = Arc::new(AtomicUsize::new(0));
    let port = jobs_port(jobs.clone(), asked.clone()).await;
    let (client, ctx) = deployed_probing(port).await;
    worker_pod(&client, 0, "rev-2", true).await;
    worker_pod(&client, 1, "rev-2", true).await;
    set_rollout(&client, "docs-worker", 2, 2, true).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let before = status(&client).await;
    assert_eq!(before.model.as_deref(), Some("image:/opt/kb/model"));
    assert_eq!(before.model_rollout, None);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "no change: no worker asked"
    );

    // The spec names another model: the StatefulSet rolls; nothing of it is ready yet.
    set_model(
        &client,
        json!({"modelVolume": {"persistentVolumeClaim": {"claimName": "models"}, "subPath": "e5"},
               "queryPrefix": "query: "}),
    )
    .await;
    reconcile_once(&ctx, "docs").await.unwrap();
    set_rollout(&client, "docs-worker", 1, 0, true).await;
    worker_pod(&client, 1, "rev-3", false).await;
    // It re-indexes and says how far on its metrics port; the old one is not asked.
    set_pod_ip(&client, "docs-worker-1", "127.0.0.1").await;
    set_pod_ip(&client, "docs-worker-0", "127.0.0.2").await;
    jobs.lock().unwrap().jobs = vec![JobProgress {
        id: "docs-1a2b3c4d".into(),
        documents_total: 1000,
        documents_done: 250,
        eta_seconds: Some(30.0),
    }];
    // The pod of the new model re-indexes (not ready); the controller counts it updated.
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        sts.spec.unwrap().replicas,
        Some(2),
        "maxSurge 0: no worker added"
    );
    let report = json!({"status": {"updatedReplicas": 1, "updateRevision": "rev-3",
                                   "currentRevision": "rev-2"}});
    api.patch_status(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&report),
    )
    .await
    .unwrap();
    reconcile_once(&ctx, "docs").await.unwrap();
    let during = status(&client).await;
    let change = during.model_rollout.clone().expect("a model rollout");
    assert_eq!(
        (
            change.from.as_str(),
            change.to.as_str(),
            change.phase.as_str()
        ),
        ("image:/opt/kb/model", NEW_MODEL, "Reindexing")
    );
    assert_eq!(
        (change.updated_replicas, change.updated_ready_replicas),
        (1, 0)
    );
    assert_eq!(
        (change.documents_done, change.documents_total),
        (Some(250), Some(1000))
    );
    let reported = change.progress_time.clone().unwrap().0.as_second();
    let finish = change.estimated_finish.clone().unwrap().0.as_second();
    assert_eq!(finish - reported, 30);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // Another reconcile within 10 s keeps the figures without asking the workers again.
    jobs.lock().unwrap().jobs[0].documents_done = 260;
    reconcile_once(&ctx, "docs").await.unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1, "figures still fresh");
    let kept = status(&client)
        .await
        .model_rollout
        .expect("a model rollout");
    assert_eq!(kept.documents_done, Some(250));
    assert_eq!(during.model.as_deref(), Some("image:/opt/kb/model"));
    assert_eq!(
        progressing(&during),
        ("True".to_string(), "ModelRollout".to_string())
    );

    // It finished re-indexing and serves; the other worker is replaced next.
    jobs.lock().unwrap().jobs.clear();
    worker_pod(&client, 1, "rev-3", true).await;
    set_pod_ip(&client, "docs-worker-1", "127.0.0.1").await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let serving = status(&client).await;
    let phase = serving.model_rollout.as_ref().map(|c| c.phase.clone());
    assert_eq!(phase.as_deref(), Some("Replacing"));
    let figures = serving.model_rollout.as_ref().map(|c| c.documents_done);
    assert_eq!(figures, Some(None), "no job left: no figures");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "a worker of the new model serves: nobody asked"
    );
    assert_eq!(serving.model_rollout.unwrap().started, change.started);

    // Both on the new revision and ready: the data is the new model's.
    worker_pod(&client, 0, "rev-3", true).await;
    let report = json!({"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                                   "updateRevision": "rev-3", "currentRevision": "rev-3"}});
    api.patch_status(
        "docs-worker",
        &PatchParams::default(),
        &Patch::Merge(&report),
    )
    .await
    .unwrap();
    reconcile_once(&ctx, "docs").await.unwrap();
    let after = status(&client).await;
    assert_eq!(
        (after.model.as_deref(), after.model_rollout.as_ref()),
        (Some(NEW_MODEL), None)
    );
    assert_ne!(progressing(&after).1, "ModelRollout");
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
async fn reverting_the_model_mid_way_ends_the_rollout_and_keeps_the_old_model() {
    let (client, ctx) = deployed().await;
    set_rollout(&client, "docs-worker", 2, 2, true).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    set_model(&client, json!({"modelPath": "/opt/kb/other-model"})).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let change = status(&client)
        .await
        .model_rollout
        .expect("a model rollout");
    assert_eq!(change.to, "image:/opt/kb/other-model");
    set_model(&client, json!({"modelPath": "/opt/kb/model"})).await;
    reconcile_once(&ctx, "docs").await.unwrap();
    let after = status(&client).await;
    assert_eq!(
        (after.model.as_deref(), after.model_rollout),
        (Some("image:/opt/kb/model"), None)
    );
    assert!(
        events(&client)
            .await
            .contains(&"ModelRolloutReverted".to_string()),
        "{:?}",
        events(&client).await
    );
}
