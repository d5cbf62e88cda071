//! The cross-encoder that reranks (`reranker:` in the worker configuration): optional;
//! without it `POST /v1/rerank` and the `rerank` option of queries answer 400.

use crate::{ConfigError, Precision};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A sentence-transformers `CrossEncoder` directory and how to run it (`reranker:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankerConfig {
    /// Directory of the cross-encoder (`config.json` of a `BertForSequenceClassification`
    /// with one label, `model.safetensors`, `tokenizer.json`), as `CrossEncoder.save` writes.
    pub model: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (the first device is used). Unset: the
    /// embedding engine's `embedding.device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Unset: the embedding engine's `embedding.precision`. `auto` on a CPU is measured
    /// at start (fp32 vs bf16 on query/passage pairs) and cached in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Pairs longer than this many tokens are cut (longest side first). Unset: the
    /// model's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<usize>,
    /// Most passages one rerank request (or a query's `rerank.candidates`) may score.
    #[serde(default = "default_max_texts")]
    pub max_texts: usize,
}

fn default_max_texts() -> usize {
    1000
}

impl RerankerConfig {
    /// A reranker of the model in `model` with every other setting at its default.
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            device: None,
            precision: None,
            max_seq_len: None,
            max_texts: default_max_texts(),
        }
    }

    /// The settings the reranker's engine runs with: the embedding engine's, overridden
    /// by this section's.
    pub fn engine_config(&self, embedding: &crate::EmbeddingConfig) -> crate::EmbeddingConfig {
        let mut cfg = embedding.clone();
        if let Some(device) = &self.device {
            cfg.device = device.clone();
        }
        if let Some(precision) = self.precision {
            cfg.precision = precision;
        }
        cfg.max_seq_len = self.max_seq_len.unwrap_or(usize::MAX);
        cfg
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_texts == 0 {
            return Err(ConfigError::Invalid(
                "reranker.max_texts must be > 0".into(),
            ));
        }
        if self.max_seq_len.is_some_and(|n| n < 4) {
            return Err(ConfigError::Invalid(
                "reranker.max_seq_len must be at least 4 (room for a query and a passage)".into(),
            ));
        }
        if self.model.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "reranker.model must name a cross-encoder directory".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::WorkerConfig;

    #[test]
    fn the_section_is_optional_and_checked() {
        assert_eq!(WorkerConfig::from_yaml("").unwrap().reranker, None);
        let cfg = WorkerConfig::from_yaml("reranker:\n  model: /models/rerank\n").unwrap();
        let reranker = cfg.reranker.clone().unwrap();
        assert_eq!(reranker.model.to_str(), Some("/models/rerank"));
        assert_eq!(reranker.max_texts, 1000);
        let engine = reranker.engine_config(&cfg.embedding);
        assert_eq!(engine.device, cfg.embedding.device);
        cfg.validate().unwrap();
        let bad = WorkerConfig::from_yaml("reranker:\n  model: /m\n  max_texts: 0\n").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reranker.max_texts"));
        assert!(WorkerConfig::from_yaml("reranker:\n  modle: /m\n").is_err());
    }
}
