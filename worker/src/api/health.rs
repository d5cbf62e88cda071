//! Probes, the OpenAPI document and the admin snapshot download.

use super::error::ApiError;
use super::SharedState;
use crate::auth::Role;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Alive as soon as the process serves HTTP (the startup probe covers model load).
pub async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Ready once the model is loaded and the log replayed.
pub async fn readyz(State(state): State<SharedState>) -> Response {
    match state.engine() {
        Ok(engine) => {
            let applied = engine.store.view().applied;
            let mut body = json!({
                "status": "ready",
                "applied_sequence": applied,
                "log_sequence": engine.log_seq(),
                "devices": engine.embedder.devices(),
            });
            let mut code = StatusCode::OK;
            let store = engine.store.health();
            if store.snapshot_failures > 0 {
                body["snapshot_failures"] = json!(store.snapshot_failures);
            }
            if let Some(reason) = engine.store.halted() {
                // Writes cannot be acknowledged: take the pod out of service.
                body["status"] = json!("halted");
                body["reason"] = json!(reason);
                code = StatusCode::SERVICE_UNAVAILABLE;
            }
            if let Some(replicator) = &engine.replicator {
                body["replication"] = json!(replicator.status());
                if !replicator.is_caught_up() && code == StatusCode::OK {
                    body["status"] = json!("catching_up");
                    code = StatusCode::SERVICE_UNAVAILABLE;
                }
            }
            (code, Json(body)).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response(),
    }
}

/// The OpenAPI 3.1 description of this API.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// `GET /v1/admin/snapshot`: takes a fresh snapshot and streams its bytes (for backups
/// and replica bootstrap). Admin on every collection only.
pub async fn snapshot(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows_all(Role::Admin) {
        return Err(ApiError::Forbidden(
            "snapshots need an admin key scoped to \"*\"".into(),
        ));
    }
    let engine = state.engine()?;
    let store = engine.store.clone();
    let path = tokio::task::spawn_blocking(move || {
        store.snapshot().map_err(|e| {
            tracing::error!(error = %e, "snapshot for download failed");
            ApiError::Unavailable(format!("snapshot failed: {}", e.public_message()))
        })
    })
    .await??;
    // The file is streamed, never held in memory; retention may unlink it meanwhile, and
    // an open file stays readable.
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening the snapshot: {}", e.kind())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("reading the snapshot: {}", e.kind())))?
        .len();
    let seq = crate::snapshot::sequence_of_file_name(&path).unwrap_or_default();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::HeaderName::from_static("x-kb-sequence"),
                seq.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}
