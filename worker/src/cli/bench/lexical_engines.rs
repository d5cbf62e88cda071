//! `kb-worker bench lexical-engines` (feature `tantivy-compare`): our lexical index
//! against tantivy's, in one process and one run, on the same passages and the same
//! queries as `kb-worker bench retrieval`.
//!
//! Three engines:
//! - **ours**: [`LexicalIndex`] with the `standard` analyzer, as collections keep it;
//! - **tantivy_our_tokens**: a tantivy index in RAM whose tokenizer is our analyzer (the
//!   same terms, the same BM25 constants; an identifier query's parts weigh
//!   [`PART_WEIGHT`] through a boost), so only the engine differs;
//! - **tantivy_default**: tantivy's own `default` tokenizer (split on non-alphanumerics,
//!   lowercased, tokens over 40 bytes dropped), for reference.
//!
//! Both tantivy indexes keep term frequencies but no positions (ours keeps none), are
//! written by one indexing thread (ours is built on the caller's thread), merged into one
//! segment when the writer made several, and map a hit to its row through a `u64` fast
//! field. A query is a disjunction of its distinct terms, each boosted by its weight in
//! the query (occurrences; parts of an identifier [`PART_WEIGHT`]), which is how our
//! index weighs a query's terms.
//!
//! Two parts: the recall part indexes the first `--passages` passages and runs both
//! query sets of `bench retrieval` (identifiers, half words), reporting recall@10,
//! latency and how much of our top 10 each tantivy index returns; the scale part indexes
//! `--rows` rows (the corpus' texts cycled, as `bench retrieval` builds its latency
//! collection) and times the same queries, with a fourth engine: tantivy with our tokens
//! committing every `--commit-every` rows, as an index that makes each write visible
//! must. Each query runs on every engine in turn (the order rotating), `--rounds` times,
//! after an untimed pass, so that other processes' load falls on all of them alike.

use super::retrieval::{half_word_cases, identifier_cases, Case};
use super::{percentile, round3};
use crate::index::lexical::{Analyzer, LexicalIndex};
use rand::SeedableRng;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

mod tantivy_index;
use tantivy_index::*;

/// Arguments of `kb-worker bench lexical-engines`.
#[derive(Debug, clap::Args)]
pub struct BenchLexicalEnginesArgs {
    /// JSONL corpus, one {"id": ..., "text": ...} object per line.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Passages searched for recall (the first N of the corpus; the query sets are
    /// built from them as `bench retrieval` builds its own).
    #[arg(long, default_value_t = 3000)]
    pub passages: usize,
    /// Queries of each set.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Rows of the scale part: the corpus' texts cycled (0: skip that part).
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Timed passes over each query set (every pass runs each query on every engine).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Scale part: also build tantivy (our tokens) committing every N rows, as a live
    /// index makes writes visible (0: not).
    #[arg(long, default_value_t = 1000)]
    pub commit_every: usize,
    /// Memory budget of tantivy's (single-threaded) index writer, in MiB.
    #[arg(long, default_value_t = 256)]
    pub writer_mib: usize,
    /// Seed of the query choice (as `bench retrieval`'s).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One of the engines compared.
enum Engine {
    Ours(LexicalIndex),
    Tantivy(Box<Tantivy>),
}

impl Engine {
    fn search(&self, text: &str) -> anyhow::Result<Vec<usize>> {
        Ok(match self {
            Engine::Ours(index) => {
                let query = index.query(text);
                index
                    .search(&query, K, |_| true)
                    .into_iter()
                    .map(|(r, _)| r)
                    .collect()
            }
            Engine::Tantivy(index) => index.search(text)?,
        })
    }

