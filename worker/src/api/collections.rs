//! Collection list, stats, create and drop.

use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::openapi::{CollectionErrors, CollectionParam};
use super::{check_collection_name, Engine, SharedState, Wait};
use crate::auth::Role;
use crate::index::MAX_DIM;
use crate::log::{Binding, Metric, ModelIdentity, Op};
use crate::store::{CollectionView, IndexView};
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
    /// `model`: the worker embeds texts with `model`; `external`: clients send vectors.
    vectors: Vectors,
    /// The model whose vectors the collection holds (absent for `external` and for data
    /// of an older version not yet adopted by a model).
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<ModelIdentity>,
    /// True when `model` is not the model this worker runs: it refuses to embed for the
    /// collection (409 `model_mismatch`).
    model_mismatch: bool,
    /// The aliases that stand for this collection.
    aliases: Vec<String>,
    /// The write's sequence (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
}

/// Where a collection's vectors come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Vectors {
    /// Embedded by the worker's model (texts in, vectors made here).
    #[default]
    Model,
    /// Sent by clients with every document and query (any model, any dimension).
    External,
}

fn describe(engine: &Engine, view: &IndexView, name: &str, c: &CollectionView) -> CollectionInfo {
    let (vectors, model) = match &c.binding {
        Some(Binding::External) => (Vectors::External, None),
        Some(Binding::Model(m)) => (Vectors::Model, Some(m.clone())),
        None => (Vectors::Model, None),
    };
    CollectionInfo {
        name: name.to_string(),
        dim: c.dim,
        metric: c.metric,
        documents: c.documents,
        chunks: c.chunks,
        tombstones: c.tombstones,
        vectors,
        model_mismatch: engine.is_foreign(c.binding.as_ref()),
        model,
        aliases: view.aliases_of(name),
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
        .map(|(name, c)| describe(&engine, &view, name, c))
        .collect();
    Ok(Json(CollectionList { collections }))
}

/// A collection's summary (through an alias: its collection's).
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
    let name = view.resolve(&collection);
    let c = view
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("collection {collection:?} does not exist")))?;
    Ok(Json(describe(&engine, &view, name, c)))
}

/// The new collection's settings (the body may be empty).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `cosine` (the default) or `dot`.
    #[serde(default)]
    metric: Metric,
    /// `model` (the default): documents and queries are texts the worker embeds.
    /// `external`: clients send a vector with every document and query.
    #[serde(default)]
    vectors: Vectors,
    /// The vectors' dimension, for `external` only (the model's for `model`).
    #[serde(default)]
    dim: Option<usize>,
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
        (status = 409, description = "exists with another metric or dimension, or the name is an alias's", body = ErrorBody),
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
    let (dim, binding) = match (body.vectors, body.dim) {
        (Vectors::Model, None) => (engine.embedder.dim(), engine.binding()),
        (Vectors::Model, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`dim` is for \"vectors\": \"external\" only: a model collection has the \
                 model's dimension"
                    .into(),
            ))
        }
        (Vectors::External, Some(dim)) if (1..=MAX_DIM).contains(&dim) => (dim, Binding::External),
        (Vectors::External, _) => {
            return Err(ApiError::BadRequest(format!(
                "\"vectors\": \"external\" needs `dim`, the vectors' dimension (1 to {MAX_DIM})"
            )))
        }
    };
    let ops = vec![
        Op::CreateCollection {
            collection: collection.clone(),
            dim,
            metric: body.metric,
        },
        Op::BindCollection {
            collection: collection.clone(),
            binding,
        },
    ];
    let sequence = engine.write(ops, Wait::Applied).await?;
    let view = engine.store.view();
    let c = view
        .get(&collection)
        .ok_or_else(|| ApiError::Internal("created collection vanished".into()))?;
    let mut out = describe(&engine, &view, &collection, c);
    out.sequence = Some(sequence);
    Ok(Json(out))
}

/// Drop a collection and its documents (admin).
#[utoipa::path(delete, path = "/v1/collections/{collection}", operation_id = "dropCollection", tag = "collections",
    params(CollectionParam),
    responses(
        (status = 200, description = "dropped", body = Dropped),
        CollectionErrors,
        (status = 409, description = "the name is an alias, or aliases stand for the collection", body = ErrorBody),
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
    let view = engine.store.view();
    if let Some(target) = view.aliases.get(&collection) {
        return Err(ApiError::Conflict(format!(
            "{collection:?} is an alias of {target:?}: delete the alias \
             (DELETE /v1/aliases/{collection}) or drop the collection by its own name"
        )));
    }
    if view.get(&collection).is_none() {
        return Err(ApiError::NotFound(format!(
            "collection {collection:?} does not exist"
        )));
    }
    let aliases = view.aliases_of(&collection);
    if !aliases.is_empty() {
        return Err(ApiError::Conflict(format!(
            "collection {collection:?} is what the aliases {aliases:?} stand for: point them \
             elsewhere or delete them first"
        )));
    }

    let op = Op::DropCollection { collection };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    Ok(Json(Dropped {
        sequence,
        dropped: true,
    }))
}
