//! Replicated mode: writes are appended to the knowledge base's Redis stream; every replica
//! (the writer included) tails the stream and applies it in order to its local store.
//!
//! A new replica with an empty volume first downloads a snapshot from a ready peer, checks
//! it, and replays the stream after the snapshot's sequence. Replicas register their oldest
//! snapshot sequence with a TTL; the stream is trimmed only below the oldest of them.
//!
//! Redis can go back in time: a failover to a replica that missed the last writes, a lost
//! volume, `FLUSHALL` or an evicted counter. Numbering writes from there would reuse
//! sequences replicas already applied, so every append carries the writer's floor and
//! epoch and Redis refuses it (see [`crate::log::redis::Regression`]); the heartbeat
//! notices the same from the counter and the epoch. A regressed replica refuses writes
//! (503 with the reason), stops applying, and reports it in `/readyz` and
//! `kb_worker_replication_regressed`. The most advanced live replica then re-seeds the
//! stream after its own sequence in a new epoch; replicas at that sequence continue in
//! it, replicas behind it or with other records need a peer snapshot (restart them: at
//! start a replica whose data the stream does not continue installs a peer's snapshot). Records are applied a whole batch at a time: readers and
//! snapshots never see part of a multi-record write.

use crate::index::IndexError;
use crate::log::redis::{Entry, Guard, RedisLog, RedisLogError};
use crate::log::{Op, Seq};
use crate::store::Store;
use kb_config::ReplicationConfig;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Records read from the stream per round trip.
const READ_BATCH: u64 = 512;
/// How long one `XREAD` waits for new records.
const TAIL_BLOCK: Duration = Duration::from_millis(500);
/// Heartbeat period; a registration lives for four periods.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a regressed replica waits before re-seeding: one registration lifetime, so
/// every live replica has registered what it applied since Redis went back.
const RESEED_AFTER: Duration = Duration::from_secs(8);

/// Errors of replicated writes and waits.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Redis(#[from] RedisLogError),
    #[error("logged at sequence {seq} but not applied by this replica within {waited:?}")]
    NotApplied { seq: Seq, waited: Duration },
    #[error(
        "this replica is at sequence {applied}, behind the requested {wanted} after {waited:?}"
    )]
    Behind {
        applied: Seq,
        wanted: Seq,
        waited: Duration,
    },
    #[error("checking the write against the index failed: {0}")]
    Internal(String),
    #[error("writes are refused until the replicated log is repaired: {0}")]
    Regressed(String),
}

/// The replication state of one worker.
pub struct Replicator {
    log: RedisLog,
    store: Arc<Store>,
    applied: watch::Sender<Seq>,
    log_seq: AtomicU64,
    redis_up: AtomicBool,
    stalled: Mutex<Option<String>>,
    /// The epoch id this replica follows (`None` until it learns one).
    epoch: Mutex<Option<String>>,
    regressed: Mutex<Option<Regressed>>,
    id: String,
    cfg: ReplicationConfig,
}

/// Why and since when writes are refused.
#[derive(Debug, Clone)]
struct Regressed {
    reason: String,
    since: std::time::Instant,
    /// This replica's data no longer continues the stream: only a peer snapshot helps.
    needs_snapshot: bool,
}

