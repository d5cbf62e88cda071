//! Embedding model, device and chunking settings.

use k8s_openapi::api::core::v1::{
    ImageVolumeSource, NFSVolumeSource, NodeAffinity, PersistentVolumeClaimVolumeSource, Toleration,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Model directory baked into the worker image.
pub const DEFAULT_MODEL_PATH: &str = "/opt/kb/model";

/// Embedding model and the device it runs on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.gpusPerReplica) || self.device == 'cuda'").message("embedding.gpusPerReplica requires embedding.device: cuda"),
    validation = Rule::new("self.maxBatchTokens >= self.maxSeqLen").message("embedding.maxBatchTokens must be at least embedding.maxSeqLen"),
    validation = Rule::new("!has(self.bulkBatchTokens) || self.bulkBatchTokens >= self.maxSeqLen").message("embedding.bulkBatchTokens must be at least embedding.maxSeqLen"),
)]
#[serde(rename_all = "camelCase")]
pub struct Embedding {
    /// `cpu` or `cuda`.
    pub device: Device,
    /// GPUs per worker pod (one model replica per GPU). Defaults to 1 on `cuda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub gpus_per_replica: Option<i32>,
    /// Model directory inside the image (sentence-transformers layout).
    #[serde(default = "default_model_path")]
    pub model_path: String,
    /// Volume holding the model instead of the image; mounted read-only at `/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_volume: Option<ModelVolume>,
    /// Numeric precision of the encoder.
    #[serde(default)]
    pub precision: Precision,
    /// Token budget of one batch of the interactive lane (queries, small `/v1/embeddings`).
    #[serde(default = "default_max_batch_tokens")]
    #[schemars(range(min = 8, max = 1048576))]
    pub max_batch_tokens: i64,
    /// Token budget of one batch of the bulk lane (ingestion). A query that arrives while a
    /// bulk batch runs waits for it, so this bounds how long ingestion can delay a query.
    /// Unset: `maxBatchTokens`; on CPU the smallest of 512, 1024 and 2048 that embeds
    /// within 5% of the fastest, measured at the worker's first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 1048576))]
    pub bulk_batch_tokens: Option<i64>,
    /// Longer inputs are truncated to this many tokens.
    #[serde(default = "default_max_seq_len")]
    #[schemars(range(min = 8, max = 8192))]
    pub max_seq_len: i64,
    /// Texts waiting in the interactive lane before new queries get 429 (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub queue_capacity: Option<i64>,
    /// Texts waiting in the bulk lane before new ingestion gets 429 (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub bulk_queue_capacity: Option<i64>,
    /// Model replicas on the CPU (`device: cpu`), each on its own thread with an equal
    /// share of the pod's cores, all reading one copy of the weights (default: the split
    /// of the cores into at most 4 executors that embeds fastest, measured at the
    /// worker's first start and cached on its volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub cpu_executors: Option<i64>,
    /// Model name in `/v1/embeddings` answers and `/v1/models` (default: the model card's
    /// title, else the model directory's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model_name: Option<String>,
    /// Text put before every query the workers embed (e5: `"query: "`); its tokens count
    /// toward `maxSeqLen`. Unset: the model's own `query` prompt
    /// (`config_sentence_transformers.json`), else none; `""`: none. `/v1/embeddings`
    /// embeds its inputs as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub query_prefix: Option<String>,
    /// Text put before every chunk embedded at ingestion (e5: `"passage: "`). Unset: the
    /// model's own `document` prompt, else none; `""`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub document_prefix: Option<String>,
    /// How a change of the model rolls out on a KnowledgeBase with data (docs/operator.md,
    /// "Changing the model").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ModelRolloutPolicy>,
}

/// How a change of the model rolls out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutPolicy {
    /// Workers added for the change (each with `gpusPerReplica` GPUs on `cuda`): they run
    /// the new model and re-index the stored texts while every current worker keeps
    /// serving, then the current workers are replaced and the added ones removed. `0`
    /// replaces the workers in place, highest ordinal first (the first one re-indexes
    /// while the others serve; a single worker is unavailable for text queries meanwhile).
    /// Added workers replicate through Redis: more than 0 requires `redis`. With
    /// autoscaling the autoscaler's floor is raised by it for the change. Unset: 1 with
    /// `redis`, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub max_surge: Option<i32>,
}

fn default_model_path() -> String {
    DEFAULT_MODEL_PATH.to_string()
}

fn default_max_batch_tokens() -> i64 {
    16_384
}

