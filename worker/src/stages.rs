//! Where a request's time goes: per-stage timers of the query and ingestion paths,
//! exported as the histogram `kb_worker_stage_seconds{stage}` (see [`Stage`]). The
//! stages run on async handlers, blocking threads and the store, so the histograms are
//! process-wide; [`crate::metrics::Metrics`] registers them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A timed stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Decoding a query request's JSON body.
    QueryParse,
    /// Embedding a query text (interactive lane: queue wait, tokenizing, forward pass).
    EmbedQuery,
    /// Waiting for and running a search (the search batcher's queue and the index scan).
    Search,
    /// A lexical search, or the lexical half of a hybrid one (BM25 and fusion).
    Lexical,
    /// Decoding an ingestion request's JSON body.
    IngestParse,
    /// Splitting an ingestion request's documents into chunks.
    Chunk,
    /// Embedding an ingestion request's chunks (bulk lane).
    EmbedIngest,
    /// Waiting for the index's write lock to apply a write (readers holding it).
    IndexLockWait,
    /// Applying a write to the index under its write lock (readers wait meanwhile).
    Apply,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::QueryParse => "query_parse",
            Stage::EmbedQuery => "embed_query",
            Stage::Search => "search",
            Stage::Lexical => "lexical",
            Stage::IngestParse => "ingest_parse",
            Stage::Chunk => "chunk",
            Stage::EmbedIngest => "embed_ingest",
            Stage::IndexLockWait => "index_lock_wait",
            Stage::Apply => "apply",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabels {
    stage: &'static str,
}

pub(crate) type Stages = Family<StageLabels, Histogram>;

static STAGES: LazyLock<Stages> = LazyLock::new(|| {
    // 50 µs to ~13 s.
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00005, 2.0, 18)))
});

/// The process-wide histograms, for registration.
pub(crate) fn family() -> Stages {
    STAGES.clone()
}

/// Records `elapsed` for `stage`.
pub fn observe(stage: Stage, elapsed: Duration) {
    STAGES
        .get_or_create(&StageLabels {
            stage: stage.label(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Runs `f` and records how long it took as `stage`.
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    observe(stage, started.elapsed());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(stage: &str) -> u64 {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("stage_seconds", "t", family());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series = format!("stage_seconds_count{{stage=\"{stage}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_timed_stage_is_counted_under_its_label() {
        let before = count("chunk");
        assert_eq!(time(Stage::Chunk, || 7), 7);
        assert!(count("chunk") > before);
    }
}
