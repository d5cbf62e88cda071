//! `/v1/rerank` in both shapes and the queries' `rerank` option, on a small random
//! cross-encoder built by kb-embed's `tests/data/make_rerank.py` (sentence-transformers'
//! `CrossEncoder.save` layout) and the bundled embedding model.

use crate::test_support::{model_dir, post_json as post, python, serve};
use kb_config::RerankerConfig;
use kb_embed::{EmbeddingConfig, Precision, Reranker};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Builds the test cross-encoders into `dir`; returns the 64-wide sigmoid one.
fn cross_encoder(dir: &Path) -> PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../embed/tests/data/make_rerank.py"
    );
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(dir)
        .arg(model_dir())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("the project virtualenv's python runs (`make setup`)");
    assert!(
        out.status.success(),
        "make_rerank.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("sigmoid")
}

const QUERY: &str = "how do replicas apply the replication log?";

const TEXTS: &[&str] = &[
    "Replicas tail the replication log and apply every record in order.",
    "The quick brown fox jumps over the lazy dog.",
    "A StatefulSet keeps a stable network identity and persistent storage for each pod.",
    "Short.",
    "Pictures in an image gallery can be resized and cropped.",
];

/// The Rust reranker's own scores of `TEXTS`, fp32 on the CPU as the worker runs it.
fn expected(model: &Path) -> (Vec<f32>, Vec<f32>) {
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Fp32,
        ..EmbeddingConfig::default()
    };
    let reranker = Reranker::load(model, &cfg).unwrap();
    let texts = TEXTS.iter().map(|t| t.to_string()).collect();
    let scored = reranker.score_blocking(QUERY, texts).unwrap();
    (scored.scores, scored.logits)
}

fn descending(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order
}

