//! Collections know their model: another model is refused (409 `model_mismatch`,
//! readiness, metric), data of older versions is adopted, and collections of client
//! vectors take only vectors. The second model is the bundled one with CLS pooling: same
//! weights, other vectors.

use crate::log::{ChunkRecord, Metric, Op};
use crate::test_support::{call, cls_model, copy_dir, serve};
use serde_json::json;

async fn ingest(url: &str, collection: &str, docs: serde_json::Value) -> (u16, serde_json::Value) {
    let path = format!("/v1/collections/{collection}/documents?wait=applied");
    call(url, "POST", &path, Some(json!({ "documents": docs }))).await
}

async fn query(url: &str, collection: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let path = format!("/v1/collections/{collection}/query");
    call(url, "POST", &path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_model_on_the_data_is_refused_with_409_and_reported_by_readiness_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let dir = data_a.clone();
    let (_t1, _s1, mean) = serve(move |cfg| cfg.data_dir = dir).await;
    let doc = json!([{"id": "cat", "text": "The cat sat on the mat by the fire."}]);
    assert_eq!(ingest(&mean, "docs", doc).await.0, 200);
    let (_, info) = call(&mean, "GET", "/v1/collections/docs", None).await;
    assert_eq!(info["vectors"], "model");
    assert_eq!(info["model"]["pooling"], "mean");
    assert_eq!(info["model_mismatch"], false);
    assert!(info["model"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // The same data opened by a worker running the CLS-pooled model.
    copy_dir(&data_a, &data_b);
    let cls = cls_model(tmp.path());
    let (_t2, s2, url) = serve(move |cfg| {
        cfg.data_dir = data_b;
        cfg.model = Some(cls);
    })
    .await;
    let (status, body) = query(&url, "docs", json!({"query": "cat"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "model_mismatch");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("mean pooling") && message.contains("cls pooling"),
        "names both models: {message}"
    );
    let (status, _) = query(&url, "docs", json!({"query": "cat", "mode": "hybrid"})).await;
    assert_eq!(status, 409);
    // Writes are refused too, vectors included: they would be this model's.
    let text = json!([{"id": "dog", "text": "A dog."}]);
    assert_eq!(ingest(&url, "docs", text).await.0, 409);
    let vector = vec![0.05f32; 384];
    let with_vector = json!([{"id": "v", "text": "given", "vector": vector}]);
    assert_eq!(ingest(&url, "docs", with_vector).await.0, 409);
    // What needs no embedding still answers: lexical search and vector queries.
    let (status, body) = query(&url, "docs", json!({"query": "cat", "mode": "lexical"})).await;
    assert_eq!(
        (status, body["hits"][0]["document_id"].clone()),
        (200, json!("cat"))
    );
    let (status, _) = query(&url, "docs", json!({"vector": vector})).await;
    assert_eq!(status, 200);
    // Readiness, the collection listing and the metric say so.
    let (status, ready) = call(&url, "GET", "/readyz", None).await;
    assert_eq!(
        (status, ready["status"].clone()),
        (503, json!("model_mismatch"))
    );
    assert!(ready["model_mismatch"][0]
        .as_str()
        .unwrap()
        .starts_with("docs ("));
    let (_, info) = call(&url, "GET", "/v1/collections/docs", None).await;
    assert_eq!(info["model_mismatch"], true);
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kb_worker_collection_model_mismatch{collection=\"docs\"} 1"),
        "{metrics}"
    );
    // With `on_model_mismatch: exit` (the operator's setting) the worker stops instead.
    let engine = s2.engine().unwrap();
    crate::cli::serve::check_models(&engine, kb_config::OnModelMismatch::Refuse).unwrap();
    let stop = crate::cli::serve::check_models(&engine, kb_config::OnModelMismatch::Exit);
    let stop = stop.unwrap_err().to_string();
    assert!(
        stop.starts_with("model_mismatch: ") && stop.contains("docs ("),
        "{stop}"
    );
    // A new collection takes this worker's model.
    let doc = json!([{"id": "fox", "text": "A quick brown fox."}]);
    assert_eq!(ingest(&url, "fresh", doc).await.0, 200);
    let (status, body) = query(&url, "fresh", json!({"query": "fox"})).await;
    assert_eq!(
        (status, body["hits"][0]["document_id"].clone()),
        (200, json!("fox"))
    );
    // The original worker is unaffected.
    let (status, _) = query(&mean, "docs", json!({"query": "cat"})).await;
    assert_eq!(status, 200);
    assert_eq!(call(&mean, "GET", "/readyz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_before_bindings_is_adopted_once_by_the_first_model_that_opens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        // What an older worker left: a collection and a document, no binding.
        let cfg = kb_config::WorkerConfig::default();
        let (store, _) = crate::store::Store::open(&data, &cfg, tch::Device::Cpu).unwrap();
        let chunk = ChunkRecord {
            chunk_id: "old#0".into(),
            text: "An old document about a cat.".into(),
            metadata: Default::default(),
            vector: vec![0.05; 384],
        };
        let ops = vec![
            Op::CreateCollection {
                collection: "legacy".into(),
                dim: 384,
                metric: Metric::Cosine,
            },
            Op::Upsert {
                collection: "legacy".into(),
                doc_id: "old".into(),
                chunks: vec![chunk],
            },
        ];
        store.write(ops).unwrap();
    }
    let dir = data.clone();
    let (_t, state, url) = serve(move |cfg| cfg.data_dir = dir).await;
    let (_, info) = call(&url, "GET", "/v1/collections/legacy", None).await;
    assert!(info.get("model").is_none(), "not recorded yet: {info}");
    assert_eq!(call(&url, "GET", "/readyz", None).await.0, 200);
    let engine = state.engine().unwrap();
    assert_eq!(engine.adopt_unbound().await.unwrap(), vec!["legacy"]);
    assert!(engine.adopt_unbound().await.unwrap().is_empty(), "once");
    let (_, info) = call(&url, "GET", "/v1/collections/legacy", None).await;
    assert_eq!(info["model"]["pooling"], "mean");
    // The adoption is in the log: another model opening the data is refused.
    let copy = tmp.path().join("copy");
    copy_dir(&data, &copy);
    let cls = cls_model(tmp.path());
    let (_t2, s2, url2) = serve(move |cfg| {
        cfg.data_dir = copy;
        cfg.model = Some(cls);
    })
    .await;
    assert!(s2
        .engine()
        .unwrap()
        .adopt_unbound()
        .await
        .unwrap()
        .is_empty());
    let (status, _) = query(&url2, "legacy", json!({"query": "cat"})).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_of_client_vectors_takes_only_vectors_of_its_dimension() {
    let (_t, _s, url) = serve(|_| {}).await;
    let create = |body| call(&url, "PUT", "/v1/collections/ext", Some(body));
    assert_eq!(
        create(json!({"vectors": "external"})).await.0,
        400,
        "needs dim"
    );
    assert_eq!(
        create(json!({"dim": 3})).await.0,
        400,
        "dim is for external"
    );
    let (status, info) = create(json!({"vectors": "external", "dim": 3})).await;
    assert_eq!(
        (status, info["vectors"].clone(), info["dim"].clone()),
        (200, json!("external"), json!(3))
    );
    assert!(info.get("model").is_none());
    let docs = json!([{"id": "x", "text": "points along x", "vector": [1.0, 0.0, 0.0]},
                      {"id": "y", "text": "points along y", "vector": [0.0, 1.0, 0.0]}]);
    assert_eq!(ingest(&url, "ext", docs).await.0, 200);
    let (status, body) = ingest(&url, "ext", json!([{"id": "t", "text": "no vector"}])).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("external"),
        "{body}"
    );
    let wrong = json!([{"id": "w", "text": "w", "vector": [1.0, 0.0]}]);
    assert_eq!(ingest(&url, "ext", wrong).await.0, 400);
    let (status, body) = query(&url, "ext", json!({"vector": [0.1, 0.9, 0.0]})).await;
    assert_eq!(
        (status, body["hits"][0]["document_id"].clone()),
        (200, json!("y"))
    );
    assert_eq!(query(&url, "ext", json!({"query": "along"})).await.0, 400);
    let (status, _) = query(&url, "ext", json!({"query": "along", "mode": "lexical"})).await;
    assert_eq!(status, 200);
    assert_eq!(call(&url, "GET", "/readyz", None).await.0, 200);
}
