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
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use super::openapi::{CollectionErrors, CollectionParam, DocumentParams};
use super::{Engine, SharedState, Wait};
use crate::auth::Role;
use crate::index::filter::Filter;
use crate::index::flat::StoredDocument;
use crate::log::Metadata;
use crate::log::Op;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Largest page of a document listing.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Documents per page, 1-1000 (default 100).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: usize,
    /// Start after this id: the previous page's `next`.
    #[serde(default)]
    after: Option<String>,
    /// A metadata filter as JSON, e.g. `{"team":"search"}`.
    #[serde(default)]
    filter: Option<String>,
    /// List each document's chunks with their text instead of counting them.
    #[serde(default)]
    include_text: bool,
}

/// A stored document.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentOut {
    id: String,
    #[schema(value_type = super::openapi::Metadata)]
    metadata: Metadata,
    /// The number of chunks in a listing, the chunks themselves for one document (or a
    /// listing with `include_text`).
    chunks: ChunksOut,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ChunksOut {
    Count(usize),
    Chunks(Vec<ChunkOut>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkOut {
    chunk_id: String,
    text: String,
}

/// A page of documents in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentPage {
    documents: Vec<DocumentOut>,
    /// The `after` of the next page; null on the last one.
    next: Option<String>,
}

/// Documents deleted by a filter or a list of ids.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedMatching {
    deleted: usize,
    sequence: u64,
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

fn describe(doc: &StoredDocument, with_chunks: bool) -> DocumentOut {
    let metadata = doc
        .chunks
        .first()
        .map(|c| c.metadata.clone())
        .unwrap_or_default();
    let chunks = if with_chunks {
        ChunksOut::Chunks(
            doc.chunks
                .iter()
                .map(|c| ChunkOut {
                    chunk_id: c.chunk_id.clone(),
                    text: c.text.clone(),
                })
                .collect(),
        )
    } else {
        ChunksOut::Count(doc.chunks.len())
    };
    DocumentOut {
        id: doc.id.clone(),
        metadata,
        chunks,
    }
}

/// List documents in id order, a page at a time.
#[utoipa::path(get, path = "/v1/collections/{collection}/documents", operation_id = "listDocuments", tag = "documents",
    params(CollectionParam, ListParams),
    responses(
        (status = 200, description = "a page of documents", body = DocumentPage),
        (status = 400, description = "invalid limit or filter", body = ErrorBody),
        CollectionErrors,
    ))]
pub async fn list(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
    headers: HeaderMap,
) -> Result<Json<DocumentPage>, ApiError> {
    let engine = state.engine_for(&headers, Role::Read, &collection)?;
    // Through an alias: its collection.
    let collection = engine.resolve(&collection);
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
    let documents = docs.iter().map(|d| describe(d, with_chunks)).collect();
    Ok(Json(DocumentPage {
        documents,
        next: next.flatten(),
    }))
}

/// One document with its chunks.
#[utoipa::path(get, path = "/v1/collections/{collection}/documents/{id}", operation_id = "getDocument", tag = "documents",
    params(DocumentParams),
    responses(
        (status = 200, description = "the document with its chunks", body = DocumentOut),
        (status = 403, description = "the key may not read the collection", body = ErrorBody),
        (status = 404, description = "no such collection or document", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<SharedState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<DocumentOut>, ApiError> {
    let engine = state.engine_for(&headers, Role::Read, &collection)?;
    // Through an alias: its collection.
    let collection = engine.resolve(&collection);
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

/// Exactly one of `filter` (non-empty) or `ids`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::Filter>)]
    filter: Option<Value>,
    #[serde(default)]
    ids: Option<Vec<String>>,
}

/// Delete every document matching a filter or a list of ids, in one write.
#[utoipa::path(post, path = "/v1/collections/{collection}/delete", operation_id = "deleteMatching", tag = "documents",
    params(CollectionParam),
    request_body = DeleteBody,
    responses(
        (status = 200, description = "deleted in one write (0 when nothing matched)", body = DeletedMatching),
        (status = 400, description = "neither or both of filter and ids, or an invalid filter", body = ErrorBody),
        CollectionErrors,
        (status = 503, description = "not acknowledged", body = ErrorBody),
    ))]
pub async fn delete_matching(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<DeletedMatching>, ApiError> {
    let engine = state.engine_for(req.headers(), Role::Write, &collection)?;
    // Through an alias: its collection.
    let collection = engine.resolve(&collection);
    engine.check_writable(&collection)?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: DeleteBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
    let op = match (body.filter, body.ids) {
        (Some(filter), None) => {
            let parsed = Filter::parse(&filter).map_err(ApiError::BadRequest)?;
            if parsed.is_empty() {
                return Err(ApiError::BadRequest(
                    "an empty filter would delete every document; drop the collection instead"
                        .into(),
                ));
            }
            with_collection(&engine, &collection, |_| ()).await?;
            // Logged as the filter, evaluated when applied: every replica deletes what
            // matches after every earlier write, never what a lagging replica saw.
            Op::DeleteMatching {
                collection: collection.clone(),
                filter: filter.to_string(),
            }
        }
        (None, Some(ids)) => {
            let ids = with_collection(&engine, &collection, move |c| {
                ids.into_iter()
                    .filter(|id| c.contains(id))
                    .collect::<Vec<_>>()
            })
            .await?;
            if ids.is_empty() {
                return Ok(Json(DeletedMatching {
                    deleted: 0,
                    sequence: engine.store.view().applied,
                }));
            }
            let deleted = ids.len();
            let ops = ids
                .into_iter()
                .map(|doc_id| Op::Delete {
                    collection: collection.clone(),
                    doc_id,
                })
                .collect();
            // One write: every listed document goes, or none does.
            let sequence = engine.write(ops, Wait::Applied).await?;
            return Ok(Json(DeletedMatching { deleted, sequence }));
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `filter` (metadata) or `ids` (document ids)".into(),
            ))
        }
    };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    let store = Arc::clone(&engine.store);
    let deleted = tokio::task::spawn_blocking(move || store.index().deleted_by(sequence))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .unwrap_or(0);
    Ok(Json(DeletedMatching { deleted, sequence }))
}
