//! A re-index: the chunk texts of one collection embedded again, by another model, into a
//! new collection that takes the old one's name when it has caught up. The job is a log
//! record ([`super::Op::StartReindex`]), so every replica knows it, snapshots carry it, and
//! the worker that runs it resumes it after a restart.

use super::Binding;
use serde::{Deserialize, Serialize};

/// A re-index of `source` into `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReindexJob {
    /// The collection re-indexed; it keeps serving (and taking writes) until the end.
    pub source: String,
    /// The new collection (the job's id), bound to `binding` and created empty.
    pub target: String,
    /// The model of the worker that runs the job, which embeds `target`.
    pub binding: Binding,
    /// The replica that runs the job (`replication.replica_id`, else the pod's name).
    pub owner: String,
    /// When the job was started (Unix seconds).
    pub started: u64,
}
