//! `POST /v1/collections/{c}/query`: text or vector, top-k, metadata filter, and the
//! query mode (dense, lexical or hybrid: [`super::modes`]).

use super::documents::{parse_body, read_body};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::modes::{self, HybridOptions, Mode, Scored, Scores};
use super::openapi::{CollectionErrors, CollectionParam};
use super::rerank::{rerank_hits, RerankOptions};
use super::{Engine, SharedState};
use crate::auth::Role;
use crate::cache::Level;
use crate::cache::QueryCache;
use crate::index::filter::Filter;
use crate::index::flat::Hit;
use crate::index::IndexError;
use crate::log::Metadata;
use crate::stages::{self, Stage};
use axum::extract::{Request, State};
use axum::Json;
use kb_embed::Lane;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// A semantic query: exactly one of `query` (text, embedded by the worker) or `vector`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// The text to search for (at most limits.max_query_bytes).
    #[schema(min_length = 1, pattern = r"\S")]
    query: Option<String>,
    /// A query embedding of the collection's dimension.
    #[schema(min_items = 1)]
    vector: Option<Vec<f32>>,
    /// How many hits, 1 to limits.max_top_k (default 10).
    #[serde(default = "default_top_k")]
    #[schema(minimum = 1, default = 10)]
    top_k: usize,
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::Filter>)]
    filter: Option<Value>,
    /// Return each hit's text (default true).
    #[serde(default = "default_true")]
    #[schema(default = true)]
    include_text: bool,
    /// Read-your-writes: wait (bounded) until this worker applied this sequence.
    #[serde(default)]
    min_sequence: Option<u64>,
    /// Only hits scoring at least this (the mode's score: cosine similarity or dot
    /// product, BM25, or the fused score; the cross-encoder's score with `rerank`).
    #[serde(default)]
    score_threshold: Option<f32>,
    /// `dense` (default), `lexical` or `hybrid`; the last two search the `query` text.
    #[serde(default)]
    mode: Mode,
    /// Options of `mode: hybrid`.
    #[serde(default)]
    hybrid: Option<HybridOptions>,
    /// Rerank the mode's best `candidates` hits with the cross-encoder (`reranker:`;
    /// needs `query` text): hits come ordered by its score, which becomes `score`.
    #[serde(default)]
    rerank: Option<RerankOptions>,
}

/// One matching chunk.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HitOut {
    document_id: String,
    chunk_id: String,
    /// The score the mode ranks by: cosine similarity or dot product (by the
    /// collection's metric) for `dense`, BM25 for `lexical`, the fused score for `hybrid`;
    /// the cross-encoder's score with `rerank`.
    score: f32,
    /// The scores by side.
    #[serde(default)]
    scores: Scores,
    #[schema(value_type = super::openapi::Metadata)]
    metadata: Metadata,
    /// The chunk's text (unless `include_text` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// Where a result came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Computed for this request.
    Miss,
    /// This worker's in-process cache.
    L1,
    /// The shared Redis cache.
    L2,
}

/// A query's answer, best hit first.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryAnswer {
    hits: Vec<HitOut>,
    /// The sequence this worker had applied.
    sequence: u64,
    cache: Source,
}

/// Several queries.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[schema(min_items = 1, max_items = 64)]
    queries: Vec<QueryBody>,
}

/// The answers in query order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    results: Vec<QueryAnswer>,
}

fn default_top_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

/// Semantic query: text or vector, top-k, metadata filter, score threshold.
#[utoipa::path(post, path = "/v1/collections/{collection}/query", operation_id = "query", tag = "query",
    params(CollectionParam),
    request_body = QueryBody,
    responses(
        (status = 200, description = "the hits, best first", body = QueryAnswer),
        (status = 400, description = "not exactly one of query and vector, or an invalid top_k, filter or vector", body = ErrorBody),
        CollectionErrors,
        (status = 429, description = "the interactive embedding queue is full (see Retry-After)", body = ErrorBody),
    ))]
