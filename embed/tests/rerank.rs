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
