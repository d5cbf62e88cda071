//! Every acknowledged write survives a SIGKILL in the middle of ingestion.

mod common;

use common::Worker;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

async fn ingest_until_killed(url: String, first: u64, acked: Arc<Mutex<Vec<u64>>>) {
    let client = reqwest::Client::new();
    for i in first.. {
        let body = json!({"documents": [{
            "id": format!("doc-{i}"),
            "text": format!("Document number {i} talks about topic {} in some detail.", i % 7),
            "metadata": {"n": i},
        }]});
        let resp = client
            .post(format!("{url}/v1/collections/crash/documents"))
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().push(i),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_documents_survive_sigkill_mid_ingestion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Frequent snapshots so recovery exercises snapshot + WAL replay together.
    let config = "snapshot:\n  every_records: 25\n";
    let mut worker = Worker::start(&data, config, &["--open"]).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            tokio::spawn(ingest_until_killed(
                worker.url.clone(),
                w * 1_000_000,
                acked.clone(),
            ))
        })
        .collect();
    while acked.lock().unwrap().len() < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    worker.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    let worker = Worker::start(&data, config, &["--open"]).await;
    let client = reqwest::Client::new();
    for i in acked {
        let hits: Value = client
            .post(format!("{}/v1/collections/crash/query", worker.url))
            .json(&json!({"query": format!("Document number {i}"), "top_k": 1, "filter": {"n": i}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            hits["hits"][0]["document_id"],
            format!("doc-{i}"),
            "acknowledged doc-{i} lost: {hits}"
        );
    }
}
