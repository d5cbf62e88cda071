//! Cross-encoder reranking: small random `BertForSequenceClassification` models saved by
//! sentence-transformers' `CrossEncoder` (`tests/data/make_rerank.py`, into a temporary
//! directory) must score (query, passage) pairs as `CrossEncoder.predict` does, raw logits
//! and activated scores, truncated pairs included.

mod common;

use kb_embed::{Activation, EmbedError, EmbeddingConfig, Precision, Reranker};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Models {
    models: Vec<Model>,
}

#[derive(Deserialize)]
struct Model {
    name: String,
    dir: PathBuf,
    max_seq_length: usize,
    activation: String,
    query: String,
    passages: Vec<String>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    tokens: Vec<usize>,
}

/// Runs the generator into `dir` and reads what it wrote.
fn generate(dir: &Path) -> Models {
    common::generate("make_rerank.py", dir, "rerank.json")
}

fn fp32() -> EmbeddingConfig {
    EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Fp32,
        ..EmbeddingConfig::default()
    }
}

/// The largest absolute difference, after checking each against `tolerance`.
fn worst(model: &Model, what: &str, got: &[f32], want: &[f32], tolerance: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = (g - w).abs();
        assert!(
            diff <= tolerance,
            "{} {what} {i}: {g} vs sentence-transformers {w}",
            model.name
        );
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn small_cross_encoders_score_pairs_as_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let models = generate(dir.path());
    assert_eq!(models.models.len(), 2);
    for model in &models.models {
        let reranker = Reranker::load(&model.dir, &fp32()).expect("the cross-encoder loads");
        assert_eq!(
            reranker.max_seq_len(),
            model.max_seq_length,
            "{}",
            model.name
        );
        let expected = match model.activation.as_str() {
            "Sigmoid" => Activation::Sigmoid,
            _ => Activation::Identity,
        };
        assert_eq!(reranker.activation(), expected, "{}", model.name);
        let scored = reranker
            .score_blocking(&model.query, model.passages.clone())
            .unwrap();
        let logits = worst(model, "logit", &scored.logits, &model.logits, 1e-4);
        let scores = worst(model, "score", &scored.scores, &model.scores, 1e-4);
        for (i, &tokens) in model.tokens.iter().enumerate() {
            assert_eq!(
                scored.truncated[i],
                tokens > model.max_seq_length,
                "{} {i}",
                model.name
            );
        }
        assert!(
            scored.truncated.iter().any(|&t| t),
            "some pair is truncated"
        );
        // The async API gives the same scores.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let again = runtime
            .block_on(reranker.score(&model.query, model.passages.clone()))
            .unwrap();
        assert_eq!(again, scored.scores);
        eprintln!(
            "{:<9} worst |logit diff| {logits:.1e}, worst |score diff| {scores:.1e}",
            model.name
        );
    }
}

#[test]
fn an_embedding_model_or_no_passages_are_refused() {
    let err = Reranker::load(&common::model_dir(), &fp32())
        .err()
        .expect("a BertModel is no cross-encoder")
        .to_string();
    assert!(
        err.contains("BertForSequenceClassification") || err.contains("labels"),
        "{err}"
    );
}

#[test]
fn empty_passages_are_empty_input() {
    let dir = tempfile::tempdir().unwrap();
    let models = generate(dir.path());
    let reranker = Reranker::load(&models.models[1].dir, &fp32()).unwrap();
    assert_eq!(
        reranker.score_blocking("q", Vec::new()).unwrap_err(),
        EmbedError::EmptyInput
    );
}

/// Requests of every length and size, each with its own query.
fn requests(model: &Model) -> Vec<(String, Vec<String>)> {
    (0..8)
        .map(|i| {
            let passages = model
                .passages
                .iter()
                .cycle()
                .skip(i)
                .take(1 + i % 5)
                .map(|p| format!("{p} {}", "more words ".repeat(i * 3)))
                .collect();
            (format!("{} {i}", model.query), passages)
        })
        .collect()
}

