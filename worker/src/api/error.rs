//! Every API error maps to one HTTP status, in one place, with a JSON body
//! `{"error": {"code", "message"}}`.

use crate::auth::AuthError;
use crate::index::IndexError;
use crate::replica::ReplicaError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kb_embed::EmbedError;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` (`bad_request`, `unauthorized`, `forbidden`,
/// `not_found`, `conflict`, `model_mismatch`, `method_not_allowed`, `payload_too_large`, `overloaded`,
/// `unavailable`, `timeout`, `internal`) and a message saying what to fix.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The collection's vectors come from another model (or from clients).
    #[error("{0}")]
    ModelMismatch(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the embedding queue is full; retry after {retry_after_s} s")]
    Busy { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::ModelMismatch(_) => (StatusCode::CONFLICT, "model_mismatch"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The same error, its message prefixed with the position of the item of a batch
    /// that caused it.
    pub fn at_position(self, i: usize) -> Self {
        let at = |m: String| format!("query {i}: {m}");
        match self {
            Self::BadRequest(m) => Self::BadRequest(at(m)),
            Self::NotFound(m) => Self::NotFound(at(m)),
            Self::Conflict(m) => Self::Conflict(at(m)),
            Self::ModelMismatch(m) => Self::ModelMismatch(at(m)),
            other => other,
        }
    }

    /// A caller lacking `role` on `collection`.
    pub fn forbidden(what: &str, collection: &str) -> Self {
        Self::Forbidden(format!(
            "this API key may not {what} collection {collection:?}"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: self.to_string(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let retry = match &self {
            Self::Busy { retry_after_s } => Some(*retry_after_s),
            Self::Unavailable(_) | Self::Timeout(_) => Some(1),
            _ => None,
        };
        if let Some(s) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Self::ModelMismatch(_) = self {
            resp.extensions_mut()
                .insert(super::forward::ModelMismatchAnswer);
        }
        resp
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::QueueFull { retry_after_ms } => Self::Busy {
                retry_after_s: retry_after_ms.div_ceil(1000).max(1),
            },
            EmbedError::EmptyInput => Self::BadRequest("nothing to embed".into()),
            EmbedError::InvalidInput(m) => Self::BadRequest(m),
            EmbedError::Tokenize(m) => Self::BadRequest(format!("cannot tokenize input: {m}")),
            EmbedError::ShuttingDown => Self::Unavailable("the worker is shutting down".into()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        Self::from(&e)
    }
}

impl From<&IndexError> for ApiError {
    fn from(e: &IndexError) -> Self {
        match e {
            IndexError::Dimension { .. } | IndexError::Filter(_) | IndexError::LexicalOff => {
                Self::BadRequest(e.to_string())
            }
            IndexError::NoSuchCollection(_) => Self::NotFound(e.to_string()),
            IndexError::Conflict { .. } | IndexError::NameTaken(_) => Self::Conflict(e.to_string()),
            IndexError::ModelMismatch { .. } => Self::ModelMismatch(e.to_string()),
            // Refused before anything was logged: retry elsewhere or after scaling out.
            IndexError::Capacity(_) => Self::Unavailable(e.to_string()),
            IndexError::Torch(_) | IndexError::Aborted(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Index(e) => e.into(),
            ReplicaError::Redis(e) => Self::Unavailable(format!("write not durable: {e}")),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Index(e) if !e.is_resource() => e.into(),
            other => {
                // The full error (paths included) goes to the log; the client gets the
                // cause in words it can act on.
                tracing::error!(error = %other, "write failed");
                Self::Unavailable(format!(
                    "write not acknowledged: {}",
                    other.public_message()
                ))
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.to_string())
    }
}