pub async fn query(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<QueryAnswer>, ApiError> {
    let (engine, body, _large) =
        read_request::<QueryBody>(&state, &collection, req, "query").await?;
    // Through an alias: its collection.
    let collection = engine.resolve(&collection);
    Ok(Json(run_query(&state, &engine, &collection, body).await?))
}

/// Most queries in one batch.
pub const MAX_BATCH_QUERIES: usize = 64;

/// Several queries in one round trip.
///
/// Their texts are embedded together and their searches share one matrix product. The
/// answer lists the results in query order; one invalid query fails the batch with its
/// position.
#[utoipa::path(post, path = "/v1/collections/{collection}/query/batch", operation_id = "queryBatch", tag = "query",
    params(CollectionParam),
    request_body = BatchBody,
    responses(
        (status = 200, description = "the answers, in query order", body = BatchAnswer),
        (status = 400, description = "an invalid query (its position is in the message)", body = ErrorBody),
        CollectionErrors,
        (status = 429, description = "the interactive embedding queue is full (see Retry-After)", body = ErrorBody),
    ))]
pub async fn query_batch(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<BatchAnswer>, ApiError> {
    let (engine, body, _large) =
        read_request::<BatchBody>(&state, &collection, req, "batch").await?;
    // Through an alias: its collection.
    let collection = engine.resolve(&collection);
    if body.queries.is_empty() || body.queries.len() > MAX_BATCH_QUERIES {
        return Err(ApiError::BadRequest(format!(
            "`queries` needs 1 to {MAX_BATCH_QUERIES} queries, got {}",
            body.queries.len()
        )));
    }
    let answers = body.queries.into_iter().enumerate().map(|(i, q)| {
        let (state, engine, collection) = (&state, &engine, &collection);
        async move {
            run_query(state, engine, collection, q)
                .await
                .map_err(|e| e.at_position(i))
        }
    });
    let results = futures::future::try_join_all(answers).await?;
    Ok(Json(BatchAnswer { results }))
}

/// A parsed body, with the permit a large one holds until its answer is sent.
type Read<T> = (Arc<Engine>, T, Option<tokio::sync::OwnedSemaphorePermit>);

/// Checks the caller may read `collection`, then reads and parses the JSON body (`what`
/// names it in the 400). A large body ([`super::documents::LARGE_REQUEST_BYTES`]) waits for a large-request
/// permit, is parsed on a blocking thread and keeps the permit until it is answered: its
/// parse and its filters' (a batch of 4,096-value `$in` filters costs milliseconds) never
/// hold up the runtime threads that answer small queries, and at most a few such
/// requests use the CPU at once.
async fn read_request<T: serde::de::DeserializeOwned + Send + 'static>(
    state: &SharedState,
    collection: &str,
    req: Request,
    what: &str,
) -> Result<Read<T>, ApiError> {
    let engine = state.engine_for(req.headers(), Role::Read, collection)?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let (body, permit) = parse_body::<T>(state, bytes, Stage::QueryParse).await?;
    let body = body.map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))?;
    Ok((engine, body, permit))
}

