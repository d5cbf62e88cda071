use super::*;
use crate::index::filter::Filter;
use crate::index::flat::faults;
use crate::log::{ChunkRecord, Metadata, Metric};
use tch::Device;

fn upsert(doc: &str, v: Vec<f32>) -> Op {
    Op::Upsert {
        collection: "c".into(),
        doc_id: doc.into(),
        chunks: vec![ChunkRecord {
            chunk_id: format!("{doc}#0"),
            text: doc.into(),
            metadata: Metadata::new(),
            vector: v,
        }],
    }
}

/// Background snapshot writes wait here while a test holds it.
pub(super) static SNAPSHOT_GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn create() -> Op {
    Op::CreateCollection {
        collection: "c".into(),
        dim: 2,
        metric: Metric::Dot,
    }
}

fn cfg(every: u64) -> WorkerConfig {
    let mut cfg = WorkerConfig::default();
    cfg.snapshot.every_records = every;
    cfg
}

fn docs(store: &Store) -> usize {
    store.index().get("c").map_or(0, |c| c.stats().documents)
}

#[test]
fn writes_survive_reopen_through_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), &cfg(3), Device::Cpu).unwrap();
        store
            .write(vec![create(), upsert("a", vec![1.0, 0.0])])
            .unwrap();
        store.write(vec![upsert("b", vec![0.0, 1.0])]).unwrap(); // snapshot at 3
        store.write(vec![upsert("c", vec![1.0, 1.0])]).unwrap(); // only in the log
        store.wait_for_background_snapshot();
    }
    let (store, recovery) = Store::open(dir.path(), &cfg(3), Device::Cpu).unwrap();
    assert_eq!(recovery.snapshot_seq, Some(3));
    assert_eq!(recovery.replayed, 1);
    assert_eq!(docs(&store), 3);
    assert_eq!(store.last_seq(), 4);
    let hits = &store
        .index()
        .get("c")
        .unwrap()
        .search(&[vec![1.0, 1.0]], 1, &Filter::default())
        .unwrap()[0];
    assert_eq!(hits[0].row.doc_id, "c");
}

#[test]
fn a_failing_op_leaves_log_and_index_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    store.write(vec![create()]).unwrap();
    let err = store.write(vec![upsert("a", vec![1.0, 0.0]), upsert("b", vec![1.0])]);
    assert!(matches!(
        err,
        Err(StoreError::Index(IndexError::Dimension { .. }))
    ));
    assert_eq!(store.last_seq(), 1);
    assert_eq!(docs(&store), 0);
}

#[test]
fn upsert_into_a_collection_created_in_the_same_batch_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    assert_eq!(
        store
            .write(vec![create(), upsert("a", vec![1.0, 0.0])])
            .unwrap(),
        2
    );
    assert_eq!(docs(&store), 1);
}

fn vector_of(store: &Store, doc: &str) -> Option<Vec<f32>> {
    let index = store.index();
    let c = index.get("c")?;
    c.export()
        .unwrap()
        .into_iter()
        .find(|(row, _)| row.doc_id == doc)
        .map(|(_, v)| v)
}

#[test]
fn an_apply_failure_after_the_append_halts_writes_instead_of_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    store
        .write(vec![create(), upsert("a", vec![1.0, 0.0])])
        .unwrap();
    // The check passes (no growth: the rows fit the first allocation); storing them fails.
    faults::inject(faults::Fault::Fail);
    let err = store.write(vec![upsert("a", vec![0.0, 1.0])]).unwrap_err();
    assert!(matches!(err, StoreError::Halted(_)), "{err}");
    assert!(
        err.public_message().contains("restart"),
        "{}",
        err.public_message()
    );
    // Nothing was lost: the previous version of the document is still served.
    assert_eq!(vector_of(&store, "a"), Some(vec![1.0, 0.0]));
    assert!(store.halted().is_some());
    // Later writes are refused too (503), not applied past the hole.
    assert!(matches!(
        store.write(vec![upsert("b", vec![1.0, 1.0])]),
        Err(StoreError::Halted(_))
    ));
    assert_eq!(store.last_seq(), 3);
    drop(store);
    // A restart replays the logged record.
    let (store, recovery) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    assert_eq!(recovery.replayed, 3);
    assert!(store.halted().is_none());
    assert_eq!(vector_of(&store, "a"), Some(vec![0.0, 1.0]));
    assert_eq!(docs(&store), 1);
}

