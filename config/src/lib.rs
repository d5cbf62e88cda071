//! The worker configuration contract.
//!
//! `kb-operator` renders a [`WorkerConfig`] into the worker ConfigMap; `kb-worker serve
//! --config FILE` reads it back. Keeping the type in one crate means the two can never
//! disagree on a field name. Unknown keys are rejected so a typo in a ConfigMap is an error
//! that names the key instead of a silently ignored setting.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod embedding;
pub mod progress;
mod redis;
mod reranker;
pub use embedding::{EmbeddingConfig, Precision};
pub use redis::{RedisConfig, RedisMode, ReplicationConfig};
pub use reranker::RerankerConfig;

/// Errors reading or validating a worker configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("invalid value for environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole worker configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// HTTP API address.
    pub listen: String,
    /// Prometheus metrics address.
    pub metrics_listen: String,
    /// Directory for the WAL and snapshots.
    pub data_dir: PathBuf,
    /// Directory of a sentence-transformers model (config.json, model.safetensors, tokenizer.json).
    pub model: Option<PathBuf>,
    pub embedding: EmbeddingConfig,
    /// The cross-encoder of `/v1/rerank` and the queries' `rerank` option; absent: none
    /// (and not written, so workers without the section read the file too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reranker: Option<RerankerConfig>,
    pub chunking: ChunkingConfig,
    pub log: LogConfig,
    pub snapshot: SnapshotConfig,
    /// Redis for replication and caching; absent means single node with a file WAL.
    pub redis: Option<RedisConfig>,
    /// How replicas find peers and how long they wait (replicated mode only).
    pub replication: ReplicationConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub index: IndexConfig,
    /// What a worker does when collections hold vectors of another model than its own:
    /// `refuse` (serve, answer 409 `model_mismatch` for them, not ready), `exit` (stop
    /// with the reason once the log is applied, so that the pod's termination message
    /// reaches the KnowledgeBase's `Degraded` condition) or `reindex` (start re-indexing
    /// each of them for its own model, not ready until they are done: the operator's
    /// setting; a collection it cannot re-index stops it as `exit` does). Environment:
    /// `KB_ON_MODEL_MISMATCH`.
    pub on_model_mismatch: OnModelMismatch,
    /// The model this worker was started for, in the operator's form (`status.model` of
    /// a KnowledgeBase: `image:/opt/kb/model`, `pvc:models/e5 queryPrefix="query: "`).
    /// With [`WorkerConfig::wanted_model_file`], a worker whose model is not the one the
    /// file names re-indexes nothing and cancels the re-index jobs it runs (docs/worker.md,
    /// "Re-index"). Environment only: `KB_MODEL_REF`.
    #[serde(skip)]
    pub model_ref: Option<String>,
    /// A file naming the model wanted now, in the form of [`WorkerConfig::model_ref`],
    /// read again every few seconds (the operator's ConfigMap, mounted as a directory).
    /// Environment only: `KB_WANTED_MODEL_FILE`.
    #[serde(skip)]
    pub wanted_model_file: Option<PathBuf>,
    /// Seconds between SIGTERM and closing the listener: the worker reports not ready
    /// (`/readyz` 503 `draining`) and keeps serving meanwhile, so that requests routed to
    /// it before the Service's endpoints drop it are answered, not refused. Unset: 5 in a
    /// Kubernetes pod (`KUBERNETES_SERVICE_HOST` set), else 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay_seconds: Option<u64>,
}

impl WorkerConfig {
    /// [`WorkerConfig::shutdown_delay_seconds`] resolved.
    pub fn shutdown_delay(&self) -> std::time::Duration {
        let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let seconds = self
            .shutdown_delay_seconds
            .unwrap_or(if in_pod { 5 } else { 0 });
        std::time::Duration::from_secs(seconds)
    }
}

