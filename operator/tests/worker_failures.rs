//! A worker that keeps failing is reported in the `Degraded` condition against an
//! in-memory API server: killed at its memory limit (`WorkerOOMKilled`, naming the limit
//! to raise) or exiting with an error (`WorkerCrashLooping`, with the worker's own last
//! `error:` line from its termination message; `ModelMismatch` when it stopped because its
//! model is not its data's), and the condition clears once it runs.

mod common;

use common::{cluster, context, converge, create, create_worker_pod, get, kb};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kb_operator::crd::KnowledgeBase;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

const SPEC: &str = "embedding:\n  device: cpu\n";

async fn degraded(client: &Client) -> (String, String, String) {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    let status = kb.status.unwrap();
    let c = status
        .condition(kb_operator::crd::ConditionType::Degraded)
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn set_worker_status(client: &Client, container: Value) {
    let mut status = json!({"name": "worker", "image": "kb-worker", "imageID": ""});
    for (k, v) in container.as_object().unwrap() {
        status[k] = v.clone();
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let patch = json!({"status": {"containerStatuses": [status]}});
    api.patch_status(
        "docs-worker-0",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failing_worker_is_reported_in_degraded_with_what_to_do() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", SPEC)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    assert_eq!(degraded(&client).await.1, "AsExpected");
    // The worker's last log line becomes its termination message when it fails.
    let sts: StatefulSet = get(&client, "docs-worker").await.unwrap();
    let container = &sts.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.name, "worker");
    assert_eq!(
        container.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    create_worker_pod(&client, "docs-worker-0", &[]).await;

    // Killed at the memory limit, restarted, backing off.
    set_worker_status(
        &client,
        json!({"ready": false, "restartCount": 3,
               "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    let (status, reason, message) = degraded(&client).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WorkerOOMKilled")
    );
    assert!(message.contains("docs-worker-0"), "{message}");
    assert!(message.contains("resources.limits.memory"), "{message}");

    // Exiting at start with an error: the worker's own last line is the message (the
    // termination message is the tail of its log: JSON log lines, then `error: ...`).
    let log_tail = "{\"level\":\"INFO\",\"fields\":{\"message\":\"loading the snapshot\"}}\n\
        error: opening the data directory: record 1502 is in the log but could not be applied: \
        not enough memory: raise the memory limit (resources.limits.memory)\n";
    set_worker_status(
        &client,
        json!({"ready": false, "restartCount": 4,
               "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}}}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    let (status, reason, message) = degraded(&client).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WorkerCrashLooping")
    );
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(
        message.ends_with(": error: opening the data directory: record 1502 is in the log but could not be applied: not enough memory: raise the memory limit (resources.limits.memory)"),
        "{message}"
    );

    // Stopped because the stored collections were embedded by another model.
    let mismatch = "error: model_mismatch: this worker embeds with minilm-cls (sha256:1, cls \
        pooling, 384 dimensions), and these collections hold vectors of another model: docs \
        (all-MiniLM-L6-v2 (sha256:2, mean pooling, normalised, 384 dimensions))\n";
    set_worker_status(
        &client,
        json!({"ready": false, "restartCount": 5,
               "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": mismatch}}}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    let (status, reason, message) = degraded(&client).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ModelMismatch")
    );
    assert!(
        message.contains("Revert spec.embedding.modelPath or modelVolume"),
        "{message}"
    );
    assert!(message.contains("docs (all-MiniLM-L6-v2"), "{message}");

    // Running and ready again: nothing to report, although it restarted before.
    set_worker_status(
        &client,
        json!({"ready": true, "restartCount": 4,
               "state": {"running": {}},
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}),
    )
    .await;
    converge(&ctx, &writes, "docs").await;
    assert_eq!(degraded(&client).await.1, "AsExpected");
}