/// Each request's scores come back to it, in its own order, whatever batches its pairs
/// shared with other requests' and whichever executor ran them.
#[test]
fn concurrent_requests_batched_together_each_get_their_own_scores() {
    let dir = tempfile::tempdir().unwrap();
    let models = generate(dir.path());
    let model = &models.models[0];
    // Two executors and small batches: the 8 requests share and split batches.
    let cfg = EmbeddingConfig {
        cpu_executors: Some(2),
        cpu_cores: Some(2),
        max_batch_tokens: 96,
        ..fp32()
    };
    let reranker = Reranker::load(&model.dir, &cfg).unwrap();
    assert_eq!(reranker.executors(), 2);
    let requests = requests(model);
    let alone: Vec<_> = requests
        .iter()
        .map(|(q, p)| reranker.score_blocking(q, p.clone()).unwrap())
        .collect();
    for round in 0..3 {
        let together: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(q, p)| s.spawn(|| reranker.score_blocking(q, p.clone()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(got.truncated, want.truncated, "request {i}");
            assert_eq!(got.logits.len(), want.logits.len(), "request {i}");
            for (g, w) in got.logits.iter().zip(&want.logits) {
                // Batches of another shape round the last bit or so differently.
                assert!(
                    (g - w).abs() <= 1e-5,
                    "round {round} request {i}: {:?} together, {:?} alone",
                    got.logits,
                    want.logits
                );
            }
        }
    }
    // The lone request matches sentence-transformers on several executors too.
    let scored = reranker
        .score_blocking(&model.query, model.passages.clone())
        .unwrap();
    worst(model, "logit", &scored.logits, &model.logits, 1e-4);
}

#[test]
fn auto_precision_is_measured_once_and_then_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let models = generate(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Auto,
        cpu_cores: Some(1),
        ..EmbeddingConfig::default()
    };
    let model = &models.models[1].dir;
    let first = Reranker::load_calibrated(model, &cfg, Some(cache.path())).unwrap();
    let measured = first
        .calibration()
        .expect("auto on a CPU is measured")
        .clone();
    assert!(!measured.cached);
    assert_eq!(
        measured
            .trials
            .iter()
            .map(|t| t.precision.as_str())
            .collect::<Vec<_>>(),
        ["fp32", "bf16"]
    );
    assert_eq!(measured.trials[0].max_logit_error, 0.0);
    assert_eq!(first.precision(), measured.chosen);
    assert!(measured.key.contains("reranker") && measured.key.contains("threads 1"));
    assert!(cache.path().join("cpu-calibration-reranker.json").exists());
    drop(first);
    let second = Reranker::load_calibrated(model, &cfg, Some(cache.path())).unwrap();
    let reused = second.calibration().unwrap();
    assert!(reused.cached, "the second start reads the cache");
    assert_eq!(reused.trials, measured.trials);
    assert_eq!(second.precision(), measured.chosen);
    // An explicit precision is not measured.
    let fp32 = Reranker::load_calibrated(model, &fp32(), Some(cache.path())).unwrap();
    assert!(fp32.calibration().is_none());
    assert_eq!(fp32.precision(), "fp32");
}

/// Not a check: rerank latency and throughput with 1 and 4 concurrent clients (50
/// passages a request), one executor with every core against the default executors, in
/// `KB_RERANK_BENCH_PRECISION` (default auto). Run in release:
/// `KB_RERANK_BENCH_MODEL=DIR KB_RERANK_BENCH_CORPUS=corpus.jsonl cargo test
/// --release -p kb-embed --test rerank -- --ignored --nocapture`.
#[test]
#[ignore]
fn rerank_latency_under_concurrency() {
    let model = PathBuf::from(std::env::var("KB_RERANK_BENCH_MODEL").expect("a model dir"));
    let corpus = std::env::var("KB_RERANK_BENCH_CORPUS").expect("a corpus.jsonl");
    let texts: Vec<String> = std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .take(2_000)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let precision = std::env::var("KB_RERANK_BENCH_PRECISION").unwrap_or("auto".into());
    for executors in [Some(1), None] {
        let cfg = EmbeddingConfig {
            device: "cpu".into(),
            cpu_executors: executors,
            precision: serde_json::from_value(serde_json::json!(precision)).unwrap(),
            ..EmbeddingConfig::default()
        };
        let reranker = Reranker::load(&model, &cfg).unwrap();
        for clients in [1usize, 4] {
            let per_client = 40 / clients;
            let started = std::time::Instant::now();
            let mut ms: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..clients)
                    .map(|c| {
                        let (reranker, texts) = (&reranker, &texts);
                        s.spawn(move || {
                            (0..per_client)
                                .map(|r| {
                                    let at = ((c * per_client + r) * 37) % (texts.len() - 50);
                                    let passages = texts[at..at + 50].to_vec();
                                    let t = std::time::Instant::now();
                                    reranker.score_blocking(&texts[at + 50], passages).unwrap();
                                    t.elapsed().as_secs_f64() * 1e3
                                })
                                .collect::<Vec<f64>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect()
            });
            let seconds = started.elapsed().as_secs_f64();
            ms.sort_by(f64::total_cmp);
            let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            println!(
                "cores {cores} executors {} precision {} clients {clients}: p50 {:.0} ms, p99 {:.0} ms, {:.0} pairs/s",
                reranker.executors(),
                reranker.precision(),
                at(0.5),
                at(0.99),
                (ms.len() * 50) as f64 / seconds
            );
        }
    }
}