/// See [`WorkerConfig::on_model_mismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnModelMismatch {
    #[default]
    Refuse,
    Exit,
    Reindex,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            data_dir: PathBuf::from("./data"),
            model: None,
            embedding: EmbeddingConfig::default(),
            reranker: None,
            chunking: ChunkingConfig::default(),
            log: LogConfig::default(),
            snapshot: SnapshotConfig::default(),
            redis: None,
            replication: ReplicationConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            index: IndexConfig::default(),
            on_model_mismatch: OnModelMismatch::default(),
            model_ref: None,
            wanted_model_file: None,
            shutdown_delay_seconds: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Maximum tokens per chunk (model tokens, special tokens excluded).
    pub max_tokens: usize,
    /// Tokens shared by consecutive chunks of one section.
    pub overlap: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            max_tokens: 200,
            overlap: 32,
        }
    }
}

/// When the file WAL calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before every acknowledgement (safe default).
    #[default]
    Always,
    /// Leave it to the OS; acknowledged writes can be lost on power failure.
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Take a snapshot after this many applied log records (0 disables automatic snapshots).
    pub every_records: u64,
    /// Snapshots kept on disk.
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            every_records: 10_000,
            keep: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl_seconds: u64,
    /// Entries of the in-process cache.
    pub l1_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 300,
            l1_entries: 1024,
        }
    }
}

/// How CPU shards of the index score a batch of queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuScreen {
    /// One fp32 matrix product.
    #[default]
    None,
    /// A bf16 copy of the vectors screens candidates, which are then scored in fp32: the
    /// same results, faster on CPUs with AMX-BF16, and half the vectors' memory again.
    Bf16,
}

/// Whether collections keep a lexical (BM25) index of their chunk texts, and how text
/// becomes terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lexical {
    /// No lexical index: `lexical` and `hybrid` queries are refused.
    Off,
    /// Lowercased words, identifiers kept whole and split into their parts.
    #[default]
    Standard,
    /// `standard` plus English stop words dropped and words stemmed.
    English,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Batches of 4 or more queries on CPU shards: `none` (fp32) or `bf16` (screened).
    pub cpu_screen: CpuScreen,
    /// The lexical index of every collection (`off`, `standard` or `english`), for
    /// `lexical` and `hybrid` queries.
    pub lexical: Lexical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// YAML list of `{ key, role, collections }`.
    pub api_keys_file: Option<PathBuf>,
    /// No authentication; refused unless the API listens on loopback.
    pub open: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_request_bytes: usize,
    pub max_documents_per_request: usize,
    pub max_document_bytes: usize,
    pub max_top_k: usize,
    /// Longest query text (bytes) before 400.
    pub max_query_bytes: usize,
    /// Requests handled at once by the API (health and metrics excluded); more get 503
    /// with `Retry-After` instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// Seconds a read (query, embeddings, listings) may take before it is answered 503.
    pub request_timeout_seconds: u64,
    /// Seconds a write (ingest, delete, collection changes) may take before it is
    /// answered 503. A write that times out may still complete: retrying it is safe
    /// (upserts by document id).
    pub write_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 * 1024 * 1024,
            max_documents_per_request: 1000,
            max_document_bytes: 4 * 1024 * 1024,
            max_top_k: 1000,
            max_query_bytes: 32 * 1024,
            max_concurrent_requests: 512,
            request_timeout_seconds: 30,
            write_timeout_seconds: 600,
        }
    }
}

