//! The `KnowledgeBase` custom resource (`knowledge.dev/v1alpha1`).
//!
//! The schema carries the validation the API server can enforce (types, ranges, enums and
//! CEL rules); what it cannot express is checked in `reconcile::validate`.

mod autoscaling;
mod backup;
mod embedding;
mod index;
mod limits;
mod monitoring;
mod network;
mod redis;
mod reranker;
mod status;
mod storage;

pub use autoscaling::{Autoscaling, ScalingBehavior, ScalingRules};
pub use backup::{Backup, BackupDestination, Bootstrap, FromBackup, PvcDestination, S3Destination};
pub use embedding::{
    Chunking, Device, Embedding, GpuScheduling, ModelRolloutPolicy, ModelVolume, Precision,
};
pub use index::{CpuScreen, Index, Lexical};
pub use limits::Limits;
pub use monitoring::Monitoring;
pub use network::Network;
pub use redis::{CaSecretRef, ExternalRedis, ManagedRedis, Redis, RedisMode, SecretKeyRef};
pub use reranker::Reranker;
pub use status::{
    BackupStatus, ClaimStatus, ConditionType, KnowledgeBaseStatus, ModelRollout, StorageStatus,
};
pub use storage::{ReclaimPolicy, Storage};

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of the resource.
pub const GROUP: &str = "knowledge.dev";

/// Image the workers run when `spec.image` is not set: the worker built from this release.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/knowledge-dev/kb-worker:",
    env!("CARGO_PKG_VERSION")
);

/// A knowledge base: a fleet of `kb-worker` pods and everything they need.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "knowledge.dev",
    version = "v1alpha1",
    kind = "KnowledgeBase",
    plural = "knowledgebases",
    shortname = "kb",
    namespaced,
    status = "KnowledgeBaseStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Device", type_ = "string", json_path = ".spec.embedding.device"),
    printcolumn(name = "Image", type_ = "string", priority = 1, json_path = ".status.workerImage"),
    printcolumn(name = "Last backup", type_ = "date", json_path = ".status.lastBackup"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters (child names add suffixes)"),
)]
#[x_kube(
    validation = Rule::new("self.replicas <= 1 || has(self.redis)").message("more than one replica requires spec.redis (replicas share the log through Redis)"),
    validation = Rule::new("!has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.maxReplicas <= 1 || has(self.redis)").message("autoscaling beyond one replica requires spec.redis"),
    validation = Rule::new("!has(self.embedding.rollout) || !has(self.embedding.rollout.maxSurge) || self.embedding.rollout.maxSurge == 0 || has(self.redis)").message("embedding.rollout.maxSurge above 0 requires spec.redis (added workers replicate through Redis; set 0 to replace the workers in place)"),
)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseSpec {
    /// Worker image. When absent the operator uses the worker of its own release, chosen
    /// at every reconcile (not stored as a default), so upgrading the operator upgrades the
    /// workers that do not pin an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the worker (and backup) containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Names of Secrets used to pull the worker image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Worker replicas when autoscaling is off.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Horizontal autoscaling; when enabled the HPA owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Embedding model and device.
    pub embedding: Embedding,
    /// A cross-encoder for reranking (`POST /v1/rerank`, the queries' `rerank` option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reranker: Option<Reranker>,
    /// How documents are split into chunks.
    #[serde(default)]
    pub chunking: Chunking,
    /// Per-replica data volume (log and snapshots).
    #[serde(default)]
    pub storage: Storage,
    /// Redis for replication and caching; required for more than one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    /// Query cache in Redis.
    #[serde(default)]
    pub cache: Cache,
    /// Scheduled backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    /// Initial data of a new knowledge base (restore from a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// ServiceMonitor and PrometheusRule for the workers (Prometheus Operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Monitoring>,
    /// API keys.
    #[serde(default)]
    pub auth: Auth,
    /// Request limits and deadlines of the workers' API (unset fields keep the defaults).
    #[serde(default)]
    pub limits: Limits,
    /// How the workers' exact index searches.
    #[serde(default)]
    pub index: Index,
    /// Who may talk to the workers.
    #[serde(default)]
    pub network: Network,
    /// GPU scheduling (used when `embedding.device` is `cuda`).
    #[serde(default)]
    pub gpu: GpuScheduling,
    /// Worker container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the worker pods; replaces the default spread across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra annotations on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra labels on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Stop reconciling children (status still reports).
    #[serde(default)]
    pub paused: bool,
    /// When a KnowledgeBase without `image` moves to the worker image of a newer operator:
    /// `auto` (default) rolls it out (one KnowledgeBase at a time, only when Ready),
    /// `supervised` waits for `knowledge.dev/approve-update: <image>` and reports
    /// `UpdateAvailable`.
    #[serde(default)]
    pub update_policy: UpdatePolicy,
}

/// See [`KnowledgeBaseSpec::update_policy`].
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum UpdatePolicy {
    #[default]
    Auto,
    Supervised,
}

fn default_replicas() -> i32 {
    1
}

/// Container image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Query-result cache (kept in Redis when configured, else in process).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time to live of a cached result.
    #[serde(default = "default_cache_ttl")]
    #[schemars(range(min = 1, max = 604800))]
    pub ttl_seconds: i64,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: default_cache_ttl(),
        }
    }
}

fn default_cache_ttl() -> i64 {
    300
}

pub(crate) fn default_true() -> bool {
    true
}

/// API keys of the workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Secret with `api-keys.yaml` (and `admin-key` for backups). When absent the operator
    /// generates `<name>-api-keys` once and never regenerates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret_ref: Option<String>,
}

impl KnowledgeBaseSpec {
    /// True when autoscaling is enabled.
    /// The worker image: `spec.image`, or [`DEFAULT_IMAGE`] of this operator's release.
    pub fn worker_image(&self) -> String {
        self.image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string())
    }

    pub fn autoscaling_enabled(&self) -> bool {
        self.autoscaling.as_ref().is_some_and(|a| a.enabled)
    }

    /// Workers added for a change of the model (`spec.embedding.rollout.maxSurge`, or its
    /// default: 1 where workers replicate through Redis, else 0).
    pub fn model_surge(&self) -> i32 {
        let explicit = self.embedding.rollout.as_ref().and_then(|r| r.max_surge);
        match explicit {
            Some(surge) => surge.max(0),
            None if self.redis.is_some() => 1,
            None => 0,
        }
    }

    /// True when the worker count can exceed one (PDB and peer traffic matter then).
    pub fn may_run_several(&self) -> bool {
        match &self.autoscaling {
            Some(a) if a.enabled => a.max_replicas > 1,
            _ => self.replicas > 1,
        }
    }
}

/// The CRD as the chart's template: `helm install` and `helm upgrade` apply it (a CRD in a
/// chart's `crds/` folder is installed once and never upgraded, so fields of a newer
/// release would be pruned by the old schema), `helm uninstall` keeps it
/// (`helm.sh/resource-policy: keep`: deleting a CRD deletes every KnowledgeBase), and
/// `crds.install: false` leaves it to another tool.
pub fn chart_template() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = KnowledgeBase::crd();
    crd.metadata.annotations = Some(BTreeMap::from([(
        "helm.sh/resource-policy".to_string(),
        "keep".to_string(),
    )]));
    Ok(format!(
        "{{{{- if .Values.crds.install }}}}\n# Generated by `kb-operator crd --chart`; do not edit.\n{}{{{{- end }}}}\n",
        serde_yaml::to_string(&crd)?
    ))
}
