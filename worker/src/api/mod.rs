//! The HTTP API (axum): routing, shared state and request plumbing. Handlers live in one
//! module per resource; errors map to statuses in [`error`].

pub mod aliases;
pub mod binding;
pub mod browse;
pub mod collections;
pub mod documents;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod forward;
pub mod health;
pub mod jobs;
pub mod limits;
pub mod modes;
pub mod openapi;
pub mod query;
pub mod rerank;
#[cfg(test)]
mod tests;

use crate::auth::{Auth, Principal};
use crate::cache::QueryCache;
use crate::chunk::Chunker;
use crate::log::{Op, Seq};
use crate::metrics::Metrics;
use crate::replica::Replicator;
use crate::search::SearchBatcher;
use crate::store::Store;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::Router;
use error::ApiError;
use kb_config::LimitsConfig;
use kb_embed::Embedder;
use std::sync::{Arc, OnceLock};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What exists only once the model is loaded and the index replayed.
pub struct Engine {
    pub store: Arc<Store>,
    pub embedder: Embedder,
    pub chunker: Chunker,
    /// Present in replicated mode (Redis holds the log).
    pub replicator: Option<Arc<Replicator>>,
    /// Query results and query embeddings (absent when `cache.enabled` is false).
    pub cache: Option<QueryCache>,
    /// Runs concurrent searches of a collection as one matrix product.
    pub searches: Arc<SearchBatcher>,
    /// The cross-encoder of `/v1/rerank` and the queries' `rerank` option (`reranker:`),
    /// with `reranker.max_texts`.
    pub reranker: Option<(kb_embed::Reranker, usize)>,
    /// The identity of `embedder`'s model, which the collections it writes are bound to.
    pub model: crate::log::ModelIdentity,
    /// This worker's name as the owner of re-index jobs (stable across restarts:
    /// `replication.replica_id`, else the pod's name).
    pub replica: String,
    /// The re-index jobs this worker runs.
    pub reindex: crate::reindex::Runs,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Once durable in the log (the default).
    #[default]
    Logged,
    /// Once this worker applied it (read-your-writes); a single node always has.
    Applied,
}

impl Engine {
    /// Durably writes `ops`; returns the sequence of the last one.
    pub async fn write(&self, ops: Vec<Op>, wait: Wait) -> Result<Seq, ApiError> {
        match &self.replicator {
            None => {
                let store = self.store.clone();
                Ok(tokio::task::spawn_blocking(move || store.write(ops)).await??)
            }
            Some(replicator) => {
                let seq = replicator.write(ops).await?;
                if wait == Wait::Applied {
                    replicator.wait_applied(seq).await?;
                }
                Ok(seq)
            }
        }
    }

    /// Waits (bounded) until this worker applied `seq`. A single node has applied every
    /// acknowledged write, so a sequence beyond its log is a client error.
    pub async fn wait_min_sequence(&self, seq: Seq) -> Result<(), ApiError> {
        match &self.replicator {
            Some(replicator) => Ok(replicator.wait_min_sequence(seq).await?),
            None if seq > self.store.last_seq() => Err(ApiError::BadRequest(
                "min_sequence is beyond the last written sequence".into(),
            )),
            None => Ok(()),
        }
    }

    /// The last sequence of the log (the stream's, in replicated mode).
    pub fn log_seq(&self) -> Seq {
        self.replicator
            .as_ref()
            .map_or_else(|| self.store.last_seq(), |r| r.log_seq())
    }
}

/// State shared by every handler.
pub struct AppState {
    pub auth: Auth,
    pub limits: LimitsConfig,
    pub metrics: Arc<Metrics>,
    engine: OnceLock<Arc<Engine>>,
    /// One snapshot for download is written at a time (`GET /v1/admin/snapshot`): each
    /// writes the whole index to the volume.
    pub(crate) snapshot_slot: tokio::sync::Semaphore,
    /// Large requests ([`documents::LARGE_REQUEST_BYTES`]) parsed or answered at once: half the
    /// cores (at least one), so that small queries always find CPU.
    large_requests: Arc<tokio::sync::Semaphore>,
    /// Set at SIGTERM: not ready any more, still serving until the listener closes.
    draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn new(auth: Auth, limits: LimitsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            auth,
            limits,
            metrics,
            engine: OnceLock::new(),
            snapshot_slot: tokio::sync::Semaphore::new(1),
            large_requests: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503 `draining` (the worker is shutting down).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the worker is shutting down ([`AppState::start_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for a large-request permit (see [`AppState::large_requests`]).
    pub(crate) async fn large_request_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.large_requests
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Marks the worker ready.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The loaded engine, or 503 while the model loads and the log replays.
    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        self.engine.get().cloned().ok_or_else(|| {
            ApiError::Unavailable("the worker is starting (model load or log replay)".into())
        })
    }

    pub fn is_ready(&self) -> bool {
        self.engine.get().is_some()
    }

    /// The engine, for a caller holding `role` on `collection` (401/403 otherwise).
    pub fn engine_for(
        &self,
        headers: &HeaderMap,
        role: crate::auth::Role,
        collection: &str,
    ) -> Result<Arc<Engine>, ApiError> {
        let principal = self.principal(headers)?;
        if !principal.allows(role, collection) {
            let what = match role {
                crate::auth::Role::Read => "read",
                _ => "write to",
            };
            return Err(ApiError::forbidden(what, collection));
        }
        self.engine()
    }

    /// The authenticated caller.
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        Ok(self.auth.authenticate(headers)?)
    }
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// Checks a collection name: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn check_collection_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid collection name {name:?}: use 1-64 characters of A-Z a-z 0-9 _ . - (not starting with .)"
        )))
    }
}

/// The routes that go through the request bounds (body size, concurrency, deadlines).
fn bounded_routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(collections::list))
        .routes(routes!(
            collections::get,
            collections::create,
            collections::drop
        ))
        .routes(routes!(documents::ingest, browse::list))
        .routes(routes!(documents::delete, browse::get))
        .routes(routes!(browse::delete_matching))
        .routes(routes!(query::query))
        .routes(routes!(query::query_batch))
        .routes(routes!(embeddings::embeddings))
        .routes(routes!(embeddings::models))
        .routes(routes!(rerank::rerank))
        .routes(routes!(aliases::list))
        .routes(routes!(aliases::set, aliases::delete))
        .routes(routes!(jobs::start))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get, jobs::cancel))
}

/// Outside the request bounds: probes must answer while the API is saturated, and a
/// snapshot download takes as long as the volume needs.
fn open_routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(health::snapshot))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::openapi))
}

/// Every route with its description, for the OpenAPI document.
fn api_routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(bounded_routes())
        .merge(open_routes())
}

/// The API router.
pub fn router(state: SharedState) -> Router {
    let (api, _) = bounded_routes()
        .layer(axum::middleware::from_fn_with_state(
            limits::RequestBounds::new(&state.limits),
            limits::bound,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::forward_mismatched,
        ))
        .merge(open_routes())
        .split_for_parts();
    // Unknown routes and methods answer in the same JSON error shape as the rest.
    api.fallback(|| async {
        ApiError::NotFound("no such route; the API is described at /openapi.json".into())
    })
    .method_not_allowed_fallback(|| async {
        ApiError::MethodNotAllowed("this route does not take that method; see /openapi.json".into())
    })
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::metrics::track_requests,
    ))
    // Bodies are read with our own limit so that an oversized one is a JSON 413.
    .layer(DefaultBodyLimit::disable())
    .with_state(state)
}
