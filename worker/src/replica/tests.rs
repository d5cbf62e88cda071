//! Replicators on real `redis-server` processes: whole batches, and Redis going back in
//! time (a failover to a replica that missed writes, `FLUSHALL`).

use super::*;
use crate::log::redis::tests::{cli, log, server};
use crate::log::{ChunkRecord, Metadata, Metric};
use kb_config::WorkerConfig;
use std::path::Path;
use tch::Device;

fn create() -> Op {
    Op::CreateCollection {
        collection: "c".into(),
        dim: 2,
        metric: Metric::Dot,
    }
}

fn upsert(doc: &str) -> Op {
    Op::Upsert {
        collection: "c".into(),
        doc_id: doc.into(),
        chunks: vec![ChunkRecord {
            chunk_id: format!("{doc}#0"),
            text: doc.into(),
            metadata: Metadata::new(),
            vector: vec![1.0, 0.5],
        }],
    }
}

fn tagged(doc: &str, tag: &str) -> Op {
    let Op::Upsert {
        collection,
        doc_id,
        mut chunks,
    } = upsert(doc)
    else {
        unreachable!()
    };
    chunks[0]
        .metadata
        .insert("tag".into(), serde_json::json!(tag));
    Op::Upsert {
        collection,
        doc_id,
        chunks,
    }
}

fn delete(doc: &str) -> Op {
    Op::Delete {
        collection: "c".into(),
        doc_id: doc.into(),
    }
}

/// A replicator on its own data directory, started.
async fn replica(log: RedisLog, dir: &Path, id: &str) -> Arc<Replicator> {
    let replicator = stopped_replica(log, dir, id);
    replicator.start();
    replicator
}

/// A replicator whose tailer and heartbeat are not started: a replica lagging behind.
fn stopped_replica(log: RedisLog, dir: &Path, id: &str) -> Arc<Replicator> {
    let mut cfg = WorkerConfig::default();
    cfg.snapshot.every_records = 1_000_000;
    let store = Arc::new(Store::open_replicated(dir, &cfg, Device::Cpu).unwrap());
    let replication = ReplicationConfig {
        replica_id: Some(id.into()),
        ..ReplicationConfig::default()
    };
    Replicator::new(log, store, replication)
}

