//! Redis (the replicated log and the query cache) and the replicas around it: `redis:`
//! and `replication:` in the worker configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Redis topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Sentinel,
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// `redis://host:port` (standalone).
    pub url: Option<String>,
    /// `host:port` of cluster nodes or sentinels.
    pub nodes: Vec<String>,
    /// Sentinel service (master) name.
    pub sentinel_service: Option<String>,
    /// Environment variable that holds the password (mounted from a Secret).
    pub password_env: Option<String>,
    /// Connect with TLS (also implied by a `rediss://` URL or `tls_ca_file`).
    pub tls: bool,
    /// PEM file of the CA certificates that sign the server's certificate (a private CA,
    /// for example from cert-manager); without it the system's roots are trusted.
    pub tls_ca_file: Option<PathBuf>,
    /// Stream key prefix; one knowledge base per prefix.
    pub key_prefix: String,
    /// How long a starting worker keeps retrying Redis (not up yet, or refusing this
    /// password for a moment during a rotation) with backoff before it gives up; 0: fail
    /// at once. The operator sets 300000 (5 minutes).
    pub start_wait_ms: u64,
    /// Acknowledge a write only once this many Redis replicas hold it (`WAIT`), so a
    /// Redis failover cannot lose it; 0 (the default): once the Redis primary holds it.
    /// For external Redis with replicas (Sentinel or a managed service).
    pub min_replicas_to_ack: u32,
    /// How long a write waits for `min_replicas_to_ack`; on expiry it answers 503 (the
    /// write is logged and may still survive).
    pub replica_ack_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::default(),
            url: None,
            nodes: Vec::new(),
            sentinel_service: None,
            password_env: None,
            tls: false,
            tls_ca_file: None,
            key_prefix: String::new(),
            start_wait_ms: 0,
            min_replicas_to_ack: 0,
            replica_ack_timeout_ms: 1_000,
        }
    }
}

/// Replicated mode: peers for snapshot bootstrap, readiness and read-your-writes waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Name of this replica in the heartbeat registry (default: pod name + pid).
    pub replica_id: Option<String>,
    /// Base URLs of peers (`http://host:port`) to download a bootstrap snapshot from.
    pub peers: Vec<String>,
    /// `host:port` whose DNS name resolves to every peer (the headless Service).
    pub peer_service: Option<String>,
    /// Environment variable holding an admin API key accepted by peers.
    pub peer_api_key_env: Option<String>,
    /// Ready only when at most this many records behind the stream.
    pub max_ready_lag: u64,
    /// Bound of `?wait=applied` and `min_sequence` waits.
    pub wait_timeout_ms: u64,
    /// How long a replica whose data the stream no longer covers looks for a peer snapshot.
    pub bootstrap_timeout_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            replica_id: None,
            peers: Vec::new(),
            peer_service: None,
            peer_api_key_env: None,
            max_ready_lag: 100,
            wait_timeout_ms: 10_000,
            bootstrap_timeout_ms: 300_000,
        }
    }
}
