//! Replicators on real `redis-server` processes: whole batches, and Redis going back in
//! time (a failover to a replica that missed writes, `FLUSHALL`).

use super::*;
use crate::log::redis::tests::{cli, log, server};
use crate::log::{ChunkRecord, Metadata, Metric};
use kb_config::WorkerConfig;
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

fn delete(doc: &str) -> Op {
    Op::Delete {
        collection: "c".into(),
        doc_id: doc.into(),
    }
}

/// A replicator on its own data directory, started.
async fn replica(log: RedisLog, dir: &Path, id: &str) -> Arc<Replicator> {
    let mut cfg = WorkerConfig::default();
    cfg.snapshot.every_records = 1_000_000;
    let store = Arc::new(Store::open_replicated(dir, &cfg, Device::Cpu).unwrap());
    let replication = ReplicationConfig {
        replica_id: Some(id.into()),
        ..ReplicationConfig::default()
    };
    let replicator = Replicator::new(log, store, replication);
    replicator.start();
    replicator
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
            while watching.load(Ordering::Relaxed) {
                let view = store.view();
                seen.insert(view.collections.get("c").map_or(0, |c| c.documents));
            }
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
    assert_eq!(seen, [0, 800].into(), "a reader saw part of the delete");
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
    a.write(vec![create()]).await.unwrap();
    let mut acknowledged = Vec::new();
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
            Err(e) => panic!("unexpected error: {e}"),
        }
        if i == 20 {
            cli(&server, &["FLUSHALL"]);
            flushed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused > 0, "writes were refused while the log was lost");
    let last = acknowledged.len();
    until("both replicas applied everything", || {
        a.status().applied_sequence == b.status().applied_sequence && documents(&a).len() == last
    })
    .await;
    acknowledged.sort();
    assert_eq!(
        documents(&a),
        acknowledged,
        "every acknowledged write is there"
    );
    assert_eq!(documents(&b), acknowledged);
}
