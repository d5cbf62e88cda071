//! Server-side bounds on every API request (health and metrics excluded): a cap on the
//! requests handled at once, answered 503 with `Retry-After` past it instead of queueing
//! without bound, and a deadline per request, answered 503 in the JSON error shape.

use super::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kb_config::LimitsConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The shared state of [`bound`].
pub struct RequestBounds {
    slots: Semaphore,
    max: usize,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl RequestBounds {
    pub fn new(limits: &LimitsConfig) -> Arc<Self> {
        let max = limits.max_concurrent_requests.max(1);
        Arc::new(Self {
            slots: Semaphore::new(max),
            max,
            read_timeout: Duration::from_secs(limits.request_timeout_seconds.max(1)),
            write_timeout: Duration::from_secs(limits.write_timeout_seconds.max(1)),
        })
    }
}

/// Whether the request changes data (its deadline is the write timeout): everything but
/// GETs, queries and `/v1/embeddings`.
fn is_write(method: &Method, route: &str) -> bool {
    *method != Method::GET
        && !route.ends_with("/query")
        && route != "/v1/embeddings"
        && route != "/v1/rerank"
}

/// Middleware: refuses past the concurrency cap, answers 503 past the deadline.
pub async fn bound(State(bounds): State<Arc<RequestBounds>>, req: Request, next: Next) -> Response {
    let Ok(_slot) = bounds.slots.try_acquire() else {
        return ApiError::Unavailable(format!(
            "the worker is handling {} requests already (limits.max_concurrent_requests); retry shortly",
            bounds.max
        ))
        .into_response();
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let deadline = if is_write(req.method(), route) {
        bounds.write_timeout
    } else {
        bounds.read_timeout
    };
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "the request did not finish within {} s (limits.request_timeout_seconds / \
             limits.write_timeout_seconds); a write may still complete, retrying it is safe",
            deadline.as_secs()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_told_apart_from_reads() {
        let docs = "/v1/collections/{collection}/documents";
        assert!(is_write(&Method::POST, docs));
        assert!(is_write(&Method::DELETE, "/v1/collections/{collection}"));
        assert!(!is_write(
            &Method::POST,
            "/v1/collections/{collection}/query"
        ));
        assert!(!is_write(&Method::POST, "/v1/embeddings"));
        assert!(!is_write(&Method::GET, docs));
    }
}
