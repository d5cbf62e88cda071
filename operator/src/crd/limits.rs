//! Request limits and deadlines of the workers' API. Every field is optional: unset keeps
//! the worker's default (shown in parentheses).

use serde::{Deserialize, Serialize};

/// Bounds on what one request may ask of a worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest request body in bytes; larger bodies get 413 (16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_request_bytes: Option<i64>,
    /// Most documents in one ingest request (1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_documents_per_request: Option<i64>,
    /// Largest document text in bytes (4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1073741824))]
    pub max_document_bytes: Option<i64>,
    /// Largest `top_k` of a query (1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_top_k: Option<i64>,
    /// Longest query text in bytes; longer ones get 400 (32 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_query_bytes: Option<i64>,
    /// Requests one worker handles at once (health and metrics excluded); more get 503 with
    /// `Retry-After` (512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_requests: Option<i64>,
    /// Seconds a read (query, embeddings, listings) may take before it is answered 503 (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub request_timeout_seconds: Option<i64>,
    /// Seconds a write (ingest, delete, collection changes) may take before it is answered
    /// 503; the write may still complete, and retrying it is safe (600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub write_timeout_seconds: Option<i64>,
}
