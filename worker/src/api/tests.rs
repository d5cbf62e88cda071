//! The serving path while the index lock is taken (a long apply, or a long search with a
//! write waiting behind it): probes, listings, metrics and cached queries answer without
//! waiting, and the request bounds answer in the JSON error shape.

use super::SharedState;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::test_support::{call, serve};

/// The index's write lock, held on a plain thread (as a long apply would) until this is
/// released or dropped; dropping also releases after a failed assertion, so that a
/// handler stuck behind the lock finishes and the runtime can shut down.
struct HeldIndex {
    held: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl HeldIndex {
    /// Takes the lock and returns once it is held.
    async fn take(state: &SharedState) -> HeldIndex {
        let engine = state.engine().unwrap();
        let (held, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, r) = (held.clone(), release.clone());
        let holder = std::thread::spawn(move || {
            let guard = engine.store.hold_index();
            h.store(true, Ordering::SeqCst);
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            h.store(false, Ordering::SeqCst);
            drop(guard);
        });
        while !held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        HeldIndex {
            held,
            release,
            holder: Some(holder),
        }
    }

    /// Whether the lock is still held (true until [`HeldIndex::release`]).
    fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    fn release(mut self) {
        self.release.store(true, Ordering::SeqCst);
        if let Some(holder) = self.holder.take() {
            holder.join().unwrap();
        }
    }
}

impl Drop for HeldIndex {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_listings_metrics_and_cached_queries_do_not_wait_for_the_index_lock() {
    let (_tmp, state, url) = serve(|_| {}).await;
    let doc = json!({"documents": [{"id": "d1", "text": "replicas apply the log in order"}]});
    assert_eq!(
        call(&url, "POST", "/v1/collections/c/documents", Some(doc))
            .await
            .0,
        200
    );
    let query = json!({"query": "how do replicas apply records", "top_k": 1});
    let (status, first) = call(&url, "POST", "/v1/collections/c/query", Some(query.clone())).await;
    assert_eq!((status, &first["cache"]), (200, &json!("miss")));

