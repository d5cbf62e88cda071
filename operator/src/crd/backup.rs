//! Scheduled backups.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Scheduled backups of the index through `kb-worker backup`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// Cron schedule (five fields or a macro such as `@daily`).
    #[x_kube(validation = Rule::new(r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9A-Za-z*/,?-]+\\s+){4}[0-9A-Za-z*/,?-]+)$')").message("backup.schedule must be a five-field cron expression or a macro like @daily"))]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Backups kept at the destination.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 1, max = 1000))]
    pub retention: i32,
    /// Where backups go.
    pub destination: BackupDestination,
    /// Suspend the schedule without removing it.
    #[serde(default)]
    pub suspend: bool,
}

fn default_retention() -> i32 {
    7
}

/// Backup target (or, in `bootstrap.fromBackup`, source); exactly one of `pvc`, `s3`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.pvc) != has(self.s3)").message("set exactly one of destination.pvc or destination.s3"))]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// An existing PersistentVolumeClaim, mounted at `/backup`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    pub claim_name: String,
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint of a non-AWS store (for example `https://minio.storage:9000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret_ref: String,
}

impl S3Destination {
    /// The `--to` argument of `kb-worker backup`.
    pub fn url(&self) -> String {
        match self.prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(prefix) if !prefix.is_empty() => format!("s3://{}/{}", self.bucket, prefix),
            _ => format!("s3://{}", self.bucket),
        }
    }
}

/// How a new knowledge base gets its first data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// Restore a backup (usually another knowledge base's) before the workers start.
    pub from_backup: FromBackup,
}

/// A backup to restore: every worker whose volume is empty restores it in an init
/// container, then continues from it (a replicated knowledge base starts its own Redis
/// stream after the backup's sequence). Volumes that hold data are left alone, so the
/// restore happens once per volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    /// Where the backups are, as in `backup.destination`.
    pub destination: BackupDestination,
    /// One backup (`backup-<sequence>-<unix time>`, see `kb-worker backups list`); the
    /// newest complete one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^backup-[0-9]+-[0-9]+$"))]
    pub backup_name: Option<String>,
}

impl FromBackup {
    /// The `--from` argument of `kb-worker restore`, with a PVC mounted at `dir`.
    pub fn source(&self, dir: &str) -> String {
        let base = match &self.destination.s3 {
            Some(s3) => s3.url(),
            None => dir.to_string(),
        };
        match (&self.backup_name, self.destination.s3.is_some()) {
            (Some(name), true) => format!("{base}/{name}"),
            (Some(name), false) => format!("{base}/{name}.kbsnap"),
            (None, _) => base,
        }
    }
}
