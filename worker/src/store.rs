//! The worker's durable state: the log, the index built from it, and snapshots.
//!
//! Writes are serialised: check against the index, append to the log (durable), apply to
//! the index, and every `snapshot.every_records` records write a snapshot and truncate the
//! log below it. Start-up loads the newest valid snapshot and replays the log after it.

use crate::index::{Index, IndexError, Placement};
use crate::log::wal::FileWal;
use crate::log::{Log, LogError, Op, Record, Seq};
use crate::snapshot::{self, SnapshotError};
use kb_config::WorkerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

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
}

/// What start-up found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub snapshot_seq: Option<Seq>,
    pub replayed: usize,
    pub wal_truncated_bytes: u64,
}

/// Log + index + snapshots. See the module docs.
pub struct Store {
    index: RwLock<Index>,
    /// The local WAL in single-node mode; `None` when Redis holds the log.
    log: Option<FileWal>,
    snapshots_dir: PathBuf,
    every_records: u64,
    keep: usize,
    /// Serialises writers; holds the number of records since the last snapshot.
    writer: Mutex<u64>,
    /// The replica's snapshot write in flight, if any.
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        let mut index = snapshot::load_newest(&snapshots_dir, device.clone())?
            .unwrap_or_else(|| Index::new(device));
        let snapshot_seq = (index.applied() > 0).then_some(index.applied());
        let (log, report) = FileWal::open(&data_dir.join("wal"), cfg.log.fsync, index.applied())?;
        let records = log.read_after(index.applied())?;
        for record in &records {
            if let Err(e) = index.apply(record) {
                tracing::error!(seq = record.seq, error = %e, "log record could not be applied");
            }
        }
        let recovery = Recovery {
            snapshot_seq,
            replayed: records.len(),
            wal_truncated_bytes: report.truncated_bytes,
        };
        let store = Self {
            index: RwLock::new(index),
            log: Some(log),
            snapshots_dir,
            every_records: cfg.snapshot.every_records,
            keep: cfg.snapshot.keep,
            writer: Mutex::new(records.len() as u64),
            background: Mutex::new(None),
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
        let index = snapshot::load_newest(&snapshots_dir, device.clone())?
            .unwrap_or_else(|| Index::new(device));
        Ok(Self {
            index: RwLock::new(index),
            log: None,
            snapshots_dir,
            every_records: cfg.snapshot.every_records,
            keep: cfg.snapshot.keep,
            writer: Mutex::new(0),
            background: Mutex::new(None),
        })
    }

    /// Applies records of the replicated log in order: records at or below the applied
    /// sequence are skipped (a re-read after reconnecting), a gap is an error. Returns the
    /// applied sequence. Snapshots every `snapshot.every_records` records.
    pub fn apply_replicated(&self, records: &[Record]) -> Result<Seq, StoreError> {
        let mut since_snapshot = self.writer.lock().expect("writer lock");
        let mut applied_now = 0u64;
        let applied = {
            let mut index = self.index.write().expect("index lock");
            for record in records {
                let applied = index.applied();
                if record.seq <= applied {
                    continue;
                }
                if record.seq != applied + 1 {
                    return Err(StoreError::Gap {
                        applied,
                        next: record.seq,
                    });
                }
                if let Err(e) = index.apply(record) {
                    // Every replica applies the same records, so every replica skips it.
                    tracing::warn!(seq = record.seq, error = %e, "replicated record not applicable; skipped");
                }
                applied_now += 1;
            }
            index.applied()
        };
        *since_snapshot += applied_now;
        if self.every_records > 0
            && *since_snapshot >= self.every_records
            && self.snapshot_in_background()
        {
            *since_snapshot = 0;
        }
        Ok(applied)
    }

