//! HTTP client shared by the client-side commands (`ingest`, `query`, `backup`).
//!
//! It adds the API key, decodes the worker's JSON errors into [`ClientError::Api`], and
//! retries what is worth retrying: connection failures (a worker still starting or being
//! rolled) and 429/503 (backpressure, not ready), honouring `Retry-After`.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// The longest pause between two attempts, whatever the server asks for.
const MAX_DELAY: Duration = Duration::from_secs(30);
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// Flags every client-side command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the worker's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "KB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Attempts after the first one for connection errors, 429 and 503.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Per-request timeout in seconds (embedding a large batch on CPU takes a while); for
    /// snapshot and backup downloads, the longest silence instead (no limit on the whole).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker answered with an error status.
    #[error("{message} ({status}, {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The worker could not be reached or the connection broke.
    #[error("request to {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The worker answered 2xx with a body that is not what the API promises.
    #[error("unexpected response from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one worker.
pub struct ApiClient {
    http: reqwest::Client,
    /// For bodies streamed to disk (snapshots, backups): `--timeout` is the longest
    /// silence, not the longest transfer, so a large knowledge base can be downloaded.
    streaming: reqwest::Client,
    base: String,
    api_key: Option<String>,
    retries: u32,
}

impl ApiClient {
    /// Builds a client from the shared flags.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(args.timeout.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let streaming = reqwest::Client::builder()
            .read_timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            streaming,
            base: args.url.trim_end_matches('/').to_string(),
            api_key: args.api_key.clone().filter(|k| !k.is_empty()),
            retries: args.retries,
        })
    }

    /// `GET path`, decoding a JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self.send(Method::GET, path, None::<&()>).await?;
        response.json().await.map_err(|e| decode_error(&url, e))
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self.send(Method::POST, path, Some(body)).await?;
        response.json().await.map_err(|e| decode_error(&url, e))
    }

    /// `GET path`, returning the headers and the whole body.
    pub async fn get_bytes(&self, path: &str) -> Result<(HeaderMap, bytes::Bytes), ClientError> {
        let url = self.url(path);
        let response = self.send(Method::GET, path, None::<&()>).await?;
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        Ok((headers, body))
    }

    /// `GET path`, returning the response for the caller to stream its body.
    ///
    /// The body is meant to be streamed: the request has an idle timeout (`--timeout`
    /// seconds without a byte, the wait for the headers included) and no total one.
    pub async fn get_response(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.send_with(&self.streaming, Method::GET, path, None::<&()>)
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request<B: Serialize>(
        &self,
        http: &reqwest::Client,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> RequestBuilder {
        let mut request = http.request(method, url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        match body {
            Some(body) => request.json(body),
            None => request,
        }
    }

    /// Sends until success, a final error, or the retries are spent.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, ClientError> {
        self.send_with(&self.http, method, path, body).await
    }

    async fn send_with<B: Serialize>(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, ClientError> {
        let url = self.url(path);
        let mut attempt = 0;
        loop {
            let result = self.request(http, method.clone(), &url, body).send().await;
            let (error, retry_after) = match result {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let retry_after = parse_retry_after(response.headers());
                    (api_error(response).await, retry_after)
                }
                Err(source) => (
                    ClientError::Transport {
                        url: url.clone(),
                        source,
                    },
                    None,
                ),
            };
            if attempt >= self.retries || !is_retryable(&error) {
                return Err(error);
            }
            let delay = backoff_delay(attempt, retry_after);
            eprintln!("{error}; retrying in {:.1} s", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// `/v1/collections/{collection}{rest}`, the name percent-encoded so any name is one segment.
pub fn collection_path(collection: &str, rest: &str) -> String {
    format!("/v1/collections/{}{rest}", percent_encode(collection))
}

/// `text` with every byte outside RFC 3986's unreserved set percent-encoded, so it is one
/// path segment or one query value.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

fn decode_error(url: &str, e: reqwest::Error) -> ClientError {
    ClientError::Decode {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// Turns an error response into [`ClientError::Api`], whatever its body looks like.
async fn api_error(response: Response) -> ClientError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let (code, message) = parse_error_body(&text).unwrap_or_else(|| {
        let snippet: String = text.trim().chars().take(200).collect();
        (status_code_name(status), snippet)
    });
    ClientError::Api {
        status,
        code,
        message,
    }
}

/// Reads `{"error":{"code":"...","message":"..."}}`.
fn parse_error_body(text: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let error = value.get("error")?;
    let code = error.get("code")?.as_str()?.to_string();
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_")
}

fn is_retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Api { status, .. } => {
            *status == StatusCode::TOO_MANY_REQUESTS || *status == StatusCode::SERVICE_UNAVAILABLE
        }
        ClientError::Transport { source, .. } => source.is_connect(),
        ClientError::Decode { .. } => false,
    }
}

/// `Retry-After` in seconds (the worker never sends the HTTP-date form).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The server's `Retry-After` when given, else exponential backoff with jitter; both capped.
fn backoff_delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let delay = retry_after.unwrap_or_else(|| {
        let exponential = FIRST_DELAY.saturating_mul(1 << attempt.min(16));
        // Jitter spreads out clients that all failed at the same moment.
        exponential.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
    });
    delay.min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn retry_after_wins_over_backoff_and_both_are_capped() {
        assert_eq!(
            backoff_delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(600))), MAX_DELAY);
        let first = backoff_delay(0, None);
        assert!(first >= FIRST_DELAY.mul_f64(0.75) && first <= FIRST_DELAY.mul_f64(1.25));
        assert_eq!(backoff_delay(40, None), MAX_DELAY);
    }

    #[test]
    fn collection_names_become_one_path_segment() {
        assert_eq!(
            collection_path("docs", "/query"),
            "/v1/collections/docs/query"
        );
        assert_eq!(collection_path("a b/c", ""), "/v1/collections/a%20b%2Fc");
    }

    #[test]
    fn error_bodies_decode_to_code_and_message() {
        let body = r#"{"error":{"code":"payload_too_large","message":"over 16 MiB"}}"#;
        assert_eq!(
            parse_error_body(body),
            Some(("payload_too_large".into(), "over 16 MiB".into()))
        );
        assert_eq!(parse_error_body("<html>bad gateway</html>"), None);
        assert_eq!(
            status_code_name(StatusCode::TOO_MANY_REQUESTS),
            "too_many_requests"
        );
    }

    #[test]
    fn retry_after_header_is_read_in_seconds() {
        use reqwest::header::HeaderValue;
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    /// A server that answers 429 (Retry-After: 0) twice, then 200.
    async fn flaky_server() -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let app = axum::Router::new().route(
            "/v1/collections",
            axum::routing::get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        let body = r#"{"error":{"code":"overloaded","message":"queue full"}}"#;
                        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], body)
                            .into_response()
                    } else {
                        axum::Json(serde_json::json!({"collections": []})).into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), calls)
    }

    fn args(url: String, retries: u32) -> ServerArgs {
        ServerArgs {
            url,
            api_key: Some("k".into()),
            retries,
            timeout: 5,
        }
    }

    #[tokio::test]
    async fn overloaded_answers_are_retried_until_success() {
        let (url, calls) = flaky_server().await;
        let client = ApiClient::new(&args(url, 3)).unwrap();
        let body: serde_json::Value = client.get_json("/v1/collections").await.unwrap();
        assert_eq!(body["collections"], serde_json::json!([]));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn exhausted_retries_report_the_servers_error() {
        let (url, _) = flaky_server().await;
        let client = ApiClient::new(&args(url, 1)).unwrap();
        let err = client
            .get_json::<serde_json::Value>("/v1/collections")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(err.to_string().contains("queue full"), "{err}");
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that sends a 200 with a chunked body of `parts` single bytes, one every
    /// `gap`.
    async fn trickling_server(parts: usize, gap: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            for _ in 0..parts {
                tokio::time::sleep(gap).await;
                if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}")
    }

    async fn download(url: String) -> Result<usize, String> {
        let client = ApiClient::new(&ServerArgs {
            url,
            api_key: None,
            retries: 0,
            timeout: 1,
        })
        .unwrap();
        let mut response = client
            .get_response("/v1/admin/snapshot")
            .await
            .map_err(|e| e.to_string())?;
        let mut bytes = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            bytes += chunk.len();
        }
        Ok(bytes)
    }

    #[tokio::test]
    async fn a_download_longer_than_the_timeout_completes_while_bytes_keep_coming() {
        // 2.4 s in all with --timeout 1: a total timeout would cut it.
        let url = trickling_server(8, Duration::from_millis(300)).await;
        assert_eq!(download(url).await, Ok(8));
    }

    #[tokio::test]
    async fn a_download_that_goes_silent_for_longer_than_the_timeout_fails() {
        let url = trickling_server(2, Duration::from_millis(2500)).await;
        assert!(download(url).await.is_err());
    }
}