/// Validates, embeds (or takes the vector), searches and shapes one query's answer.
async fn run_query(
    state: &SharedState,
    engine: &Arc<Engine>,
    collection: &str,
    body: QueryBody,
) -> Result<QueryAnswer, ApiError> {
    if body.top_k == 0 || body.top_k > state.limits.max_top_k {
        return Err(ApiError::BadRequest(format!(
            "top_k must be between 1 and {} (limits.max_top_k)",
            state.limits.max_top_k
        )));
    }
    if body.score_threshold.is_some_and(|t| !t.is_finite()) {
        return Err(ApiError::BadRequest(
            "score_threshold must be a finite number".into(),
        ));
    }
    let filter = match &body.filter {
        Some(f) => Filter::parse(f).map_err(ApiError::BadRequest)?,
        None => Filter::default(),
    };
    if let Some(seq) = body.min_sequence {
        engine.wait_min_sequence(seq).await?;
    }
    let view = engine.store.view();
    let c = view
        .get(collection)
        .ok_or_else(|| ApiError::NotFound(format!("collection {collection:?} does not exist")))?;
    let (version, lexical) = (c.version, c.lexical);
    let query = match (body.query, body.vector) {
        (Some(text), None) if text.len() > state.limits.max_query_bytes => {
            return Err(ApiError::BadRequest(format!(
                "query text is {} bytes, more than limits.max_query_bytes ({}); the model reads \
                 only its first {} tokens anyway",
                text.len(),
                state.limits.max_query_bytes,
                engine.embedder.max_seq_len()
            )))
        }
        (Some(text), None) if !text.trim().is_empty() => Query::Text(text),
        (None, Some(v)) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => Query::Vector(v),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `query` (non-empty text) or `vector` (finite numbers)".into(),
            ))
        }
    };
    // With `rerank` the mode finds more hits than asked for; the cross-encoder cuts them.
    let (fetch, rerank_text) = match (&body.rerank, &query) {
        (None, _) => (body.top_k, None),
        (Some(rerank), Query::Text(text)) => (
            rerank.fetch_for(engine, body.top_k, state.limits.max_top_k)?,
            Some(text.clone()),
        ),
        (Some(_), Query::Vector(_)) => {
            return Err(ApiError::BadRequest(
                "`rerank` scores the query text: give `query`, not `vector`".into(),
            ))
        }
    };
    let (mode, has_hybrid) = (body.mode, body.hybrid.is_some());
    let hybrid = body.hybrid.unwrap_or_default();
    let candidates = match mode {
        Mode::Hybrid => hybrid.candidates_for(fetch, state.limits.max_top_k)?,
        _ if has_hybrid => {
            return Err(ApiError::BadRequest(
                "`hybrid` options apply to `\"mode\": \"hybrid\"` only".into(),
            ))
        }
        _ => 0,
    };
    if mode != Mode::Dense {
        if matches!(query, Query::Vector(_)) {
            return Err(ApiError::BadRequest(format!(
                "mode {} searches the query text: give `query`, not `vector`",
                mode.name()
            )));
        }
        if !lexical {
            return Err(IndexError::LexicalOff.into());
        }
    }
    // Query texts are embedded for dense and hybrid search: only by the collection's model.
    if matches!(query, Query::Text(_)) && mode != Mode::Lexical {
        engine.check_embeds(collection, c.binding.as_ref())?;
    }
    drop(view);
    let (top_k, include_text, threshold) = (body.top_k, body.include_text, body.score_threshold);
    let filter_key = body
        .filter
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_default();
    let cache = engine.cache.as_ref();
    let epoch = engine
        .replicator
        .as_ref()
        .map(|r| r.epoch_id())
        .unwrap_or_default();
    // Everything that shapes the answer; the collection's version joins it in the key.
    let digest = cache.map(|_| {
        QueryCache::request_digest(&json!({
            "query": query, "top_k": top_k, "filter": body.filter, "include_text": include_text,
            "score_threshold": threshold, "mode": mode,
            "hybrid": (mode == Mode::Hybrid).then_some(&hybrid),
            "rerank": body.rerank.as_ref().map(|r| (r.candidates, reranker_name(engine))),
        }))
    });
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        let key = cache.result_key(collection, &epoch, version, digest);
        if let Some((hits, level)) = cache.result(&key).await {
            return Ok(QueryAnswer {
                hits,
                sequence: engine.store.view().applied,
                cache: match level {
                    Level::L1 => Source::L1,
                    Level::L2 => Source::L2,
                },
            });
        }
    }
    let (hits, sequence, version) = match (mode, query) {
        (Mode::Lexical, Query::Text(text)) => {
            modes::lexical(engine, collection, text, fetch, filter).await?
        }
        (Mode::Hybrid, Query::Text(text)) => {
            let vector = embed_query(engine, text.clone()).await?;
            let dense = dense(
                engine,
                collection,
                filter_key,
                filter.clone(),
                &vector,
                candidates,
            );
            let (hits, _, _) = dense.await?;
            let vector = (text, vector);
            let hits = hits
                .into_iter()
                .map(|h| Hit {
                    row: h.row,
                    score: h.score,
                })
                .collect();
            let sizes = (fetch, candidates);
            modes::hybrid(engine, collection, vector, hits, filter, &hybrid, sizes).await?
        }
        (_, Query::Vector(v)) => dense(engine, collection, filter_key, filter, &v, fetch).await?,
        (_, Query::Text(text)) => {
            let vector = embed_query(engine, text).await?;
            dense(engine, collection, filter_key, filter, &vector, fetch).await?
        }
    };
    let hits = match &rerank_text {
        Some(text) => rerank_hits(engine, text, hits, top_k).await?,
        None => hits,
    };
    let hits: Vec<HitOut> = hits
        .into_iter()
        // Hits come best first: the threshold keeps a prefix.
        .take_while(|h| threshold.is_none_or(|t| h.score >= t))
        .map(|h| HitOut {
            document_id: h.row.doc_id.clone(),
            chunk_id: h.row.chunk_id.clone(),
            score: h.score,
            scores: h.scores,
            metadata: h.row.metadata.clone(),
            text: include_text.then(|| h.row.text.clone()),
        })
        .collect();
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        cache.put_result(cache.result_key(collection, &epoch, version, digest), &hits);
    }
    Ok(QueryAnswer {
        hits,
        sequence,
        cache: Source::Miss,
    })
}