    /// Freezes the index (under the read lock; the caller holds the writer lock so it
    /// cannot move; nothing is copied) and exports, encodes and writes the snapshot on a
    /// background thread, so that
    /// applying the stream does not wait for the disk. At most one such write runs at a
    /// time; returns false when one is still running (the caller tries again later).
    fn snapshot_in_background(&self) -> bool {
        let mut running = self.background.lock().expect("background lock");
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return false;
        }
        let capture = snapshot::Capture::of(&self.index());
        let (dir, keep) = (self.snapshots_dir.clone(), self.keep);
        let spawned = std::thread::Builder::new()
            .name("kb-snapshot".into())
            .spawn(move || match capture.save(&dir, keep) {
                Ok(path) => {
                    tracing::info!(seq = capture.seq(), snapshot = %path.display(), "snapshot written")
                }
                Err(e) => tracing::error!(error = %e, "automatic snapshot failed"),
            });
        match spawned {
            Ok(handle) => {
                *running = Some(handle);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the snapshot thread");
                false
            }
        }
    }

    /// Waits for a background snapshot write to finish (clean shutdown, tests).
    pub fn wait_for_background_snapshot(&self) {
        let handle = self.background.lock().expect("background lock").take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// The sequence of the oldest snapshot kept on disk (0 when there is none): the
    /// replicated log must keep every record after it.
    pub fn oldest_snapshot_seq(&self) -> Seq {
        snapshot::list(&self.snapshots_dir)
            .ok()
            .and_then(|l| l.last().map(|(s, _)| *s))
            .unwrap_or(0)
    }

    /// Read access to the index.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    /// The last durable sequence of the local WAL (the applied one for a replica).
    pub fn last_seq(&self) -> Seq {
        match &self.log {
            Some(log) => log.last_seq(),
            None => self.index().applied(),
        }
    }

    /// Checks, logs durably and applies `ops`; returns the sequence of the last one.
    /// Nothing reaches the log when any op would fail to apply.
    pub fn write(&self, ops: Vec<Op>) -> Result<Seq, StoreError> {
        let log = self.log.as_ref().ok_or(StoreError::Replicated)?;
        let mut since_snapshot = self.writer.lock().expect("writer lock");
        self.index().check_batch(&ops)?;
        let records = log.append(ops)?;
        let last = records.last().map_or(log.last_seq(), |r| r.seq);
        {
            let mut index = self.index.write().expect("index lock");
            for record in &records {
                if let Err(e) = index.apply(record) {
                    tracing::error!(seq = record.seq, error = %e, "checked record failed to apply");
                }
            }
        }
        *since_snapshot += records.len() as u64;
        if self.every_records > 0 && *since_snapshot >= self.every_records {
            match self.snapshot_locked() {
                Ok(_) => *since_snapshot = 0,
                Err(e) => tracing::error!(error = %e, "automatic snapshot failed"),
            }
        }
        Ok(last)
    }

    /// Writes a snapshot now and truncates the log below it; returns its path.
    pub fn snapshot(&self) -> Result<PathBuf, StoreError> {
        let mut since_snapshot = self.writer.lock().expect("writer lock");
        let path = self.snapshot_locked()?;
        *since_snapshot = 0;
        Ok(path)
    }

    /// Caller holds the writer lock, so the index cannot move past the snapshot.
    fn snapshot_locked(&self) -> Result<PathBuf, StoreError> {
        let (path, seq) = {
            let index = self.index();
            (
                snapshot::save(&index, &self.snapshots_dir, self.keep)?,
                index.applied(),
            )
        };
        // Keep the log back to the oldest retained snapshot so a fallback can replay.
        let oldest = snapshot::list(&self.snapshots_dir)?
            .last()
            .map_or(seq, |(s, _)| *s);
        if let Some(log) = &self.log {
            log.truncate_before(oldest)?;
        }
        tracing::info!(seq, snapshot = %path.display(), "snapshot written");
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::filter::Filter;
    use crate::log::{ChunkRecord, Metadata, Metric};
    use tch::Device;

    fn upsert(doc: &str, v: Vec<f32>) -> Op {
        Op::Upsert {
            collection: "c".into(),
            doc_id: doc.into(),
            chunks: vec![ChunkRecord {
                chunk_id: format!("{doc}#0"),
                text: doc.into(),
                metadata: Metadata::new(),
                vector: v,
            }],
        }
    }

    fn create() -> Op {
        Op::CreateCollection {
            collection: "c".into(),
            dim: 2,
            metric: Metric::Dot,
        }
    }

    fn cfg(every: u64) -> WorkerConfig {
        let mut cfg = WorkerConfig::default();
        cfg.snapshot.every_records = every;
        cfg
    }

    fn docs(store: &Store) -> usize {
        store.index().get("c").map_or(0, |c| c.stats().documents)
    }

    #[test]
    fn writes_survive_reopen_through_snapshot_and_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), &cfg(3), Device::Cpu).unwrap();
            store
                .write(vec![create(), upsert("a", vec![1.0, 0.0])])
                .unwrap();
            store.write(vec![upsert("b", vec![0.0, 1.0])]).unwrap(); // snapshot at 3
            store.write(vec![upsert("c", vec![1.0, 1.0])]).unwrap(); // only in the log
        }
        let (store, recovery) = Store::open(dir.path(), &cfg(3), Device::Cpu).unwrap();
        assert_eq!(recovery.snapshot_seq, Some(3));
        assert_eq!(recovery.replayed, 1);
        assert_eq!(docs(&store), 3);
        assert_eq!(store.last_seq(), 4);
        let hits = &store
            .index()
            .get("c")
            .unwrap()
            .search(&[vec![1.0, 1.0]], 1, &Filter::default())
            .unwrap()[0];
        assert_eq!(hits[0].row.doc_id, "c");
    }

    #[test]
    fn a_failing_op_leaves_log_and_index_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
        store.write(vec![create()]).unwrap();
        let err = store.write(vec![upsert("a", vec![1.0, 0.0]), upsert("b", vec![1.0])]);
        assert!(matches!(
            err,
            Err(StoreError::Index(IndexError::Dimension { .. }))
        ));
        assert_eq!(store.last_seq(), 1);
        assert_eq!(docs(&store), 0);
    }

    #[test]
    fn upsert_into_a_collection_created_in_the_same_batch_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
        assert_eq!(
            store
                .write(vec![create(), upsert("a", vec![1.0, 0.0])])
                .unwrap(),
            2
        );
        assert_eq!(docs(&store), 1);
    }

    #[test]
    fn a_replica_snapshots_in_the_background_at_a_consistent_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_replicated(dir.path(), &cfg(3), Device::Cpu).unwrap();
        let records: Vec<Record> = std::iter::once(create())
            .chain((0..4).map(|i| upsert(&format!("d{i}"), vec![i as f32, 1.0])))
            .enumerate()
            .map(|(i, op)| Record {
                seq: i as Seq + 1,
                op,
            })
            .collect();
        assert_eq!(store.apply_replicated(&records[..3]).unwrap(), 3);
        store.wait_for_background_snapshot();
        assert_eq!(store.oldest_snapshot_seq(), 3);
        assert_eq!(store.apply_replicated(&records[3..]).unwrap(), 5);
        store.wait_for_background_snapshot();
        // The snapshot holds exactly the first three records: it reloads to sequence 3
        // with the two documents upserted by then.
        let reopened = Store::open_replicated(dir.path(), &cfg(3), Device::Cpu).unwrap();
        assert_eq!(reopened.index().applied(), 3);
        assert_eq!(docs(&reopened), 2);
    }
}
