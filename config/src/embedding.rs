//! The embedding engine's settings (`embedding:` in the worker configuration).

use crate::ConfigError;
use serde::{Deserialize, Serialize};

/// Numeric precision of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp16 on CUDA; on CPU bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32.
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

/// The embedding engine (`embedding:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// `cpu`, `cuda` (every visible GPU), `cuda:0,1` (listed GPUs) or `auto`.
    pub device: String,
    pub precision: Precision,
    /// Token budget of one batch of the interactive lane (padded length x rows).
    pub max_batch_tokens: usize,
    /// Token budget of one batch of the bulk lane (ingestion). An interactive request that
    /// arrives while a bulk batch runs waits for that batch, so this bounds how much bulk
    /// work can delay a query. Unset: `max_batch_tokens`; on CPU the smallest of 512, 1024
    /// and 2048 (within `max_batch_tokens`) whose tokens per second come within 5% of
    /// the fastest, measured at start (`kb_embed`'s `calibrate::budget`) and cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_batch_tokens: Option<usize>,
    /// Longer inputs are truncated to this many tokens (and the response says so).
    pub max_seq_len: usize,
    /// Texts waiting in the interactive lane (queries) before new ones get 429.
    pub queue_capacity: usize,
    /// Texts waiting in the bulk lane (ingestion) before new ones get 429.
    pub bulk_queue_capacity: usize,
    /// The model's name in `/v1/embeddings` answers and `/v1/models`. Unset: the model
    /// card's title, else the model directory's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Model replicas on the CPU, each on its own thread with an equal share of the cores
    /// as libtorch threads. Unset: measured at start among the splits of the cores into at
    /// most 4 executors (`kb_embed`'s `calibrate::layout`), and cached in the data
    /// directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_executors: Option<usize>,
    /// Cores the CPU executors share. Unset: what the process may use (the CPU count, or
    /// the cgroup's CPU limit). The operator sets it from the pod's CPU limit or request,
    /// so a pod on a large node without a CPU limit does not start a thread per node core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<usize>,
    /// Text put before every query embedded for `/query` (e5: `"query: "`; bge v1.5:
    /// `"Represent this sentence for searching relevant passages: "`). Its tokens count
    /// toward `max_seq_len`. Unset: the model's own `query` prompt
    /// (`config_sentence_transformers.json`), else none; `""`: none. `/v1/embeddings`
    /// embeds its inputs as given, without a prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_prefix: Option<String>,
    /// Text put before every chunk embedded at ingestion (e5: `"passage: "`). Unset: the
    /// model's own `document` prompt (else `passage`, else `corpus`), else none; `""`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_prefix: Option<String>,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            precision: Precision::Auto,
            max_batch_tokens: 16_384,
            bulk_batch_tokens: None,
            max_seq_len: 256,
            queue_capacity: 1024,
            bulk_queue_capacity: 16_384,
            model_name: None,
            cpu_executors: None,
            cpu_cores: None,
            query_prefix: None,
            document_prefix: None,
        }
    }
}

impl EmbeddingConfig {
    /// Checks rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_seq_len < 8 {
            return Err(ConfigError::Invalid(
                "embedding.max_seq_len must be >= 8".into(),
            ));
        }
        if self.max_batch_tokens < self.max_seq_len {
            return Err(ConfigError::Invalid(format!(
                "embedding.max_batch_tokens ({}) must be at least embedding.max_seq_len ({})",
                self.max_batch_tokens, self.max_seq_len
            )));
        }
        if let Some(tokens) = self.bulk_batch_tokens {
            if tokens < self.max_seq_len {
                return Err(ConfigError::Invalid(format!(
                    "embedding.bulk_batch_tokens ({tokens}) must be at least embedding.max_seq_len ({})",
                    self.max_seq_len
                )));
            }
        }
        if self.cpu_cores == Some(0) {
            return Err(ConfigError::Invalid(
                "embedding.cpu_cores must be > 0 (or unset for the CPUs the process may use)"
                    .into(),
            ));
        }
        if self.cpu_executors == Some(0) {
            return Err(ConfigError::Invalid(
                "embedding.cpu_executors must be > 0 (or unset for one per core)".into(),
            ));
        }
        if self.queue_capacity == 0 || self.bulk_queue_capacity == 0 {
            return Err(ConfigError::Invalid(
                "embedding.queue_capacity and embedding.bulk_queue_capacity must be > 0".into(),
            ));
        }
        Ok(())
    }
}
