//! No churn: every child the operator sends is a fixed point of the API server's round trip
//! (no empty lists or maps, no `false` the Go types drop, canonical quantities), so a
//! converged KnowledgeBase reconciled again sends nothing, against an in-memory API that
//! stores objects the way a real server does (`common::server`).

mod common;

use common::server::as_stored;
use common::{cluster, context, converge, create, get, kb, reconcile_once, set_ready_replicas};
use k8s_openapi::api::apps::v1::StatefulSet;
use kb_operator::crd::KnowledgeBase;
use kb_operator::reconcile::{build, dereference};
use std::path::Path;

/// Every example, and specs that use the options the examples leave out.
fn knowledge_bases() -> Vec<(String, KnowledgeBase)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                serde_yaml::from_str(&text).unwrap(),
            ));
        }
    }
    assert!(out.len() >= 4, "the examples were not found");
    for (name, spec) in [
        ("non-canonical quantities", NON_CANONICAL),
        ("everything on", EVERYTHING),
    ] {
        out.push((name.to_string(), kb("docs", spec)));
    }
    out
}

/// Quantities as users write them, none canonical.
const NON_CANONICAL: &str = "embedding:\n  device: cpu\nstorage:\n  size: 1024Mi\nresources:\n  requests:\n    cpu: 1000m\n    memory: 2048Mi\n  limits:\n    memory: 4096Mi\nredis:\n  managed:\n    storageSize: 0.5Gi\nautoscaling:\n  enabled: true\n  minReplicas: 1\n  maxReplicas: 3\n  targetQpsPerPod: 1000\n";
const EVERYTHING: &str = "embedding:\n  device: cpu\nredis:\n  managed: {}\nautoscaling:\n  minReplicas: 2\n  maxReplicas: 4\nbackup:\n  schedule: '@daily'\n  destination:\n    pvc:\n      claimName: backups\nmonitoring:\n  enabled: true\n  labels:\n    release: prom\n";

#[test]
fn every_child_of_every_example_is_stored_as_sent() {
    let mut failures = Vec::new();
    for (source, kb) in knowledge_bases() {
        let inputs = dereference::offline(&kb, "default").unwrap();
        for child in build::plan(&kb, &inputs).children {
            let sent = child.to_json();
            let stored = as_stored(&sent);
            if stored != sent {
                failures.push(format!(
                    "{source}: {:?} {} is stored differently:\n sent   {}\n stored {}",
                    child.reference().kind,
                    child.reference().name,
                    sent,
                    stored
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_builders_output_does_need_the_server_form() {
    // The check above must be able to fail: the objects as built (before the server
    // form) are not fixed points (readOnly: false, 1000m, ...).
    let kb = kb("docs", NON_CANONICAL);
    let inputs = dereference::offline(&kb, "default").unwrap();
    let changed = build::plan(&kb, &inputs)
        .children
        .iter()
        .filter(|c| as_stored(&c.to_json_as_built()) != c.to_json_as_built())
        .count();
    assert!(changed > 0);
}

#[tokio::test]
async fn a_converged_knowledge_base_with_non_canonical_quantities_sends_no_writes() {
    for spec in [NON_CANONICAL, EVERYTHING] {
        let (client, writes) = cluster(None).await;
        create(&client, &kb("docs", spec)).await;
        let ctx = context(client.clone());
        converge(&ctx, &writes, "docs").await;
        // With managed Redis the workers are created once Redis is ready.
        if get::<StatefulSet>(&client, "docs-redis").await.is_some() {
            set_ready_replicas(&client, "docs-redis", 1).await;
            converge(&ctx, &writes, "docs").await;
        }
        let before: StatefulSet = get(&client, "docs-worker").await.unwrap();
        for _ in 0..3 {
            writes.take();
            reconcile_once(&ctx, "docs").await.unwrap();
            assert_eq!(writes.take(), 0, "a converged KnowledgeBase wrote again");
        }
        let after: StatefulSet = get(&client, "docs-worker").await.unwrap();
        assert_eq!(
            before.metadata.resource_version, after.metadata.resource_version,
            "no-op passes must not bump resourceVersion"
        );
    }
}