/// A point-in-time view for `/readyz` and metrics.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReplicaStatus {
    pub replica_id: String,
    #[schema(value_type = u64)]
    pub applied_sequence: Seq,
    #[schema(value_type = u64)]
    pub log_sequence: Seq,
    pub lag: u64,
    pub redis_connected: bool,
    pub stalled: Option<String>,
    /// Why writes are refused: Redis went behind what replicas applied, or was re-seeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regressed: Option<String>,
    /// The stream epoch this replica follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Replicator {
    /// Base URLs of the peers (`replication.peers` and every address of
    /// `replication.peer_service`), resolved now; this replica may be among them.
    pub async fn peer_urls(&self) -> Vec<String> {
        bootstrap::peer_urls(&self.cfg).await
    }

    /// Wraps a store opened with [`Store::open_replicated`].
    pub fn new(log: RedisLog, store: Arc<Store>, cfg: ReplicationConfig) -> Arc<Self> {
        let applied = store.index().applied();
        let id = replica_id(&cfg);
        Arc::new(Self {
            log,
            store,
            applied: watch::Sender::new(applied),
            log_seq: AtomicU64::new(applied),
            redis_up: AtomicBool::new(true),
            stalled: Mutex::new(None),
            epoch: Mutex::new(None),
            regressed: Mutex::new(None),
            id,
            cfg,
        })
    }

    /// The log (for the cache, which shares its connection).
    pub fn log(&self) -> &RedisLog {
        &self.log
    }

    /// Starts the tailer and the heartbeat tasks.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().tail());
        tokio::spawn(self.clone().heartbeat());
    }

    /// The epoch id this replica follows ('' before it learned one): part of shared cache
    /// keys, so equal sequences of two histories never share an entry.
    pub fn epoch_id(&self) -> String {
        self.epoch.lock().clone().unwrap_or_default()
    }

    /// Checks `ops` against this replica's index and appends them to the stream; returns
    /// the sequence of the last one. Fails fast when Redis is unreachable, and refuses
    /// while the log is regressed.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Seq, ReplicaError> {
        if let Some(r) = self.regressed.lock().as_ref() {
            return Err(ReplicaError::Regressed(r.reason.clone()));
        }
        // Checking reads the index: off the async threads, where a long search or apply
        // holding its lock would stall every task of this thread.
        let store = Arc::clone(&self.store);
        let ops =
            tokio::task::spawn_blocking(move || store.index().check_batch(&ops).map(|()| ops))
                .await
                .map_err(|e| ReplicaError::Internal(e.to_string()))??;
        let guard = Guard {
            epoch: self.epoch.lock().clone(),
            floor: self.log_seq(),
        };
        let (records, epoch) = match self.log.append(ops, &guard).await {
            Ok(appended) => appended,
            Err(RedisLogError::Regressed(regression)) => {
                let reason = self.regress(&regression, false);
                return Err(ReplicaError::Regressed(reason));
            }
            Err(e) => return Err(e.into()),
        };
        self.epoch.lock().get_or_insert(epoch.id);
        let last = records.last().map_or(0, |r| r.seq);
        self.log_seq.fetch_max(last, Ordering::Relaxed);
        self.log.await_replicas(last).await?;
        Ok(last)
    }

    /// Waits (bounded by `replication.wait_timeout_ms`) until this replica applied `seq`.
    pub async fn wait_applied(&self, seq: Seq) -> Result<(), ReplicaError> {
        let waited = Duration::from_millis(self.cfg.wait_timeout_ms);
        let mut rx = self.applied.subscribe();
        let reached =
            tokio::time::timeout(waited, async { rx.wait_for(|a| *a >= seq).await.is_ok() }).await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(ReplicaError::NotApplied { seq, waited }),
        }
    }

    /// Waits (bounded) until the replica reached `seq`, for `min_sequence` queries.
    pub async fn wait_min_sequence(&self, seq: Seq) -> Result<(), ReplicaError> {
        self.wait_applied(seq)
            .await
            .map_err(|_| ReplicaError::Behind {
                applied: *self.applied.borrow(),
                wanted: seq,
                waited: Duration::from_millis(self.cfg.wait_timeout_ms),
            })
    }

    /// The last sequence known to be in the stream.
    pub fn log_seq(&self) -> Seq {
        self.log_seq
            .load(Ordering::Relaxed)
            .max(*self.applied.borrow())
    }

    /// Applied sequence, lag and health.
    pub fn status(&self) -> ReplicaStatus {
        let applied = *self.applied.borrow();
        let log_sequence = self.log_seq();
        ReplicaStatus {
            replica_id: self.id.clone(),
            applied_sequence: applied,
            log_sequence,
            lag: log_sequence.saturating_sub(applied),
            redis_connected: self.redis_up.load(Ordering::Relaxed),
            stalled: self.stalled.lock().clone(),
            regressed: self.regressed.lock().as_ref().map(|r| r.reason.clone()),
            epoch: self.epoch.lock().clone(),
        }
    }

    /// Ready to serve: caught up within `replication.max_ready_lag`, not stalled, and not
    /// cut off the stream by a re-seed (a regressed replica that may re-seed keeps serving
    /// reads: its data is what was acknowledged).
    pub fn is_caught_up(&self) -> bool {
        let s = self.status();
        let cut_off = self
            .regressed
            .lock()
            .as_ref()
            .is_some_and(|r| r.needs_snapshot);
        s.stalled.is_none() && !cut_off && s.lag <= self.cfg.max_ready_lag
    }

    /// Writes are refused because the log regressed.
    pub fn is_regressed(&self) -> bool {
        self.regressed.lock().is_some()
    }

    /// Deregisters this replica and closes the connections (clean shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.log.deregister(&self.id).await {
            tracing::warn!(error = %e, "could not deregister the replica");
        }
        self.log.quit().await;
    }

    async fn tail(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.is_regressed() {
                // Nothing after a regression is trusted until the stream is re-seeded.
                tokio::time::sleep(TAIL_BLOCK).await;
                continue;
            }
            let after = *self.applied.borrow();
            match self.read_whole_batches(after).await {
                Ok(entries) => {
                    self.redis_up.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    let records = match self.check_epochs(entries).await {
                        Ok(records) => records,
                        Err(e) => {
                            self.stall(&e.to_string()).await;
                            continue;
                        }
                    };
                    let Some(last) = records.last().map(|r| r.seq) else {
                        continue;
                    };
                    self.log_seq.fetch_max(last, Ordering::Relaxed);
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.apply_replicated(&records))
                        .await
                    {
                        Ok(Ok(applied)) => {
                            self.applied.send_replace(applied);
                            if let Some(reason) = self.stalled.lock().take() {
                                tracing::info!(%reason, applied, "replication resumed");
                            }
                        }
                        Ok(Err(e)) => self.stall(&e.to_string()).await,
                        Err(e) => self.stall(&format!("apply task failed: {e}")).await,
                    }
                }
                Err(e @ RedisLogError::Trimmed { .. }) => self.stall(&e.to_string()).await,
                Err(e) => {
                    if self.redis_up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "replication paused: Redis unreachable; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Reads entries after `after`, continuing until the last one ends its batch: a
    /// multi-record write is applied (and published, and snapshotted) all at once.
    async fn read_whole_batches(&self, after: Seq) -> Result<Vec<Entry>, RedisLogError> {
        let mut entries = self
            .log
            .read_entries_after(after, READ_BATCH, Some(TAIL_BLOCK))
            .await?;
        while let Some(last) = entries.last() {
            let (seq, end) = (last.record.seq, last.batch_end);
            if end <= seq {
                break;
            }
            let more = self.log.read_entries_after(seq, end - seq, None).await?;
            if more.is_empty() {
                // Appends are atomic: a batch's entries are all there or none are.
                return Err(RedisLogError::Trimmed {
                    after: seq,
                    first: end,
                });
            }
            entries.extend(more);
        }
        Ok(entries)
    }

    async fn stall(&self, reason: &str) {
        let first = self.stalled.lock().replace(reason.to_string()).is_none();
        if first {
            tracing::error!(reason, "replication stalled; retrying every 5 s (after a gap or trimming, this replica needs a fresh snapshot: restart it with an empty data volume)");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    async fn heartbeat(self: Arc<Self>) {
        loop {
            let result = async {
                // What this replica applied before the counter is read: records applied
                // meanwhile are past the counter read, and no regression.
                let applied = *self.applied.borrow();
                let last = self.log.last_seq().await?;
                #[cfg(test)]
                tests::pause_after_counter_read().await;
                self.watch_regression(last, applied).await?;
                if !self.is_regressed() {
                    self.log_seq.fetch_max(last, Ordering::Relaxed);
                }
                let oldest = self.store.oldest_snapshot_seq();
                // A replica cut off the stream registers no floor: its sequence belongs
                // to a history the stream no longer continues.
                let cut_off = self
                    .regressed
                    .lock()
                    .as_ref()
                    .is_some_and(|r| r.needs_snapshot);
                let applied = if cut_off { 0 } else { *self.applied.borrow() };
                self.log
                    .heartbeat(&self.id, oldest, applied, HEARTBEAT * 4)
                    .await?;
                self.log.trim().await
            }
            .await;
            match result {
                Ok(trimmed) => {
                    self.redis_up.store(true, Ordering::Relaxed);
                    if trimmed > 0 {
                        tracing::debug!(below = trimmed, "stream trimmed");
                    }
                }
                Err(e) => {
                    self.redis_up.store(false, Ordering::Relaxed);
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }
}

/// This replica's name in the registries: `replication.replica_id`, else pod name + pid.
pub fn replica_id(cfg: &ReplicationConfig) -> String {
    cfg.replica_id.clone().unwrap_or_else(default_replica_id)
}

fn default_replica_id() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| format!("{h}-{}", std::process::id()))
        .unwrap_or_else(|_| format!("pid-{}", std::process::id()))
}

mod bootstrap;
mod epoch;
pub use bootstrap::{bootstrap, heartbeat_while_starting};

#[cfg(test)]
mod tests;
