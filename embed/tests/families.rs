//! Model families beyond the bundled one: small random BERT models with CLS, max, mean and
//! mean/sqrt(length) pooling, with and without a `Normalize` module, of other widths,
//! depths and head counts, in both file spellings of sentence-transformers, and with
//! query/document prefixes. `tests/data/make_families.py` builds them with the project's
//! sentence-transformers into a temporary directory and writes that library's vectors;
//! kb-embed must match them.

mod common;

use common::cosine;
use kb_embed::{Embedder, EmbeddingConfig, Lane, Pooling, Precision, TextKind};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Families {
    models: Vec<Family>,
}

#[derive(Deserialize)]
struct Family {
    name: String,
    dir: PathBuf,
    dim: usize,
    pooling: String,
    normalize: bool,
    max_seq_length: usize,
    /// Prefixes the test configures; `None`: the model declares its own.
    configured: Option<Prefixes>,
    texts: Vec<String>,
    raw: Vec<Vec<f32>>,
    query: Vec<Vec<f32>>,
    document: Vec<Vec<f32>>,
    query_tokens: Vec<usize>,
}

#[derive(Deserialize)]
struct Prefixes {
    query_prefix: String,
    document_prefix: String,
}

/// Runs the generator into `dir` and reads what it wrote.
fn generate(dir: &Path) -> Families {
    common::generate("make_families.py", dir, "families.json")
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// The worst cosine and worst relative norm difference of `got` against `want`, after
/// checking both bounds row by row.
fn compare(family: &Family, what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, f64) {
    let (mut worst_cos, mut worst_norm) = (f64::INFINITY, 0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), family.dim, "{} {what} {i}: width", family.name);
        let cos = cosine(g, w);
        let rel = (norm(g) - norm(w)).abs() / norm(w);
        assert!(
            cos >= 0.9999,
            "{} {what} {i} {:?}: cosine {cos}",
            family.name,
            family.texts[i]
        );
        assert!(
            rel <= 1e-3,
            "{} {what} {i}: norms differ by {rel}",
            family.name
        );
        if family.normalize {
            assert!((norm(g) - 1.0).abs() < 1e-4, "{} {what} {i}", family.name);
        }
        // Meaningful only if the other texts are farther: each vector must be its own.
        for (j, other) in want.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                cosine(g, other) < 0.999,
                "{} {what}: {i} looks like {j}",
                family.name
            );
        }
        worst_cos = worst_cos.min(cos);
        worst_norm = worst_norm.max(rel);
    }
    (worst_cos, worst_norm)
}

fn check(family: &Family) {
    let mut cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Fp32,
        cpu_executors: Some(1),
        ..EmbeddingConfig::default()
    };
    if let Some(p) = &family.configured {
        cfg.query_prefix = Some(p.query_prefix.clone());
        cfg.document_prefix = Some(p.document_prefix.clone());
    }
    let embedder = Embedder::load(&family.dir, &cfg).expect("the model loads");
    assert_eq!(embedder.dim(), family.dim, "{}", family.name);
    assert_eq!(embedder.pooling().name(), family.pooling, "{}", family.name);
    assert_eq!(embedder.normalizes(), family.normalize, "{}", family.name);
    assert_eq!(
        embedder.max_seq_len(),
        family.max_seq_length,
        "{}",
        family.name
    );
    let texts = family.texts.clone();
    let raw = embedder.embed_blocking(Lane::Bulk, texts.clone()).unwrap();
    let query =
        (embedder.embed_blocking_as(Lane::Interactive, TextKind::Query, texts.clone())).unwrap();
    let document = (embedder.embed_blocking_as(Lane::Bulk, TextKind::Document, texts)).unwrap();
    let mut worst = Vec::new();
    for (what, got, want) in [
        ("raw", &raw.vectors, &family.raw),
        ("query", &query.vectors, &family.query),
        ("document", &document.vectors, &family.document),
    ] {
        worst.push(compare(family, what, got, want));
    }
    // The prefix counts toward the model's limit.
    for (i, &tokens) in family.query_tokens.iter().enumerate() {
        assert_eq!(
            query.token_counts[i],
            tokens.min(family.max_seq_length),
            "{} query {i}",
            family.name
        );
        assert_eq!(query.truncated[i], tokens > family.max_seq_length);
    }
    let cos = worst.iter().map(|w| w.0).fold(f64::INFINITY, f64::min);
    let rel = worst.iter().map(|w| w.1).fold(0.0, f64::max);
    eprintln!(
        "{:<14} {:>3} wide, {:<20} normalize {:<5}: worst 1 - cosine {:.1e}, worst norm difference {rel:.1e}",
        family.name,
        family.dim,
        family.pooling,
        family.normalize,
        1.0 - cos
    );
}

#[test]
fn small_models_of_every_family_match_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let families = generate(dir.path());
    let names: Vec<&str> = families.models.iter().map(|f| f.pooling.as_str()).collect();
    assert_eq!(names, ["cls", "max", "mean", "mean_sqrt_len_tokens"]);
    for family in &families.models {
        check(family);
    }
}

#[test]
fn the_bundled_model_pools_by_mean_and_normalises_without_prefixes() {
    let embedder = common::cpu_embedder(|cfg| cfg.precision = Precision::Fp32);
    assert_eq!(embedder.pooling(), Pooling::Mean);
    assert!(embedder.normalizes(), "its modules.json lists Normalize");
    assert_eq!(embedder.prefix(TextKind::Query), "");
    assert_eq!(embedder.prefix(TextKind::Document), "");
    let with = common::cpu_embedder(|cfg| {
        cfg.precision = Precision::Fp32;
        cfg.query_prefix = Some("query: ".into());
    });
    let plain = embedder.embed_blocking(Lane::Interactive, vec!["query: hello".into()]);
    let prefixed = with.embed_blocking_as(Lane::Interactive, TextKind::Query, vec!["hello".into()]);
    let (plain, prefixed) = (plain.unwrap(), prefixed.unwrap());
    assert_eq!(prefixed.token_counts, plain.token_counts);
    assert!(cosine(&plain.vectors[0], &prefixed.vectors[0]) > 0.99999);
}