#[test]
fn a_panic_while_applying_halts_writes_and_leaves_reads_working() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    store
        .write(vec![create(), upsert("a", vec![1.0, 0.0])])
        .unwrap();
    faults::inject(faults::Fault::Panic);
    let err = store.write(vec![upsert("b", vec![0.0, 1.0])]).unwrap_err();
    assert!(matches!(err, StoreError::Halted(_)), "{err}");
    // No poisoned lock: reads, health and snapshots go on.
    assert_eq!(docs(&store), 1);
    assert!(store.health().halted.is_some());
    store.snapshot().unwrap();
}

#[test]
fn an_upsert_that_cannot_be_stored_keeps_the_previous_chunks() {
    let mut index = Index::new(Device::Cpu);
    let record = |seq, op| Record { seq, op };
    index.apply(&record(1, create())).unwrap();
    index
        .apply(&record(2, upsert("a", vec![1.0, 0.0])))
        .unwrap();
    faults::inject(faults::Fault::Fail);
    let err = index
        .apply(&record(3, upsert("a", vec![0.0, 1.0])))
        .unwrap_err();
    assert!(err.is_resource());
    // Not applied: the sequence stays, so the record can be retried.
    assert_eq!(index.applied(), 2);
    let c = index.get("c").unwrap();
    assert_eq!(c.stats().chunks, 1);
    assert_eq!(c.export().unwrap()[0].1, vec![1.0, 0.0]);
    index
        .apply(&record(3, upsert("a", vec![0.0, 1.0])))
        .unwrap();
    assert_eq!(
        index.get("c").unwrap().export().unwrap()[0].1,
        vec![0.0, 1.0]
    );
}

#[test]
fn a_replica_stops_at_a_record_it_cannot_apply_and_resumes_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_replicated(dir.path(), &cfg(0), Device::Cpu).unwrap();
    let records: Vec<Record> = [
        create(),
        upsert("a", vec![1.0, 0.0]),
        upsert("b", vec![0.0, 1.0]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, op)| Record {
        seq: i as Seq + 1,
        op,
    })
    .collect();
    store.apply_replicated(&records[..1]).unwrap();
    faults::inject(faults::Fault::Fail);
    let err = store.apply_replicated(&records[1..]).unwrap_err();
    assert!(matches!(err, StoreError::Apply { seq: 2, .. }), "{err}");
    assert_eq!(store.index().applied(), 1);
    assert_eq!(store.apply_replicated(&records[1..]).unwrap(), 3);
    assert_eq!(docs(&store), 2);
}

#[test]
fn recovery_refuses_a_gap_between_the_snapshot_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
        store
            .write(vec![create(), upsert("a", vec![1.0, 0.0])])
            .unwrap();
        store.snapshot().unwrap(); // the log now starts after record 2
        store.write(vec![upsert("b", vec![0.0, 1.0])]).unwrap();
    }
    // The snapshot is lost: replaying the log alone would serve only document b.
    for (_, path) in snapshot::list(&dir.path().join("snapshots")).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    let err = Store::open(dir.path(), &cfg(0), Device::Cpu)
        .err()
        .expect("a gap");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Recovery(_)), "{message}");
    assert!(message.contains("no valid snapshot was found"), "{message}");
    assert!(message.contains("records 1..=2 are missing"), "{message}");
    assert!(message.contains("kb-worker restore"), "{message}");
}

