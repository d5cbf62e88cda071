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
use crate::log::redis::{Entry, Epoch, Guard, RedisLog, RedisLogError, Regression};
use crate::log::{Op, Seq};
use crate::snapshot;
use crate::store::Store;
use kb_config::ReplicationConfig;
use parking_lot::Mutex;
use std::path::Path;
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

    /// Marks writes refused (logged once); returns the reason.
    fn regress(&self, regression: &Regression, needs_snapshot: bool) -> String {
        let reason = match regression {
            Regression::EpochChanged { found, .. } => format!(
                "the stream was re-seeded (epoch {found}) by another replica; this replica follows {:?}",
                self.epoch_id()
            ),
            other => other.to_string(),
        };
        let mut slot = self.regressed.lock();
        match slot.as_mut() {
            Some(r) => {
                r.needs_snapshot |= needs_snapshot;
                r.reason.clone()
            }
            None => {
                tracing::error!(%reason, needs_snapshot, "replicated log regressed: writes refused");
                *slot = Some(Regressed {
                    reason: reason.clone(),
                    since: std::time::Instant::now(),
                    needs_snapshot,
                });
                reason
            }
        }
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

    /// Keeps the entries of the epoch this replica follows. At another epoch: adopts it
    /// when it continues this replica's epoch exactly at its applied sequence (a re-seed
    /// by a peer at the same point), otherwise marks the replica cut off (it needs a peer
    /// snapshot) and keeps nothing.
    async fn check_epochs(
        &self,
        entries: Vec<Entry>,
    ) -> Result<Vec<crate::log::Record>, RedisLogError> {
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(epoch) = &entry.epoch {
                let followed = self.epoch.lock().clone();
                match followed {
                    None => *self.epoch.lock() = Some(epoch.clone()),
                    Some(f) if f == *epoch => {}
                    Some(_) if !records.is_empty() => break,
                    Some(_) => {
                        self.follow_current_epoch().await?;
                        if self.is_regressed() {
                            return Ok(Vec::new());
                        }
                    }
                }
            }
            records.push(entry.record);
        }
        Ok(records)
    }

    /// Reads the stream's epoch and follows it when it continues this replica's history
    /// at its applied sequence; marks the replica cut off when it does not.
    async fn follow_current_epoch(&self) -> Result<(), RedisLogError> {
        let Some(current) = self.log.epoch().await? else {
            return Ok(());
        };
        let followed = self.epoch.lock().clone();
        let applied = *self.applied.borrow();
        match followed {
            Some(f) if f == current.id => {}
            None => *self.epoch.lock() = Some(current.id),
            Some(f) if current.parent == f && current.base == applied => {
                tracing::info!(epoch = %current.id, base = current.base, "following the re-seeded stream");
                *self.epoch.lock() = Some(current.id);
                if let Some(r) = self.regressed.lock().take() {
                    tracing::info!(reason = %r.reason, "writes accepted again");
                }
            }
            Some(f) => {
                self.regress(
                    &Regression::EpochChanged {
                        expected: f,
                        found: format!("{} from sequence {}", current.id, current.base),
                    },
                    true,
                );
                self.note_cut_off(applied, &current);
            }
        }
        Ok(())
    }

    fn note_cut_off(&self, applied: Seq, current: &Epoch) {
        let mut slot = self.regressed.lock();
        if let Some(r) = slot.as_mut() {
            r.needs_snapshot = true;
            r.reason = format!(
                "the stream was re-seeded after sequence {} (epoch {}) and this replica, at {applied}, does not continue it: restart it (at start it installs a peer's snapshot and continues from there)",
                current.base, current.id
            );
        }
    }

    /// One heartbeat's look at Redis: the counter or the epoch gone behind what this
    /// replica applied marks it regressed; a regressed replica that is the most advanced
    /// of the live ones re-seeds the stream once every replica had time to register.
    async fn watch_regression(&self, last: Seq) -> Result<(), RedisLogError> {
        let applied = *self.applied.borrow();
        let current = self.log.epoch().await?;
        let followed = self.epoch.lock().clone();
        match (&current, &followed) {
            (None, _) if applied > 0 && last == 0 && self.log.top_seq().await? == 0 => {
                self.regress(&Regression::Lost { floor: applied }, false);
            }
            (Some(c), Some(f)) if c.id != *f => self.follow_current_epoch().await?,
            (Some(c), None) => *self.epoch.lock() = Some(c.id.clone()),
            _ if last < applied => {
                let top = self.log.top_seq().await?;
                self.regress(
                    &Regression::Behind {
                        counter: last,
                        top,
                        floor: applied,
                    },
                    false,
                );
            }
            _ => {}
        }
        let due = self
            .regressed
            .lock()
            .as_ref()
            .is_some_and(|r| !r.needs_snapshot && r.since.elapsed() >= RESEED_AFTER);
        if due {
            self.try_reseed(applied).await?;
        }
        Ok(())
    }

    /// Re-seeds the stream after `applied` when no live replica applied more and the
    /// stream holds nothing beyond it.
    async fn try_reseed(&self, applied: Seq) -> Result<(), RedisLogError> {
        let others = self.log.applied_by_replica().await?;
        let most = others
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0);
        let (last, top) = (self.log.last_seq().await?, self.log.top_seq().await?);
        if most > applied || last > applied || top > applied {
            tracing::warn!(
                applied,
                most,
                last,
                top,
                "not re-seeding: another replica or the stream is ahead of this one"
            );
            return Ok(());
        }
        let parent = self.epoch_id();
        match self.log.reseed(applied, &parent).await {
            Ok(epoch) => {
                tracing::warn!(epoch = %epoch.id, base = applied, "re-seeded the replicated log after this replica's sequence");
                *self.epoch.lock() = Some(epoch.id);
                self.log_seq.store(applied, Ordering::Relaxed);
                if let Some(r) = self.regressed.lock().take() {
                    tracing::info!(reason = %r.reason, "writes accepted again");
                }
                Ok(())
            }
            // Another replica re-seeded first: follow it if it continues from here.
            Err(RedisLogError::Regressed(Regression::EpochChanged { .. })) => {
                self.follow_current_epoch().await
            }
            Err(RedisLogError::Regressed(r)) => {
                tracing::warn!(reason = %r, "not re-seeding");
                Ok(())
            }
            Err(e) => Err(e),
        }
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
                let last = self.log.last_seq().await?;
                self.watch_regression(last).await?;
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

