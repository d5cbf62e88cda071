//! Every acknowledged write survives a SIGKILL in the middle of ingestion.

mod common;

use common::Worker;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

async fn ingest_until_killed(url: String, first: u64, acked: Arc<Mutex<Vec<u64>>>) {
    let client = reqwest::Client::new();
    for i in first.. {
        let body = json!({"documents": [{
            "id": format!("doc-{i}"),
            "text": format!("Document number {i} talks about topic {} in some detail.", i % 7),
            "metadata": {"n": i},
        }]});
        let resp = client
            .post(format!("{url}/v1/collections/crash/documents"))
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().push(i),
            _ => return,
        }
    }
}

/// Ingests with `writers` concurrent clients until at least `acknowledged` documents are
/// acknowledged, SIGKILLs the worker with requests in flight, and returns the
/// acknowledged document numbers.
async fn ingest_then_kill(worker: &mut Worker, writers: u64, acknowledged: usize) -> Vec<u64> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..writers)
        .map(|w| {
            tokio::spawn(ingest_until_killed(
                worker.url.clone(),
                w * 1_000_000,
                acked.clone(),
            ))
        })
        .collect();
    while acked.lock().unwrap().len() < acknowledged {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    worker.kill();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_documents_survive_sigkill_mid_ingestion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Frequent snapshots so recovery exercises snapshot + WAL replay together.
    let config = "snapshot:\n  every_records: 25\n";
    let mut worker = Worker::start(&data, config, &["--open"]).await;
    let acked = ingest_then_kill(&mut worker, 3, 60).await;
    let worker = Worker::start(&data, config, &["--open"]).await;
    let client = reqwest::Client::new();
    for i in acked {
        let hits: Value = client
            .post(format!("{}/v1/collections/crash/query", worker.url))
            .json(&json!({"query": format!("Document number {i}"), "top_k": 1, "filter": {"n": i}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            hits["hits"][0]["document_id"],
            format!("doc-{i}"),
            "acknowledged doc-{i} lost: {hits}"
        );
    }
}

/// Builds the fsync journal shim (worker/tests/fixtures/sync_journal.c) into `dir`.
fn sync_journal_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sync_journal.c");
    let library = dir.join("libsyncjournal.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fsync journal shim");
    assert!(status.success(), "building {}", source.display());
    library
}

/// Cuts every file under `data` back to the size it had at its last fsync (by inode, so
/// a synced file renamed afterwards keeps its content), to nothing if it was never
/// synced: what a power loss leaves of data the kernel had not written out.
fn drop_unsynced_writes(data: &std::path::Path, journal: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut synced = std::collections::HashMap::new();
    for line in std::fs::read_to_string(journal).unwrap_or_default().lines() {
        if let Some((inode, size)) = line.split_once(' ') {
            synced.insert(inode.parse::<u64>().unwrap(), size.parse::<u64>().unwrap());
        }
    }
    let mut dropped = 0;
    for entry in walkdir::WalkDir::new(data) {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if !meta.is_file() {
            continue;
        }
        let keep = synced.get(&meta.ino()).copied().unwrap_or(0);
        if meta.len() > keep {
            dropped += meta.len() - keep;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(entry.path())
                .unwrap();
            file.set_len(keep).unwrap();
        }
    }
    dropped
}

/// Ingests with two writers, SIGKILLs the worker mid-ingestion, drops every write not
/// followed by an fsync, restarts, and returns (acknowledged, missing after restart).
async fn crash_dropping_unsynced_writes(fsync: &str) -> (usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let journal = tmp.path().join("synced.journal");
    let shim = sync_journal_shim(tmp.path());
    // No automatic snapshots: what survives is what the WAL made durable.
    let config = format!("log:\n  fsync: {fsync}\nsnapshot:\n  every_records: 0\n");
    let env = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("KB_SYNC_JOURNAL", journal.to_str().unwrap()),
    ];
    let mut worker = Worker::start_with_env(&data, &config, &["--open"], &env).await;
    let acked = ingest_then_kill(&mut worker, 2, 40).await;
    let dropped = drop_unsynced_writes(&data, &journal);
    eprintln!("log.fsync {fsync}: dropped {dropped} unsynced bytes");
    let worker = Worker::start(&data, &config, &["--open"]).await;
    let client = reqwest::Client::new();
    let mut missing = 0;
    for &i in &acked {
        let found: Value = client
            .get(format!(
                "{}/v1/collections/crash/documents/doc-{i}",
                worker.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if found["id"] != format!("doc-{i}") {
            missing += 1;
        }
    }
    (acked.len(), missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_always_acknowledged_writes_survive_a_crash_that_drops_unsynced_data() {
    let (acked, missing) = crash_dropping_unsynced_writes("always").await;
    assert!(acked >= 40);
    assert_eq!(
        missing, 0,
        "{missing} of {acked} acknowledged documents lost"
    );
}

/// The control: the same crash with `log.fsync: never` does lose acknowledged writes, so
/// the layer really drops what was not synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_never_the_same_crash_loses_acknowledged_writes() {
    let (acked, missing) = crash_dropping_unsynced_writes("never").await;
    assert!(
        missing > 0,
        "nothing of {acked} acknowledged documents was lost"
    );
}
