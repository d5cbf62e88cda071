//! Replicated mode against real `redis-server` processes on free loopback ports: workers
//! share one stream (aliases included), a late replica bootstraps from a peer's snapshot, and Redis killed
//! mid-ingestion loses no acknowledged write.

mod common;

use common::redis::Redis;
use common::replicated::*;
use common::{free_port, Worker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_stream_and_a_late_replica_bootstraps_from_a_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    let cfg = config(&redis.url(), "");
    let mut workers = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("w{i}"));
        workers.push(Worker::start(&dir, &cfg, &["--open"]).await);
    }
    // Each replica takes writes; every write lands on every replica.
    let mut last = 0;
    for (i, w) in workers.iter().enumerate() {
        for batch in 0..3 {
            last = last.max(ingest_ok(&w.url, docs(&format!("r{i}b{batch}"), 4)).await);
        }
    }
    let probe =
        json!({"query": "document number 3 about topic 1", "top_k": 5, "min_sequence": last});
    let expected = query(&workers[0].url, probe.clone()).await;
    assert_eq!(expected["hits"].as_array().unwrap().len(), 5);
    for w in &workers {
        assert_eq!(query(&w.url, probe.clone()).await["hits"], expected["hits"]);
        assert_eq!(documents(&w.url).await, 36);
        for origin in ["r0b0", "r1b2", "r2b1"] {
            assert_eq!(find(&w.url, origin, 3, last).await, format!("{origin}-3"));
        }
    }
    // A delete through one replica is gone on the others.
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/v1/collections/c/documents/r1b2-3",
            workers[2].url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seq = resp.json::<Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap();
    assert_eq!(find(&workers[0].url, "r1b2", 3, seq).await, Value::Null);
    let after_delete =
        json!({"query": "document number 3 about topic 1", "top_k": 5, "min_sequence": seq});
    // An alias set through one replica is taken by every replica at the same record.
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/aliases/live", workers[2].url))
        .json(&json!({"collection": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let aliased = resp.json::<Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap();
    let probe =
        json!({"query": "document number 3 about topic 1", "top_k": 5, "min_sequence": aliased});
    for w in &workers {
        let through_alias = query_in(&w.url, "live", probe.clone()).await;
        assert_eq!(
            through_alias["hits"],
            query(&w.url, probe.clone()).await["hits"]
        );
    }

    // Every replica snapshots every 5 records and heartbeats; the stream gets trimmed, so a
    // new replica can only join through a peer snapshot.
    let stream = "{kb:test}:log";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let first = redis.cli(&["XRANGE", stream, "-", "+", "COUNT", "1"]);
        if !first.starts_with("1-1") {
            break;
        }
        assert!(Instant::now() < deadline, "stream never trimmed: {first}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peers = format!("  peers: [\"{}\"]\n", workers[1].url);
    let late_cfg =
        config(&redis.url(), "").replace("replication:\n", &format!("replication:\n{peers}"));
    let late = Worker::start(&tmp.path().join("late"), &late_cfg, &["--open"]).await;
    let snapshots = std::fs::read_dir(tmp.path().join("late/snapshots"))
        .unwrap()
        .count();
    assert!(snapshots >= 1, "the late replica installed a peer snapshot");
    assert_eq!(
        query(&late.url, after_delete.clone()).await["hits"],
        query(&workers[1].url, after_delete.clone()).await["hits"]
    );
    assert_eq!(documents(&late.url).await, 35);
    // The alias and the collection's model came with the peer's snapshot and the stream.
    let through_alias = query_in(&late.url, "live", after_delete.clone()).await;
    assert_eq!(
        through_alias["hits"],
        query(&late.url, after_delete).await["hits"]
    );
    let c: Value = reqwest::get(format!("{}/v1/collections/c", late.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["vectors"].clone(), c["aliases"].clone()),
        (json!("model"), json!(["live"]))
    );
    assert!(c["model"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    // New writes reach the late replica too.
    let seq = ingest_ok(&workers[0].url, docs("after", 2)).await;
    assert_eq!(find(&late.url, "after", 1, seq).await, "after-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_ingestion_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&tmp.path().join("redis"), free_port());
    let cfg = config(&redis.url(), "");
    let writer = Worker::start(&tmp.path().join("w0"), &cfg, &["--open"]).await;
    let reader = Worker::start(&tmp.path().join("w1"), &cfg, &["--open"]).await;
    ingest_ok(&writer.url, docs("seed", 1)).await;

    let url = writer.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let ingestion = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut refused = 0;
        for i in 0.. {
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let doc = json!([{"id": format!("d{i}"), "text": format!("durable document {i}"), "metadata": {"origin": "durable", "n": i}}]);
            let resp = ingest(&url, doc).await;
            match resp.status().as_u16() {
                200 => {
                    let v: Value = resp.json().await.unwrap();
                    acked.push((i, v["sequence"].as_u64().unwrap()));
                }
                503 => {
                    assert!(resp.headers().contains_key("retry-after"));
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("unexpected status {other}: {}", resp.text().await.unwrap()),
            }
        }
        (acked, refused)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    // Reads keep working from the local index while Redis is down.
    let during = query(&reader.url, json!({"query": "seed document", "top_k": 1})).await;
    assert_eq!(during["hits"][0]["document_id"], "seed-0");
    // ... without the shared cache, which is down with Redis.
    assert_ne!(during["cache"], "l2", "{during}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let acked_before_restart = ingestion_progress(&writer.url).await;
    redis.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, refused) = ingestion.await.unwrap();
    assert!(refused > 0, "some writes hit the outage");
    let resumed = acked
        .iter()
        .filter(|(_, s)| *s > acked_before_restart)
        .count();
    assert!(resumed > 0, "writes resumed after the restart: {acked:?}");
    let last = acked.iter().map(|(_, s)| *s).max().unwrap();
    for w in [&writer, &reader] {
        for (i, _) in &acked {
            assert_eq!(find(&w.url, "durable", *i, last).await, format!("d{i}"));
        }
    }
    // Both replicas applied the same records, with no gap and no duplicate.
    let (a, b) = (readyz(&writer.url).await, readyz(&reader.url).await);
    assert_eq!(a["replication"]["stalled"], Value::Null, "{a}");
    assert_eq!(b["replication"]["stalled"], Value::Null, "{b}");
    assert_eq!(a["applied_sequence"], b["applied_sequence"]);
    assert_eq!(documents(&writer.url).await, documents(&reader.url).await);
}

/// One replica runs the current model and serves reads and writes; another, of a new model
/// (the bundled weights with CLS pooling), re-indexes the collection meanwhile. Every write
/// acknowledged by the old replica during the job is in the new collection, embedded by the
/// new model; no query fails; at the end the old name stands for the new collection on
/// both, and the old replica refuses to embed for it (409) instead of answering with the
/// wrong model, or, told its peers, hands those requests to the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_of_a_new_model_reindexes_while_the_old_one_serves_and_loses_no_write() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    // Each replica with its own name, as pods have (the owner of a re-index job).
    let cfg = config(&redis.url(), "");
    let named = |name: &str, peer: &str| {
        let peers = match peer {
            "" => String::new(),
            url => format!("  peers: [\"{url}\"]\n"),
        };
        cfg.replace(
            "replication:\n",
            &format!("replication:\n  replica_id: {name}\n{peers}"),
        )
    };
    let old = Worker::start(&tmp.path().join("old"), &named("old", ""), &["--open"]).await;
    let mut expected = std::collections::BTreeMap::new();
    for batch in 0..20 {
        let batch = docs(&format!("b{batch}"), 50);
        for d in batch.as_array().unwrap() {
            expected.insert(d["id"].as_str().unwrap().to_string(), d["text"].clone());
        }
        ingest_ok(&old.url, batch).await;
    }
    let cls = common::cls_model(tmp.path());
    // Not ready (the collection is of another model), but serving. The old replica has
    // trimmed the stream below its snapshots by now (every 2 s), so the new one starts
    // from the old one's snapshot, as the operator's pods do through the headless Service.
    let new = Worker::start_as(
        &tmp.path().join("new"),
        &named("new", &old.url),
        &cls,
        &["--open"],
        &[],
        "/livez",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (seen, wanted) = (readyz(&new.url).await, readyz(&old.url).await);
        if seen["applied_sequence"] == wanted["applied_sequence"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new replica did not catch up: {seen} (the old one: {wanted})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/collections/c/reindex", new.url))
        .json(&json!({"target": "c-cls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    // Writes (new documents, replaced ones, deletes) and queries on the old replica while
    // the job runs.
    let probe = json!({"query": "document number 3 about topic 1", "top_k": 3});
    let started = Instant::now();
    for round in 0..6 {
        let mut batch = docs(&format!("late{round}"), 5);
        let replaced = json!({"id": format!("b{round}-1"), "text": format!("replaced text {round} about owls"),
            "metadata": {"origin": "replaced", "n": round}});
        batch.as_array_mut().unwrap().push(replaced);
        for d in batch.as_array().unwrap() {
            expected.insert(d["id"].as_str().unwrap().to_string(), d["text"].clone());
        }
        ingest_ok(&old.url, batch).await;
        let gone = format!("b{round}-2");
        let resp = reqwest::Client::new()
            .delete(format!("{}/v1/collections/c/documents/{gone}", old.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        expected.remove(&gone);
        assert_eq!(
            query(&old.url, probe.clone()).await["hits"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
    let writes = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(180);
    let job = loop {
        let job: Value = reqwest::get(format!("{}/v1/jobs/c-cls", new.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "re-index stuck: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "finished", "{job}");
    eprintln!(
        "writes took {writes:?}, the job {:?}: {job}",
        started.elapsed()
    );
    // Every acknowledged write, as last written, and nothing deleted.
    let info: Value = reqwest::get(format!("{}/v1/collections/c", new.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["name"], "c-cls");
    assert_eq!(info["documents"], expected.len());
    for (id, text) in expected.iter().step_by(7).chain(
        expected
            .iter()
            .filter(|(id, _)| id.starts_with("late") || id.ends_with("-1")),
    ) {
        let doc: Value = reqwest::get(format!("{}/v1/collections/c/documents/{id}", new.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(&doc["chunks"][0]["text"], text, "{id}: {doc}");
    }
    // Embedded by the new model: a document's own text finds it with cosine 1 there.
    let replaced = json!({"query": "replaced text 5 about owls", "top_k": 1, "mode": "dense"});
    let hit = query(&new.url, replaced).await["hits"][0].clone();
    assert_eq!(hit["document_id"], "b5-1");
    assert!(hit["score"].as_f64().unwrap() > 0.999, "{hit}");
    assert_eq!(readyz(&new.url).await["status"], "ready");
    // The old replica sees the same swap and refuses to embed for the new collection.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/collections/c/query", old.url))
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    // Told where its peers are (as the operator tells it through the headless Service),
    // the old replica hands what it cannot serve to one that can: a client the Service
    // still sends to it gets the new model's answers, and its writes land.
    drop(old);
    let old = Worker::start_as(
        &tmp.path().join("old"),
        &named("old", &new.url),
        &common::model_dir(),
        &["--open"],
        &[],
        "/livez",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(&old.url).await["status"] != "model_mismatch" {
        assert!(Instant::now() < deadline, "the old replica did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        query(&old.url, probe.clone()).await["hits"],
        query(&new.url, probe.clone()).await["hits"]
    );
    let note = "a note written after the swap about herons";
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v1/collections/c/documents?wait=applied",
            old.url
        ))
        .json(&json!({"documents": [{"id": "after-swap", "text": note}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let hit = query(
        &new.url,
        json!({"query": note, "top_k": 1, "mode": "dense"}),
    )
    .await["hits"][0]
        .clone();
    assert_eq!(hit["document_id"], "after-swap");
    assert!(
        hit["score"].as_f64().unwrap() > 0.999,
        "embedded by the new model: {hit}"
    );
}
