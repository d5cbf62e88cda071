//! The query cache with real Redis: entries are shared between replicas, carry a TTL and
//! never outlive a write.

mod common;

use common::redis::Redis;
use common::replicated::*;
use common::{free_port, Worker};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn cached_results_are_shared_and_never_outlive_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    let cfg = config(&redis.url(), "cache:\n  ttl_seconds: 600\n");
    let a = Worker::start(&tmp.path().join("a"), &cfg, &["--open"]).await;
    let b = Worker::start(&tmp.path().join("b"), &cfg, &["--open"]).await;
    let seq = ingest_ok(&a.url, docs("cached", 6)).await;
    let text = "how stale cache entries are avoided";
    let probe = json!({"query": text, "top_k": 3, "min_sequence": seq});

    let first = query(&a.url, probe.clone()).await;
    assert_eq!(first["cache"], "miss");
    let again = query(&a.url, probe.clone()).await;
    assert_eq!(again["cache"], "l1");
    assert_eq!(again["hits"], first["hits"]);
    // Another replica finds the entry in Redis, with a TTL so volatile-lru may evict it.
    wait_for_key(&redis, "kb:test:cache:r:c:*").await;
    let key = redis.cli(&["--scan", "--pattern", "kb:test:cache:r:c:*"]);
    let ttl: i64 = redis
        .cli(&["TTL", key.lines().next().unwrap()])
        .parse()
        .unwrap();
    assert!((1..=600).contains(&ttl), "cache key TTL {ttl}");
    let shared = query(&b.url, probe.clone()).await;
    assert_eq!(shared["cache"], "l2");
    assert_eq!(shared["hits"], first["hits"]);

    // A write through the other replica makes every cached answer unreachable: a computes
    // a new one with the new best match, and b answers the same (computed or shared from
    // a's new entry, never the old one).
    let fresh = json!([{"id": "fresh", "text": text, "metadata": {"origin": "fresh", "n": 0}}]);
    let seq = ingest_ok(&b.url, fresh).await;
    let probe = json!({"query": text, "top_k": 3, "min_sequence": seq});
    let on_a = query(&a.url, probe.clone()).await;
    assert_eq!(on_a["cache"], "miss", "{on_a}");
    assert_eq!(on_a["hits"][0]["document_id"], "fresh");
    let on_b = query(&b.url, probe).await;
    assert_ne!(on_b["cache"], "l1", "{on_b}");
    assert_eq!(on_b["hits"], on_a["hits"]);

    // The query's embedding is cached too: another top_k misses the result cache but
    // reuses the vector.
    let series = r#"kb_worker_cache_lookups_total{level="l1",kind="embedding",outcome="hit"}"#;
    let before = counter(&metrics(&a).await, series);
    let other = query(&a.url, json!({"query": text, "top_k": 2})).await;
    assert_eq!(other["cache"], "miss");
    assert_eq!(counter(&metrics(&a).await, series), before + 1.0);
    // b's L2 hit counter matches the answers it reported as shared.
    let l2_hits = r#"kb_worker_cache_lookups_total{level="l2",kind="result",outcome="hit"}"#;
    let reported = [&shared, &on_b]
        .iter()
        .filter(|v| v["cache"] == "l2")
        .count();
    assert_eq!(counter(&metrics(&b).await, l2_hits), reported as f64);
}
