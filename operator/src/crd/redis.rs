//! Redis: managed by the operator or external.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Image of the managed Redis.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";

/// Redis used for the replicated log and the cache; exactly one of `managed`, `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of redis.managed or redis.external"))]
#[serde(rename_all = "camelCase")]
pub struct Redis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

/// A single-node Redis run by the operator (append-only file, cache keys evictable).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("quantity(string(self.storageSize)).compareTo(quantity(string(oldSelf.storageSize))) >= 0").message("redis.managed.storageSize cannot shrink: volumes only grow"),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("redis.managed.storageClassName cannot change: the existing volume keeps its class"),
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Size of the Redis volume. Raising it expands the volume in place.
    #[serde(default = "default_redis_size")]
    pub storage_size: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Redis `maxmemory` (for example `2gb`); only keys with a TTL (the cache) are evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(b|kb|mb|gb)?$"))]
    pub max_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_string()
}

fn default_redis_size() -> Quantity {
    Quantity("8Gi".to_string())
}

/// A Redis the operator does not manage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.mode != 'standalone' || has(self.url)").message("redis.external.url is required in standalone mode"),
    validation = Rule::new("self.mode == 'standalone' || size(self.nodes) > 0").message("redis.external.nodes is required in cluster and sentinel mode"),
    validation = Rule::new("self.mode != 'sentinel' || has(self.sentinelService)").message("redis.external.sentinelService is required in sentinel mode"),
    validation = Rule::new("self.mode != 'cluster' || !has(self.minReplicasToAck) || self.minReplicasToAck == 0").message("redis.external.minReplicasToAck is supported in standalone and sentinel mode, not cluster"),
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    #[serde(default)]
    pub mode: RedisMode,
    /// `redis://host:port` or `rediss://host:port` (standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://[^\s]+$"))]
    pub url: Option<String>,
    /// `host:port` of cluster nodes or sentinels.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub nodes: Vec<String>,
    /// Sentinel master name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_service: Option<String>,
    /// Ports of the Redis servers that Sentinel returns (or cluster redirects point to)
    /// when they differ from the ports in `nodes`; the workers' NetworkPolicy allows them.
    /// Default in sentinel mode: 6379.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub data_ports: Vec<i32>,
    /// Secret key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// Secret key holding the PEM CA certificate(s) that sign the server's certificate
    /// (a private CA, e.g. from cert-manager); mounted into the workers and trusted
    /// instead of the system roots. Implies TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_secret_ref: Option<CaSecretRef>,
    /// Acknowledge a write only once this many Redis replicas hold it (Redis `WAIT`), so
    /// a Redis failover cannot lose an acknowledged write. 0 (the default): once the
    /// primary holds it. Writes answer 503 when fewer replicas confirm within
    /// `replicaAckTimeoutMs` (the write is logged and may still survive).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 16))]
    pub min_replicas_to_ack: u32,
    /// How long a write waits for `minReplicasToAck` Redis replicas (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub replica_ack_timeout_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A key of a Secret holding PEM certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    pub name: String,
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

/// Redis topology.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

/// A key of a Secret in the KnowledgeBase's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}
