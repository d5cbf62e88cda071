//! Backup status and on-demand backups against an in-memory API server: the
//! `knowledge.dev/backup-now` annotation starts one Job per value, and the status reports
//! the newest successful backup (from its pod's termination message) and the failures
//! since.

mod common;

use common::{cluster, context, converge, create, get, kb};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kb_operator::crd::KnowledgeBase;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const SPEC: &str = "embedding:\n  device: cpu\nbackup:\n  schedule: '@daily'\n  destination:\n    pvc:\n      claimName: backups\n";

async fn annotate(client: &Client, value: &str) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let patch = json!({"metadata": {"annotations": {"knowledge.dev/backup-now": value}}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn jobs(client: &Client) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut jobs = api.list(&Default::default()).await.unwrap().items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    jobs
}

/// The Job of `request`.
async fn job_for(client: &Client, request: &str) -> String {
    jobs(client)
        .await
        .into_iter()
        .find(|j| {
            j.metadata.annotations.as_ref().unwrap()["knowledge.dev/backup-request"] == request
        })
        .and_then(|j| j.metadata.name)
        .unwrap_or_else(|| panic!("no Job for {request}"))
}

async fn set_job_status(client: &Client, job: &str, status: serde_json::Value) {
    let api: Api<Job> = Api::namespaced(client.clone(), "default");
    api.patch_status(
        job,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

/// The Job's pod, finished with `message` as its termination message.
async fn finished_pod(client: &Client, job: &str, message: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{job}-x7k2p")),
            labels: Some([("job-name".to_string(), job.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "backup".into(),
                image: Some("kb-worker".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    api.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"containerStatuses": [{
        "name": "backup", "image": "kb-worker", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "message": message}},
    }]}});
    api.patch_status(
        &format!("{job}-x7k2p"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

async fn backup_status(client: &Client) -> serde_json::Value {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    serde_json::to_value(kb.status.unwrap().backup.unwrap()).unwrap()
}

#[tokio::test]
async fn backup_now_starts_one_job_per_request_and_status_reports_the_backup() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", SPEC)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    assert!(jobs(&client).await.is_empty());

    annotate(&client, "2026-12-01T10:00").await;
    converge(&ctx, &writes, "docs").await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(jobs(&client).await.len(), 1, "one Job per request");
    let first = job_for(&client, "2026-12-01T10:00").await;
    assert_eq!(
        backup_status(&client).await["lastRequest"],
        "2026-12-01T10:00"
    );

    // The Job succeeds; its pod reports the backup it wrote.
    set_job_status(
        &client,
        &first,
        json!({"succeeded": 1, "startTime": "2026-12-01T10:00:00Z", "completionTime": "2026-12-01T10:02:00Z"}),
    )
    .await;
    let manifest = r#"{"name":"backup-42-1796119200","sequence":42,"bytes":4096,"sha256":"00","created_unix":1796119200,"snapshot_format":"KBSNAP02","source":"http://docs.default.svc:8080","kb_worker_version":"0.1.0"}"#;
    finished_pod(&client, &first, manifest).await;
    converge(&ctx, &writes, "docs").await;
    let status = backup_status(&client).await;
    assert_eq!(status["lastBackupName"], "backup-42-1796119200");
    assert_eq!(status["lastBackupSequence"], 42);
    assert_eq!(status["lastBackupBytes"], 4096);
    assert_eq!(status["lastJob"], first.as_str());
    assert_eq!(status["failuresSinceLastSuccess"], 0);
    let kb: KnowledgeBase = get(&client, "docs").await.unwrap();
    assert_eq!(
        kb.status.unwrap().last_backup.unwrap().0.to_string(),
        "2026-12-01T10:02:00Z"
    );

    // A second request; its Job fails.
    annotate(&client, "again").await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(jobs(&client).await.len(), 2);
    let second = job_for(&client, "again").await;
    set_job_status(
        &client,
        &second,
        json!({"failed": 3, "startTime": "2026-12-01T11:00:00Z", "conditions": [
            {"type": "Failed", "status": "True", "lastTransitionTime": "2026-12-01T11:05:00Z"}]}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    let status = backup_status(&client).await;
    assert_eq!(status["failuresSinceLastSuccess"], 1);
    assert_eq!(status["lastFailureTime"], "2026-12-01T11:05:00Z");
    assert_eq!(status["lastBackupName"], "backup-42-1796119200");
    assert_eq!(status["lastRequest"], "again");
}

#[tokio::test]
async fn backup_now_without_a_backup_spec_starts_nothing() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    annotate(&client, "now").await;
    converge(&ctx, &writes, "docs").await;
    assert!(jobs(&client).await.is_empty());
}