    let lock = HeldIndex::take(&state).await;
    for (method, path, body) in [
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/collections", None),
        ("GET", "/v1/collections/c", None),
        ("POST", "/v1/collections/c/query", Some(query.clone())),
    ] {
        let (status, body) = call(&url, method, path, body).await;
        assert!(
            lock.is_held(),
            "{method} {path} waited for the index lock to be released"
        );
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (_, cached) = call(&url, "POST", "/v1/collections/c/query", Some(query)).await;
    assert_eq!(cached["cache"], "l1");
    assert_eq!(cached["hits"], first["hits"]);
    lock.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_own_deadline_gets_a_json_503_and_its_retry_lands() {
    // Reads may take a minute, writes one second: only the write deadline can answer.
    let (_tmp, state, url) = serve(|cfg| {
        cfg.limits.request_timeout_seconds = 60;
        cfg.limits.write_timeout_seconds = 1;
    })
    .await;
    let vector: Vec<f32> = (0..384).map(|i| if i == 1 { 1.0 } else { 0.0 }).collect();
    let doc = |id: &str| json!({"documents": [{"id": id, "text": "x", "vector": vector}]});
    let path = "/v1/collections/c/documents";
    assert_eq!(call(&url, "POST", path, Some(doc("d0"))).await.0, 200);

    let lock = HeldIndex::take(&state).await;
    let (status, body) = call(&url, "POST", path, Some(doc("d1"))).await;
    assert!(lock.is_held(), "answered while the write was still stuck");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("retrying it is safe"));
    lock.release();

    // The retry is an upsert of the same document: it lands once, whatever became of the
    // first attempt.
    assert_eq!(call(&url, "POST", path, Some(doc("d1"))).await.0, 200);
    let (status, got) = call(&url, "GET", &format!("{path}/d1"), None).await;
    assert_eq!(status, 200, "{got}");
    let (_, list) = call(&url, "GET", path, None).await;
    let ids: Vec<&str> = list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d0", "d1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_cap_and_the_deadline_requests_get_json_503s() {
    let (_tmp, state, url) = serve(|cfg| {
        cfg.limits.max_concurrent_requests = 1;
        cfg.limits.request_timeout_seconds = 1;
        cfg.cache.enabled = false;
    })
    .await;
    let vector: Vec<f32> = (0..384).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let doc = json!({"documents": [{"id": "d1", "text": "x", "vector": vector}]});
    assert_eq!(
        call(&url, "POST", "/v1/collections/c/documents", Some(doc))
            .await
            .0,
        200
    );

    let lock = HeldIndex::take(&state).await;
    // A search needs the index: it waits (off the async threads) and holds the one slot
    // until its deadline. Polls that all land outside that window (a slow, loaded machine)
    // prove nothing either way, so a missed window sends another search.
    let mut refused = None;
    let mut stuck = None;
    for _attempt in 0..5 {
        let search = tokio::spawn({
            let url = url.clone();
            let vector = vector.clone();
            async move {
                call(
                    &url,
                    "POST",
                    "/v1/collections/c/query",
                    Some(json!({"vector": vector})),
                )
                .await
            }
        });
        while !search.is_finished() {
            let (status, body) = call(&url, "GET", "/v1/collections", None).await;
            if status == 503 {
                refused = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stuck = Some(search);
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("a second request was admitted past max_concurrent_requests = 1");
    let stuck = stuck.unwrap();
    assert_eq!(refused["error"]["code"], "unavailable");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_concurrent_requests"));
    // Probes stay outside the cap.
    assert_eq!(call(&url, "GET", "/readyz", None).await.0, 200);
    let (status, body) = stuck.await.unwrap();
    assert!(
        lock.is_held(),
        "the query was answered only after the lock was released"
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    lock.release();
    // Once the lock is free, the same search answers.
    assert_eq!(call(&url, "GET", "/v1/collections", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_query_text_is_a_400_that_names_the_limit() {
    let (_tmp, _state, url) = serve(|cfg| cfg.limits.max_query_bytes = 1000).await;
    let doc = json!({"documents": [{"id": "d1", "text": "some text"}]});
    assert_eq!(
        call(&url, "POST", "/v1/collections/c/documents", Some(doc))
            .await
            .0,
        200
    );
    let (status, body) = call(
        &url,
        "POST",
        "/v1/collections/c/query",
        Some(json!({"query": "word ".repeat(300)})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limits.max_query_bytes"));
}

/// The router registers every route through `routes!`, which takes the path and method
/// from the handler's description: a plain `.route(` would serve an undocumented route.
#[test]
fn every_route_comes_with_its_description() {
    let source = include_str!("mod.rs");
    let plain = source.matches(".route(").count();
    assert_eq!(plain, 0, "mod.rs adds routes without OpenAPI descriptions");
    assert!(source.matches("routes!(").count() >= 13);
}

/// Every operation in /openapi.json is served (neither the unknown-route 404 nor a 405),
/// has a unique id, and every `$ref` resolves; limits the handlers enforce as constants
/// are the document's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_what_is_served() {
    let (_tmp, _state, url) = serve(|_| {}).await;
    let (status, doc) = call(&url, "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut served = 0;
    for (path, operations) in paths {
        let concrete = path
            .replace("{collection}", "c")
            .replace("{id}", "d")
            .replace("{alias}", "a");
        for (method, op) in operations.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} appears twice");
            assert!(
                op["responses"]["default"].is_object(),
                "{id} has no default"
            );
            let (status, body) = call(&url, &method.to_uppercase(), &concrete, None).await;
            let unknown = body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no such route"));
            assert!(
                status != 405 && !unknown,
                "{method} {path} is documented but not served: {status} {body}"
            );
            served += 1;
        }
    }
    assert_eq!(served, 25, "operations in the document");
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap();
        let pointer = target.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["BatchBody"]["properties"]["queries"]["maxItems"],
        json!(super::query::MAX_BATCH_QUERIES)
    );
    let list = &paths["/v1/collections/{collection}/documents"]["get"]["parameters"];
    let limit = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["maximum"], json!(super::browse::MAX_PAGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_for_download_is_written_at_a_time() {
    let (_tmp, state, url) = serve(|_| {}).await;
    let doc = json!({"documents": [{"id": "d1", "text": "some text"}]});
    assert_eq!(
        call(&url, "POST", "/v1/collections/c/documents", Some(doc))
            .await
            .0,
        200
    );
    // Another download is writing its snapshot: this one is told to come back.
    let writing = state.snapshot_slot.try_acquire().unwrap();
    let (status, body) = call(&url, "GET", "/v1/admin/snapshot", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("being written already"));
    drop(writing);
    let (status, _) = call(&url, "GET", "/v1/admin/snapshot", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_query_requests_wait_for_a_permit_and_small_ones_never_do() {
    let (_tmp, state, url) = serve(|_| {}).await;
    let doc =
        json!({"documents": [{"id": "d1", "text": "large and small", "metadata": {"team": "t3"}}]});
    assert_eq!(
        call(&url, "POST", "/v1/collections/c/documents", Some(doc))
            .await
            .0,
        200
    );
    // Every large-request permit taken, as by large requests in flight.
    let mut held = Vec::new();
    while state.large_requests.available_permits() > 0 {
        held.push(state.large_request_permit().await);
    }
    let values: Vec<String> = (0..4095)
        .map(|i| format!("x{i}"))
        .chain(["t3".into()])
        .collect();
    let query = json!({"query": "large", "filter": {"team": {"$in": values}}});
    let large = json!({"queries": [query, query, query, query]});
    assert!(large.to_string().len() > super::documents::LARGE_REQUEST_BYTES);
    let (url2, path) = (url.clone(), "/v1/collections/c/query/batch");
    let waiting = tokio::spawn(async move { call(&url2, "POST", path, Some(large)).await });
    let small = json!({"query": "small", "filter": {"team": {"$in": ["t3"]}}});
    let (status, answer) = call(&url, "POST", "/v1/collections/c/query", Some(small)).await;
    assert_eq!(
        (status, answer["hits"][0]["document_id"].clone()),
        (200, json!("d1"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the large request went ahead without a permit"
    );
    drop(held);
    let (status, answer) = waiting.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["hits"][0]["document_id"], "d1");
}
