//! `POST /v1/collections/{c}/query`: text or vector, top-k, metadata filter.

use super::documents::read_body;
use super::error::ApiError;
use super::extract::ApiPath;
use super::{Engine, SharedState};
use crate::auth::Role;
use crate::cache::QueryCache;
use crate::index::filter::Filter;
use axum::extract::{Request, State};
use axum::Json;
use kb_embed::Lane;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    query: Option<String>,
    vector: Option<Vec<f32>>,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default = "default_true")]
    include_text: bool,
    /// Read-your-writes: wait (bounded) until this worker applied this sequence.
    #[serde(default)]
    min_sequence: Option<u64>,
    /// Only hits scoring at least this (cosine similarity or dot product).
    #[serde(default)]
    score_threshold: Option<f32>,
}

fn default_top_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

pub async fn query(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let (engine, body) = read_request::<QueryBody>(&state, &collection, req, "query").await?;
    Ok(Json(run_query(&state, &engine, &collection, body).await?))
}

/// Most queries in one batch.
pub const MAX_BATCH_QUERIES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    queries: Vec<QueryBody>,
}

/// `POST /v1/collections/{c}/query/batch`: several queries in one round trip; their texts
/// are embedded together and their searches share one matrix product. The answer lists
/// the results in query order; one invalid query fails the batch with its position.
pub async fn query_batch(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let (engine, body) = read_request::<BatchBody>(&state, &collection, req, "batch").await?;
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
    Ok(Json(json!({"results": results})))
}

/// Checks the caller may read `collection`, then reads and parses the JSON body (`what`
/// names it in the 400).
async fn read_request<T: serde::de::DeserializeOwned>(
    state: &SharedState,
    collection: &str,
    req: Request,
    what: &str,
) -> Result<(Arc<Engine>, T), ApiError> {
    let engine = state.engine_for(req.headers(), Role::Read, collection)?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))?;
    Ok((engine, body))
}

/// Validates, embeds (or takes the vector), searches and shapes one query's answer.
async fn run_query(
    state: &SharedState,
    engine: &Arc<Engine>,
    collection: &str,
    body: QueryBody,
) -> Result<Value, ApiError> {
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
    let (version, dim) = {
        let view = engine.store.view();
        let c = view.get(collection).ok_or_else(|| {
            ApiError::NotFound(format!("collection {collection:?} does not exist"))
        })?;
        (c.version, c.dim)
    };
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
    let (top_k, include_text, threshold) = (body.top_k, body.include_text, body.score_threshold);
    let filter_key = body
        .filter
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_default();
    let cache = engine.cache.as_ref();
    // Everything that shapes the answer; the collection's version joins it in the key.
    let digest = cache.map(|_| {
        QueryCache::request_digest(&json!({
            "query": query, "top_k": top_k, "filter": body.filter, "include_text": include_text,
            "score_threshold": threshold,
        }))
    });
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        let key = cache.result_key(collection, version, digest);
        if let Some((hits, level)) = cache.result(&key).await {
            let sequence = engine.store.view().applied;
            return Ok(json!({"hits": hits, "sequence": sequence, "cache": level.as_str()}));
        }
    }
    let vector = match query {
        Query::Vector(v) => v,
        Query::Text(text) => embed_query(engine, text).await?,
    };
    if vector.len() != dim {
        return Err(ApiError::BadRequest(format!(
            "vector has {} dimensions, the collection has {dim}",
            vector.len()
        )));
    }
    let answer = engine
        .searches
        .search(collection, filter_key, filter, vector, top_k)
        .await
        .map_err(|e| ApiError::from(&*e))?;
    let (hits, sequence, version) = (answer.hits, answer.applied, answer.version);
    let hits: Value = hits
        .into_iter()
        // Hits come best first: the threshold keeps a prefix.
        .take_while(|h| threshold.is_none_or(|t| h.score >= t))
        .map(|h| {
            let mut v = json!({
                "document_id": h.row.doc_id,
                "chunk_id": h.row.chunk_id,
                "score": h.score,
                "metadata": h.row.metadata,
            });
            if include_text {
                v["text"] = json!(h.row.text);
            }
            v
        })
        .collect::<Vec<_>>()
        .into();
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        cache.put_result(cache.result_key(collection, version, digest), &hits);
    }
    Ok(json!({"hits": hits, "sequence": sequence, "cache": "miss"}))
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
        return Ok(engine
            .embedder
            .embed(Lane::Interactive, vec![text])
            .await?
            .vectors
            .remove(0));
    };
    let key = cache.embedding_key(&text);
    if let Some(v) = cache.embedding(&key).await {
        return Ok(v);
    }
    let vector = engine
        .embedder
        .embed(Lane::Interactive, vec![text])
        .await?
        .vectors
        .remove(0);
    cache.put_embedding(key, &vector);
    Ok(vector)
}
