//! The engine against vectors sentence-transformers itself produced
//! (`tests/data/make_reference.py`).

mod common;

use common::{cosine, cpu_embedder};
use kb_embed::Lane;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    passages: Vec<Passage>,
}

#[derive(Deserialize)]
struct Passage {
    text: String,
    tokens: usize,
    truncated: bool,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn vectors_match_sentence_transformers() {
    let reference = reference();
    let embedder = cpu_embedder(|cfg| cfg.precision = kb_embed::Precision::Fp32);
    assert_eq!(embedder.max_seq_len(), reference.max_seq_length);
    let texts = reference.passages.iter().map(|p| p.text.clone()).collect();
    let out = embedder.embed_blocking(Lane::Interactive, texts).unwrap();
    let worst = (0..out.vectors.len())
        .map(|i| cosine(&out.vectors[i], &reference.passages[i].vector))
        .fold(f64::INFINITY, f64::min);
    eprintln!("fp32 worst cosine to sentence-transformers fp32: {worst:.7}");
    for (i, passage) in reference.passages.iter().enumerate() {
        let similarity = cosine(&out.vectors[i], &passage.vector);
        assert!(
            similarity >= 0.9999,
            "passage {i} {:?}: cosine {similarity}",
            passage.text
        );
        let norm: f32 = out.vectors[i].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "passage {i} has norm {norm}");
    }
}

#[test]
fn only_the_passage_longer_than_the_model_limit_is_truncated() {
    let reference = reference();
    let embedder = cpu_embedder(|_| {});
    let texts = reference.passages.iter().map(|p| p.text.clone()).collect();
    let out = embedder.embed_blocking(Lane::Interactive, texts).unwrap();
    let long: Vec<usize> = (0..reference.passages.len())
        .filter(|&i| out.truncated[i])
        .collect();
    assert_eq!(
        long,
        vec![reference.passages.len() - 1],
        "truncated flags {:?}",
        out.truncated
    );
    for (i, passage) in reference.passages.iter().enumerate() {
        assert_eq!(out.truncated[i], passage.truncated, "passage {i}");
        assert_eq!(out.token_counts[i], passage.tokens, "passage {i}");
    }
}

#[test]
fn each_passage_alone_matches_sentence_transformers() {
    // Single-row batches have no padding: this separates encoder errors from mask errors.
    let reference = reference();
    let embedder = cpu_embedder(|cfg| cfg.precision = kb_embed::Precision::Fp32);
    for passage in reference.passages.iter().take(6) {
        let out = embedder
            .embed_blocking(Lane::Interactive, vec![passage.text.clone()])
            .unwrap();
        assert!(
            cosine(&out.vectors[0], &passage.vector) >= 0.9999,
            "{:?}",
            passage.text
        );
    }
}

#[test]
fn bf16_on_cpu_stays_close_to_sentence_transformers() {
    let reference = reference();
    let embedder = cpu_embedder(|cfg| cfg.precision = kb_embed::Precision::Bf16);
    assert_eq!(embedder.precision(), "bf16");
    let texts = reference.passages.iter().map(|p| p.text.clone()).collect();
    let out = embedder.embed_blocking(Lane::Interactive, texts).unwrap();
    let worst = reference
        .passages
        .iter()
        .zip(&out.vectors)
        .map(|(p, v)| cosine(v, &p.vector))
        .fold(f64::INFINITY, f64::min);
    eprintln!("bf16 worst cosine to sentence-transformers fp32: {worst:.5}");
    assert!(worst >= 0.999, "bf16 worst cosine {worst}");
}
