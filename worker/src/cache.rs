//! The query cache: query results and query embeddings, in a small in-process LRU (L1) and,
//! in replicated mode, in Redis (L2) with a TTL so that `volatile-lru` may evict them.
//!
//! Result keys carry the collection's version (the sequence of the last record that changed
//! it, see [`crate::index::Index::version`]), so a write makes every older entry
//! unreachable at once, on every replica, without any invalidation message. Embedding keys
//! carry a fingerprint of the model and its settings. The cache never fails a read: when
//! Redis is down or slow the query runs uncached.

use crate::log::Seq;
use crate::metrics::Metrics;
use fred::prelude::*;
use kb_config::CacheConfig;
use lru::LruCache;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for a Redis cache read; beyond it the query runs uncached.
const L2_TIMEOUT: Duration = Duration::from_millis(100);

/// Where an entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    L1,
    L2,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::L1 => "l1",
            Level::L2 => "l2",
        }
    }
}

/// What an entry holds (a label of the hit/miss metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Result,
    Embedding,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Result => "result",
            Kind::Embedding => "embedding",
        }
    }
}

struct Entry {
    bytes: Arc<[u8]>,
    expires: Instant,
}

/// The two-level cache of one worker.
pub struct QueryCache {
    l1: Mutex<LruCache<String, Entry>>,
    redis: Option<Client>,
    prefix: String,
    model: String,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl QueryCache {
    /// A cache with `cfg.l1_entries` in process and, when `redis` is given, a shared L2
    /// under `prefix`. `model` fingerprints the embedding model and its settings.
    pub fn new(
        cfg: &CacheConfig,
        redis: Option<(Client, String)>,
        model: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let capacity = NonZeroUsize::new(cfg.l1_entries.max(1)).expect("non-zero");
        let (redis, prefix) = match redis {
            Some((client, prefix)) => (Some(client), prefix),
            None => (None, String::new()),
        };
        Self {
            l1: Mutex::new(LruCache::new(capacity)),
            redis,
            prefix,
            model,
            ttl: Duration::from_secs(cfg.ttl_seconds.max(1)),
            metrics,
        }
    }

    /// The digest of every parameter that shapes an answer (serialised with sorted keys,
    /// so equal requests give equal digests); computed once per query.
    pub fn request_digest(request: &Value) -> String {
        hex::encode(Sha256::digest(request.to_string().as_bytes()))
    }

    /// The key of a query's result in `collection` at `version` of the log's `epoch`
    /// (replicated mode; a re-seeded stream numbers from a sequence another history
    /// also had).
    pub fn result_key(&self, collection: &str, epoch: &str, version: Seq, digest: &str) -> String {
        format!(
            "{}:cache:r:{collection}:{epoch}:{version}:{digest}",
            self.prefix_or_local()
        )
    }

    /// The key of a text's query embedding under this worker's model.
    pub fn embedding_key(&self, text: &str) -> String {
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        format!("{}:cache:e:{}:{digest}", self.prefix_or_local(), self.model)
    }

    fn prefix_or_local(&self) -> &str {
        if self.prefix.is_empty() {
            "local"
        } else {
            &self.prefix
        }
    }

    /// A cached result (the hits) and where it was found; an entry that does not decode
    /// as `T` (written by another version) is a miss.
    pub async fn result<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<(T, Level)> {
        let (bytes, level) = self.get(Kind::Result, key).await?;
        serde_json::from_slice(&bytes).ok().map(|v| (v, level))
    }

    /// Caches a result in both levels.
    pub fn put_result<T: serde::Serialize>(&self, key: String, hits: &T) {
        let bytes: Arc<[u8]> = serde_json::to_vec(hits).expect("JSON value").into();
        self.put(key, bytes);
    }

    /// A cached query embedding.
    pub async fn embedding(&self, key: &str) -> Option<Vec<f32>> {
        let (bytes, _) = self.get(Kind::Embedding, key).await?;
        decode_vector(&bytes)
    }

    /// Caches a query embedding in both levels.
    pub fn put_embedding(&self, key: String, vector: &[f32]) {
        self.put(key, encode_vector(vector).into());
    }

    async fn get(&self, kind: Kind, key: &str) -> Option<(Arc<[u8]>, Level)> {
        if let Some(bytes) = self.l1_get(key) {
            self.metrics.cache(Level::L1, kind, true);
            return Some((bytes, Level::L1));
        }
        self.metrics.cache(Level::L1, kind, false);
        let client = self.redis.as_ref()?;
        let found = self.l2_get(client, key).await;
        self.metrics.cache(Level::L2, kind, found.is_some());
        let bytes: Arc<[u8]> = found?.into();
        self.l1_put(key.to_string(), bytes.clone());
        Some((bytes, Level::L2))
    }

    fn l1_get(&self, key: &str) -> Option<Arc<[u8]>> {
        let mut l1 = self.l1.lock();
        match l1.get(key) {
            Some(e) if e.expires > Instant::now() => Some(e.bytes.clone()),
            Some(_) => {
                l1.pop(key);
                None
            }
            None => None,
        }
    }

    fn l1_put(&self, key: String, bytes: Arc<[u8]>) {
        let expires = Instant::now() + self.ttl;
        self.l1.lock().put(key, Entry { bytes, expires });
    }

    async fn l2_get(&self, client: &Client, key: &str) -> Option<Vec<u8>> {
        if !client.is_connected() {
            return None;
        }
        match tokio::time::timeout(L2_TIMEOUT, client.get::<Option<Vec<u8>>, _>(key)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cache read failed; serving uncached");
                None
            }
            Err(_) => {
                tracing::debug!("cache read timed out; serving uncached");
                None
            }
        }
    }

