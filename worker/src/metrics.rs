//! Prometheus metrics on their own port: HTTP requests by route and status, latency,
//! embedding engine counters, index sizes and the log sequence.

use crate::api::SharedState;
use crate::cache::{Kind, Level};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectionLabels {
    collection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReindexLabels {
    /// The job's target collection.
    job: String,
    /// `source` (documents of the source collection) or `embedded` (written into the
    /// target by this worker's run).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    device: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    device: String,
    precision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrecisionLabels {
    precision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayoutLabels {
    layout: String,
    chosen: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    tokens: String,
    chosen: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    level: &'static str,
    kind: &'static str,
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the worker exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    embed_batches: Gauge,
    embed_rows: Gauge,
    embed_tokens: Gauge,
    embed_padded_tokens: Gauge,
    embed_queue_depth: Family<LaneLabels, Gauge>,
    embed_rejected: Family<LaneLabels, Gauge>,
    embed_device_info: Family<EngineLabels, Gauge>,
    embed_calibration_seconds: Family<PrecisionLabels, FloatGauge>,
    embed_calibration_min_cosine: Family<PrecisionLabels, FloatGauge>,
    embed_layout_texts_per_second: Family<LayoutLabels, FloatGauge>,
    embed_bulk_budget_tokens_per_second: Family<BudgetLabels, FloatGauge>,
    rerank_calibration_seconds: Family<PrecisionLabels, FloatGauge>,
    rerank_calibration_max_logit_error: Family<PrecisionLabels, FloatGauge>,
    embed_busy_seconds: FloatGauge,
    index_chunks: Family<CollectionLabels, Gauge>,
    model_mismatch: Family<CollectionLabels, Gauge>,
    reindex_documents: Family<ReindexLabels, Gauge>,
    log_sequence: Gauge,
    applied_sequence: Gauge,
    replication_lag: Gauge,
    redis_connected: Gauge,
    replication_regressed: Gauge,
    writes_halted: Gauge,
    api_keys_reload_failed: Gauge,
    snapshot_failures: Gauge,
    snapshot_sequence: Gauge,
    snapshot_bytes: Gauge,
    snapshot_seconds: FloatGauge,
    snapshot_timestamp: FloatGauge,
    ready: Gauge,
    volume_free: Gauge,
    host_limit: Gauge,
    host_working_set: Gauge,
    volume_total: Gauge,
    cache: Family<CacheLabels, Counter>,
    gpu_total: Family<GpuLabels, Gauge>,
    gpu_used: Family<GpuLabels, Gauge>,
    gpu_cached: Family<GpuLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Whether the last reload of the API keys file left part of it out.
    pub fn set_api_keys_reload_failed(&self, failed: bool) {
        self.api_keys_reload_failed.set(i64::from(failed));
    }

    pub fn new() -> Self {
        let mut r = Registry::with_prefix("kb_worker");
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            embed_batches: Gauge::default(),
            embed_rows: Gauge::default(),
            embed_tokens: Gauge::default(),
            embed_padded_tokens: Gauge::default(),
            embed_queue_depth: Family::default(),
            embed_rejected: Family::default(),
            embed_device_info: Family::default(),
            embed_calibration_seconds: Family::default(),
            embed_calibration_min_cosine: Family::default(),
            embed_layout_texts_per_second: Family::default(),
            embed_bulk_budget_tokens_per_second: Family::default(),
            rerank_calibration_seconds: Family::default(),
            rerank_calibration_max_logit_error: Family::default(),
            embed_busy_seconds: FloatGauge::default(),
            index_chunks: Family::default(),
            model_mismatch: Family::default(),
            reindex_documents: Family::default(),
            log_sequence: Gauge::default(),
            applied_sequence: Gauge::default(),
            replication_lag: Gauge::default(),
            redis_connected: Gauge::default(),
            replication_regressed: Gauge::default(),
            writes_halted: Gauge::default(),
            api_keys_reload_failed: Gauge::default(),
            snapshot_failures: Gauge::default(),
            snapshot_sequence: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_seconds: FloatGauge::default(),
            snapshot_timestamp: FloatGauge::default(),
            ready: Gauge::default(),
            volume_free: Gauge::default(),
            host_limit: Gauge::default(),
            host_working_set: Gauge::default(),
            volume_total: Gauge::default(),
            cache: Family::default(),
            gpu_total: Family::default(),
            gpu_used: Family::default(),
            gpu_cached: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP latency by route",
            m.latency.clone(),
        );
        r.register(
            "embed_batches",
            "Embedding batches executed",
            m.embed_batches.clone(),
        );
        r.register("embed_rows", "Texts embedded", m.embed_rows.clone());
        r.register(
            "embed_tokens",
            "Real (unpadded) tokens embedded",
            m.embed_tokens.clone(),
        );
        r.register(
            "embed_padded_tokens",
            "Tokens including padding",
            m.embed_padded_tokens.clone(),
        );
        r.register(
            "embed_queue_depth",
            "Texts admitted and not yet embedded, per lane (interactive: queries; bulk: ingestion)",
            m.embed_queue_depth.clone(),
        );
        r.register(
            "stage_seconds",
            "Seconds per stage of the query and ingestion paths: query_parse, embed_query (interactive lane), search (batcher wait and scan), ingest_parse, chunk, embed_ingest (bulk lane), index_lock_wait (a write waiting for readers), apply (a write holding the index)",
            crate::stages::family(),
        );
        r.register(
            "embed_device_info",
            "1 for each device the embedding engine runs on, with the precision chosen (what `auto` resolved to)",
            m.embed_device_info.clone(),
        );
        r.register(
            "embed_calibration_seconds",
            "precision: auto on a CPU: median seconds of the calibration batches (an 8 x 128-token passage batch and a 16 x 16-token query batch) per candidate precision, measured at start or read from the data directory's cache",
            m.embed_calibration_seconds.clone(),
        );
        r.register(
            "embed_calibration_min_cosine",
            "precision: auto on a CPU: worst cosine of each candidate precision's calibration vectors to fp32's (0.999 needed to be chosen)",
            m.embed_calibration_min_cosine.clone(),
        );
        r.register(
            "embed_layout_texts_per_second",
            "embedding.cpu_executors unset: texts per second of each candidate split of the cores into executors (layout `executors x threads`, all executors at once on the calibration batches), measured at start or read from the data directory's cache; chosen=\"true\" on the one serving",
            m.embed_layout_texts_per_second.clone(),
        );
        r.register(
            "embed_bulk_budget_tokens_per_second",
            "embedding.bulk_batch_tokens unset on a CPU: tokens per second of one executor embedding bulk batches of each candidate budget (`tokens`), measured at start or read from the data directory's cache; chosen=\"true\" on the budget the bulk lane runs",
            m.embed_bulk_budget_tokens_per_second.clone(),
        );
        r.register(
            "rerank_calibration_seconds",
            "The reranker's precision: auto on a CPU: median seconds of its calibration batch (16 pairs of a 16-token query and a 128-token passage) per candidate precision, measured at start or read from the data directory's cache",
            m.rerank_calibration_seconds.clone(),
        );
        r.register(
            "rerank_calibration_max_logit_error",
            "The reranker's precision: auto on a CPU: largest difference of each candidate precision's logits from fp32's on the calibration batch (0.1 at most, and fp32's order, to be chosen)",
            m.rerank_calibration_max_logit_error.clone(),
        );
        r.register(
            "embed_rejected",
            "Embedding requests refused (429) because their lane was full, per lane, since start",
            m.embed_rejected.clone(),
        );
        r.register(
            "embed_busy_seconds",
            "Executor busy time, all devices",
            m.embed_busy_seconds.clone(),
        );
        r.register(
            "index_chunks",
            "Live chunks per collection",
            m.index_chunks.clone(),
        );
        r.register(
            "collection_model_mismatch",
            "1 for a collection whose vectors come from another model than this worker's (it refuses to embed for it: 409 model_mismatch) and that no re-index job mends for this worker's model, else 0",
            m.model_mismatch.clone(),
        );
        r.register(
            "reindex_documents",
            "Per re-index job under way: documents of its source (kind=source) and documents this worker's run embedded into its target (kind=embedded); GET /v1/jobs/{job} has the exact progress and the ETA",
            m.reindex_documents.clone(),
        );
        r.register(
            "log_sequence",
            "Last durable log sequence",
            m.log_sequence.clone(),
        );
        r.register(
            "applied_sequence",
            "Last log sequence applied to the index",
            m.applied_sequence.clone(),
        );
        r.register(
            "replication_lag",
            "Records in the replicated log not yet applied by this replica",
            m.replication_lag.clone(),
        );
        r.register(
            "redis_connected",
            "1 while this replica reaches Redis (replicated mode)",
            m.redis_connected.clone(),
        );
        r.register(
            "replication_regressed",
            "1 while writes are refused because Redis went behind what replicas applied (failover, lost data) or the stream was re-seeded past this replica",
            m.replication_regressed.clone(),
        );
        r.register(
            "writes_halted",
            "1 while writes are refused: a logged record could not be applied, or the WAL is poisoned by a failed fsync (restart needed)",
            m.writes_halted.clone(),
        );
        r.register(
            "api_keys_reload_failed",
            "1 while part of the API keys file on disk is not in force: invalid entries (left out, granting nothing) or a file that does not parse (the previous keys stay)",
            m.api_keys_reload_failed.clone(),
        );
        r.register(
            "ready",
            "1 when /readyz answers 200: model loaded, log replayed, writes not halted, replication caught up",
            m.ready.clone(),
        );
        r.register(
            "data_volume_free_bytes",
            "Bytes available to the worker on its data volume (WAL and snapshots)",
            m.volume_free.clone(),
        );
        r.register(
            "data_volume_size_bytes",
            "Size of the worker's data volume",
            m.volume_total.clone(),
        );
        r.register(
            "host_memory_limit_bytes",
            "Memory limit of the worker's cgroup (0: none); a CPU index that would grow past it \
             less the working set is refused with 503",
            m.host_limit.clone(),
        );
        r.register(
            "host_memory_working_set_bytes",
            "Memory in use by the worker's cgroup, less inactive page cache",
            m.host_working_set.clone(),
        );
        r.register(
            "snapshot_failures",
            "Consecutive failed automatic snapshots (0 after a success)",
            m.snapshot_failures.clone(),
        );
        r.register(
            "snapshot_last_sequence",
            "The last record the last snapshot written since the start holds (0: none yet)",
            m.snapshot_sequence.clone(),
        );
        r.register(
            "snapshot_last_bytes",
            "Size of the last snapshot file written",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_last_duration_seconds",
            "Time the last snapshot took to write (writes go on meanwhile)",
            m.snapshot_seconds.clone(),
        );
        r.register(
            "snapshot_last_success_timestamp_seconds",
            "When the last snapshot was written, in seconds since the Unix epoch (0: none yet)",
            m.snapshot_timestamp.clone(),
        );
        r.register(
            "cache_lookups",
            "Query cache lookups by level (l1 in process, l2 Redis), kind and outcome",
            m.cache.clone(),
        );
        r.register(
            "gpu_memory_total_bytes",
            "Memory of each visible GPU (CUDA driver)",
            m.gpu_total.clone(),
        );
        r.register(
            "gpu_memory_used_bytes",
            "Memory in use on each visible GPU, by every process (CUDA driver)",
            m.gpu_used.clone(),
        );
        r.register(
            "gpu_memory_cached_bytes",
            "Part of the used memory that this worker's libtorch holds in freed blocks, \
             reusable by its next tensors (CUDA caching allocator)",
            m.gpu_cached.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// Counts one cache lookup.
    pub fn cache(&self, level: Level, kind: Kind, hit: bool) {
        self.cache
            .get_or_create(&CacheLabels {
                level: level.as_str(),
                kind: kind.as_str(),
                outcome: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    fn observe(&self, route: String, method: String, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }
}

/// Middleware recording every API request.
pub async fn track_requests(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(
        route,
        method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// The metrics port: `/metrics`, and the re-index progress the operator reads
/// ([`kb_config::progress::JOBS_PATH`]).
pub fn router(state: SharedState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<SharedState>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    state.metrics.render(&state),
                )
                    .into_response()
            }),
        )
        .route(
            kb_config::progress::JOBS_PATH,
            axum::routing::get(|State(state): State<SharedState>| async move {
                axum::Json(crate::api::jobs::progress(&state).await)
            }),
        )
        .with_state(state)
}

mod render;
#[cfg(test)]
mod tests;
