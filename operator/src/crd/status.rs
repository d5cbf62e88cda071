//! Observed state of a KnowledgeBase.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

/// What the operator last observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// In-cluster URL of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Label selector of the worker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Completion time of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Time>,
    /// Backups as the backup Jobs (scheduled and on demand) report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The data volumes: the size the spec asks for and what each claim has, while an
    /// expansion is under way and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// The worker image the KnowledgeBase runs (resolved once, kept across operator
    /// upgrades; see `spec.updatePolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_image: Option<String>,
    /// A newer default worker image not moved to yet (`updatePolicy: supervised`, or an
    /// upgrade queued behind others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_worker_image: Option<String>,
    /// The embedding model the stored collections are embedded with, as `spec.embedding`
    /// names it (its source and the prefixes given): the spec's once every worker ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A change of the embedding model under way (docs/operator.md, "Changing the model").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_rollout: Option<ModelRollout>,
}

/// A change of `spec.embedding`'s model: the workers re-index the stored texts for it as
/// they are replaced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRollout {
    /// `status.model` before the change.
    pub from: String,
    /// The model `spec.embedding` names now.
    pub to: String,
    /// `WaitingForCapacity`: no node fits an added worker of the new model yet (`message`
    /// says why; the current workers serve meanwhile); `Reindexing`: no worker of the new
    /// model is ready yet (the first ones re-embed the stored texts while the others
    /// serve); `Replacing`: the new model serves and the remaining workers are being
    /// replaced.
    pub phase: String,
    /// Workers added for the change (`spec.embedding.rollout.maxSurge`; 0: in place).
    #[serde(default)]
    pub surge_replicas: i32,
    /// GPUs the added workers request together (0 on CPU).
    #[serde(default)]
    pub surge_gpus: i32,
    /// Why the phase waits (the scheduler's words for an added worker without a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator first saw the change.
    pub started: Time,
    /// Workers running the new model.
    pub updated_replicas: i32,
    /// Of those, the ready ones.
    pub updated_ready_replicas: i32,
    /// Documents of the collections being re-indexed that the new model's collections
    /// hold already, as the workers running the re-index report them (absent before their
    /// first answer and once the new model serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_done: Option<i64>,
    /// Documents of the collections being re-indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_total: Option<i64>,
    /// When the re-index should end at its pace so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_finish: Option<Time>,
    /// When the workers last reported these figures (refreshed at most every 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_time: Option<Time>,
}

/// Sizes of the data volumes (workers' and managed Redis').
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    /// `spec.storage.size`, canonical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// Every data claim of this KnowledgeBase, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimStatus>,
}

/// One PersistentVolumeClaim: what it asks for and what it has.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatus {
    pub name: String,
    /// `spec.resources.requests.storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// `status.capacity.storage`: the size of the bound volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Where an expansion stands: `Resizing` (the volume is being expanded),
    /// `FileSystemResizePending` (the volume grew; the file system grows when the pod
    /// restarts or the node expands it online), or absent when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<String>,
}

/// What the backup Jobs tell.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Completion time of the newest successful backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// The Job that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// Its backup (`backup-<sequence>-<unix time>`, as `kb-worker backups list` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_name: Option<String>,
    /// The log (Redis stream) sequence that backup covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_sequence: Option<i64>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_bytes: Option<i64>,
    /// Failed backup Jobs since the last success (among the Jobs Kubernetes keeps).
    #[serde(default)]
    pub failures_since_last_success: i32,
    /// When the last failed backup Job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The last `knowledge.dev/backup-now` annotation value a backup Job was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
}

/// The condition types the operator reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Ready,
    Progressing,
    Degraded,
    RedisReady,
    BackupSucceeded,
    UpdateAvailable,
}

impl ConditionType {
    /// The `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::RedisReady => "RedisReady",
            Self::BackupSucceeded => "BackupSucceeded",
            Self::UpdateAvailable => "UpdateAvailable",
        }
    }
}

impl KnowledgeBaseStatus {
    /// The condition of the given type, if reported.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == kind.as_str())
    }
}