fn documents(r: &Replicator) -> Vec<String> {
    let index = r.store.index();
    let mut ids: Vec<String> = index
        .get("c")
        .map(|c| {
            c.export()
                .unwrap()
                .into_iter()
                .map(|(row, _)| row.doc_id)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    ids
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_longer_than_one_read_is_applied_and_published_at_once() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let writer = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let mut ops = vec![create()];
    ops.extend((0..800).map(|i| upsert(&format!("d{i}"))));
    let seq = writer.write(ops).await.unwrap();
    writer.wait_applied(seq).await.unwrap();
    // One read returns the whole batch although it is longer than READ_BATCH.
    let whole = writer.read_whole_batches(1).await.unwrap();
    assert_eq!(whole.len(), 800);
    assert!(800 > READ_BATCH as usize);

    // A reader of another replica sees the 800 deletes all or none.
    let reader = replica(log(&server).await, &dir.path().join("b"), "b").await;
    reader.wait_applied(seq).await.unwrap();
    let store = reader.store.clone();
    let watching = Arc::new(AtomicBool::new(true));
    let seen = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let documents = || store.view().collections.get("c").map_or(0, |c| c.documents);
            while watching.load(Ordering::Relaxed) {
                seen.insert(documents());
            }
            seen.insert(documents());
            seen
        })
    };
    let deleted = writer
        .write((0..800).map(|i| delete(&format!("d{i}"))).collect())
        .await
        .unwrap();
    reader.wait_applied(deleted).await.unwrap();
    watching.store(false, Ordering::Relaxed);
    let seen = seen.join().unwrap();
    assert!(
        seen.iter().all(|n| [0, 800].contains(n)) && seen.contains(&0),
        "a reader saw part of the delete: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_redis_that_missed_writes_refuses_writes_then_reseeds_without_reusing_sequences(
) {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let b = replica(log(&server).await, &dir.path().join("b"), "b").await;
    let mut ops = vec![create()];
    ops.extend((0..4).map(|i| upsert(&format!("d{i}"))));
    let five = a.write(ops).await.unwrap();
    assert_eq!(five, 5);
    a.wait_applied(5).await.unwrap();
    b.wait_applied(5).await.unwrap();
    let before = a.epoch_id();
    // The Redis replica promoted by a failover had only the first three records.
    cli(&server, &["SET", "{t}:seq", "3"]);
    cli(&server, &["XDEL", "{t}:log", "4-1", "5-1"]);
    let refused = b.write(vec![upsert("lost")]).await;
    assert!(
        matches!(refused, Err(ReplicaError::Regressed(_))),
        "{refused:?}"
    );
    assert_eq!(
        cli(&server, &["GET", "{t}:seq"]),
        "3",
        "no sequence was reused"
    );
    until("both replicas report the regression", || {
        a.status().regressed.is_some() && b.status().regressed.is_some()
    })
    .await;
    assert!(a.is_caught_up(), "a regressed replica keeps serving reads");
    // The most advanced replica re-seeds the stream after 5; the other continues in it.
    until("writes are accepted again", || {
        !a.is_regressed() && !b.is_regressed() && a.epoch_id() == b.epoch_id()
    })
    .await;
    assert_ne!(a.epoch_id(), before);
    let next = b.write(vec![upsert("after")]).await.unwrap();
    assert_eq!(next, 6, "numbering continues after what replicas applied");
    a.wait_applied(6).await.unwrap();
    b.wait_applied(6).await.unwrap();
    assert_eq!(documents(&a), ["after", "d0", "d1", "d2", "d3"]);
    assert_eq!(documents(&a), documents(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_during_ingestion_loses_no_acknowledged_write_and_replicas_agree() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let b = replica(log(&server).await, &dir.path().join("b"), "b").await;
    let created = a.write(vec![create()]).await.unwrap();
    a.wait_applied(created).await.unwrap();
    b.wait_applied(created).await.unwrap();
    let mut acknowledged = Vec::new();
    // Writes whose outcome is unknown (Redis did not answer in time on a loaded machine).
    let mut unknown = Vec::new();
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut i = 0;
    let mut flushed = false;
    while acknowledged.len() < 40 || !flushed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never resumed"
        );
        let doc = format!("d{i}");
        i += 1;
        let writer = if i % 2 == 0 { &a } else { &b };
        match writer.write(vec![upsert(&doc)]).await {
            Ok(seq) => {
                writer.wait_applied(seq).await.unwrap();
                acknowledged.push(doc);
            }
            Err(ReplicaError::Regressed(_)) => refused += 1,
            Err(ReplicaError::Redis(e)) => {
                eprintln!("{doc}: outcome unknown: {e}");
                unknown.push(doc);
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        if i == 20 {
            // Between two writes, once both replicas applied everything: a replica
            // behind the re-seeded sequence is cut off until it bootstraps from a peer
            // (docs/worker.md), which is not what this test is about.
            let logged = a.log_seq().max(b.log_seq());
            a.wait_applied(logged).await.unwrap();
            b.wait_applied(logged).await.unwrap();
            cli(&server, &["FLUSHALL"]);
            flushed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused > 0, "writes were refused while the log was lost");
    let last = acknowledged.len();
    until("both replicas applied everything", || {
        a.status().applied_sequence == b.status().applied_sequence && documents(&a).len() >= last
    })
    .await;
    let found = documents(&a);
    assert_eq!(documents(&b), found, "the replicas agree");
    for doc in &acknowledged {
        assert!(found.contains(doc), "acknowledged {doc} is lost");
    }
    for doc in &found {
        assert!(
            acknowledged.contains(doc) || unknown.contains(doc),
            "{doc} was never written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_by_filter_sent_to_a_lagging_replica_spares_a_document_reingested_elsewhere() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let first = a
        .write(vec![create(), tagged("keep", "old"), tagged("gone", "old")])
        .await
        .unwrap();
    let b = stopped_replica(log(&server).await, &dir.path().join("b"), "b");
    let applied = b
        .store
        .apply_replicated(&log(&server).await.read_after(0, 10, None).await.unwrap())
        .unwrap();
    assert_eq!(applied, first);
    // The replicator starts from what its store applied.
    let b = Replicator::new(b.log.clone(), b.store.clone(), b.cfg.clone());
    // "keep" is re-ingested through A with a new tag and acknowledged...
    let reingested = a.write(vec![tagged("keep", "new")]).await.unwrap();
    a.wait_applied(reingested).await.unwrap();
    // ...then B, which has not applied that yet, takes a delete of everything tagged old.
    let filter = serde_json::json!({"tag": "old"}).to_string();
    let deleted = b
        .write(vec![Op::DeleteMatching {
            collection: "c".into(),
            filter,
        }])
        .await
        .unwrap();
    b.start();
    a.wait_applied(deleted).await.unwrap();
    b.wait_applied(deleted).await.unwrap();
    assert_eq!(
        documents(&a),
        ["keep"],
        "the acknowledged re-ingest survives"
    );
    assert_eq!(documents(&b), ["keep"]);
    assert_eq!(a.store.index().deleted_by(deleted), Some(1));
    assert_eq!(b.store.index().deleted_by(deleted), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_holds_back_trimming_before_its_model_is_loaded() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let mut ops = vec![create()];
    ops.extend((0..9).map(|i| upsert(&format!("d{i}"))));
    a.write(ops).await.unwrap();
    // A replica restarting with a snapshot at 4 registers before anything is loaded.
    let starting_dir = dir.path().join("starting");
    let mut index = crate::index::Index::new(Device::Cpu);
    for record in log(&server).await.read_after(0, 4, None).await.unwrap() {
        index.apply(&record).unwrap();
    }
    let snapshots = starting_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    crate::snapshot::save(&index, &snapshots, 2).unwrap();
    let task = heartbeat_while_starting(log(&server).await, "starting".into(), &starting_dir);
    let registry = log(&server).await;
    until("the starting replica is registered", || {
        cli(&server, &["HEXISTS", "{t}:replicas", "starting"]) == "1"
    })
    .await;
    // A's snapshots are past 4; trimming keeps what the starting replica will replay.
    registry
        .heartbeat("a", 10, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(registry.trim().await.unwrap(), 4);
    assert_eq!(registry.read_after(4, 100, None).await.unwrap().len(), 6);
    task.abort();
}

/// Milliseconds the heartbeat pauses after reading the counter (widens the window in
/// which records are applied after it).
static COUNTER_READ_PAUSE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(super) async fn pause_after_counter_read() {
    let ms = COUNTER_READ_PAUSE_MS.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_redis_under_continuous_writes_is_never_taken_for_a_regression() {
    // The heartbeat reads the counter while records keep being applied: a record applied
    // after that read must not look like Redis going behind.
    COUNTER_READ_PAUSE_MS.store(300, Ordering::Relaxed);
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(log(&server).await, &dir.path().join("a"), "a").await;
    let b = replica(log(&server).await, &dir.path().join("b"), "b").await;
    let created = a.write(vec![create()]).await.unwrap();
    // A write is appended to the stream and applied by each replica's follower, the
    // writer's own included: both must hold the collection before upserting into it.
    a.wait_applied(created).await.unwrap();
    b.wait_applied(created).await.unwrap();
    let deadline = tokio::time::Instant::now() + HEARTBEAT * 3;
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let writer = if i % 2 == 0 { &a } else { &b };
        match writer.write(vec![upsert(&format!("d{i}"))]).await {
            Ok(_) | Err(ReplicaError::Redis(_)) => {}
            Err(e) => panic!("write {i} refused: {e}"),
        }
        assert!(a.status().regressed.is_none() && b.status().regressed.is_none());
        i += 1;
    }
    COUNTER_READ_PAUSE_MS.store(0, Ordering::Relaxed);
}