    fn memory(&self) -> anyhow::Result<serde_json::Value> {
        Ok(match self {
            Engine::Ours(index) => json!({
                "heap_estimate_mib": mib(index.heap_bytes() as u64),
                "terms": index.terms(),
            }),
            Engine::Tantivy(index) => index.memory()?,
        })
    }
}

/// The engines over `texts`, each with its name and build time in seconds: ours,
/// tantivy with our tokens, tantivy with its default tokenizer, and, when
/// `commit_every` is not 0, tantivy with our tokens committing every `commit_every` rows.
fn build_all(
    texts: &[&str],
    writer_mib: usize,
    commit_every: usize,
) -> anyhow::Result<Vec<(String, Engine, f64)>> {
    let mut plan = vec![
        ("ours".to_string(), None),
        ("tantivy_our_tokens".to_string(), Some((Tokens::Ours, 0))),
        ("tantivy_default".to_string(), Some((Tokens::Default, 0))),
    ];
    if commit_every > 0 {
        plan.push((
            format!("tantivy_our_tokens_commit_every_{commit_every}"),
            Some((Tokens::Ours, commit_every)),
        ));
    }
    let mut out = Vec::new();
    for (name, tantivy) in plan {
        eprintln!("building {name} over {} rows", texts.len());
        let started = Instant::now();
        let engine = match tantivy {
            None => {
                let mut index = LexicalIndex::new(Analyzer::Standard);
                for (row, text) in texts.iter().enumerate() {
                    index.add(row, text);
                }
                Engine::Ours(index)
            }
            Some((tokens, every)) => {
                Engine::Tantivy(Box::new(Tantivy::build(texts, tokens, writer_mib, every)?))
            }
        };
        out.push((name, engine, started.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// Seconds our analyzer alone takes over `texts` (the share of a build that is
/// tokenising, for ours and for tantivy with our tokens alike).
fn analyzer_seconds(texts: &[&str]) -> f64 {
    let started = Instant::now();
    let mut terms = 0usize;
    for text in texts {
        Analyzer::Standard.terms(text, |_| terms += 1);
    }
    std::hint::black_box(terms);
    started.elapsed().as_secs_f64()
}

/// Per engine, the rows of each case's top 10.
type Results = Vec<Vec<Vec<usize>>>;

/// Per engine, the milliseconds of each timed search.
type Times = Vec<Vec<f64>>;

/// Per engine: the top 10 of every case (from an untimed warm-up pass) and the
/// milliseconds of every timed search (`rounds` per case, engines interleaved).
fn run_cases(
    engines: &[(String, Engine, f64)],
    cases: &[Case],
    rounds: usize,
) -> anyhow::Result<(Results, Times)> {
    let n = engines.len();
    let mut results = vec![Vec::with_capacity(cases.len()); n];
    for case in cases {
        for (e, (_, engine, _)) in engines.iter().enumerate() {
            results[e].push(engine.search(&case.text)?);
        }
    }
    let mut times = vec![Vec::with_capacity(cases.len() * rounds); n];
    for round in 0..rounds {
        for (c, case) in cases.iter().enumerate() {
            for i in 0..n {
                let e = (i + c + round) % n;
                let started = Instant::now();
                let hits = engines[e].1.search(&case.text)?;
                times[e].push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(hits);
            }
        }
    }
    Ok((results, times))
}

fn ms_percentiles(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    json!({"p50": round3(percentile(&samples, 0.5)), "p99": round3(percentile(&samples, 0.99))})
}

pub(super) fn run(args: &BenchLexicalEnginesArgs) -> anyhow::Result<()> {
    let texts = super::embed::read_corpus(&args.corpus, args.passages.max(args.rows))?;
    let passages = &texts[..args.passages.min(texts.len())];
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
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    let analyzing = analyzer_seconds(&refs);
    let engines = build_all(&refs, args.writer_mib, 0)?;
    let mut report: Vec<serde_json::Value> = Vec::new();
    for (name, engine, secs) in &engines {
        report.push(json!({
            "bench": "lexical_engines", "part": "recall", "engine": name,
            "rows": passages.len(), "build_seconds": round3(*secs), "memory": engine.memory()?,
        }));
    }
    report[0]["analyzer_only_seconds"] = json!(round3(analyzing));
    for (set, cases) in &sets {
        let (results, times) = run_cases(&engines, cases, args.rounds)?;
        for (e, times) in times.into_iter().enumerate() {
            let found = results[e]
                .iter()
                .zip(cases.iter())
                .filter(|(hits, case)| hits.contains(&case.wanted))
                .count();
            let overlap: usize = results[e]
                .iter()
                .zip(&results[0])
                .map(|(theirs, ours)| ours.iter().filter(|r| theirs.contains(r)).count())
                .sum();
            let ours: usize = results[0].iter().map(Vec::len).sum();
            report[e][*set] = json!({
                "queries": cases.len(),
                "recall_at_10": round3(found as f64 / cases.len().max(1) as f64),
                "share_of_our_top10": round3(overlap as f64 / ours.max(1) as f64),
                "query_ms": ms_percentiles(times),
            });
        }
    }
    for line in report {
        println!("{line}");
    }
    drop(engines);
    if args.rows > 0 {
        let rows: Vec<&str> = (0..args.rows)
            .map(|i| texts[i % texts.len()].as_str())
            .collect();
        let analyzing = analyzer_seconds(&rows);
        let engines = build_all(&rows, args.writer_mib, args.commit_every)?;
        let mut report: Vec<serde_json::Value> = Vec::new();
        for (name, engine, secs) in &engines {
            report.push(json!({
                "bench": "lexical_engines", "part": "scale", "engine": name,
                "rows": rows.len(), "distinct_texts": texts.len().min(rows.len()),
                "build_seconds": round3(*secs), "memory": engine.memory()?,
            }));
        }
        report[0]["analyzer_only_seconds"] = json!(round3(analyzing));
        for (set, cases) in &sets {
            let (_, times) = run_cases(&engines, cases, args.rounds)?;
            for (e, times) in times.into_iter().enumerate() {
                report[e][*set] =
                    json!({"queries": cases.len(), "query_ms": ms_percentiles(times)});
            }
        }
        for line in report {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::tokenizer::{TokenStream, Tokenizer};

    #[test]
    fn our_tokenizer_gives_tantivy_our_terms() {
        let mut tokenizer = OurTokenizer {
            analyzer: Analyzer::Standard,
            tokens: Vec::new(),
        };
        for text in [
            "Call UpdateImageSetMetadata, then before_script.",
            "a b",
            "",
        ] {
            let mut terms = Vec::new();
            let mut stream = tokenizer.token_stream(text);
            while let Some(token) = stream.next() {
                terms.push(token.text.clone());
            }
            assert_eq!(terms, Analyzer::Standard.analyze(text));
        }
    }

    #[test]
    fn tantivy_with_our_tokens_ranks_like_our_index() {
        let texts = [
            "the quick brown fox",
            "the lazy dog",
            "the quick dog jumps high",
            "UpdateImageSetMetadata is the call",
            "update the image metadata of set one",
        ];
        let tantivy = Tantivy::build(&texts, Tokens::Ours, 16, 0).unwrap();
        let committed = Tantivy::build(&texts, Tokens::Ours, 16, 2).unwrap();
        let mut ours = LexicalIndex::new(Analyzer::Standard);
        for (row, text) in texts.iter().enumerate() {
            ours.add(row, text);
        }
        let ours = Engine::Ours(ours);
        for query in ["quick dog", "UpdateImageSetMetadata", "image"] {
            assert_eq!(
                tantivy.search(query).unwrap(),
                ours.search(query).unwrap(),
                "{query}"
            );
            assert_eq!(
                committed.search(query).unwrap(),
                ours.search(query).unwrap(),
                "{query}"
            );
        }
        let default = Tantivy::build(&texts, Tokens::Default, 16, 0).unwrap();
        assert_eq!(default.search("lazy").unwrap(), [1]);
        assert!(default.search("").unwrap().is_empty());
    }
}
