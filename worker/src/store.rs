//! The worker's durable state: the log, the index built from it, and snapshots.
//!
//! Writes are serialised and validate-then-commit: everything that can reject a write
//! (collection, dimension, metric, device capacity) is checked against the index before
//! the record is appended to the log (durable); then it is applied. An apply that still
//! fails after the append is a bug or a lost device: the store stops taking writes
//! ([`Store::halted`], 503 and readiness false) instead of acknowledging a write the index
//! does not hold. Every `snapshot.every_records` records a snapshot is written and the log
//! truncated below it; a failed snapshot is retried with exponential backoff.
//!
//! Start-up loads the newest valid snapshot and replays the log after it, and refuses to
//! start when records between the two are missing (it names the range and the way out).

use crate::index::{Index, IndexError, Placement};
use crate::log::wal::FileWal;
use crate::log::{Log, LogError, Op, Record, Seq};
use crate::snapshot::{self, SnapshotError};
use crate::stages::{self, Stage};
use kb_config::WorkerConfig;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait after a failed automatic snapshot; doubles per failure up to the maximum.
const SNAPSHOT_BACKOFF: Duration = Duration::from_secs(1);
const SNAPSHOT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("replicated log out of order: applied {applied}, next record {next}")]
    Gap { applied: Seq, next: Seq },
    #[error("this store replicates through Redis; write through the replicator")]
    Replicated,
    #[error("writes are stopped: {0}")]
    Halted(String),
    #[error("record {seq} cannot be applied on this worker: {source}")]
    Apply { seq: Seq, source: IndexError },
    #[error("cannot recover the data directory: {0}")]
    Recovery(String),
}

impl StoreError {
    /// What a client may read: the cause without file paths or library internals (the
    /// full error goes to the log).
    pub fn public_message(&self) -> String {
        match self {
            StoreError::Log(e) => e.public_message(),
            StoreError::Snapshot(SnapshotError::Io { source, .. }) => {
                crate::log::io_public_message(source)
            }
            StoreError::Snapshot(_) => "the snapshot could not be written".into(),
            StoreError::Index(e @ IndexError::Capacity(_)) => e.to_string(),
            StoreError::Index(e) if e.is_resource() => {
                "the index could not take the write (device or memory error)".into()
            }
            StoreError::Apply { seq, .. } => {
                format!("record {seq} could not be applied (device or memory error)")
            }
            other => other.to_string(),
        }
    }
}

/// What start-up found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub snapshot_seq: Option<Seq>,
    pub replayed: usize,
    pub wal_truncated_bytes: u64,
    /// Temporary snapshot files a crash left behind, removed.
    pub stale_temporary_files: usize,
}

/// Health of the store, for `/readyz` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreHealth {
    /// Why writes are stopped, if they are.
    pub halted: Option<String>,
    /// Consecutive failed automatic snapshots.
    pub snapshot_failures: u32,
}

/// Log + index + snapshots. See the module docs.
pub struct Store {
    index: RwLock<Index>,
    /// [`IndexView`] of `index`, replaced under the write lock after every change.
    view: Mutex<Arc<IndexView>>,
    /// The local WAL in single-node mode; `None` when Redis holds the log.
    log: Option<FileWal>,
    snapshots_dir: PathBuf,
    every_records: u64,
    keep: usize,
    /// Serialises writers.
    writer: Mutex<Writer>,
    /// Why writes are stopped (an apply failed after the append); `None` while healthy.
    halted: Mutex<Option<String>>,
    /// The automatic snapshot write in flight, if any, and its outcome.
    background: Mutex<Option<snapshots::SnapshotJob>>,
    /// The last snapshot written (automatic or for a download).
    last_snapshot: Mutex<Option<SnapshotWritten>>,
    /// `Writer::snapshot_failures`, readable without waiting for a write in progress.
    snapshot_failures: AtomicU32,
    /// Snapshots being written for a download ([`Store::snapshot_file`]); automatic ones
    /// wait while any is.
    on_demand: AtomicU32,
}

