//! The cross-encoder the workers rerank with (`POST /v1/rerank`, the queries' `rerank`).

use super::ModelVolume;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A sentence-transformers `CrossEncoder` directory (`config.json` of a
/// `BertForSequenceClassification` with one label, `model.safetensors`,
/// `tokenizer.json`), run on the embedding model's device and precision. Without it the
/// workers answer rerank requests 400.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.modelPath) != has(self.modelVolume)").message("reranker needs exactly one of modelPath and modelVolume"))]
#[serde(rename_all = "camelCase")]
pub struct Reranker {
    /// The cross-encoder's directory inside the worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub model_path: Option<String>,
    /// Volume holding the cross-encoder; mounted read-only at `/rerankers` (`subPath`:
    /// the directory inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_volume: Option<ModelVolume>,
    /// Pairs longer than this many tokens are cut, longest side first (default: the
    /// model's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 8192))]
    pub max_seq_len: Option<i64>,
    /// Most passages one rerank request, or one query's `rerank.candidates`, may score
    /// (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_texts: Option<i64>,
}
