//! Replicated mode: writes are appended to the knowledge base's Redis stream; every replica
//! (the writer included) tails the stream and applies it in order to its local store.
//!
//! A new replica with an empty volume first downloads a snapshot from a ready peer, checks
//! it, and replays the stream after the snapshot's sequence. Replicas register their oldest
//! snapshot sequence with a TTL; the stream is trimmed only below the oldest of them.

use crate::index::IndexError;
use crate::log::redis::{RedisLog, RedisLogError};
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
}

/// The replication state of one worker.
pub struct Replicator {
    log: RedisLog,
    store: Arc<Store>,
    applied: watch::Sender<Seq>,
    log_seq: AtomicU64,
    redis_up: AtomicBool,
    stalled: Mutex<Option<String>>,
    id: String,
    cfg: ReplicationConfig,
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
}

impl Replicator {
    /// Wraps a store opened with [`Store::open_replicated`].
    pub fn new(log: RedisLog, store: Arc<Store>, cfg: ReplicationConfig) -> Arc<Self> {
        let applied = store.index().applied();
        let id = cfg.replica_id.clone().unwrap_or_else(default_replica_id);
        Arc::new(Self {
            log,
            store,
            applied: watch::Sender::new(applied),
            log_seq: AtomicU64::new(applied),
            redis_up: AtomicBool::new(true),
            stalled: Mutex::new(None),
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

    /// Checks `ops` against this replica's index and appends them to the stream; returns
    /// the sequence of the last one. Fails fast when Redis is unreachable.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Seq, ReplicaError> {
        // Checking reads the index: off the async threads, where a long search or apply
        // holding its lock would stall every task of this thread.
        let store = Arc::clone(&self.store);
        let ops =
            tokio::task::spawn_blocking(move || store.index().check_batch(&ops).map(|()| ops))
                .await
                .map_err(|e| ReplicaError::Internal(e.to_string()))??;
        let records = self.log.append(ops).await?;
        let last = records.last().map_or(0, |r| r.seq);
        self.log_seq.fetch_max(last, Ordering::Relaxed);
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
        }
    }

    /// Ready to serve: caught up within `replication.max_ready_lag` and not stalled.
    pub fn is_caught_up(&self) -> bool {
        let s = self.status();
        s.stalled.is_none() && s.lag <= self.cfg.max_ready_lag
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
            let after = *self.applied.borrow();
            match self
                .log
                .read_after(after, READ_BATCH, Some(TAIL_BLOCK))
                .await
            {
                Ok(records) => {
                    self.redis_up.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
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
                self.log_seq.fetch_max(last, Ordering::Relaxed);
                let oldest = self.store.oldest_snapshot_seq();
                self.log.heartbeat(&self.id, oldest, HEARTBEAT * 4).await?;
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