#[test]
fn a_failing_automatic_snapshot_backs_off_instead_of_retrying_on_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(1), Device::Cpu).unwrap();
    // A file where the snapshot directory belongs: every snapshot write fails.
    std::fs::write(dir.path().join("snapshots"), b"in the way").unwrap();
    store.write(vec![create()]).unwrap();
    for i in 0..5 {
        store
            .write(vec![upsert(&format!("d{i}"), vec![1.0, 0.0])])
            .unwrap();
    }
    // Writes were acknowledged; one attempt failed and the next waits for its backoff.
    // (The attempt runs on a background thread: on a busy machine it may still be running
    // after the fifth write, so it is reaped here before counting.)
    store.wait_for_background_snapshot();
    assert_eq!(store.health().snapshot_failures, 1);
    assert_eq!(docs(&store), 5);
    std::fs::remove_file(dir.path().join("snapshots")).unwrap();
    std::thread::sleep(SNAPSHOT_BACKOFF + Duration::from_millis(100));
    store.write(vec![upsert("late", vec![0.0, 1.0])]).unwrap();
    store.wait_for_background_snapshot();
    assert_eq!(store.health().snapshot_failures, 0);
    assert_eq!(store.oldest_snapshot_seq(), 7);
}

#[test]
fn temporary_files_of_an_interrupted_snapshot_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    // Names of this build (a snapshot being written, one being received) and of older ones.
    let stale = [
        format!(".{}.3.tmp-4242", snapshot::file_name(9)),
        ".incoming-0.tmp-4242".to_string(),
        format!(".{}.tmp-4242", snapshot::file_name(9)),
    ]
    .map(|name| snapshots.join(name));
    for file in &stale {
        std::fs::write(file, b"half a snapshot").unwrap();
    }
    let (_store, recovery) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    assert_eq!(recovery.stale_temporary_files, 3);
    assert!(stale.iter().all(|f| !f.exists()));
}

#[test]
fn a_replica_snapshots_in_the_background_at_a_consistent_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_replicated(dir.path(), &cfg(3), Device::Cpu).unwrap();
    let records: Vec<Record> = std::iter::once(create())
        .chain((0..4).map(|i| upsert(&format!("d{i}"), vec![i as f32, 1.0])))
        .enumerate()
        .map(|(i, op)| Record {
            seq: i as Seq + 1,
            op,
        })
        .collect();
    assert_eq!(store.apply_replicated(&records[..3]).unwrap(), 3);
    store.wait_for_background_snapshot();
    assert_eq!(store.oldest_snapshot_seq(), 3);
    assert_eq!(store.apply_replicated(&records[3..]).unwrap(), 5);
    store.wait_for_background_snapshot();
    // The snapshot holds exactly the first three records: it reloads to sequence 3
    // with the two documents upserted by then.
    let reopened = Store::open_replicated(dir.path(), &cfg(3), Device::Cpu).unwrap();
    assert_eq!(reopened.index().applied(), 3);
    assert_eq!(docs(&reopened), 2);
}

#[test]
fn a_cpu_index_that_would_outgrow_the_pod_is_refused_before_logging() {
    use crate::host::{tests::fix, HostMemory};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    // 200 MiB left under the cgroup limit: less than the headroom the worker keeps.
    let tight = fix(HostMemory {
        limit: Some(300 << 20),
        working_set: 100 << 20,
        machine_available: Some(8 << 30),
    });
    // Within the collection's first allocation nothing grows, so nothing is refused.
    store
        .write(vec![create(), upsert("a", vec![1.0, 0.0])])
        .unwrap();
    let many: Vec<Op> = (0..1100)
        .map(|i| upsert(&format!("d{i}"), vec![1.0, i as f32]))
        .collect();
    let err = store.write(many.clone()).unwrap_err();
    assert!(
        matches!(err, StoreError::Index(IndexError::Capacity(_))),
        "{err}"
    );
    assert!(
        err.public_message().contains("resources.limits.memory"),
        "{}",
        err.public_message()
    );
    assert_eq!(store.last_seq(), 2, "nothing was logged");
    assert_eq!(docs(&store), 1);
    // With room, the same write lands.
    drop(tight);
    let _roomy = fix(HostMemory {
        limit: Some(4 << 30),
        working_set: 100 << 20,
        machine_available: Some(8 << 30),
    });
    store.write(many).unwrap();
    assert_eq!(docs(&store), 1101);
}

/// First sequences of the log's segments.
fn segment_starts(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".wal")?
                .parse()
                .ok()
        })
        .collect();
    starts.sort();
    starts
}

