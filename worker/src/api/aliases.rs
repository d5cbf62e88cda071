//! `/v1/aliases`: names that stand for a collection wherever a collection name goes
//! (queries, writes, listings, the CLI). An alias changes through the log, so every replica
//! swaps it at the same record: pointing an alias at a re-indexed collection moves every
//! reader and writer at once.

use super::check_collection_name;
use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::{SharedState, Wait};
use crate::auth::Role;
use crate::log::Op;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An alias and the collection it stands for.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alias {
    alias: String,
    collection: String,
    /// The write's sequence (changes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasList {
    aliases: Vec<Alias>,
}

/// Where the alias points.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    /// An existing collection (not an alias).
    collection: String,
}

/// The alias named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct AliasParam {
    /// 1-64 of `A-Z a-z 0-9 _ . -`, not starting with `.`; not a collection's name.
    alias: String,
}

/// The aliases this key may see.
#[utoipa::path(get, path = "/v1/aliases", operation_id = "listAliases", tag = "collections",
    responses(
        (status = 200, description = "the aliases", body = AliasList),
        (status = 401, description = "no valid key", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<AliasList>, ApiError> {
    let principal = state.principal(&headers)?;
    let engine = state.engine()?;
    let view = engine.store.view();
    let aliases = view
        .aliases
        .iter()
        .filter(|(alias, _)| principal.can_see(alias))
        .map(|(alias, collection)| Alias {
            alias: alias.clone(),
            collection: collection.clone(),
            sequence: None,
        })
        .collect();
    Ok(Json(AliasList { aliases }))
}

/// Point an alias at a collection (admin on both), creating it or moving it atomically.
#[utoipa::path(put, path = "/v1/aliases/{alias}", operation_id = "setAlias", tag = "collections",
    params(AliasParam),
    request_body = AliasBody,
    responses(
        (status = 200, description = "the alias points at the collection", body = Alias),
        (status = 400, description = "invalid name or body", body = ErrorBody),
        (status = 403, description = "the key is not admin on the alias and the collection", body = ErrorBody),
        (status = 404, description = "no such collection", body = ErrorBody),
        (status = 409, description = "the name is a collection's, or the target is an alias", body = ErrorBody),
    ))]
pub async fn set(
    State(state): State<SharedState>,
    ApiPath(alias): ApiPath<String>,
    req: Request,
) -> Result<Json<Alias>, ApiError> {
    check_collection_name(&alias)?;
    let principal = state.principal(req.headers())?;
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), 64 * 1024).await?;
    let body: AliasBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid body: {e}; expected {{\"collection\": \"NAME\"}}"
        ))
    })?;
    for name in [&alias, &body.collection] {
        if !principal.allows(Role::Admin, name) {
            return Err(ApiError::Forbidden(format!(
                "this API key is not admin on {name:?}: an alias needs admin on its name and \
                 on its collection"
            )));
        }
    }
    let op = Op::SetAlias {
        alias: alias.clone(),
        collection: body.collection.clone(),
    };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    tracing::info!(alias, collection = body.collection, sequence, "alias set");
    Ok(Json(Alias {
        alias,
        collection: body.collection,
        sequence: Some(sequence),
    }))
}

/// Remove an alias (admin); the collection stays.
#[utoipa::path(delete, path = "/v1/aliases/{alias}", operation_id = "deleteAlias", tag = "collections",
    params(AliasParam),
    responses(
        (status = 200, description = "removed", body = Alias),
        (status = 403, description = "the key is not admin on the alias", body = ErrorBody),
        (status = 404, description = "no such alias", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<SharedState>,
    ApiPath(alias): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Alias>, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows(Role::Admin, &alias) {
        return Err(ApiError::Forbidden(format!(
            "this API key is not admin on {alias:?}: deleting an alias needs admin on it"
        )));
    }
    let engine = state.engine()?;
    let Some(collection) = engine.store.view().aliases.get(&alias).cloned() else {
        return Err(ApiError::NotFound(format!(
            "alias {alias:?} does not exist"
        )));
    };
    let op = Op::DeleteAlias {
        alias: alias.clone(),
    };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    tracing::info!(alias, collection, sequence, "alias deleted");
    Ok(Json(Alias {
        alias,
        collection,
        sequence: Some(sequence),
    }))
}

#[cfg(test)]
mod tests;
