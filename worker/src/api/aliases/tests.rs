//! Aliases stand for collections in queries, writes and listings, swap in one record, never
//! shadow a collection, and survive a restart.

use crate::test_support::{call, copy_dir, serve};
use serde_json::{json, Value};

async fn ingest(url: &str, collection: &str, id: &str, text: &str) -> u16 {
    let path = format!("/v1/collections/{collection}/documents?wait=applied");
    let body = json!({"documents": [{"id": id, "text": text}]});
    call(url, "POST", &path, Some(body)).await.0
}

/// The ids of the hits of a text query, or the status when it is not 200.
async fn hits(url: &str, collection: &str, text: &str) -> Result<Vec<String>, u16> {
    let path = format!("/v1/collections/{collection}/query");
    let (status, body) = call(url, "POST", &path, Some(json!({"query": text}))).await;
    if status != 200 {
        return Err(status);
    }
    Ok(body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap().to_string())
        .collect())
}

async fn set_alias(url: &str, alias: &str, collection: &str) -> (u16, Value) {
    let body = json!({ "collection": collection });
    call(url, "PUT", &format!("/v1/aliases/{alias}"), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_stands_for_its_collection_everywhere_and_swaps_in_one_write() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = data.clone();
    let (_t, _s, url) = serve(move |cfg| cfg.data_dir = dir).await;
    assert_eq!(
        ingest(&url, "v1", "cat", "The cat sat on the mat.").await,
        200
    );
    assert_eq!(
        ingest(&url, "v2", "qubit", "Quantum computers use qubits.").await,
        200
    );
    let (status, body) = set_alias(&url, "docs", "v1").await;
    assert_eq!(
        (status, body["collection"].clone()),
        (200, json!("v1")),
        "{body}"
    );
    assert_eq!(hits(&url, "docs", "cat").await, Ok(vec!["cat".to_string()]));
    // Writes and reads through the alias land in its collection.
    assert_eq!(
        ingest(&url, "docs", "dog", "A dog chased the cat.").await,
        200
    );
    let (status, _) = call(&url, "GET", "/v1/collections/v1/documents/dog", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&url, "GET", "/v1/collections/docs/documents/dog", None).await;
    assert_eq!(status, 200);
    let (_, info) = call(&url, "GET", "/v1/collections/docs", None).await;
    assert_eq!(
        (info["name"].clone(), info["aliases"].clone()),
        (json!("v1"), json!(["docs"]))
    );
    let (_, list) = call(&url, "GET", "/v1/aliases", None).await;
    assert_eq!(
        list["aliases"],
        json!([{"alias": "docs", "collection": "v1"}])
    );
    // The swap: every reader and writer moves at once.
    assert_eq!(set_alias(&url, "docs", "v2").await.0, 200);
    assert_eq!(
        hits(&url, "docs", "cat").await,
        Ok(vec!["qubit".to_string()])
    );
    // Aliases never shadow collections, never chain, and pin what they stand for.
    let conflicts = [
        set_alias(&url, "v1", "v2").await,
        set_alias(&url, "other", "docs").await,
        call(&url, "PUT", "/v1/collections/docs", None).await,
        call(&url, "DELETE", "/v1/collections/docs", None).await,
        call(&url, "DELETE", "/v1/collections/v2", None).await,
    ];
    for (status, body) in conflicts {
        assert_eq!(status, 409, "{body}");
    }
    assert_eq!(set_alias(&url, "x", "missing").await.0, 404);
    assert_eq!(
        set_alias(&url, "bad/name", "v1").await.0,
        404,
        "not a route"
    );
    assert_eq!(set_alias(&url, ".hidden", "v1").await.0, 400);

    // A restart keeps the alias (it is in the log).
    let copy = tmp.path().join("copy");
    copy_dir(&data, &copy);
    let (_t2, _s2, url2) = serve(move |cfg| cfg.data_dir = copy).await;
    assert_eq!(
        hits(&url2, "docs", "cat").await,
        Ok(vec!["qubit".to_string()])
    );

    let (status, body) = call(&url, "DELETE", "/v1/aliases/docs", None).await;
    assert_eq!((status, body["collection"].clone()), (200, json!("v2")));
    assert_eq!(call(&url, "DELETE", "/v1/aliases/docs", None).await.0, 404);
    assert_eq!(hits(&url, "docs", "cat").await, Err(404));
    assert_eq!(
        call(&url, "DELETE", "/v1/collections/v2", None).await.0,
        200
    );
}
