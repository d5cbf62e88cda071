//! `embedding.query_prefix` / `document_prefix` end to end: `/query` embeds the query text
//! with the query prefix, ingestion embeds chunks with the document prefix, and
//! `/v1/embeddings` embeds its inputs as given.

mod common;

use common::{post_ok, Worker};
use serde_json::{json, Value};

const CONFIG: &str = "embedding:\n  precision: fp32\n  query_prefix: \"query: \"\n  \
                      document_prefix: \"passage: \"\n";

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

async fn embeddings(url: &str, inputs: &[String]) -> Vec<Vec<f64>> {
    let answer = post_ok(url, "/v1/embeddings", &json!({"input": inputs})).await;
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (d["embedding"].as_array().unwrap().iter())
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn queries_and_chunks_get_their_prefixes_and_openai_inputs_none() {
    let tmp = tempfile::tempdir().unwrap();
    let w = Worker::start(&tmp.path().join("data"), CONFIG, &["--open"]).await;
    let text = "Operators reconcile custom resources with the objects in the cluster.";
    let docs = json!({"documents": [{"id": "d", "text": text}]});
    post_ok(&w.url, "/v1/collections/c/documents?wait=applied", &docs).await;
    let question = "what keeps cluster objects in line with a custom resource?";
    let body = json!({"query": question, "top_k": 1, "include_text": true});
    let answer: Value = post_ok(&w.url, "/v1/collections/c/query", &body).await;
    let hit = &answer["hits"][0];
    let (score, chunk) = (
        hit["score"].as_f64().unwrap(),
        hit["text"].as_str().unwrap(),
    );
    let inputs = [
        format!("query: {question}"),
        format!("passage: {chunk}"),
        question.to_string(),
        chunk.to_string(),
    ];
    let v = embeddings(&w.url, &inputs).await;
    let prefixed = cosine(&v[0], &v[1]);
    let plain = cosine(&v[2], &v[3]);
    eprintln!("score {score:.6}, prefixed cosine {prefixed:.6}, plain cosine {plain:.6}");
    assert!(
        (score - prefixed).abs() < 1e-4,
        "score {score} vs {prefixed}"
    );
    assert!(
        (score - plain).abs() > 1e-3,
        "the prefixes must change the score ({score} vs {plain} without)"
    );
}