fn default_max_seq_len() -> i64 {
    256
}

impl Embedding {
    /// The model as the spec names it, with the prefixes given: what decides the stored
    /// vectors (`status.model`); another value is a model change.
    pub fn model_ref(&self) -> String {
        let mut model = match &self.model_volume {
            None => format!("image:{}", self.model_path),
            Some(volume) => {
                let source = if let Some(claim) = &volume.persistent_volume_claim {
                    format!("pvc:{}", claim.claim_name)
                } else if let Some(image) = &volume.image {
                    format!("image-volume:{}", image.reference.as_deref().unwrap_or(""))
                } else if let Some(nfs) = &volume.nfs {
                    format!("nfs:{}:{}", nfs.server, nfs.path)
                } else {
                    "volume:".to_string()
                };
                match volume.sub_path.as_deref().filter(|p| !p.is_empty()) {
                    Some(path) => format!("{source}/{path}"),
                    None => source,
                }
            }
        };
        if let Some(prefix) = &self.query_prefix {
            model.push_str(&format!(" queryPrefix={prefix:?}"));
        }
        if let Some(prefix) = &self.document_prefix {
            model.push_str(&format!(" documentPrefix={prefix:?}"));
        }
        model
    }

    /// GPUs each worker requests (0 on CPU).
    pub fn gpus(&self) -> i32 {
        match self.device {
            Device::Cpu => 0,
            Device::Cuda => self.gpus_per_replica.unwrap_or(1),
        }
    }
}

/// Where the encoder runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    /// The spelling used in the spec and the worker config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Numeric precision of the encoder (`auto`: fp16 on CUDA; on CPU bf16 where the CPU has native bf16, else fp32).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

/// A volume with the model; exactly one source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.image) ? 1 : 0) + (has(self.nfs) ? 1 : 0) == 1").message("modelVolume needs exactly one of persistentVolumeClaim, image, nfs"))]
#[serde(rename_all = "camelCase")]
pub struct ModelVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// An OCI image used as a volume (Kubernetes image volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NFSVolumeSource>,
    /// Directory of the model inside the volume (empty: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._/-]*$"))]
    pub sub_path: Option<String>,
}

/// How documents are split before embedding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.overlap < self.maxTokens").message("chunking.overlap must be smaller than chunking.maxTokens"))]
#[serde(rename_all = "camelCase")]
pub struct Chunking {
    /// Maximum model tokens per chunk.
    #[serde(default = "default_chunk_tokens")]
    #[schemars(range(min = 1, max = 8192))]
    pub max_tokens: i64,
    /// Tokens shared by consecutive chunks.
    #[serde(default = "default_overlap")]
    #[schemars(range(min = 0, max = 8191))]
    pub overlap: i64,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            max_tokens: default_chunk_tokens(),
            overlap: default_overlap(),
        }
    }
}

fn default_chunk_tokens() -> i64 {
    200
}

fn default_overlap() -> i64 {
    32
}

/// How GPU workers are placed (used when `embedding.device` is `cuda`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuScheduling {
    /// Extended resource requested per GPU.
    #[serde(default = "default_gpu_resource")]
    pub resource_name: String,
    /// Node labels GPU workers require (merged into the pod node selector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node affinity of GPU workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    /// Tolerations of GPU workers; empty tolerates the `<resourceName>` taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// RuntimeClass of GPU workers (for example `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

impl Default for GpuScheduling {
    fn default() -> Self {
        Self {
            resource_name: default_gpu_resource(),
            node_selector: BTreeMap::new(),
            node_affinity: None,
            tolerations: Vec::new(),
            runtime_class_name: None,
        }
    }
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_string()
}

#[cfg(test)]
mod tests {
    use super::Embedding;
    use serde_json::json;

    #[test]
    fn the_model_ref_names_the_source_and_the_prefixes_given() {
        let embedding = |spec| {
            serde_json::from_value::<Embedding>(spec)
                .unwrap()
                .model_ref()
        };
        assert_eq!(embedding(json!({"device": "cpu"})), "image:/opt/kb/model");
        let on_volume = json!({
            "device": "cuda",
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}, "subPath": "e5"},
            "queryPrefix": "query: ",
        });
        assert_eq!(
            embedding(on_volume),
            "pvc:models/e5 queryPrefix=\"query: \""
        );
        // What does not change the vectors does not count.
        let other =
            json!({"device": "cpu", "maxBatchTokens": 1024, "modelName": "x", "maxSeqLen": 128});
        assert_eq!(embedding(other), "image:/opt/kb/model");
    }
}