#[test]
fn writes_go_on_while_an_automatic_snapshot_is_written_and_the_log_is_truncated_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(2);
    cfg.snapshot.keep = 1;
    let (store, _) = Store::open(dir.path(), &cfg, Device::Cpu).unwrap();
    let gate = SNAPSHOT_GATE.lock().unwrap_or_else(|e| e.into_inner());
    store
        .write(vec![create(), upsert("a", vec![1.0, 0.0])])
        .unwrap(); // a snapshot at 2 is due: frozen, its write held at the gate
    for i in 0..5 {
        store
            .write(vec![upsert(&format!("d{i}"), vec![0.0, 1.0])])
            .unwrap();
    }
    assert_eq!(
        docs(&store),
        6,
        "writes were applied while the snapshot was held"
    );
    assert_eq!(store.oldest_snapshot_seq(), 0, "nothing written yet");
    drop(gate);
    store.wait_for_background_snapshot();
    assert_eq!(
        store.oldest_snapshot_seq(),
        2,
        "the frozen sequence, not a later one"
    );
    assert_eq!(store.last_snapshot().map(|l| l.sequence), Some(2));
    // Records 3..=7 are only in the log: it keeps them.
    assert_eq!(segment_starts(dir.path())[0], 1);
    // The next snapshot (at 8, the only one kept) makes the first segment redundant.
    store.write(vec![upsert("e", vec![1.0, 1.0])]).unwrap();
    store.wait_for_background_snapshot();
    assert_eq!(store.oldest_snapshot_seq(), 8);
    let starts = segment_starts(dir.path());
    assert!(
        starts[0] > 1,
        "the log was truncated below the snapshot: {starts:?}"
    );
    drop(store);
    let (store, recovery) = Store::open(dir.path(), &cfg, Device::Cpu).unwrap();
    assert_eq!(recovery.snapshot_seq, Some(8));
    assert_eq!(recovery.replayed, 0);
    assert_eq!(docs(&store), 7);
}

#[test]
fn a_logged_write_that_no_longer_fits_stops_the_start_with_the_reason() {
    use crate::host::{tests::fix, HostMemory, HEADROOM};
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
        store.write(vec![create()]).unwrap();
        let ops = (0..1500)
            .map(|i| upsert(&format!("d{i}"), vec![1.0, 0.0]))
            .collect();
        store.write(ops).unwrap();
    }
    // 1,500 rows outgrow the first allocation (1,024); 4 KB are free.
    let tight = fix(HostMemory {
        limit: Some((1 << 30) + HEADROOM + 4096),
        working_set: 1 << 30,
        machine_available: None,
    });
    let err = Store::open(dir.path(), &cfg(0), Device::Cpu)
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("resources.limits.memory"), "{msg}");
    drop(tight);
    let (store, recovery) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    assert_eq!(recovery.replayed, 1501);
    assert_eq!(docs(&store), 1500);
}

#[test]
fn writes_go_on_while_a_snapshot_for_download_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &cfg(0), Device::Cpu).unwrap();
    store
        .write(vec![create(), upsert("a", vec![1.0, 0.0])])
        .unwrap();
    let store = Arc::new(store);
    let gate = SNAPSHOT_GATE.lock().unwrap_or_else(|e| e.into_inner());
    let snapshot = std::thread::spawn({
        let store = store.clone();
        move || store.snapshot_file().map(|(path, _)| path)
    });
    // Frozen at 2, its file held at the gate.
    while store.on_demand.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let store = store.clone();
        move || tx.send(store.write(vec![upsert("b", vec![0.0, 1.0])]).is_ok())
    });
    // A liveness bound, not a speed goal: the write needs nothing the snapshot holds.
    let written = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(written, Ok(true), "a write waited for the snapshot's file");
    drop(gate);
    let path = snapshot.join().unwrap().unwrap();
    assert_eq!(snapshot::sequence_of_file_name(&path), Some(2));
    assert_eq!(docs(&store), 2);
    let last = store.last_snapshot().expect("recorded");
    assert_eq!(last.sequence, 2);
    assert_eq!(last.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(
        last.seconds >= 0.0 && last.finished_unix > 1.7e9,
        "{last:?}"
    );
}
