//! Collection list, stats, create and drop.

use super::documents::read_body;
use super::error::ApiError;
use super::extract::ApiPath;
use super::{check_collection_name, SharedState, Wait};
use crate::auth::Role;
use crate::log::{Metric, Op};
use crate::store::CollectionView;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

fn describe(name: &str, c: &CollectionView) -> Value {
    json!({
        "name": name,
        "dim": c.dim,
        "metric": c.metric,
        "documents": c.documents,
        "chunks": c.chunks,
        "tombstones": c.tombstones,
    })
}

pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = state.principal(&headers)?;
    let engine = state.engine()?;
    let view = engine.store.view();
    let collections: Vec<Value> = view
        .collections
        .iter()
        .filter(|(name, _)| principal.can_see(name))
        .map(|(name, c)| describe(name, c))
        .collect();
    Ok(Json(json!({"collections": collections})))
}

pub async fn get(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    metric: Metric,
}

pub async fn create(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    check_collection_name(&collection)?;
    let principal = state.principal(req.headers())?;
    if !principal.allows(Role::Admin, &collection) {
        return Err(ApiError::forbidden("create", &collection));
    }
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), 64 * 1024).await?;
    let body: CreateBody = if bytes.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?
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
    out["sequence"] = json!(sequence);
    Ok(Json(out))
}

pub async fn drop(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"sequence": sequence, "dropped": true})))
}
