//! Probes, the OpenAPI document and the admin snapshot download.

use super::error::{ApiError, ErrorBody};
use super::SharedState;
use crate::auth::Role;
use crate::replica::ReplicaStatus;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    status: &'static str,
}

/// Alive as soon as the process serves HTTP (the startup probe covers model load).
#[utoipa::path(get, path = "/livez", operation_id = "livez", security(()), tag = "probes",
    responses((status = 200, description = "alive", body = Liveness)))]
pub async fn livez() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}

/// The worker's state, for the readiness probe and for people.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyState {
    /// Serving.
    Ready,
    /// Loading the model or replaying the log.
    #[default]
    Starting,
    /// A replica behind the stream (replicated mode).
    CatchingUp,
    /// Writes stopped after a failure that needs a restart; `reason` says which.
    Halted,
    /// Collections hold vectors of another model than this worker's (`model_mismatch`
    /// lists them): it refuses to embed for them.
    ModelMismatch,
    /// Shutting down (SIGTERM): still serving for `shutdown_delay_seconds`, then it stops.
    Draining,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Readiness {
    status: ReadyState,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_sequence: Option<u64>,
    /// Where the model runs (`cpu`, `cuda:0`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<String>>,
    /// Snapshots that failed in a row (absent when the last one worked).
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_failures: Option<u32>,
    /// Why writes halted.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<ReplicaStatus>,
    /// The collections whose vectors come from another model, with that model.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_mismatch: Option<Vec<String>>,
}

/// Ready once the model is loaded and the log replayed (and, replicated, caught up).
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", security(()), tag = "probes",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "starting, catching up, halted, holding another model's vectors (with the reason), or shutting down", body = Readiness),
    ))]
pub async fn readyz(State(state): State<SharedState>) -> (StatusCode, Json<Readiness>) {
    let Ok(engine) = state.engine() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness::default()));
    };
    let failures = engine.store.health().snapshot_failures;
    let mut body = Readiness {
        status: ReadyState::Ready,
        applied_sequence: Some(engine.store.view().applied),
        log_sequence: Some(engine.log_seq()),
        devices: Some(engine.embedder.devices()),
        snapshot_failures: (failures > 0).then_some(failures),
        ..Readiness::default()
    };
    let mut code = StatusCode::OK;
    if let Some(reason) = engine.store.halted() {
        // Writes cannot be acknowledged: take the pod out of service.
        body.status = ReadyState::Halted;
        body.reason = Some(reason);
        code = StatusCode::SERVICE_UNAVAILABLE;
    }
    let mismatched = engine.mismatched(&engine.store.view());
    if !mismatched.is_empty() && code == StatusCode::OK {
        // Serving these collections would mix two models' vectors: out of service until
        // the model the data was made with runs here again (or the data is re-indexed).
        body.status = ReadyState::ModelMismatch;
        body.reason = Some(format!(
            "collections hold vectors of another model than this worker's {}",
            engine.model.describe()
        ));
        code = StatusCode::SERVICE_UNAVAILABLE;
    }
    body.model_mismatch = (!mismatched.is_empty()).then_some(mismatched);
    if let Some(replicator) = &engine.replicator {
        body.replication = Some(replicator.status());
        if !replicator.is_caught_up() && code == StatusCode::OK {
            body.status = ReadyState::CatchingUp;
            code = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if state.is_draining() {
        // Out of the Service's endpoints before the listener closes.
        body.status = ReadyState::Draining;
        code = StatusCode::SERVICE_UNAVAILABLE;
    }
    (code, Json(body))
}

/// A fresh snapshot, streamed (admin on `*`).
///
/// For backups and replica bootstrap; the `X-KB-Sequence` header names the last write it
/// holds.
#[utoipa::path(get, path = "/v1/admin/snapshot", operation_id = "getSnapshot", tag = "admin",
    responses(
        (status = 200, description = "the snapshot file", content(("application/octet-stream")),
            headers(("x-kb-sequence" = u64, description = "the last write the snapshot holds"))),
        (status = 403, description = "the key is not admin on every collection", body = ErrorBody),
        (status = 503, description = "the snapshot failed (e.g. the disk is full)", body = ErrorBody),
    ))]
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
    let Ok(_writing) = state.snapshot_slot.try_acquire() else {
        return Err(ApiError::Unavailable(
            "a snapshot for download is being written already; retry when it is done".into(),
        ));
    };
    // Opened as soon as it is written: retention may unlink it meanwhile, and an open
    // file stays readable. It is streamed, never held in memory.
    let (path, file) = tokio::task::spawn_blocking(move || {
        store.snapshot_file().map_err(|e| {
            tracing::error!(error = %e, "snapshot for download failed");
            ApiError::Unavailable(format!("snapshot failed: {}", e.public_message()))
        })
    })
    .await??;
    let file = tokio::fs::File::from_std(file);
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
