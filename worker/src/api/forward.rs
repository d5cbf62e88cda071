//! A request this worker's model cannot serve, handed to a peer that can.
//!
//! When a model change's re-index swaps a collection, every replica applies the swap at
//! the same point of the log, but the replicas of the old model stay behind the Service
//! until their readiness probe turns them away (`failureThreshold x periodSeconds`, 15 s
//! with the operator's probe) and the rolling update replaces them. A text query or a
//! write of texts reaching one of them meanwhile would get 409 `model_mismatch`. Instead,
//! such a worker sends the request on, unchanged (its API key included), to its peers
//! (`replication.peers` and the addresses of `replication.peer_service`) one after the
//! other, and returns the first answer that is not a `model_mismatch` or a connection
//! failure. A forwarded request carries [`FORWARDED`] and is never forwarded again; with
//! no peer able to serve it, the worker's own 409 stands.

use super::error::ApiError;
use super::SharedState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// The header a forwarded request carries (the forwarding replica's name).
pub const FORWARDED: &str = "x-kb-forwarded-by";

/// Marks an answer as the `model_mismatch` refusal (a response extension set by
/// [`ApiError`]), so that it is told apart from other conflicts without parsing the body.
#[derive(Clone, Copy, Debug)]
pub struct ModelMismatchAnswer;

/// How long a peer may take to answer a forwarded request (an ingest embeds its texts).
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// Middleware: runs the request here and, when it was refused as `model_mismatch` and
/// peers are known, runs it on them ([`self`]). Only requests of a worker that holds a
/// collection of another model are held in memory for that; the others pass through.
pub async fn forward_mismatched(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let engine = match state.engine() {
        Ok(engine) => engine,
        Err(_) => return next.run(request).await,
    };
    let replicator = match &engine.replicator {
        Some(replicator) if forwardable(&request) => replicator.clone(),
        _ => return next.run(request).await,
    };
    let view = engine.store.view();
    let any_foreign = view
        .collections
        .values()
        .any(|c| engine.is_foreign(c.binding.as_ref()));
    drop(view);
    if !any_foreign {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.limits.max_request_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::TooLarge(format!(
                "request body over limits.max_request_bytes ({})",
                state.limits.max_request_bytes
            ))
            .into_response()
        }
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let here = next
        .run(Request::from_parts(parts, Body::from(body.clone())))
        .await;
    if here.extensions().get::<ModelMismatchAnswer>().is_none() {
        return here;
    }
    for peer in replicator.peer_urls().await {
        match send(
            &peer,
            &engine.replica,
            &method,
            &uri,
            &headers,
            body.clone(),
        )
        .await
        {
            Ok(Some(answer)) => {
                tracing::info!(%peer, %uri, status = answer.status().as_u16(), "forwarded a request for a collection of another model");
                return answer;
            }
            Ok(None) => continue,
            Err(error) => tracing::info!(%peer, %error, "peer did not take a forwarded request"),
        }
    }
    here
}

/// Requests that may embed for a collection: writes and queries under
/// `/v1/collections/`, not yet forwarded, and not a re-index (which names its own model).
fn forwardable(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::POST
        && path.starts_with("/v1/collections/")
        && !path.ends_with("/reindex")
        && !request.headers().contains_key(FORWARDED)
}

/// `method uri` with `headers` and `body` sent to `peer`; `None` when it refused as
/// `model_mismatch` too (it runs this worker's model, or it is this worker).
async fn send(
    peer: &str,
    replica: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Option<Response>> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(PEER_TIMEOUT)
            .build()
            .expect("an HTTP client")
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client
        .request(
            method.clone(),
            format!("{}{path}", peer.trim_end_matches('/')),
        )
        .body(body);
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let by = HeaderValue::from_str(replica).unwrap_or(HeaderValue::from_static("replica"));
    let answer = request.header(FORWARDED, by).send().await?;
    let status = StatusCode::from_u16(answer.status().as_u16())?;
    let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await?;
    if status == StatusCode::CONFLICT && is_model_mismatch(&bytes) {
        return Ok(None);
    }
    let mut response = (status, bytes).into_response();
    if let Some(value) = content_type {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, value);
    }
    Ok(Some(response))
}

/// Whether a JSON error body is the `model_mismatch` refusal.
fn is_model_mismatch(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["error"]["code"] == "model_mismatch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_and_queries_of_collections_not_yet_forwarded_are_forwarded() {
        let request = |method: Method, path: &str, forwarded: bool| {
            let mut builder = Request::builder().method(method).uri(path);
            if forwarded {
                builder = builder.header(FORWARDED, "docs-worker-1");
            }
            builder.body(Body::empty()).unwrap()
        };
        assert!(forwardable(&request(
            Method::POST,
            "/v1/collections/docs/query",
            false
        )));
        assert!(forwardable(&request(
            Method::POST,
            "/v1/collections/docs/documents?wait=applied",
            false
        )));
        assert!(!forwardable(&request(
            Method::POST,
            "/v1/collections/docs/query",
            true
        )));
        assert!(!forwardable(&request(
            Method::POST,
            "/v1/collections/docs/reindex",
            false
        )));
        assert!(!forwardable(&request(
            Method::GET,
            "/v1/collections/docs",
            false
        )));
        assert!(!forwardable(&request(
            Method::POST,
            "/v1/embeddings",
            false
        )));
    }

    #[test]
    fn a_peer_refusal_is_told_apart_from_other_conflicts() {
        assert!(is_model_mismatch(
            br#"{"error":{"code":"model_mismatch","message":"..."}}"#
        ));
        assert!(!is_model_mismatch(
            br#"{"error":{"code":"conflict","message":"..."}}"#
        ));
        assert!(!is_model_mismatch(b"not json"));
    }
}