/// The first record after `applied` must be `applied + 1`: anything else means records
/// are missing between the snapshot and the log.
fn check_continuity(applied: Seq, first_in_log: Option<Seq>) -> Result<(), StoreError> {
    let Some(first) = first_in_log.filter(|&first| first > applied + 1) else {
        return Ok(());
    };
    let found = if applied == 0 {
        "no valid snapshot was found".to_string()
    } else {
        format!("the newest valid snapshot covers records up to {applied}")
    };
    Err(StoreError::Recovery(format!(
        "{found} but the write-ahead log continues at {first}: records {}..={} are missing \
         (a snapshot was damaged or removed). Restore a backup into an empty data directory \
         (`kb-worker restore --from BACKUP --data-dir DIR`) or, in replicated mode, start \
         this replica with an empty data volume so that it bootstraps from a peer.",
        applied + 1,
        first - 1
    )))
}

impl Store {
    /// Opens the data directory: newest valid snapshot, then the WAL after it.
    pub fn open(
        data_dir: &Path,
        cfg: &WorkerConfig,
        device: impl Into<Placement>,
    ) -> Result<(Self, Recovery), StoreError> {
        let device = device.into();
        let snapshots_dir = data_dir.join("snapshots");
        let stale = snapshot::clean_temporary(&snapshots_dir)?;
        let mut index = snapshot::load_newest(&snapshots_dir, device.clone())?
            .unwrap_or_else(|| Index::new(device));
        let snapshot_seq = (index.applied() > 0).then_some(index.applied());
        let (log, report) = FileWal::open(&data_dir.join("wal"), cfg.log.fsync, index.applied())?;
        check_continuity(index.applied(), log.first_seq())?;
        // One record at a time: replaying needs no room for the log.
        let replayed = log.replay_after(index.applied(), |record| {
            // A record whose rows no longer fit (the pod's memory limit was lowered, say)
            // stops the start with the reason, rather than an out-of-memory kill on
            // every restart.
            if let Op::Upsert {
                collection, chunks, ..
            } = &record.op
            {
                if let Some(Err(e)) = index.get(collection).map(|c| c.check_growth(chunks.len())) {
                    return Err(StoreError::Apply {
                        seq: record.seq,
                        source: e,
                    });
                }
            }
            match index.apply(&record) {
                Ok(()) => Ok(()),
                // Resource failures would leave a partial index: refuse to serve one.
                Err(e) if e.is_resource() => Err(StoreError::Apply {
                    seq: record.seq,
                    source: e,
                }),
                // Deterministic: it was a no-op when first applied too (older versions
                // logged such records); the index is the same as before the restart.
                Err(e) => {
                    tracing::warn!(seq = record.seq, error = %e, "log record applies as a no-op");
                    Ok(())
                }
            }
        })?;
        let recovery = Recovery {
            snapshot_seq,
            replayed: replayed as usize,
            wal_truncated_bytes: report.truncated_bytes,
            stale_temporary_files: stale,
        };
        let store = Self {
            view: Mutex::new(Arc::new(IndexView::of(&index))),
            index: RwLock::new(index),
            log: Some(log),
            snapshots_dir,
            every_records: cfg.snapshot.every_records,
            keep: cfg.snapshot.keep,
            writer: Mutex::new(Writer {
                since_snapshot: replayed,
                ..Writer::default()
            }),
            halted: Mutex::new(None),
            background: Mutex::new(None),
            snapshot_failures: AtomicU32::new(0),
            on_demand: AtomicU32::new(0),
            last_snapshot: Mutex::new(None),
        };
        Ok((store, recovery))
    }

