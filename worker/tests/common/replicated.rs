//! HTTP helpers shared by the replicated-mode tests: worker config, ingestion, queries,
//! probes and metrics.

use super::redis::Redis;
use super::Worker;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn config(redis: &str, extra: &str) -> String {
    format!(
        "redis:\n  url: {redis}\n  key_prefix: kb:test\nsnapshot:\n  every_records: 5\n  keep: 2\nreplication:\n  max_ready_lag: 0\n  wait_timeout_ms: 20000\n{extra}"
    )
}

pub async fn ingest(url: &str, docs: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/collections/c/documents"))
        .json(&json!({ "documents": docs }))
        .send()
        .await
        .unwrap()
}

pub async fn ingest_ok(url: &str, docs: Value) -> u64 {
    let resp = ingest(url, docs).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap()
}

pub async fn query(url: &str, body: Value) -> Value {
    query_in(url, "c", body).await
}

/// A query of `collection` (or alias).
pub async fn query_in(url: &str, collection: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/collections/{collection}/query"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// The document with metadata `origin`/`n`, found by filter once `min_sequence` applied.
pub async fn find(url: &str, origin: &str, n: usize, min_sequence: u64) -> Value {
    let probe = json!({
        "vector": vec![1.0; 384], "top_k": 1, "min_sequence": min_sequence,
        "filter": {"origin": origin, "n": n}, "include_text": false,
    });
    query(url, probe).await["hits"][0]["document_id"].clone()
}

pub async fn documents(url: &str) -> u64 {
    let v: Value = reqwest::get(format!("{url}/v1/collections/c"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["documents"].as_u64().unwrap()
}

/// The highest sequence this worker has applied.
pub async fn ingestion_progress(url: &str) -> u64 {
    readyz(url).await["applied_sequence"].as_u64().unwrap()
}

pub async fn readyz(url: &str) -> Value {
    reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn docs(prefix: &str, n: usize) -> Value {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("{prefix}-{i}"),
                "text": format!("{prefix} document number {i} about topic {}", i * 7 % 5),
                "metadata": {"origin": prefix, "n": i},
            })
        })
        .collect()
}

pub async fn metrics(w: &Worker) -> String {
    reqwest::get(format!("{}/metrics", w.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one counter line of the exposition text (0 when absent).
pub fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls until Redis holds at least one key matching `pattern` (L2 writes are asynchronous).
pub async fn wait_for_key(redis: &Redis, pattern: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["--scan", "--pattern", pattern]).is_empty() {
        assert!(Instant::now() < deadline, "no key matching {pattern}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
