//! Black-box behaviour of the HTTP API: auth, scoping, errors, upserts, embeddings.

mod common;

use common::{keys_file, Worker, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEYS: &str = r#"
- { key: "admin-key-0123456789abcdef", role: admin, collections: ["*"] }
- { key: "writer-a-0123456789abcdef", role: write, collections: ["alpha"] }
- { key: "reader-b-0123456789abcdef", role: read, collections: ["beta"] }
"#;

const LIMITS: &str = "limits:\n  max_documents_per_request: 3\n  max_request_bytes: 65536\n";

async fn start() -> (tempfile::TempDir, Worker) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_file(tmp.path(), KEYS);
    let worker = Worker::start(
        &tmp.path().join("data"),
        LIMITS,
        &["--api-keys", keys.to_str().unwrap()],
    )
    .await;
    (tmp, worker)
}

async fn call(
    w: &Worker,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{}{path}", w.url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn docs(ids: &[&str]) -> Value {
    json!({"documents": ids.iter().map(|id| json!({"id": id, "text": format!("text of {id}")})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn every_failure_is_a_json_error_with_the_right_status() {
    let (_tmp, w) = start().await;
    let cases = [
        (
            "GET",
            "/v1/collections",
            None,
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "GET",
            "/v1/collections",
            Some("wrong-key-0123456789abcdef"),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/v1/collections/beta/documents",
            Some("writer-a-0123456789abcdef"),
            Some(docs(&["x"])),
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/collections/nope/query",
            Some(ADMIN_KEY),
            Some(json!({"query": "q"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/collections/alpha/documents",
            Some(ADMIN_KEY),
            Some(json!({"docs": []})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/collections/alpha/documents",
            Some(ADMIN_KEY),
            Some(docs(&["a", "b", "c", "d"])),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/collections/bad name/documents",
            Some(ADMIN_KEY),
            Some(docs(&["a"])),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/embeddings",
            Some(ADMIN_KEY),
            Some(json!({"input": []})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/v1/admin/snapshot",
            Some("writer-a-0123456789abcdef"),
            None,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, key, body, want) in cases {
        let (status, body) = call(&w, method, path, key, body).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{body}"
        );
    }
    let big = json!({"documents": [{"id": "big", "text": "x".repeat(70_000)}]});
    let (status, body) = call(
        &w,
        "POST",
        "/v1/collections/alpha/documents",
        Some(ADMIN_KEY),
        Some(big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn scoped_keys_see_only_their_collections() {
    let (_tmp, w) = start().await;
    for c in ["alpha", "beta", "gamma"] {
        let (s, b) = call(
            &w,
            "POST",
            &format!("/v1/collections/{c}/documents"),
            Some(ADMIN_KEY),
            Some(docs(&["d"])),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (_, listed) = call(
        &w,
        "GET",
        "/v1/collections",
        Some("reader-b-0123456789abcdef"),
        None,
    )
    .await;
    let names: Vec<&str> = listed["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["beta"]);
    let q = json!({"query": "text"});
    let (s, _) = call(
        &w,
        "POST",
        "/v1/collections/beta/query",
        Some("reader-b-0123456789abcdef"),
        Some(q.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for c in ["alpha", "gamma"] {
        let (s, _) = call(
            &w,
            "POST",
            &format!("/v1/collections/{c}/query"),
            Some("reader-b-0123456789abcdef"),
            Some(q.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, _) = call(
        &w,
        "POST",
        "/v1/collections/beta/documents",
        Some("reader-b-0123456789abcdef"),
        Some(docs(&["e"])),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "read keys cannot write");
}

#[tokio::test]
async fn reingesting_a_document_replaces_it_and_delete_removes_it() {
    let (_tmp, w) = start().await;
    let path = "/v1/collections/alpha/documents";
    let v1 = json!({"documents": [{"id": "doc", "text": "Penguins live in Antarctica.", "metadata": {"v": 1}}]});
    let v2 = json!({"documents": [{"id": "doc", "text": "Volcanoes erupt molten lava.", "metadata": {"v": 2}}]});
    call(&w, "POST", path, Some(ADMIN_KEY), Some(v1)).await;
    call(&w, "POST", path, Some(ADMIN_KEY), Some(v2)).await;
    let (_, stats) = call(&w, "GET", "/v1/collections/alpha", Some(ADMIN_KEY), None).await;
    assert_eq!(
        (stats["documents"].as_u64(), stats["chunks"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    let (_, hits) = call(
        &w,
        "POST",
        "/v1/collections/alpha/query",
        Some(ADMIN_KEY),
        Some(json!({"query": "lava", "top_k": 5})),
    )
    .await;
    assert_eq!(hits["hits"][0]["metadata"]["v"], 2);
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1);
    // A blank re-ingest is refused; it used to delete the stored document silently.
    for blank in ["", "  \n\t "] {
        let body = json!({"documents": [{"id": "doc", "text": blank}]});
        let (s, err) = call(&w, "POST", path, Some(ADMIN_KEY), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no text"),
            "{err}"
        );
    }
    let (_, stats) = call(&w, "GET", "/v1/collections/alpha", Some(ADMIN_KEY), None).await;
    assert_eq!(stats["documents"].as_u64(), Some(1), "{stats}");
    let (s, del) = call(
        &w,
        "DELETE",
        "/v1/collections/alpha/documents/doc",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!((s, del["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, hits) = call(
        &w,
        "POST",
        "/v1/collections/alpha/query",
        Some(ADMIN_KEY),
        Some(json!({"query": "lava"})),
    )
    .await;
    assert!(hits["hits"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn embeddings_endpoint_speaks_the_openai_format() {
    let (_tmp, w) = start().await;
    let (s, body) = call(
        &w,
        "POST",
        "/v1/embeddings",
        Some(ADMIN_KEY),
        Some(json!({"input": ["hello", "world"], "model": "m"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let v: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
    assert_eq!(v.len(), 384);
    assert!(
        (v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4,
        "normalised"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn documents_with_their_own_vectors_skip_embedding_and_are_checked() {
    let (_tmp, w) = start().await;
    let key = Some(ADMIN_KEY);
    let axis = |i: usize| {
        (0..384)
            .map(|j| if j == i { 2.0 } else { 0.0 })
            .collect::<Vec<f32>>()
    };
    let body = json!({"documents": [
        {"id": "x", "text": "first axis", "vector": axis(0), "metadata": {"k": 1}},
        {"id": "y", "text": "second axis", "vector": axis(1)},
    ]});
    let (status, out) = call(&w, "POST", "/v1/collections/own/documents", key, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["chunks"], 2);
    // The stored vector is the one given (normalised for cosine), not an embedding.
    let probe = json!({"vector": axis(1), "top_k": 2});
    let (status, hits) = call(&w, "POST", "/v1/collections/own/query", key, Some(probe)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hits["hits"][0]["document_id"], "y");
    assert!((hits["hits"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!(hits["hits"][1]["score"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(hits["hits"][1]["text"], "first axis");

    for (bad, needle) in [(json!([1.0, 2.0]), "384"), (json!([]), "finite")] {
        let body = json!({"documents": [{"id": "z", "text": "t", "vector": bad}]});
        let (status, err) =
            call(&w, "POST", "/v1/collections/own/documents", key, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
}

#[tokio::test]
async fn rotated_api_keys_take_effect_on_sighup_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_file(tmp.path(), KEYS);
    let w = Worker::start(
        &tmp.path().join("data"),
        LIMITS,
        &["--api-keys", keys.to_str().unwrap()],
    )
    .await;
    let (s, _) = call(&w, "GET", "/v1/collections", Some(ADMIN_KEY), None).await;
    assert_eq!(s, StatusCode::OK);
    let rotated = "- { key: \"rotated-admin-0123456789\", role: admin, collections: [\"*\"] }\n";
    std::fs::write(&keys, rotated).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Well before the 10 s timer: the signal itself reloads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let (s, _) = call(
            &w,
            "GET",
            "/v1/collections",
            Some("rotated-admin-0123456789"),
            None,
        )
        .await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never worked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, _) = call(&w, "GET", "/v1/collections", Some(ADMIN_KEY), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old key still works");
}

#[tokio::test]
async fn a_dot_metric_collection_takes_ingestion_and_list_metadata_filters_match() {
    let (_tmp, w) = start().await;
    let (s, created) = call(
        &w,
        "PUT",
        "/v1/collections/alpha",
        Some(ADMIN_KEY),
        Some(json!({"metric": "dot"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let docs = json!({"documents": [
        {"id": "a", "text": "Penguins live in Antarctica.", "metadata": {"tags": ["birds", "cold"]}},
        {"id": "b", "text": "Volcanoes erupt molten lava.", "metadata": {"tags": ["geology"]}},
    ]});
    let (s, body) = call(
        &w,
        "POST",
        "/v1/collections/alpha/documents",
        Some(ADMIN_KEY),
        Some(docs),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "ingest into a dot collection: {body}");
    let (_, stats) = call(&w, "GET", "/v1/collections/alpha", Some(ADMIN_KEY), None).await;
    assert_eq!(stats["metric"], "dot", "{stats}");
    let (_, hits) = call(
        &w,
        "POST",
        "/v1/collections/alpha/query",
        Some(ADMIN_KEY),
        Some(json!({"query": "animals", "top_k": 5, "filter": {"tags": "cold"}})),
    )
    .await;
    let ids: Vec<&str> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a"], "{hits}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_json_error_shape() {
    let (_tmp, w) = start().await;
    let (s, body) = call(&w, "GET", "/v1/nothing-here", Some(ADMIN_KEY), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let (s, body) = call(&w, "DELETE", "/v1/embeddings", Some(ADMIN_KEY), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
}

/// `kb-worker openapi` prints, without a worker, the document a worker serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_command_prints_what_the_worker_serves() {
    let printed = common::json_of_command("openapi");
    let (_tmp, w) = start().await;
    let (status, served) = call(&w, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(printed, served);
    assert!(printed["paths"]["/v1/collections/{collection}/query"]["post"].is_object());
}

/// After SIGTERM the worker reports not ready but keeps answering for
/// `shutdown_delay_seconds`, so a request the Service routed to it before its endpoints
/// dropped it is served; then it exits.
#[tokio::test]
async fn sigterm_drains_not_ready_but_serving_then_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("{LIMITS}shutdown_delay_seconds: 3\n");
    let mut w = Worker::start(&tmp.path().join("data"), &config, &["--open"]).await;
    let (s, _) = call(
        &w,
        "POST",
        "/v1/collections/a/documents",
        None,
        Some(docs(&["d1"])),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();
    let deadline = signalled + std::time::Duration::from_secs(2);
    let readiness = loop {
        let (s, body) = call(&w, "GET", "/readyz", None, None).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(readiness["status"], "draining", "{readiness}");
    let query = json!({"query": "text of d1", "top_k": 1});
    let (s, body) = call(&w, "POST", "/v1/collections/a/query", None, Some(query)).await;
    assert_eq!(s, StatusCode::OK, "served while draining: {body}");
    assert_eq!(body["hits"][0]["document_id"], "d1");
    let exited = loop {
        if let Some(code) = w.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(30),
            "did not exit after the delay"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited}");
    assert!(
        signalled.elapsed() >= std::time::Duration::from_secs(3),
        "exited before the delay ended"
    );
}