impl WorkerConfig {
    /// Parses YAML, rejecting unknown keys.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        Ok(serde_yaml::from_str(text)?)
    }

    /// Reads a YAML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Renders YAML (what the operator writes into the ConfigMap).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("worker config always serialises")
    }

    /// Applies `KB_*` environment overrides (for example `KB_LISTEN`, `KB_DEVICE`,
    /// `KB_REDIS_URL`) from the given variables.
    pub fn apply_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (var, value) in vars {
            match var.as_str() {
                "KB_LISTEN" => self.listen = value,
                "KB_METRICS_LISTEN" => self.metrics_listen = value,
                "KB_DATA_DIR" => self.data_dir = value.into(),
                "KB_MODEL" => self.model = Some(value.into()),
                "KB_DEVICE" => self.embedding.device = value,
                "KB_REDIS_URL" => self.redis.get_or_insert_with(Default::default).url = Some(value),
                "KB_API_KEYS_FILE" => self.auth.api_keys_file = Some(value.into()),
                "KB_MODEL_REF" => self.model_ref = Some(value),
                "KB_WANTED_MODEL_FILE" => self.wanted_model_file = Some(value.into()),
                "KB_ON_MODEL_MISMATCH" => {
                    self.on_model_mismatch = match value.as_str() {
                        "refuse" => OnModelMismatch::Refuse,
                        "exit" => OnModelMismatch::Exit,
                        "reindex" => OnModelMismatch::Reindex,
                        _ => {
                            return Err(ConfigError::Env {
                                var: var.clone(),
                                message: format!("{value:?}: use refuse, exit or reindex"),
                            })
                        }
                    }
                }
                "KB_MAX_BATCH_TOKENS" => {
                    self.embedding.max_batch_tokens =
                        value.parse().map_err(|e| ConfigError::Env {
                            var: var.clone(),
                            message: format!("{e}"),
                        })?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunking.max_tokens == 0 {
            return Err(ConfigError::Invalid(
                "chunking.max_tokens must be > 0".into(),
            ));
        }
        if self.chunking.overlap >= self.chunking.max_tokens {
            return Err(ConfigError::Invalid(format!(
                "chunking.overlap ({}) must be smaller than chunking.max_tokens ({})",
                self.chunking.overlap, self.chunking.max_tokens
            )));
        }
        self.embedding.validate()?;
        if let Some(reranker) = &self.reranker {
            reranker.validate()?;
        }
        let limits = &self.limits;
        for (name, value) in [
            ("limits.max_request_bytes", limits.max_request_bytes as u64),
            (
                "limits.max_documents_per_request",
                limits.max_documents_per_request as u64,
            ),
            (
                "limits.max_document_bytes",
                limits.max_document_bytes as u64,
            ),
            ("limits.max_top_k", limits.max_top_k as u64),
            ("limits.max_query_bytes", limits.max_query_bytes as u64),
            (
                "limits.max_concurrent_requests",
                limits.max_concurrent_requests as u64,
            ),
            (
                "limits.request_timeout_seconds",
                limits.request_timeout_seconds,
            ),
            ("limits.write_timeout_seconds", limits.write_timeout_seconds),
        ] {
            if value == 0 {
                // Zero would refuse or time out every request.
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if let Some(redis) = &self.redis {
            match redis.mode {
                RedisMode::Standalone if redis.url.is_none() => {
                    return Err(ConfigError::Invalid(
                        "redis.url is required in standalone mode".into(),
                    ))
                }
                RedisMode::Sentinel
                    if redis.sentinel_service.is_none() || redis.nodes.is_empty() =>
                {
                    return Err(ConfigError::Invalid(
                        "redis sentinel mode needs redis.nodes and redis.sentinel_service".into(),
                    ))
                }
                RedisMode::Cluster if redis.nodes.is_empty() => {
                    return Err(ConfigError::Invalid(
                        "redis cluster mode needs redis.nodes".into(),
                    ))
                }
                // WAIT counts the replicas of the node it reaches: in a cluster that is not
                // necessarily the stream's shard.
                RedisMode::Cluster if redis.min_replicas_to_ack > 0 => {
                    return Err(ConfigError::Invalid(
                        "redis.min_replicas_to_ack is supported in standalone and sentinel mode, not cluster".into(),
                    ))
                }
                _ => {}
            }
            if redis.min_replicas_to_ack > 0 && redis.replica_ack_timeout_ms == 0 {
                // WAIT with timeout 0 blocks forever.
                return Err(ConfigError::Invalid(
                    "redis.replica_ack_timeout_ms must be > 0 with min_replicas_to_ack".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