    fn put(&self, key: String, bytes: Arc<[u8]>) {
        self.l1_put(key.clone(), bytes.clone());
        let Some(client) = self.redis.clone().filter(|c| c.is_connected()) else {
            return;
        };
        let ttl = self.ttl.as_secs() as i64;
        // Off the request path: a slow or failing Redis never delays the answer.
        tokio::spawn(async move {
            let value = fred::types::Value::Bytes(bytes.to_vec().into());
            let set = client.set::<(), _, _>(key, value, Some(Expiration::EX(ttl)), None, false);
            if let Err(e) = set.await {
                tracing::debug!(error = %e, "cache write failed");
            }
        });
    }
}

/// A fingerprint of the model (its files' digest, [`crate::log::binding::digest`]) and the
/// settings that change its vectors.
pub fn model_fingerprint(digest: &str, settings: &str) -> String {
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update(settings.as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local(entries: usize, ttl_seconds: u64) -> QueryCache {
        let cfg = CacheConfig {
            enabled: true,
            ttl_seconds,
            l1_entries: entries,
        };
        QueryCache::new(&cfg, None, "m".into(), Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn results_round_trip_and_keys_change_with_version_and_request() {
        let cache = local(8, 60);
        let digest = |v: Value| QueryCache::request_digest(&v);
        let req = digest(json!({"query": "q", "top_k": 3}));
        let key = cache.result_key("c", "", 7, &req);
        let reordered = digest(json!({"top_k": 3, "query": "q"}));
        assert_eq!(key, cache.result_key("c", "", 7, &reordered));
        assert_ne!(key, cache.result_key("c", "", 8, &req));
        assert_ne!(key, cache.result_key("d", "", 7, &req));
        assert_ne!(
            key,
            cache.result_key("c", "e2", 7, &req),
            "another epoch's sequence 7"
        );
        let other = digest(json!({"query": "q", "top_k": 4}));
        assert_ne!(key, cache.result_key("c", "", 7, &other));
        assert!(cache.result::<Value>(&key).await.is_none());
        let hits = json!([{"document_id": "a", "score": 0.5}]);
        cache.put_result(key.clone(), &hits);
        assert_eq!(cache.result(&key).await, Some((hits, Level::L1)));
    }

    #[tokio::test]
    async fn embeddings_round_trip_exactly() {
        let cache = local(8, 60);
        let v = vec![0.1f32, -2.5, f32::MIN_POSITIVE, 3.0e7];
        let key = cache.embedding_key("hello");
        assert_ne!(key, cache.embedding_key("hello "));
        cache.put_embedding(key.clone(), &v);
        assert_eq!(cache.embedding(&key).await, Some(v));
    }

    #[tokio::test]
    async fn the_in_process_level_evicts_the_least_recently_used() {
        let cache = local(2, 60);
        for k in ["a", "b"] {
            cache.put_embedding(k.into(), &[1.0]);
        }
        assert!(cache.embedding("a").await.is_some()); // "b" is now the oldest
        cache.put_embedding("c".into(), &[1.0]);
        assert!(cache.embedding("b").await.is_none());
        assert!(cache.embedding("a").await.is_some());
        assert!(cache.embedding("c").await.is_some());
    }

    #[test]
    fn expired_entries_are_not_served() {
        let cache = local(2, 60);
        cache.l1.lock().put(
            "old".into(),
            Entry {
                bytes: Arc::from(&b"x"[..]),
                expires: Instant::now() - Duration::from_millis(1),
            },
        );
        assert!(cache.l1_get("old").is_none());
        assert!(cache.l1.lock().is_empty());
    }

    #[test]
    fn the_model_fingerprint_depends_on_settings_and_files() {
        let a = model_fingerprint("sha256:1", "fp32/256");
        assert_eq!(a, model_fingerprint("sha256:1", "fp32/256"));
        assert_ne!(a, model_fingerprint("sha256:1", "bf16/256"));
        assert_ne!(a, model_fingerprint("sha256:2", "fp32/256"));
    }
}
