//! Reading documents back, deleting by filter, score thresholds and batch queries, over
//! HTTP against a real worker process.

mod common;

use common::Worker;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start() -> (tempfile::TempDir, Worker) {
    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(&tmp.path().join("data"), "", &["--open"]).await;
    (tmp, worker)
}

async fn call(w: &Worker, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{}{path}", w.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Ten documents d0..d9: even ones belong to team "search", odd ones to "platform".
async fn ingest(w: &Worker) {
    let docs: Vec<Value> = (0..10)
        .map(|i| {
            let team = if i % 2 == 0 { "search" } else { "platform" };
            json!({"id": format!("d{i}"), "text": format!("document {i} about topic {i}"), "metadata": {"team": team, "n": i}})
        })
        .collect();
    let (s, body) = call(
        w,
        "POST",
        "/v1/collections/c/documents",
        Some(json!({"documents": docs})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

fn ids(page: &Value) -> Vec<String> {
    page["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn documents_are_listed_in_pages_and_read_back_whole() {
    let (_tmp, w) = start().await;
    ingest(&w).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/collections/c/documents?limit=4&after={a}"),
            None => "/v1/collections/c/documents?limit=4".to_string(),
        };
        let (s, page) = call(&w, "GET", &path, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(ids(&page).len() <= 4);
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    assert_eq!(seen, expected, "every document once, in id order");

    let filter = urlencode(r#"{"team":"platform"}"#);
    let (_, page) = call(
        &w,
        "GET",
        &format!("/v1/collections/c/documents?filter={filter}"),
        None,
    )
    .await;
    assert_eq!(ids(&page), ["d1", "d3", "d5", "d7", "d9"]);
    assert_eq!(page["documents"][0]["metadata"]["team"], "platform");

    let (s, doc) = call(&w, "GET", "/v1/collections/c/documents/d3", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["id"], "d3");
    assert_eq!(doc["chunks"][0]["text"], "document 3 about topic 3");
    let (s, err) = call(&w, "GET", "/v1/collections/c/documents/nope", None).await;
    assert_eq!(
        (s, &err["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let (s, _) = call(&w, "GET", "/v1/collections/c/documents?limit=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn delete_by_filter_removes_exactly_the_matching_documents() {
    let (_tmp, w) = start().await;
    ingest(&w).await;
    let (s, out) = call(
        &w,
        "POST",
        "/v1/collections/c/delete",
        Some(json!({"filter": {"team": "search"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["deleted"], 5);
    let (_, page) = call(&w, "GET", "/v1/collections/c/documents", None).await;
    assert_eq!(ids(&page), ["d1", "d3", "d5", "d7", "d9"]);
    let (_, hits) = call(
        &w,
        "POST",
        "/v1/collections/c/query",
        Some(json!({"query": "document 4 about topic 4", "top_k": 10})),
    )
    .await;
    assert!(
        hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["metadata"]["team"] == "platform"),
        "{hits}"
    );
    let (_, out) = call(
        &w,
        "POST",
        "/v1/collections/c/delete",
        Some(json!({"ids": ["d1", "missing"]})),
    )
    .await;
    assert_eq!(out["deleted"], 1);
    let (s, err) = call(
        &w,
        "POST",
        "/v1/collections/c/delete",
        Some(json!({"filter": {}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (s, _) = call(
        &w,
        "POST",
        "/v1/collections/nope/delete",
        Some(json!({"ids": ["a"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn score_threshold_and_batch_queries_answer_like_single_queries() {
    let (_tmp, w) = start().await;
    ingest(&w).await;
    let q = |text: &str| json!({"query": text, "top_k": 5, "include_text": false});
    let (_, single_a) = call(&w, "POST", "/v1/collections/c/query", Some(q("topic 2"))).await;
    let (_, single_b) = call(&w, "POST", "/v1/collections/c/query", Some(q("document 7"))).await;
    let (s, batch) = call(
        &w,
        "POST",
        "/v1/collections/c/query/batch",
        Some(json!({"queries": [q("topic 2"), q("document 7")]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{batch}");
    assert_eq!(batch["results"][0]["hits"], single_a["hits"]);
    assert_eq!(batch["results"][1]["hits"], single_b["hits"]);

    let scores: Vec<f64> = single_a["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    let threshold = (scores[1] + scores[2]) / 2.0;
    let (_, cut) = call(
        &w,
        "POST",
        "/v1/collections/c/query",
        Some(json!({"query": "topic 2", "top_k": 5, "include_text": false, "score_threshold": threshold})),
    )
    .await;
    assert_eq!(cut["hits"].as_array().unwrap().len(), 2, "{cut}");
    assert_eq!(cut["hits"][0], single_a["hits"][0]);

    let (s, err) = call(
        &w,
        "POST",
        "/v1/collections/c/query/batch",
        Some(json!({"queries": [q("fine"), {"top_k": 5}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("query 1:"),
        "{err}"
    );
    let (s, _) = call(
        &w,
        "POST",
        "/v1/collections/c/query/batch",
        Some(json!({"queries": []})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
