//! Every `kb_worker_*` series that shipped monitoring reads (the alert rules, the Grafana
//! dashboard, the prometheus-adapter rules for `targetQpsPerPod`) exists in a real
//! worker's /metrics. (The expressions themselves are parsed as PromQL, and the
//! `kb_operator_*` names checked, in operator/tests/monitoring.rs.)

mod common;

use common::Worker;
use std::collections::BTreeSet;
use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// `kb_worker_*` identifiers in `text`.
fn worker_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kb_worker_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_worker_series_that_alerts_dashboard_and_adapter_read_is_exported() {
    let mut named = BTreeSet::new();
    for file in [
        "operator/src/reconcile/build/alerts.yaml",
        "charts/knowledgebase-operator/dashboards/knowledgebase.json",
        "charts/knowledgebase-operator/extras/prometheus-adapter-values.yaml",
    ] {
        let found = worker_metrics(&read(file));
        assert!(!found.is_empty(), "{file} names no worker metric");
        named.extend(found);
    }
    // The adapter's `as` names are served by the adapter, not the worker.
    named.remove("kb_worker_http_requests_per_second");
    named.remove("kb_worker_interactive_queue_depth");

    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(&tmp.path().join("data"), "", &["--open"]).await;
    // Samples for the per-route and cache families.
    reqwest::get(format!("{}/v1/collections", worker.url))
        .await
        .unwrap();
    let text = reqwest::get(format!("{}/metrics", worker.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Families that only get samples with a GPU or a cache lookup: declared in HELP/TYPE.
    for name in named {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_total")
            .to_string();
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                || l.starts_with(&format!("{name} "))
                || l.starts_with(&format!("# TYPE {family} "))),
            "{name} is not in the worker's /metrics:\n{text}"
        );
    }
}

#[tokio::test]
async fn an_ingest_and_a_query_are_timed_per_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(&tmp.path().join("data"), "", &["--open"]).await;
    let client = reqwest::Client::new();
    let ingest = client
        .post(format!("{}/v1/collections/c/documents", worker.url))
        .json(&serde_json::json!({"documents": [{"id": "d", "text": "stages of a request"}]}))
        .send()
        .await
        .unwrap();
    assert!(ingest.status().is_success());
    let query = client
        .post(format!("{}/v1/collections/c/query", worker.url))
        .json(&serde_json::json!({"query": "which stages", "top_k": 1}))
        .send()
        .await
        .unwrap();
    assert!(query.status().is_success());
    let text = reqwest::get(format!("{}/metrics", worker.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for stage in [
        "ingest_parse",
        "chunk",
        "embed_ingest",
        "index_lock_wait",
        "apply",
        "query_parse",
        "embed_query",
        "search",
    ] {
        let series = format!("kb_worker_stage_seconds_count{{stage=\"{stage}\"}} ");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or(0);
        assert!(count >= 1, "no {stage} sample:\n{text}");
    }
}
