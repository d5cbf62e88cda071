//! What a worker's metrics port answers at [`JOBS_PATH`]: the re-index jobs it knows and
//! their progress. The operator reads it for `status.modelRollout` while a model change
//! re-indexes; its fields are a subset of the API's `GET /v1/jobs` answer, with the same
//! names and values (the worker builds both from one description of each job).

use serde::{Deserialize, Serialize};

/// The path on the metrics port (no API key: the port is for the cluster's own agents).
pub const JOBS_PATH: &str = "/jobs";

/// The re-index jobs a worker knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsProgress {
    pub jobs: Vec<JobProgress>,
}

/// One re-index job as one worker sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The job's id (its target collection).
    pub id: String,
    /// Documents of the source collection.
    pub documents_total: u64,
    /// Documents of the source the target holds as they are.
    pub documents_done: u64,
    /// Seconds left at the pace of the worker that runs the job (absent on the others, and
    /// before its first batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}
