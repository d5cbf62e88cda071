//! `kb-worker bench retrieval`: recall@10 of dense, lexical and hybrid search on passages
//! of a corpus, and what the lexical index costs (latency, build time, memory) at scale.
//!
//! Two query sets, each query with the one passage it must find:
//! - **identifiers**: code identifiers (`before_script`, `UpdateImageSetMetadata`,
//!   `RandomState`: a `_`, a lower-to-upper case change or a dotted path) that occur in
//!   exactly one of the passages, queried alone;
//! - **half words**: a passage's words, every other one dropped at random (half kept, in
//!   order).
//!
//! The latency part builds a collection of `--scale-rows` rows (the corpus' texts, cycled,
//! with the embedded passages' vectors, cycled: exact search costs the same for any
//! vectors) and times each mode's search per query; the query's embedding is timed on
//! its own and added for the end-to-end figures.

use super::{percentile, round3};
use crate::index::filter::Filter;
use crate::index::flat::{FlatIndex, Hit};
use crate::index::fusion::{self, Fusion};
use crate::index::lexical::Analyzer;
use crate::index::Placement;
use crate::log::{ChunkRecord, Metric};
use anyhow::Context;
use kb_embed::{Embedder, EmbeddingConfig, Lane};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `kb-worker bench retrieval`.
#[derive(Debug, clap::Args)]
pub struct BenchRetrievalArgs {
    /// Model directory (sentence-transformers layout).
    #[arg(long, env = "KB_MODEL")]
    pub model: PathBuf,
    /// JSONL corpus, one {"id": ..., "text": ...} object per line.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Passages searched for recall (the first N of the corpus).
    #[arg(long, default_value_t = 3000)]
    pub passages: usize,
    /// Queries of each set.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Candidates each side of a hybrid search contributes.
    #[arg(long, default_value_t = 50)]
    pub candidates: usize,
    /// Analyzer of the lexical index: `standard` or `english`.
    #[arg(long, default_value = "standard", value_parser = parse_analyzer)]
    pub analyzer: Analyzer,
    /// Rows of the collection the latencies are measured on (0: skip that part).
    #[arg(long, default_value_t = 100_000)]
    pub scale_rows: usize,
    /// Weight of a query identifier's parts next to its whole [default: the index's].
    #[arg(long)]
    pub part_weight: Option<f32>,
    /// A cross-encoder directory: also time reranking the hybrid candidates of each query
    /// (scripts/make-bench-cross-encoder.py writes one of ms-marco-MiniLM-L-6-v2's shape).
    #[arg(long)]
    pub reranker: Option<PathBuf>,
    /// Seed of the query choice.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn parse_analyzer(text: &str) -> Result<Analyzer, String> {
    match text {
        "standard" => Ok(Analyzer::Standard),
        "english" => Ok(Analyzer::English),
        other => Err(format!(
            "unknown analyzer {other:?}: use standard or english"
        )),
    }
}

const K: usize = 10;

/// A query and the passage it must find.
pub(crate) struct Case {
    pub(crate) text: String,
    pub(crate) wanted: usize,
}

pub(super) fn run(args: &BenchRetrievalArgs) -> anyhow::Result<()> {
    let texts = super::embed::read_corpus(&args.corpus, args.passages.max(args.scale_rows))?;
    let passages = &texts[..args.passages.min(texts.len())];
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        ..EmbeddingConfig::default()
    };
    let embedder = Embedder::load(&args.model, &cfg).context("loading the model")?;
    eprintln!("embedding {} passages", passages.len());
    let vectors = embed_all(&embedder, Lane::Bulk, passages)?;
    let placement = Placement::from(tch::Device::Cpu).with_lexical(Some(args.analyzer));
    let mut index = build(&placement, passages, &vectors, passages.len())?;
    if let (Some(weight), Some(lexical)) = (args.part_weight, index.lexical_mut()) {
        lexical.set_part_weight(weight);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let sets = [
        (
            "identifiers",
            identifier_cases(passages, args.queries, &mut rng),
        ),
        (
            "half_words",
            half_word_cases(passages, args.queries, &mut rng),
        ),
    ];
    for (name, cases) in &sets {
        let queries: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
        let query_vectors = embed_all(&embedder, Lane::Interactive, &queries)?;
        let mut found: HashMap<&str, usize> = HashMap::new();
        for (case, vector) in cases.iter().zip(&query_vectors) {
            let wanted = format!("p{}", case.wanted);
            for (mode, hits) in ranked(&index, &case.text, vector, args.candidates)? {
                if hits.contains(&wanted) {
                    *found.entry(mode).or_default() += 1;
                }
            }
        }
        let recall = |mode: &str| {
            round3(found.get(mode).copied().unwrap_or(0) as f64 / cases.len().max(1) as f64)
        };
        println!(
            "{}",
            json!({
                "bench": "retrieval", "set": name, "queries": cases.len(),
                "passages": passages.len(), "analyzer": format!("{:?}", args.analyzer).to_lowercase(),
                "recall_at_10": {
                    "dense": recall("dense"), "lexical": recall("lexical"),
                    "hybrid_rrf": recall("hybrid_rrf"), "hybrid_relative": recall("hybrid_relative"),
                },
            })
        );
    }
    if args.scale_rows > 0 {
        latency(args, &embedder, &texts, &vectors, &sets[1].1)?;
    }
    Ok(())
}

