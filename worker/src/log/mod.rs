//! The write-ahead log: every change to the index is a [`Record`] appended here first.
//!
//! A write is acknowledged only once its record is durable in the log; the index is a
//! deterministic function of the log, so replaying it from the last snapshot rebuilds the
//! exact state. [`wal::FileWal`] is the single-node implementation.

pub mod binding;
pub mod job;
pub mod redis;
pub mod wal;

pub use binding::{Binding, ModelIdentity};
pub use job::ReindexJob;

use serde::{Deserialize, Serialize};

/// Monotonic position of a record in the log; the first record has sequence 1.
pub type Seq = u64;

/// Metadata of a chunk: a flat JSON object (values are strings, numbers or booleans).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Similarity used by a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity: vectors are L2-normalised on insert and on query.
    #[default]
    Cosine,
    /// Raw inner product.
    Dot,
}

/// One embedded chunk as it travels through the log (vectors included, so replicas never
/// embed again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub chunk_id: String,
    pub text: String,
    #[serde(with = "metadata_as_json_text")]
    pub metadata: Metadata,
    pub vector: Vec<f32>,
}

/// Metadata travels as JSON text: the record encoding ([`crate::format`]) is not
/// self-describing, so it cannot decode untyped JSON values (`deserialize_any`).
mod metadata_as_json_text {
    use super::Metadata;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Metadata, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(m).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// A change to the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Creates the collection if absent (no-op when it exists with the same shape).
    CreateCollection {
        collection: String,
        dim: usize,
        metric: Metric,
    },
    /// Replaces every chunk of `doc_id` with `chunks`.
    Upsert {
        collection: String,
        doc_id: String,
        chunks: Vec<ChunkRecord>,
    },
    /// Removes every chunk of `doc_id`.
    Delete { collection: String, doc_id: String },
    /// Removes the collection and all its chunks.
    DropCollection { collection: String },
    /// Removes every document whose metadata matches `filter` (the JSON text of a
    /// [`crate::index::filter::Filter`]) when the record is applied: every replica
    /// evaluates it against the same state, after every earlier record.
    DeleteMatching { collection: String, filter: String },
    // New variants go last: records are encoded with the variant's index.
    /// Records where the collection's vectors come from. The first binding of a
    /// collection holds; a different one applies as a no-op (see [`Binding`]).
    BindCollection {
        collection: String,
        binding: Binding,
    },
    /// Points `alias` at `collection`, replacing where it pointed: every replica swaps at
    /// the same record.
    SetAlias { alias: String, collection: String },
    /// Removes `alias`.
    DeleteAlias { alias: String },
    /// Starts re-indexing `job.source` into `job.target`, which it creates empty, bound
    /// to `job.binding`, with the source's metric.
    StartReindex { job: ReindexJob },
    /// Ends the re-index into `target` if `target` holds the same documents (ids, chunk
    /// texts and metadata) as its source: the source is dropped, its name becomes an
    /// alias of `target`, and its aliases point at `target`. Otherwise a no-op (writes
    /// arrived since the job's last pass), and the job goes on.
    FinishReindex { target: String },
    /// Stops the re-index into `target` and drops `target`; the source is untouched.
    CancelReindex { target: String },
}

impl Op {
    /// The collection this op changes (the alias, for alias ops).
    pub fn collection(&self) -> &str {
        match self {
            Op::CreateCollection { collection, .. }
            | Op::Upsert { collection, .. }
            | Op::Delete { collection, .. }
            | Op::DropCollection { collection }
            | Op::DeleteMatching { collection, .. }
            | Op::BindCollection { collection, .. } => collection,
            Op::SetAlias { alias, .. } | Op::DeleteAlias { alias } => alias,
            Op::StartReindex { job } => &job.target,
            Op::FinishReindex { target } | Op::CancelReindex { target } => target,
        }
    }
}

/// An [`Op`] with its position in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: Seq,
    pub op: Op,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("log record encoding failed: {0}")]
    Encode(String),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
    #[error("the write-ahead log stopped accepting writes: {0}")]
    Poisoned(String),
}

impl LogError {
    /// What a client may read: the cause without file paths (the full error is logged).
    pub fn public_message(&self) -> String {
        match self {
            LogError::Io { source, .. } => io_public_message(source),
            LogError::Encode(_) => "the record could not be encoded".into(),
            LogError::Corrupt(_) => "the write-ahead log is damaged; see the worker log".into(),
            LogError::Poisoned(reason) => {
                format!("the write-ahead log stopped accepting writes: {reason}")
            }
        }
    }
}

/// An I/O failure on the data volume, in words a client can act on, without paths.
pub fn io_public_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::StorageFull => "no space left on the data volume".into(),
        std::io::ErrorKind::QuotaExceeded => "disk quota exceeded on the data volume".into(),
        std::io::ErrorKind::ReadOnlyFilesystem => "the data volume is read-only".into(),
        kind => format!("I/O error on the data volume ({kind})"),
    }
}

/// An append-only, ordered, durable sequence of records.
pub trait Log: Send + Sync {
    /// Appends the ops in order and returns their records once they are durable.
    fn append(&self, ops: Vec<Op>) -> Result<Vec<Record>, LogError>;
    /// Every record with `seq > after`, in order.
    fn read_after(&self, after: Seq) -> Result<Vec<Record>, LogError>;
    /// The sequence of the last appended record (0 when empty).
    fn last_seq(&self) -> Seq;
    /// Drops records with `seq <= upto` that a snapshot has made redundant.
    fn truncate_before(&self, upto: Seq) -> Result<(), LogError>;
}