    /// Opens the data directory of a replica: the newest valid snapshot only; the records
    /// after it come from the replicated log through [`Store::apply_replicated`].
    pub fn open_replicated(
        data_dir: &Path,
        cfg: &WorkerConfig,
        device: impl Into<Placement>,
    ) -> Result<Self, StoreError> {
        let device = device.into();
        let snapshots_dir = data_dir.join("snapshots");
        snapshot::clean_temporary(&snapshots_dir)?;
        let index = snapshot::load_newest(&snapshots_dir, device.clone())?
            .unwrap_or_else(|| Index::new(device));
        Ok(Self {
            view: Mutex::new(Arc::new(IndexView::of(&index))),
            index: RwLock::new(index),
            log: None,
            snapshots_dir,
            every_records: cfg.snapshot.every_records,
            keep: cfg.snapshot.keep,
            writer: Mutex::new(Writer::default()),
            halted: Mutex::new(None),
            background: Mutex::new(None),
            snapshot_failures: AtomicU32::new(0),
            on_demand: AtomicU32::new(0),
            last_snapshot: Mutex::new(None),
        })
    }

    /// Applies records of the replicated log in order: records at or below the applied
    /// sequence are skipped (a re-read after reconnecting), a gap is an error. A record
    /// that this worker's resources cannot take stops the batch there with
    /// [`StoreError::Apply`] (the applied sequence stays before it, so the caller can
    /// retry); one that applies as a no-op on every replica is logged and passed.
    /// Returns the applied sequence. Snapshots every `snapshot.every_records` records.
    pub fn apply_replicated(&self, records: &[Record]) -> Result<Seq, StoreError> {
        let mut writer = self.writer.lock();
        let mut applied_now = 0u64;
        let outcome = {
            let mut index = self.index_for_write();
            let mut outcome = Ok(());
            for record in records {
                let applied = index.applied();
                if record.seq <= applied {
                    continue;
                }
                if record.seq != applied + 1 {
                    outcome = Err(StoreError::Gap {
                        applied,
                        next: record.seq,
                    });
                    break;
                }
                match index.apply(record) {
                    Ok(()) => {}
                    Err(e) if e.is_resource() => {
                        outcome = Err(StoreError::Apply {
                            seq: record.seq,
                            source: e,
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(seq = record.seq, error = %e, "replicated record applies as a no-op on every replica")
                    }
                }
                applied_now += 1;
            }
            self.publish(&index);
            outcome.map(|()| index.applied())
        };
        writer.since_snapshot += applied_now;
        if writer.snapshot_due(self.every_records) && self.snapshot_in_background(&mut writer) {
            writer.since_snapshot = 0;
        }
        self.snapshot_failures
            .store(writer.snapshot_failures, Ordering::Relaxed);
        outcome
    }

    /// The index's write lock for applying records: the wait for it is timed as
    /// [`Stage::IndexLockWait`], the time it is held as [`Stage::Apply`].
    fn index_for_write(&self) -> TimedWrite<'_> {
        let asked = Instant::now();
        let guard = self.index.write();
        let acquired = Instant::now();
        stages::observe(Stage::IndexLockWait, acquired - asked);
        TimedWrite { guard, acquired }
    }

    /// Read access to the index. Blocks while a write applies: async handlers use
    /// [`Store::view`] instead, searches and applies run on blocking threads.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// Holds the index's write lock, as a long apply would (tests of what must not wait).
    #[cfg(test)]
    pub(crate) fn hold_index(&self) -> parking_lot::RwLockWriteGuard<'_, Index> {
        self.index.write()
    }

    /// The index's summary as of its last write; never waits for the index lock.
    pub fn view(&self) -> Arc<IndexView> {
        Arc::clone(&self.view.lock())
    }

    /// Republishes the view; called with the write lock held, after a change.
    fn publish(&self, index: &Index) {
        *self.view.lock() = Arc::new(IndexView::of(index));
    }

    /// The last durable sequence of the local WAL (the applied one for a replica).
    pub fn last_seq(&self) -> Seq {
        match &self.log {
            Some(log) => log.last_seq(),
            None => self.index().applied(),
        }
    }

    /// The data directory (the volume the WAL and snapshots live on).
    pub fn data_dir(&self) -> &Path {
        self.snapshots_dir.parent().unwrap_or(&self.snapshots_dir)
    }

