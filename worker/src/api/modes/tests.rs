//! Query modes through the HTTP API, on the bundled model.

use crate::test_support::{post_json as post, serve};
use kb_config::Lexical;
use serde_json::{json, Value};

const DOCS: &[(&str, &str, &str)] = &[
    (
        "aws",
        "Call UpdateImageSetMetadata to change the attributes of an image set.",
        "cloud",
    ),
    (
        "ci",
        "The before_script section runs ahead of every job of the pipeline.",
        "ci",
    ),
    (
        "numpy",
        "Seed a RandomState so that sampled arrays are reproducible.",
        "python",
    ),
    (
        "images",
        "Pictures in an image gallery can be resized and cropped.",
        "cloud",
    ),
];

async fn with_docs(lexical: Lexical) -> (tempfile::TempDir, String) {
    let (tmp, _state, url) = serve(|cfg| cfg.index.lexical = lexical).await;
    let documents: Vec<Value> = DOCS
        .iter()
        .map(|(id, text, topic)| json!({"id": id, "text": text, "metadata": {"topic": topic}}))
        .collect();
    let (status, body) = post(
        &url,
        "/v1/collections/c/documents",
        json!({"documents": documents}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (tmp, url)
}

fn ids(answer: &Value) -> Vec<String> {
    answer["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap().to_string())
        .collect()
}

async fn query(url: &str, body: Value) -> Value {
    let (status, answer) = post(url, "/v1/collections/c/query", body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexical_hybrid_and_dense_modes_rank_by_their_own_scores() {
    let (_tmp, url) = with_docs(Lexical::Standard).await;
    let lexical = query(
        &url,
        json!({"query": "UpdateImageSetMetadata", "mode": "lexical"}),
    )
    .await;
    // The identifier itself, then a passage holding one of its parts ("image"); the
    // others share no term with the query and are not returned.
    assert_eq!(ids(&lexical), ["aws", "images"]);
    let hit = &lexical["hits"][0];
    assert_eq!(hit["score"], hit["scores"]["lexical"]);
    assert!(hit["scores"].get("dense").is_none());

    let hybrid = query(
        &url,
        json!({"query": "RandomState", "mode": "hybrid", "top_k": 4}),
    )
    .await;
    assert_eq!(ids(&hybrid)[0], "numpy");
    let hits = hybrid["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 4, "every dense candidate too");
    for pair in hits.windows(2) {
        assert!(pair[0]["score"].as_f64() >= pair[1]["score"].as_f64());
    }
    for h in hits {
        assert_eq!(h["score"], h["scores"]["fused"]);
        assert!(h["scores"]["dense"].is_number() && h["scores"]["lexical"].is_number());
    }
    // Dense only for alpha 1: the order of a dense query.
    let dense = query(&url, json!({"query": "RandomState", "top_k": 4})).await;
    let alpha_one = query(
        &url,
        json!({"query": "RandomState", "mode": "hybrid", "top_k": 4,
               "hybrid": {"fusion": "relative", "alpha": 1.0}}),
    )
    .await;
    assert_eq!(ids(&dense), ids(&alpha_one));
    for h in dense["hits"].as_array().unwrap() {
        assert_eq!(h["score"], h["scores"]["dense"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_thresholds_apply_in_every_mode() {
    let (_tmp, url) = with_docs(Lexical::Standard).await;
    let not_cloud = json!({"topic": "python"});
    for mode in ["lexical", "hybrid", "dense"] {
        let answer = query(
            &url,
            json!({"query": "image set metadata", "mode": mode, "filter": not_cloud}),
        )
        .await;
        let got = ids(&answer);
        assert!(got.iter().all(|id| id == "numpy"), "{mode}: {got:?}");
    }
    let all = query(&url, json!({"query": "image set", "mode": "lexical"})).await;
    let scores: Vec<f64> = all["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores.len() >= 2, "{all}");
    let cut = (scores[0] + scores[1]) / 2.0;
    let above = query(
        &url,
        json!({"query": "image set", "mode": "lexical", "score_threshold": cut}),
    )
    .await;
    assert_eq!(ids(&above), ids(&all)[..1]);
    let (status, batch) = post(
        &url,
        "/v1/collections/c/query/batch",
        json!({"queries": [
            {"query": "before_script", "mode": "lexical"},
            {"query": "RandomState", "mode": "hybrid", "top_k": 1}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(ids(&batch["results"][0]), ["ci"]);
    assert_eq!(ids(&batch["results"][1]), ["numpy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_mode_requests_are_refused_with_what_to_fix() {
    let (_tmp, url) = with_docs(Lexical::Standard).await;
    let cases = [
        (
            json!({"vector": vec![0.1; 384], "mode": "lexical"}),
            "give `query`",
        ),
        (
            json!({"query": "x", "hybrid": {"alpha": 0.3}}),
            "mode\": \"hybrid",
        ),
        (
            json!({"query": "x", "mode": "hybrid", "hybrid": {"alpha": 2.0}}),
            "alpha",
        ),
        (
            json!({"query": "x", "mode": "hybrid", "hybrid": {"candidates": 0}}),
            "candidates",
        ),
        (json!({"query": "x", "mode": "sparse"}), "sparse"),
    ];
    for (body, needle) in cases {
        let (status, answer) = post(&url, "/v1/collections/c/query", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_lexical_index_names_the_option() {
    let (_tmp, url) = with_docs(Lexical::Off).await;
    for mode in ["lexical", "hybrid"] {
        let (status, answer) = post(
            &url,
            "/v1/collections/c/query",
            json!({"query": "RandomState", "mode": mode}),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("index.lexical") && message.contains("spec.index.lexical"),
            "{message}"
        );
    }
    let dense = query(&url, json!({"query": "RandomState"})).await;
    assert_eq!(ids(&dense).len(), DOCS.len());
}
