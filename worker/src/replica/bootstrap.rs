//! Starting a replica: registering it while it loads, and installing a ready peer's
//! snapshot when the stream no longer covers its data.

use super::HEARTBEAT;
use crate::log::redis::{RedisLog, RedisLogError};
use crate::log::Seq;
use crate::snapshot;
use kb_config::ReplicationConfig;
use std::path::Path;
use std::time::Duration;

/// Registers a starting replica before its model and data are loaded (which can take
/// minutes), so that the stream is not trimmed past what it will need: its oldest local
/// snapshot (0, which holds back all trimming, while it has none), re-read every period
/// since a bootstrap may install one. It registers no applied sequence yet (its data may
/// belong to another history until checked). Abort the task once the [`super::Replicator`] runs.
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
pub(crate) async fn peer_urls(cfg: &ReplicationConfig) -> Vec<String> {
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
