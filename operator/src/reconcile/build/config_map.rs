//! The worker ConfigMap: `config.yaml` in the `kb_config::WorkerConfig` contract.

use super::names::{Component, Names, HTTP_PORT, METRICS_PORT};
use super::secret::API_KEYS_FILE;
use crate::crd::{self, KnowledgeBaseSpec, RedisMode};
use k8s_openapi::api::core::v1::{ConfigMap, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kb_config::{RedisConfig, WorkerConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Key of the worker configuration in the ConfigMap.
pub const CONFIG_FILE: &str = "config.yaml";
/// Directory the ConfigMap is mounted at.
pub const CONFIG_DIR: &str = "/etc/kb";
/// Directory the API-keys Secret is mounted at.
pub const KEYS_DIR: &str = "/etc/kb/keys";
/// Mount point of the data volume.
pub const DATA_DIR: &str = "/data";
/// Mount point of a model volume.
pub const MODELS_DIR: &str = "/models";
/// Where a reranker's model volume is mounted.
pub const RERANKERS_DIR: &str = "/rerankers";
/// Environment variable carrying the Redis password.
pub const REDIS_PASSWORD_ENV: &str = "KB_REDIS_PASSWORD";
/// Where an external Redis' private CA certificate is mounted in the worker.
pub const REDIS_CA_DIR: &str = "/etc/kb/redis-ca";
/// File name of that certificate inside [`REDIS_CA_DIR`].
pub const REDIS_CA_FILE: &str = "ca.crt";
/// Environment variable carrying the admin key a replica shows peers for their snapshot.
pub const PEER_API_KEY_ENV: &str = "KB_PEER_API_KEY";
/// Pod-template annotation whose change rolls the workers when the config changes.
pub const CONFIG_HASH_ANNOTATION: &str = "knowledge.dev/config-hash";
/// ConfigMap key: the model the KnowledgeBase wants now (`spec.embedding`, in the form of
/// `status.model`). Every worker reads it live (a directory mount, updated in place) and
/// re-indexes only for that model (docs/worker.md, "Re-index").
pub const WANTED_MODEL_KEY: &str = "wanted-model";
/// Directory the wanted model is mounted at, as file [`WANTED_MODEL_FILE`].
pub const WANTED_MODEL_DIR: &str = "/etc/kb/wanted";
/// File name of the wanted model inside [`WANTED_MODEL_DIR`].
pub const WANTED_MODEL_FILE: &str = "model";
/// Environment variable naming the wanted-model file.
pub const WANTED_MODEL_FILE_ENV: &str = "KB_WANTED_MODEL_FILE";
/// Environment variable: the model of the pod's own revision, in the same form.
pub const MODEL_REF_ENV: &str = "KB_MODEL_REF";

/// The ConfigMap key holding the configuration of the pod template whose
/// [`CONFIG_HASH_ANNOTATION`] is `hash`: each revision's pods mount their own, so a pod of
/// the old revision that restarts during a rolling update (a model change runs for hours)
/// reads the configuration it was created with, not the new one.
pub fn pinned_key(hash: &str) -> String {
    format!("config-{hash}.yaml")
}

/// Whether `key` is a [`pinned_key`].
pub fn is_pinned_key(key: &str) -> bool {
    key.starts_with("config-") && key.ends_with(".yaml")
}

/// The worker configuration for `spec`.
pub fn worker_config(spec: &KnowledgeBaseSpec, names: &Names) -> WorkerConfig {
    let mut config = WorkerConfig {
        listen: format!("0.0.0.0:{HTTP_PORT}"),
        metrics_listen: format!("0.0.0.0:{METRICS_PORT}"),
        data_dir: PathBuf::from(DATA_DIR),
        model: Some(model_path(&spec.embedding)),
        redis: redis_config(spec, names),
        ..WorkerConfig::default()
    };
    config.reranker = spec.reranker.as_ref().map(reranker_config);
    let embedding = &spec.embedding;
    config.embedding.device = embedding.device.as_str().to_string();
    config.embedding.precision = match embedding.precision {
        crd::Precision::Auto => kb_config::Precision::Auto,
        crd::Precision::Fp32 => kb_config::Precision::Fp32,
        crd::Precision::Fp16 => kb_config::Precision::Fp16,
        crd::Precision::Bf16 => kb_config::Precision::Bf16,
    };
    config.embedding.max_batch_tokens = to_usize(embedding.max_batch_tokens);
    config.embedding.max_seq_len = to_usize(embedding.max_seq_len);
    config.embedding.bulk_batch_tokens = embedding.bulk_batch_tokens.map(to_usize);
    set(
        &mut config.embedding.queue_capacity,
        embedding.queue_capacity,
    );
    set(
        &mut config.embedding.bulk_queue_capacity,
        embedding.bulk_queue_capacity,
    );
    config.embedding.model_name = embedding.model_name.clone();
    config.embedding.query_prefix = embedding.query_prefix.clone();
    config.embedding.document_prefix = embedding.document_prefix.clone();
    config.embedding.cpu_executors = embedding.cpu_executors.map(to_usize);
    config.embedding.cpu_cores = super::scheduling::resources(spec).and_then(|r| pod_cores(&r));
    let (limits, wanted) = (&mut config.limits, &spec.limits);
    set(&mut limits.max_request_bytes, wanted.max_request_bytes);
    set(
        &mut limits.max_documents_per_request,
        wanted.max_documents_per_request,
    );
    set(&mut limits.max_document_bytes, wanted.max_document_bytes);
    set(&mut limits.max_top_k, wanted.max_top_k);
    set(&mut limits.max_query_bytes, wanted.max_query_bytes);
    set(
        &mut limits.max_concurrent_requests,
        wanted.max_concurrent_requests,
    );
    set_secs(
        &mut limits.request_timeout_seconds,
        wanted.request_timeout_seconds,
    );
    set_secs(
        &mut limits.write_timeout_seconds,
        wanted.write_timeout_seconds,
    );
    config.index.cpu_screen = match spec.index.cpu_screen {
        crd::CpuScreen::None => kb_config::CpuScreen::None,
        crd::CpuScreen::Bf16 => kb_config::CpuScreen::Bf16,
    };
    config.index.lexical = match spec.index.lexical {
        crd::Lexical::Off => kb_config::Lexical::Off,
        crd::Lexical::Standard => kb_config::Lexical::Standard,
        crd::Lexical::English => kb_config::Lexical::English,
    };
    config.chunking.max_tokens = to_usize(spec.chunking.max_tokens);
    config.chunking.overlap = to_usize(spec.chunking.overlap);
    config.cache.enabled = spec.cache.enabled;
    config.cache.ttl_seconds = u64::try_from(spec.cache.ttl_seconds).unwrap_or(0);
    config.auth.api_keys_file = Some(PathBuf::from(format!("{KEYS_DIR}/{API_KEYS_FILE}")));
    if config.redis.is_some() {
        // A replica with an empty volume bootstraps from a ready peer behind the headless
        // Service (it resolves to ready pods only).
        config.replication.peer_service = Some(format!(
            "{}.{}.svc:{HTTP_PORT}",
            names.headless(),
            names.namespace
        ));
        config.replication.peer_api_key_env = Some(PEER_API_KEY_ENV.to_string());
    }
    config
}

/// The schema keeps these non-negative; a negative value can only come from a bypassed
/// schema and maps to 0, which the worker rejects with a message naming the field.
fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

/// Whole cores the worker's pod may use: its CPU limit, else its CPU request, rounded up
/// (`500m` is 1, `1.5` is 2); `None` when neither parses.
fn pod_cores(resources: &ResourceRequirements) -> Option<usize> {
    let cpu = |list: &Option<BTreeMap<String, Quantity>>| list.as_ref()?.get("cpu").cloned();
    let quantity = cpu(&resources.limits).or_else(|| cpu(&resources.requests))?;
    let text = quantity.0.trim();
    let cores = match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => text.parse::<f64>().ok()?,
    };
    (cores.is_finite() && cores > 0.0).then(|| (cores.ceil() as usize).max(1))
}

/// Overrides a worker default with an optional spec value.
fn set(field: &mut usize, value: Option<i64>) {
    if let Some(value) = value {
        *field = to_usize(value);
    }
}

/// [`set`] for seconds.
fn set_secs(field: &mut u64, value: Option<i64>) {
    if let Some(value) = value {
        *field = u64::try_from(value).unwrap_or(0);
    }
}

fn model_path(embedding: &crd::Embedding) -> PathBuf {
    match &embedding.model_volume {
        Some(volume) => in_volume(MODELS_DIR, volume),
        None => PathBuf::from(&embedding.model_path),
    }
}

/// The model directory in `volume` mounted at `dir`.
fn in_volume(dir: &str, volume: &crd::ModelVolume) -> PathBuf {
    match volume.sub_path.as_deref().map(|p| p.trim_matches('/')) {
        Some(sub) if !sub.is_empty() => PathBuf::from(dir).join(sub),
        _ => PathBuf::from(dir),
    }
}

/// The worker's `reranker:` section for `spec.reranker`.
fn reranker_config(reranker: &crd::Reranker) -> kb_config::RerankerConfig {
    let model = match (&reranker.model_volume, &reranker.model_path) {
        (Some(volume), _) => in_volume(RERANKERS_DIR, volume),
        (None, Some(path)) => PathBuf::from(path),
        // The schema requires one of them; the worker names an empty path at start.
        (None, None) => PathBuf::new(),
    };
    let mut config = kb_config::RerankerConfig::new(model);
    config.max_seq_len = reranker.max_seq_len.map(to_usize);
    set(&mut config.max_texts, reranker.max_texts);
    config
}

/// How long a starting worker retries Redis before it exits (Redis restarting during a
/// drain or a password rotation, a first deploy).
const REDIS_START_WAIT_MS: u64 = 300_000;

fn redis_config(spec: &KnowledgeBaseSpec, names: &Names) -> Option<RedisConfig> {
    let redis = spec.redis.as_ref()?;
    let key_prefix = format!("kb:{}:{}", names.namespace, names.base);
    if redis.managed.is_some() {
        return Some(RedisConfig {
            mode: kb_config::RedisMode::Standalone,
            url: Some(format!(
                "redis://{}.{}.svc:{}",
                names.redis(),
                names.namespace,
                super::REDIS_PORT
            )),
            password_env: Some(REDIS_PASSWORD_ENV.to_string()),
            key_prefix,
            start_wait_ms: REDIS_START_WAIT_MS,
            ..RedisConfig::default()
        });
    }
    let external = redis.external.as_ref()?;
    Some(RedisConfig {
        mode: match external.mode {
            RedisMode::Standalone => kb_config::RedisMode::Standalone,
            RedisMode::Cluster => kb_config::RedisMode::Cluster,
            RedisMode::Sentinel => kb_config::RedisMode::Sentinel,
        },
        url: external.url.clone(),
        nodes: external.nodes.clone(),
        sentinel_service: external.sentinel_service.clone(),
        password_env: external
            .password_secret_ref
            .as_ref()
            .map(|_| REDIS_PASSWORD_ENV.to_string()),
        tls: external.tls || external.tls_ca_secret_ref.is_some(),
        tls_ca_file: external
            .tls_ca_secret_ref
            .as_ref()
            .map(|_| PathBuf::from(format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}"))),
        key_prefix,
        start_wait_ms: REDIS_START_WAIT_MS,
        min_replicas_to_ack: external.min_replicas_to_ack,
        replica_ack_timeout_ms: external
            .replica_ack_timeout_ms
            .unwrap_or(RedisConfig::default().replica_ack_timeout_ms),
    })
}

/// The worker ConfigMap and the hash of its configuration ([`CONFIG_HASH_ANNOTATION`]):
/// the configuration as `config.yaml` (what pod templates of older releases mount) and
/// under its [`pinned_key`], and the [`WANTED_MODEL_KEY`]. The pinned keys of revisions
/// whose pods may still run are added back before it is applied (`reconcile::configs`).
pub(super) fn worker_config_map(spec: &KnowledgeBaseSpec, names: &Names) -> (ConfigMap, String) {
    let config = worker_config(spec, names).to_yaml();
    let mut config_map = ConfigMap {
        metadata: names.meta(names.worker(), Component::Worker),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), config.clone())])),
        ..ConfigMap::default()
    };
    // Of `config.yaml` alone, as before the pinned keys (no roll when they come or go).
    let hash = config_hash(&config_map);
    let data = config_map.data.get_or_insert_with(Default::default);
    data.insert(pinned_key(&hash), config);
    data.insert(WANTED_MODEL_KEY.to_string(), spec.embedding.model_ref());
    (config_map, hash)
}

/// Short digest of a ConfigMap's data, for the rollout annotation.
pub(super) fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
