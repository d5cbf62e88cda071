//! The operator's error type.

use crate::reconcile::build::ChildKind;

/// Everything that can fail in a reconcile. API errors are boxed: they are large and rare.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("applying {kind:?} {name}: {source}")]
    Apply {
        kind: ChildKind,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("deleting {kind:?} {name}: {source}")]
    Delete {
        kind: ChildKind,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("writing status: {0}")]
    Status(#[source] Box<kube::Error>),
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] Box<kube::Error>),
    #[error("{count} children not applied: {summary}")]
    Children { count: usize, summary: String },
    #[error("starting the on-demand backup Job {name}: {source}")]
    BackupJob {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("KnowledgeBase has no {0}")]
    MissingField(&'static str),
    #[error("generating a random secret: {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// Low-cardinality label for the `kb_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Apply { .. } | Error::Children { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::BackupJob { .. } => "backup_job",
            Error::MissingField(_) => "missing_field",
            Error::Random(_) => "random",
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
