//! Collection list, stats, create and drop.

use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::openapi::{CollectionErrors, CollectionParam};
use super::{check_collection_name, SharedState, Wait};
use crate::auth::Role;
use crate::log::{Metric, Op};
use crate::store::CollectionView;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A collection's summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionInfo {
    name: String,
    /// The vectors' dimension (the model's).
    dim: usize,
    metric: Metric,
    documents: usize,
    chunks: usize,
    /// Deleted or replaced chunks not yet compacted away.
    tombstones: usize,
    /// The write's sequence (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
}

fn describe(name: &str, c: &CollectionView) -> CollectionInfo {
    CollectionInfo {
        name: name.to_string(),
        dim: c.dim,
        metric: c.metric,
        documents: c.documents,
        chunks: c.chunks,
        tombstones: c.tombstones,
        sequence: None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    collections: Vec<CollectionInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dropped {
    sequence: u64,
    dropped: bool,
}

/// List the collections this key may see.
#[utoipa::path(get, path = "/v1/collections", operation_id = "listCollections", tag = "collections",
    responses(
        (status = 200, description = "the collections", body = CollectionList),
        (status = 401, description = "no valid key", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<CollectionList>, ApiError> {
    let principal = state.principal(&headers)?;
    let engine = state.engine()?;
    let view = engine.store.view();
    let collections = view
        .collections
        .iter()
        .filter(|(name, _)| principal.can_see(name))
        .map(|(name, c)| describe(name, c))
        .collect();
    Ok(Json(CollectionList { collections }))
}

/// A collection's summary.
#[utoipa::path(get, path = "/v1/collections/{collection}", operation_id = "getCollection", tag = "collections",
    params(CollectionParam),
    responses(
        (status = 200, description = "the collection", body = CollectionInfo),
        CollectionErrors,
    ))]
pub async fn get(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<CollectionInfo>, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows(Role::Read, &collection) {
        return Err(ApiError::forbidden("read", &collection));
    }
    let engine = state.engine()?;
    let view = engine.store.view();
    let c = view
        .get(&collection)
        .ok_or_else(|| ApiError::NotFound(format!("collection {collection:?} does not exist")))?;
    Ok(Json(describe(&collection, c)))
}

/// The new collection's settings (the body may be empty).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `cosine` (the default) or `dot`.
    #[serde(default)]
    metric: Metric,
}

/// Create a collection (admin). Ingesting into a missing collection creates it as
/// `cosine`; create it first for `dot`.
#[utoipa::path(put, path = "/v1/collections/{collection}", operation_id = "createCollection", tag = "collections",
    params(CollectionParam),
    request_body(content = Option<CreateBody>),
    responses(
        (status = 200, description = "created (or already there with this metric)", body = CollectionInfo),
        (status = 400, description = "invalid name or body", body = ErrorBody),
        (status = 403, description = "the key is not admin on the collection", body = ErrorBody),
        (status = 409, description = "exists with another metric", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<CollectionInfo>, ApiError> {
    check_collection_name(&collection)?;
    let principal = state.principal(req.headers())?;
    if !principal.allows(Role::Admin, &collection) {
        return Err(ApiError::forbidden("create", &collection));
    }
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), 64 * 1024).await?;
    // No body, or `null`, creates a cosine collection.
    let body: CreateBody = if bytes.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice::<Option<CreateBody>>(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?
            .unwrap_or_default()
    };
    let op = Op::CreateCollection {
        collection: collection.clone(),
        dim: engine.embedder.dim(),
        metric: body.metric,
    };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    let view = engine.store.view();
    let c = view
        .get(&collection)
        .ok_or_else(|| ApiError::Internal("created collection vanished".into()))?;
    let mut out = describe(&collection, c);
    out.sequence = Some(sequence);
    Ok(Json(out))
}

/// Drop a collection and its documents (admin).
#[utoipa::path(delete, path = "/v1/collections/{collection}", operation_id = "dropCollection", tag = "collections",
    params(CollectionParam),
    responses(
        (status = 200, description = "dropped", body = Dropped),
        CollectionErrors,
    ))]
pub async fn drop(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Dropped>, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows(Role::Admin, &collection) {
        return Err(ApiError::forbidden("drop", &collection));
    }
    let engine = state.engine()?;
    if engine.store.view().get(&collection).is_none() {
        return Err(ApiError::NotFound(format!(
            "collection {collection:?} does not exist"
        )));
    }
    let op = Op::DropCollection { collection };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    Ok(Json(Dropped {
        sequence,
        dropped: true,
    }))
}