/// The `top_k` nearest chunks to `vector` through the search batcher, timed as
/// [`Stage::Search`].
async fn dense(
    engine: &Engine,
    collection: &str,
    filter_key: String,
    filter: Filter,
    vector: &[f32],
    top_k: usize,
) -> Result<modes::Ranked, ApiError> {
    let dim = engine.store.view().get(collection).map(|c| c.dim);
    if let Some(dim) = dim.filter(|&d| d != vector.len()) {
        return Err(ApiError::BadRequest(format!(
            "vector has {} dimensions, the collection has {dim}",
            vector.len()
        )));
    }
    let started = std::time::Instant::now();
    let answer = engine
        .searches
        .search(collection, filter_key, filter, vector.to_vec(), top_k)
        .await
        .map_err(|e| ApiError::from(&*e))?;
    stages::observe(Stage::Search, started.elapsed());
    let hits = answer.hits.into_iter().map(Scored::dense).collect();
    Ok((hits, answer.applied, answer.version))
}

/// The reranker's model, for the cache key of reranked queries.
fn reranker_name(engine: &Engine) -> String {
    engine
        .reranker
        .as_ref()
        .map(|(r, _)| format!("{}/{}/{}", r.model_name(), r.precision(), r.max_seq_len()))
        .unwrap_or_default()
}

/// What is searched for; serialised into the cache key.
#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Query {
    Text(String),
    Vector(Vec<f32>),
}

/// The query's embedding, from the cache when this text was embedded before.
async fn embed_query(engine: &Engine, text: String) -> Result<Vec<f32>, ApiError> {
    let Some(cache) = &engine.cache else {
        return embed_one(engine, text).await;
    };
    let key = cache.embedding_key(&text);
    if let Some(v) = cache.embedding(&key).await {
        return Ok(v);
    }
    let vector = embed_one(engine, text).await?;
    cache.put_embedding(key, &vector);
    Ok(vector)
}

/// One query text through the interactive lane, with the query prefix
/// (`embedding.query_prefix`), timed as [`Stage::EmbedQuery`].
async fn embed_one(engine: &Engine, text: String) -> Result<Vec<f32>, ApiError> {
    let started = std::time::Instant::now();
    let mut embedded = (engine.embedder)
        .embed_as(Lane::Interactive, kb_embed::TextKind::Query, vec![text])
        .await?;
    stages::observe(Stage::EmbedQuery, started.elapsed());
    Ok(embedded.vectors.remove(0))
}
