//! `POST /v1/collections/{c}/query`: text or vector, top-k, metadata filter.

use super::documents::read_body;
use super::error::ApiError;
use super::SharedState;
use crate::auth::Role;
use crate::index::filter::Filter;
use axum::extract::{Path, Request, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

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
}

fn default_top_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

pub async fn query(
    State(state): State<SharedState>,
    Path(collection): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let principal = state.principal(req.headers())?;
    if !principal.allows(Role::Read, &collection) {
        return Err(ApiError::forbidden("read", &collection));
    }
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: QueryBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    if body.top_k == 0 || body.top_k > state.limits.max_top_k {
        return Err(ApiError::BadRequest(format!(
            "top_k must be between 1 and {} (limits.max_top_k)",
            state.limits.max_top_k
        )));
    }
    let filter = match &body.filter {
        Some(f) => Filter::parse(f).map_err(ApiError::BadRequest)?,
        None => Filter::default(),
    };
    if let Some(seq) = body.min_sequence {
        engine.wait_min_sequence(seq).await?;
    }
    if engine.store.index().get(&collection).is_none() {
        return Err(ApiError::NotFound(format!(
            "collection {collection:?} does not exist"
        )));
    }
    let vector = match (body.query, body.vector) {
        (Some(text), None) if !text.trim().is_empty() => {
            engine.embedder.embed(vec![text]).await?.vectors.remove(0)
        }
        (None, Some(v)) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => v,
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `query` (non-empty text) or `vector` (finite numbers)".into(),
            ))
        }
    };
    let (top_k, include_text) = (body.top_k, body.include_text);
    let search_engine = engine.clone();
    let (hits, sequence) = tokio::task::spawn_blocking(move || {
        let index = search_engine.store.index();
        let c = index.get(&collection).ok_or_else(|| {
            ApiError::NotFound(format!("collection {collection:?} does not exist"))
        })?;
        let hits = c.search(&[vector], top_k, &filter)?.remove(0);
        Ok::<_, ApiError>((hits, index.applied()))
    })
    .await??;
    let hits: Vec<Value> = hits
        .into_iter()
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
        .collect();
    Ok(Json(json!({"hits": hits, "sequence": sequence})))
}
