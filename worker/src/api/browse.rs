//! Reading documents back and deleting by filter:
//!
//! - `GET /v1/collections/{c}/documents?limit=N&after=ID&filter=JSON`: a page of
//!   documents in id order (`next` is the `after` of the following page);
//! - `GET /v1/collections/{c}/documents/{id}`: one document with its chunks;
//! - `POST /v1/collections/{c}/delete` `{"filter": {...}}` or `{"ids": [...]}`: deletes
//!   every matching document in one write.
//!
//! Lookups read the index itself, so they run on blocking threads.

use super::documents::read_body;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::{Engine, SharedState, Wait};
use crate::auth::Role;
use crate::index::filter::Filter;
use crate::index::flat::StoredDocument;
use crate::log::Op;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest page of a document listing.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    after: Option<String>,
    /// A metadata filter as JSON, e.g. `{"team":"search"}`.
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    include_text: bool,
}

fn default_limit() -> usize {
    100
}

/// Runs `f` on the collection's index on a blocking thread; 404 when it does not exist.
async fn with_collection<T: Send + 'static>(
    engine: &Arc<Engine>,
    collection: &str,
    f: impl FnOnce(&crate::index::flat::FlatIndex) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (store, name) = (Arc::clone(&engine.store), collection.to_string());
    tokio::task::spawn_blocking(move || store.index().get(&name).map(f))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("collection {collection:?} does not exist")))
}

fn describe(doc: &StoredDocument, with_chunks: bool) -> Value {
    let metadata = doc
        .chunks
        .first()
        .map(|c| json!(c.metadata))
        .unwrap_or(json!({}));
    let mut out = json!({"id": doc.id, "metadata": metadata, "chunks": doc.chunks.len()});
    if with_chunks {
        out["chunks"] = doc
            .chunks
            .iter()
            .map(|c| json!({"chunk_id": c.chunk_id, "text": c.text}))
            .collect();
    }
    out
}

pub async fn list(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine_for(&headers, Role::Read, &collection)?;
    if params.limit == 0 || params.limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let filter = match &params.filter {
        Some(text) => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| ApiError::BadRequest(format!("filter is not JSON: {e}")))?;
            Filter::parse(&value).map_err(ApiError::BadRequest)?
        }
        None => Filter::default(),
    };
    let (limit, after, with_chunks) = (params.limit, params.after, params.include_text);
    // One more than the page tells whether another page follows.
    let mut docs = with_collection(&engine, &collection, move |c| {
        c.documents(after.as_deref(), limit + 1, &filter)
    })
    .await?;
    let next = (docs.len() > limit).then(|| {
        docs.truncate(limit);
        docs.last().map(|d| d.id.clone())
    });
    let documents: Vec<Value> = docs.iter().map(|d| describe(d, with_chunks)).collect();
    Ok(Json(
        json!({"documents": documents, "next": next.flatten()}),
    ))
}

pub async fn get(
    State(state): State<SharedState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine_for(&headers, Role::Read, &collection)?;
    let wanted = id.clone();
    let doc = with_collection(&engine, &collection, move |c| c.document(&wanted))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "document {id:?} is not in collection {collection:?}"
            ))
        })?;
    Ok(Json(describe(&doc, true)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    ids: Option<Vec<String>>,
}

pub async fn delete_matching(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine_for(req.headers(), Role::Write, &collection)?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: DeleteBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
    let ids = match (body.filter, body.ids) {
        (Some(filter), None) => {
            let filter = Filter::parse(&filter).map_err(ApiError::BadRequest)?;
            if filter.is_empty() {
                return Err(ApiError::BadRequest(
                    "an empty filter would delete every document; drop the collection instead"
                        .into(),
                ));
            }
            with_collection(&engine, &collection, move |c| c.matching(&filter)).await?
        }
        (None, Some(ids)) => {
            with_collection(&engine, &collection, move |c| {
                ids.into_iter().filter(|id| c.contains(id)).collect()
            })
            .await?
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `filter` (metadata) or `ids` (document ids)".into(),
            ))
        }
    };
    if ids.is_empty() {
        return Ok(Json(
            json!({"deleted": 0, "sequence": engine.store.view().applied}),
        ));
    }
    let deleted = ids.len();
    let ops = ids
        .into_iter()
        .map(|doc_id| Op::Delete {
            collection: collection.clone(),
            doc_id,
        })
        .collect();
    // One write: every matching document goes, or none does.
    let sequence = engine.write(ops, Wait::Applied).await?;
    Ok(Json(json!({"deleted": deleted, "sequence": sequence})))
}