/// Registers a starting replica before its model and data are loaded (which can take
/// minutes), so that the stream is not trimmed past what it will need: its oldest local
/// snapshot (0, which holds back all trimming, while it has none), re-read every period
/// since a bootstrap may install one. It registers no applied sequence yet (its data may
/// belong to another history until checked). Abort the task once the [`Replicator`] runs.
pub fn heartbeat_while_starting(
    log: RedisLog,
    id: String,
    data_dir: &Path,
) -> tokio::task::JoinHandle<()> {
    let snapshots = data_dir.join("snapshots");
    tokio::spawn(async move {
        loop {
            let local = snapshot::list(&snapshots).unwrap_or_default();
            let oldest = local.last().map_or(0, |(seq, _)| *seq);
            if let Err(e) = log.heartbeat(&id, oldest, 0, HEARTBEAT * 4).await {
                tracing::debug!(error = %e, "start-up heartbeat failed");
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
}

fn default_replica_id() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| format!("{h}-{}", std::process::id()))
        .unwrap_or_else(|_| format!("pid-{}", std::process::id()))
}

/// Prepares the data directory of a replica: when it holds no snapshot and the stream
/// cannot be replayed from the start (or a peer is faster), downloads a snapshot from a
/// ready peer. Returns the sequence of the snapshot it installed, if any.
pub async fn bootstrap(
    log: &RedisLog,
    cfg: &ReplicationConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<Seq>> {
    let snapshots = data_dir.join("snapshots");
    let local = snapshot::list(&snapshots)?.first().map(|(s, _)| *s);
    let after = local.unwrap_or(0);
    let stream_complete = match log.read_after(after, 1, None).await {
        Ok(_) => true,
        Err(RedisLogError::Trimmed { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    let last = log.last_seq().await?;
    if last == after || (local.is_some() && stream_complete) {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.bootstrap_timeout_ms);
    loop {
        for peer in peer_urls(cfg).await {
            match fetch_snapshot(&peer, cfg, &snapshots).await {
                Ok(seq) if seq > after => {
                    tracing::info!(%peer, seq, "bootstrapped from a peer snapshot");
                    return Ok(Some(seq));
                }
                Ok(_) => {}
                Err(e) => tracing::info!(%peer, error = %e, "peer snapshot unavailable"),
            }
        }
        if stream_complete {
            tracing::info!(after, last, "no peer snapshot; replaying the stream");
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the stream was trimmed past this replica's data (sequence {after}) and no peer served a snapshot within {} ms: check replication.peers / replication.peer_service",
                cfg.bootstrap_timeout_ms
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Base URLs of peers: the configured ones plus every address of `peer_service`.
async fn peer_urls(cfg: &ReplicationConfig) -> Vec<String> {
    let mut urls = cfg.peers.clone();
    if let Some(service) = &cfg.peer_service {
        match tokio::net::lookup_host(service.as_str()).await {
            Ok(addrs) => urls.extend(addrs.map(|a| format!("http://{a}"))),
            Err(e) => tracing::info!(service, error = %e, "peer service did not resolve"),
        }
    }
    urls
}

/// Longest silence of a peer sending its snapshot.
const BOOTSTRAP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

async fn fetch_snapshot(peer: &str, cfg: &ReplicationConfig, dir: &Path) -> anyhow::Result<Seq> {
    // An idle timeout, not a total one: a large index takes as long as it takes, a peer
    // that stops sending is given up on. The wait for the headers (the peer writes its
    // snapshot first) counts as one silence.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(BOOTSTRAP_IDLE_TIMEOUT)
        .build()?;
    let mut req = http.get(format!("{}/v1/admin/snapshot", peer.trim_end_matches('/')));
    if let Some(key) = cfg
        .peer_api_key_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
    {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        anyhow::bail!("HTTP {}", resp.status());
    }
    // Streamed to a temporary file, then verified from it (magic, length, checksum and
    // every row): the snapshot is never held in memory, and it gets its name only once
    // it is whole and valid.
    let mut incoming = snapshot::Incoming::create(dir)?;
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await? {
        incoming.write(&chunk)?;
    }
    let (checked, _) = incoming.finish(|c| snapshot::file_name(c.sequence))?;
    Ok(checked.sequence)
}

#[cfg(test)]
mod tests;