/// The ids of the top 10 by each mode (hybrid: RRF and relative fusion, alpha 0.5).
fn ranked(
    index: &FlatIndex,
    text: &str,
    vector: &[f32],
    candidates: usize,
) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
    let none = Filter::default();
    let ids = |hits: Vec<Hit>| hits.into_iter().map(|h| h.row.doc_id.clone()).collect();
    let dense = index
        .search(&[vector.to_vec()], candidates.max(K), &none)?
        .remove(0);
    let top: Vec<String> = ids(dense.iter().take(K).cloned().collect());
    let lexical = ids(index.lexical_search(text, K, &none)?);
    let both = index.hybrid_candidates(text, vector, dense, candidates, &none)?;
    let fused = |fusion| {
        fusion::fuse(both.clone(), fusion, 0.5, K)
            .into_iter()
            .map(|f| f.row.doc_id.clone())
            .collect()
    };
    Ok(vec![
        ("dense", top),
        ("lexical", lexical),
        ("hybrid_rrf", fused(Fusion::Rrf)),
        ("hybrid_relative", fused(Fusion::Relative)),
    ])
}

fn embed_all(embedder: &Embedder, lane: Lane, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for group in texts.chunks(256) {
        out.extend(embedder.embed_blocking(lane, group.to_vec())?.vectors);
    }
    Ok(out)
}

/// A collection of `rows` rows: `texts` and `vectors` cycled, one document per row.
fn build(
    placement: &Placement,
    texts: &[String],
    vectors: &[Vec<f32>],
    rows: usize,
) -> anyhow::Result<FlatIndex> {
    let mut index = FlatIndex::new(vectors[0].len(), Metric::Cosine, placement.clone())?;
    for i in 0..rows {
        let chunk = ChunkRecord {
            chunk_id: format!("p{i}#0"),
            text: texts[i % texts.len()].clone(),
            metadata: Default::default(),
            vector: vectors[i % vectors.len()].clone(),
        };
        index.upsert(&format!("p{i}"), &[chunk])?;
    }
    Ok(index)
}

/// Words of `text` split on whitespace, with surrounding punctuation trimmed.
fn bare_words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_')))
}

/// Whether `word` looks like a code identifier (see the module docs).
fn is_identifier(word: &str) -> bool {
    let chars: Vec<char> = word.chars().collect();
    if chars.len() < 6
        || !chars
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        || !chars[0].is_ascii_alphabetic()
    {
        return false;
    }
    let inner = |i: usize| i > 0 && i + 1 < chars.len();
    chars.iter().enumerate().any(|(i, &c)| {
        (c == '_' && inner(i) && chars[i - 1].is_ascii_alphanumeric())
            || (c == '.'
                && inner(i)
                && chars[i - 1].is_ascii_alphabetic()
                && chars[i + 1].is_ascii_alphabetic())
            || (i > 0 && c.is_ascii_uppercase() && chars[i - 1].is_ascii_lowercase())
    })
}

/// Up to `n` identifiers that occur in exactly one passage, each with that passage.
pub(crate) fn identifier_cases(passages: &[String], n: usize, rng: &mut impl Rng) -> Vec<Case> {
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    for (p, text) in passages.iter().enumerate() {
        let mut words: Vec<&str> = bare_words(text).filter(|w| is_identifier(w)).collect();
        words.sort_unstable();
        words.dedup();
        for w in words {
            seen.entry(w).or_insert((p, 0)).1 += 1;
        }
    }
    let mut unique: Vec<(&str, usize)> = seen
        .into_iter()
        .filter(|(_, (_, count))| *count == 1)
        .map(|(w, (p, _))| (w, p))
        .collect();
    unique.sort_unstable();
    unique.shuffle(rng);
    unique
        .into_iter()
        .take(n)
        .map(|(w, p)| Case {
            text: w.to_string(),
            wanted: p,
        })
        .collect()
}

/// `n` passages of at least 8 words, each queried with a random half of its words.
pub(crate) fn half_word_cases(passages: &[String], n: usize, rng: &mut impl Rng) -> Vec<Case> {
    let mut eligible: Vec<usize> = (0..passages.len())
        .filter(|&p| passages[p].split_whitespace().count() >= 8)
        .collect();
    eligible.shuffle(rng);
    eligible
        .into_iter()
        .take(n)
        .map(|p| {
            let words: Vec<&str> = passages[p].split_whitespace().collect();
            let mut keep: Vec<usize> = (0..words.len()).collect();
            keep.shuffle(rng);
            keep.truncate(words.len() / 2);
            keep.sort_unstable();
            let text = keep.iter().map(|&i| words[i]).collect::<Vec<_>>().join(" ");
            Case { text, wanted: p }
        })
        .collect()
}

