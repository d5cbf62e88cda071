//! The per-replica data volume.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Data volume of each worker (log and snapshots). Volumes grow in place (the operator
/// expands each existing claim when `size` is raised; the StorageClass must allow volume
/// expansion); they never shrink, and their class never changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0").message("storage.size cannot shrink: volumes only grow (create a new KnowledgeBase from a backup to move to smaller volumes)"),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName cannot change: existing volumes keep their class (restore a backup into a new KnowledgeBase to move)"),
)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each replica's volume. Raising it expands the existing volumes in place.
    #[serde(default = "default_size")]
    pub size: Quantity,
    /// StorageClass (cluster default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the volumes when the KnowledgeBase is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            size: default_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

fn default_size() -> Quantity {
    Quantity("10Gi".to_string())
}

/// Fate of the data volumes on deletion.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ReclaimPolicy {
    /// Keep the PersistentVolumeClaims.
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaims.
    Delete,
}

impl ReclaimPolicy {
    /// The StatefulSet `persistentVolumeClaimRetentionPolicy` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "Retain",
            Self::Delete => "Delete",
        }
    }
}