    /// Why writes are stopped, and how snapshots fare.
    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            halted: self.halted.lock().clone(),
            snapshot_failures: self.snapshot_failures.load(Ordering::Relaxed),
        }
    }

    /// The last snapshot written since the start (automatic or for a download).
    pub fn last_snapshot(&self) -> Option<SnapshotWritten> {
        *self.last_snapshot.lock()
    }

    /// Whether the store takes writes: not halted, and its log not poisoned.
    pub fn halted(&self) -> Option<String> {
        if let Some(reason) = self.halted.lock().clone() {
            return Some(reason);
        }
        self.log.as_ref().and_then(FileWal::poisoned)
    }

    fn halt(&self, reason: String) {
        tracing::error!(%reason, "writes stopped: the log holds a record the index could not apply; restart the worker to replay it");
        self.halted.lock().get_or_insert(reason);
    }

    /// Checks, logs durably and applies `ops`; returns the sequence of the last one.
    /// Nothing reaches the log when any op would fail to apply; an apply that fails anyway
    /// halts the store (see the module docs) and the write is not acknowledged.
    pub fn write(&self, ops: Vec<Op>) -> Result<Seq, StoreError> {
        let log = self.log.as_ref().ok_or(StoreError::Replicated)?;
        let mut writer = self.writer.lock();
        if let Some(reason) = self.halted.lock().clone() {
            return Err(StoreError::Halted(reason));
        }
        self.index().check_batch(&ops)?;
        let records = log.append(ops)?;
        let last = records.last().map_or(log.last_seq(), |r| r.seq);
        self.apply_logged(&records)?;
        writer.since_snapshot += records.len() as u64;
        // Automatic snapshots are written on a background thread (the index is frozen
        // here, nothing copied): no write waits for one. The log is truncated once one
        // has succeeded, when a later write finds it finished.
        let idle = {
            let mut running = self.background.lock();
            !matches!(
                self.reap(&mut running, &mut writer, false),
                snapshots::Reaped::Running
            )
        };
        if idle
            && writer.snapshot_due(self.every_records)
            && self.snapshot_in_background(&mut writer)
        {
            writer.since_snapshot = 0;
        }
        self.snapshot_failures
            .store(writer.snapshot_failures, Ordering::Relaxed);
        Ok(last)
    }

    /// Applies records that are already in the log; any failure (or panic) halts.
    fn apply_logged(&self, records: &[Record]) -> Result<(), StoreError> {
        let failure = {
            let mut index = self.index_for_write();
            let apply = std::panic::AssertUnwindSafe(|| {
                for record in records {
                    if let Err(e) = index.apply(record) {
                        tracing::error!(seq = record.seq, error = %e, "a logged record failed to apply");
                        let cause = match &e {
                            IndexError::Capacity(m) => format!("not enough memory: {m}"),
                            e if e.is_resource() => "device or memory error".into(),
                            _ => "it contradicts the index (a bug: please report it)".into(),
                        };
                        return Some(format!(
                            "record {} is in the log but could not be applied to the index \
                             ({cause}); restart the worker to replay it",
                            record.seq
                        ));
                    }
                }
                None
            });
            let failure = std::panic::catch_unwind(apply)
                .unwrap_or_else(|_| Some("applying a logged record panicked".into()));
            self.publish(&index);
            failure
        };
        match failure {
            None => Ok(()),
            Some(reason) => {
                self.halt(reason.clone());
                Err(StoreError::Halted(reason))
            }
        }
    }
}

mod snapshots;
#[cfg(test)]
mod tests;
mod view;
mod writer;
pub use snapshots::SnapshotWritten;
pub use view::{CollectionView, IndexView};
use writer::Writer;

/// The index's write lock, timed while held (see [`Store::index_for_write`]).
struct TimedWrite<'a> {
    guard: parking_lot::RwLockWriteGuard<'a, Index>,
    acquired: Instant,
}

impl std::ops::Deref for TimedWrite<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.guard
    }
}

impl std::ops::DerefMut for TimedWrite<'_> {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.guard
    }
}

impl Drop for TimedWrite<'_> {
    fn drop(&mut self) {
        stages::observe(Stage::Apply, self.acquired.elapsed());
    }
}