fn with_reranker(model: PathBuf) -> impl FnOnce(&mut kb_config::WorkerConfig) {
    move |cfg| {
        cfg.embedding.precision = Precision::Fp32;
        cfg.reranker = Some(RerankerConfig::new(model));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_answers_in_the_tei_and_cohere_shapes() {
    let models = tempfile::tempdir().unwrap();
    let model = cross_encoder(models.path());
    let (scores, logits) = tokio::task::spawn_blocking({
        let model = model.clone();
        move || expected(&model)
    })
    .await
    .unwrap();
    let (_tmp, _state, url) = serve(with_reranker(model)).await;
    let order = descending(&scores);

    // TEI: every text, best first; raw_scores gives the logits; return_text the texts.
    let (status, tei) = post(&url, "/v1/rerank", json!({"query": QUERY, "texts": TEXTS})).await;
    assert_eq!(status, 200, "{tei}");
    let results = tei.as_array().unwrap();
    let indexes: Vec<usize> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(indexes, order);
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - scores[i]).abs() < 1e-5);
        assert!(r.get("text").is_none());
    }
    let body = json!({"query": QUERY, "texts": TEXTS, "raw_scores": true, "return_text": true});
    let (_, raw) = post(&url, "/v1/rerank", body).await;
    for r in raw.as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - logits[i]).abs() < 1e-5);
        assert_eq!(r["text"], TEXTS[i]);
    }

    // Cohere: strings or {text}, cut at top_n, documents on request.
    let documents: Vec<Value> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i % 2 == 0 {
                json!(t)
            } else {
                json!({"text": t})
            }
        })
        .collect();
    let body = json!({"query": QUERY, "documents": documents, "top_n": 2,
        "model": "any", "return_documents": true});
    let (status, cohere) = post(&url, "/v1/rerank", body).await;
    assert_eq!(status, 200, "{cohere}");
    assert!(cohere["id"].is_string() && cohere["meta"].is_object());
    let results = cohere["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, &i) in results.iter().zip(&order) {
        assert_eq!(r["index"].as_u64().unwrap() as usize, i);
        assert!((r["relevance_score"].as_f64().unwrap() as f32 - scores[i]).abs() < 1e-5);
        assert_eq!(r["document"]["text"], TEXTS[i]);
    }
    let (_, plain) = post(
        &url,
        "/v1/rerank",
        json!({"query": QUERY, "documents": TEXTS}),
    )
    .await;
    assert_eq!(plain["results"].as_array().unwrap().len(), TEXTS.len());
    assert!(plain["results"][0].get("document").is_none());

    // Errors, in the project's shape.
    let long = "replication ".repeat(100);
    for (body, says) in [
        (json!({"query": QUERY}), "exactly one of `texts`"),
        (
            json!({"query": QUERY, "texts": ["a"], "documents": ["b"]}),
            "exactly one of `texts`",
        ),
        (json!({"query": " ", "texts": ["a"]}), "`query` is empty"),
        (
            json!({"query": QUERY, "texts": []}),
            "`texts` needs 1 to 1000",
        ),
        (
            json!({"query": QUERY, "documents": [{"txt": "a"}]}),
            "invalid rerank request",
        ),
        (
            json!({"query": QUERY, "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"query": QUERY, "texts": [long], "truncate": false}),
            "truncate",
        ),
    ] {
        let (status, answer) = post(&url, "/v1/rerank", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, _) = post(&url, "/v1/rerank", json!({"query": QUERY, "texts": [long]})).await;
    assert_eq!(status, 200, "truncated by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_reranker_says_how_to_configure_one() {
    let (_tmp, _state, url) = serve(|_| {}).await;
    let (status, answer) = post(&url, "/v1/rerank", json!({"query": "q", "texts": ["a"]})).await;
    assert_eq!(status, 400);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("reranker.model"), "{message}");
    let body = json!({"query": "q", "rerank": {"candidates": 5}});
    let (status, answer) = post(&url, "/v1/collections/c/query", body).await;
    assert!(status == 400 || status == 404, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_with_rerank_come_ordered_by_the_cross_encoder() {
    let models = tempfile::tempdir().unwrap();
    let model = cross_encoder(models.path());
    let (scores, _) = tokio::task::spawn_blocking({
        let model = model.clone();
        move || expected(&model)
    })
    .await
    .unwrap();
    let (_tmp, _state, url) = serve(with_reranker(model)).await;
    let documents: Vec<Value> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("d{i}"), "text": t}))
        .collect();
    let (status, body) = post(
        &url,
        "/v1/collections/c/documents",
        json!({"documents": documents}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let order = descending(&scores);
    let query = json!({"query": QUERY, "top_k": 3, "rerank": {"candidates": 10}});
    let (status, answer) = post(&url, "/v1/collections/c/query", query.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let hits = answer["hits"].as_array().unwrap();
    let ids: Vec<String> = hits
        .iter()
        .map(|h| h["document_id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = order[..3].iter().map(|i| format!("d{i}")).collect();
    assert_eq!(ids, want);
    for hit in hits {
        let i: usize = hit["document_id"].as_str().unwrap()[1..].parse().unwrap();
        let rerank = hit["scores"]["rerank"].as_f64().unwrap() as f32;
        assert!((rerank - scores[i]).abs() < 1e-5, "{hit}");
        assert_eq!(hit["score"], hit["scores"]["rerank"]);
        assert!(hit["scores"]["dense"].is_number());
    }
    // The threshold applies to the rerank score; the cached answer stays reranked.
    let threshold = (scores[order[0]] + scores[order[1]]) / 2.0;
    let mut strict = query.clone();
    strict["score_threshold"] = json!(threshold);
    let (_, answer) = post(&url, "/v1/collections/c/query", strict).await;
    assert_eq!(answer["hits"].as_array().unwrap().len(), 1, "{answer}");
    let (_, again) = post(&url, "/v1/collections/c/query", query).await;
    assert_eq!(again["hits"][0]["document_id"], want[0].as_str());
    let (_, plain) = post(
        &url,
        "/v1/collections/c/query",
        json!({"query": QUERY, "top_k": 3}),
    )
    .await;
    assert!(
        plain["hits"][0]["scores"].get("rerank").is_none(),
        "{plain}"
    );
    // In a batch too; a vector query cannot be reranked.
    let batch = json!({"queries": [{"query": QUERY, "top_k": 2, "rerank": {}}]});
    let (status, answer) = post(&url, "/v1/collections/c/query/batch", batch).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"][0]["hits"][0]["document_id"],
        want[0].as_str()
    );
    let vector = json!({"vector": vec![0.1f32; 384], "rerank": {"candidates": 5}});
    let (status, answer) = post(&url, "/v1/collections/c/query", vector).await;
    assert_eq!(status, 400, "{answer}");
    let too_many = json!({"query": QUERY, "rerank": {"candidates": 5000}});
    let (status, _) = post(&url, "/v1/collections/c/query", too_many).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rerankers_measured_precision_is_exported() {
    let models = tempfile::tempdir().unwrap();
    let model = cross_encoder(models.path());
    let (_tmp, _state, url) = serve(move |cfg| {
        cfg.embedding.precision = Precision::Fp32;
        let mut reranker = RerankerConfig::new(model);
        reranker.precision = Some(Precision::Auto);
        cfg.reranker = Some(reranker);
    })
    .await;
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let fp32 = "{precision=\"fp32\"}";
    assert!(sample(&format!("kb_worker_rerank_calibration_seconds{fp32}")) > 0.0);
    let error = sample(&format!(
        "kb_worker_rerank_calibration_max_logit_error{fp32}"
    ));
    assert_eq!(error, 0.0, "fp32 is the reference");
}