fn ms_percentiles(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    json!({"p50": round3(percentile(&samples, 0.5)), "p99": round3(percentile(&samples, 0.99))})
}

/// Build time, memory and per-query latency of each mode at `--scale-rows` rows.
fn latency(
    args: &BenchRetrievalArgs,
    embedder: &Embedder,
    texts: &[String],
    vectors: &[Vec<f32>],
    cases: &[Case],
) -> anyhow::Result<()> {
    let rows = args.scale_rows;
    eprintln!("building {rows} rows without and with the lexical index");
    let plain = Placement::from(tch::Device::Cpu);
    let started = Instant::now();
    drop(build(&plain, texts, vectors, rows)?);
    let plain_secs = started.elapsed().as_secs_f64();
    let lexical = plain.with_lexical(Some(args.analyzer));
    let started = Instant::now();
    let mut index = build(&lexical, texts, vectors, rows)?;
    let lexical_secs = started.elapsed().as_secs_f64();
    let (terms, lexical_bytes) = match index.lexical_mut() {
        Some(lexical) => {
            if let Some(weight) = args.part_weight {
                lexical.set_part_weight(weight);
            }
            (lexical.terms(), lexical.heap_bytes())
        }
        None => (0, 0),
    };
    let reranker = match &args.reranker {
        Some(dir) => Some(
            kb_embed::Reranker::load(dir, &EmbeddingConfig::default())
                .context("loading the cross-encoder")?,
        ),
        None => None,
    };
    let none = Filter::default();
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut rerank_ms = Vec::new();
    for case in cases.iter().take(100) {
        let started = Instant::now();
        let vector = embedder
            .embed_blocking(Lane::Interactive, vec![case.text.clone()])?
            .vectors
            .remove(0);
        times[0].push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        index.search(std::slice::from_ref(&vector), K, &none)?;
        times[1].push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        index.lexical_search(&case.text, K, &none)?;
        times[2].push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let dense = index
            .search(std::slice::from_ref(&vector), args.candidates, &none)?
            .remove(0);
        let both = index.hybrid_candidates(&case.text, &vector, dense, args.candidates, &none)?;
        let fused = fusion::fuse(both, Fusion::Relative, 0.5, args.candidates);
        times[3].push(started.elapsed().as_secs_f64() * 1e3);
        if let Some(reranker) = &reranker {
            let texts: Vec<String> = fused.iter().map(|f| f.row.text.clone()).collect();
            let started = Instant::now();
            reranker.score_blocking(&case.text, texts)?;
            rerank_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let [embed, dense, lexical_ms, hybrid] = times;
    let end_to_end =
        |search: &[f64]| -> Vec<f64> { search.iter().zip(&embed).map(|(s, e)| s + e).collect() };
    println!(
        "{}",
        json!({
            "bench": "retrieval_latency", "rows": rows, "queries": embed.len(),
            "candidates": args.candidates,
            "search_ms": {
                "dense": ms_percentiles(dense.clone()), "lexical": ms_percentiles(lexical_ms),
                "hybrid": ms_percentiles(hybrid.clone()),
            },
            "embed_query_ms": ms_percentiles(embed.clone()),
            "rerank_candidates_ms": (!rerank_ms.is_empty()).then(|| ms_percentiles(rerank_ms)),
            "end_to_end_ms": {
                "dense": ms_percentiles(end_to_end(&dense)),
                "hybrid": ms_percentiles(end_to_end(&hybrid)),
            },
            "build_seconds": {"dense_only": round3(plain_secs), "with_lexical": round3(lexical_secs)},
            "lexical_index": {"terms": terms, "heap_mib": round3(lexical_bytes as f64 / 1048576.0)},
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_told_from_words() {
        for word in [
            "before_script",
            "UpdateImageSetMetadata",
            "RandomState",
            "os.path.join",
            "executionAsyncId",
        ] {
            assert!(is_identifier(word), "{word}");
        }
        for word in [
            "Amazon",
            "information",
            "value_",
            "_private",
            "e.g.",
            "HTTP",
            "v1.2.3",
        ] {
            assert!(!is_identifier(word), "{word}");
        }
    }

    #[test]
    fn identifier_cases_keep_words_of_exactly_one_passage() {
        let passages: Vec<String> = [
            "call `before_script` first",
            "RandomState and before_script",
            "RandomState seeds; set_seed too",
        ]
        .map(String::from)
        .to_vec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cases = identifier_cases(&passages, 10, &mut rng);
        assert_eq!(cases.len(), 1);
        assert_eq!((cases[0].text.as_str(), cases[0].wanted), ("set_seed", 2));
    }

    #[test]
    fn half_word_queries_keep_half_the_words_in_order() {
        let passages = vec!["one two three four five six seven eight nine ten".to_string()];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cases = half_word_cases(&passages, 5, &mut rng);
        assert_eq!(cases.len(), 1);
        let words: Vec<&str> = cases[0].text.split(' ').collect();
        assert_eq!(words.len(), 5);
        let position = |w: &str| passages[0].split(' ').position(|p| p == w).unwrap();
        assert!(words.windows(2).all(|p| position(p[0]) < position(p[1])));
    }
}
