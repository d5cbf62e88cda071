//! Backups to S3-compatible object storage against a real S3 server (moto's server mode,
//! from PyPI, started per test): backup and restore give identical answers, a corrupt
//! object is refused, retention deletes only the oldest, a backup taken during ingestion
//! holds whole documents, and a knowledge base restored from a backup continues a fresh
//! Redis stream.

mod common;

use common::redis::{wait_for_port, Redis};
use common::{free_port, post_ok, Worker};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BUCKET: &str = "kb-backups";

/// A moto S3 server on a free port with one bucket; killed on drop.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    async fn start() -> S3 {
        let venv = std::env::var("VIRTUAL_ENV").expect("VIRTUAL_ENV (run through `make test`)");
        let port = free_port();
        let child = Command::new(Path::new(&venv).join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is not installed: run `make setup` (requirements.txt)");
        wait_for_port(port);
        let s3 = S3 { child, port };
        let created = reqwest::Client::new()
            .put(format!("{}/{BUCKET}", s3.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{created:?}");
        s3
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn store(&self) -> impl ObjectStore {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// Runs `kb-worker ARGS` with the AWS variables pointing here.
    fn kb_worker(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kb-worker"))
            .args(args)
            .envs(self.env())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn kb_worker_ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.kb_worker(args);
        assert!(
            out.status.success(),
            "kb-worker {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOPICS: [&str; 6] = [
    "Penguins huddle together to survive the Antarctic winter.",
    "Volcanoes release molten rock, ash and gases from the mantle.",
    "The stock market fell sharply after the interest rate decision.",
    "Sourdough bread needs a starter of wild yeast and bacteria.",
    "Kubernetes schedules pods onto nodes that satisfy their requests.",
    "The violin concerto ends with a fast and brilliant finale.",
];

fn docs(first: usize, n: usize) -> Value {
    let docs: Vec<Value> = (first..first + n)
        .map(|i| {
            json!({
                "id": format!("doc-{i}"),
                "text": format!("{} Note {i}.", TOPICS[i % TOPICS.len()]),
                "metadata": {"n": i, "topic": i % TOPICS.len()},
            })
        })
        .collect();
    json!({ "documents": docs })
}

/// The hits (document, chunk, score) of one query per topic.
async fn answers(url: &str) -> Vec<Vec<(String, String, f64)>> {
    let mut all = Vec::new();
    for topic in TOPICS {
        let hits = post_ok(
            url,
            "/v1/collections/docs/query",
            &json!({"query": topic, "top_k": 5}),
        )
        .await;
        all.push(
            hits["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["document_id"].as_str().unwrap().to_string(),
                        h["chunk_id"].as_str().unwrap().to_string(),
                        h["score"].as_f64().unwrap(),
                    )
                })
                .collect(),
        );
    }
    all
}

/// `kb-worker restore --from TARGET --data-dir DATA`.
fn restore_args<'a>(target: &'a str, data: &'a Path) -> [&'a str; 5] {
    [
        "restore",
        "--from",
        target,
        "--data-dir",
        data.to_str().unwrap(),
    ]
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_an_empty_directory_answers_identically() {
    let s3 = S3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let source = Worker::start(&tmp.path().join("a"), "", &["--open"]).await;
    post_ok(&source.url, "/v1/collections/docs/documents", &docs(0, 24)).await;
    let before = answers(&source.url).await;

    let target = url("prod/docs");
    let report = tmp.path().join("termination-log");
    let lines = s3.kb_worker_ok(&[
        "backup",
        "--url",
        &source.url,
        "--to",
        &target,
        "--keep",
        "3",
        "--sse",
        "AES256",
        "--report",
        report.to_str().unwrap(),
    ]);
    let manifest = &lines[0];
    let reported: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(&reported, manifest);
    assert_eq!(manifest["sequence"], 26, "{manifest}"); // create + model binding + 24 upserts
    assert_eq!(manifest["snapshot_format"], "KBSNAP02");
    let listed = s3.kb_worker_ok(&["backups", "list", "--from", &target]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], manifest["name"]);

    let data = tmp.path().join("b");
    let restored = s3.kb_worker_ok(&restore_args(&target, &data));
    assert_eq!(restored[0]["sequence"], 26);
    let copy = Worker::start(&data, "", &["--open"]).await;
    assert_eq!(answers(&copy.url).await, before);
}

/// A worker holding `n` documents, backed up once to `s3://BUCKET/prefix`.
struct BackedUp {
    s3: S3,
    tmp: tempfile::TempDir,
    target: String,
    manifest: Value,
}

async fn backed_up(n: usize, prefix: &str) -> BackedUp {
    let s3 = S3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let source = Worker::start(&tmp.path().join("a"), "", &["--open"]).await;
    post_ok(&source.url, "/v1/collections/docs/documents", &docs(0, n)).await;
    let target = url(prefix);
    let manifest = s3.kb_worker_ok(&["backup", "--url", &source.url, "--to", &target])[0].clone();
    BackedUp {
        s3,
        tmp,
        target,
        manifest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_object_is_refused_and_nothing_is_installed() {
    let BackedUp {
        s3,
        tmp,
        target,
        manifest,
    } = backed_up(4, "corrupt").await;

    // One flipped byte in the stored snapshot.
    let store = s3.store();
    let object = ObjectPath::from(format!(
        "corrupt/{}/snapshot.kbsnap",
        manifest["name"].as_str().unwrap()
    ));
    let mut bytes = store
        .get(&object)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[100] ^= 0x40;
    store.put(&object, bytes.into()).await.unwrap();

    let data = tmp.path().join("b");
    let out = s3.kb_worker(&restore_args(&target, &data));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is corrupt"), "{stderr}");
    assert!(stderr.contains("nothing was restored"), "{stderr}");
    let left: Vec<PathBuf> = std::fs::read_dir(&data)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_the_oldest_backups() {
    let s3 = S3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let source = Worker::start(&tmp.path().join("a"), "", &["--open"]).await;
    let target = url("kept");
    let mut sequences = Vec::new();
    for round in 0..4 {
        post_ok(
            &source.url,
            "/v1/collections/docs/documents",
            &docs(round, 1),
        )
        .await;
        let m = s3.kb_worker_ok(&[
            "backup",
            "--url",
            &source.url,
            "--to",
            &target,
            "--keep",
            "2",
        ]);
        sequences.push(m[0]["sequence"].as_u64().unwrap());
    }
    let listed: Vec<u64> = s3
        .kb_worker_ok(&["backups", "list", "--from", &target])
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![sequences[3], sequences[2]]);
    // Only the two kept backups' objects remain (snapshot + manifest each).
    let mut objects = Vec::new();
    let mut list = s3.store().list(Some(&ObjectPath::from("kept")));
    use futures::StreamExt;
    while let Some(meta) = list.next().await {
        objects.push(meta.unwrap().location.to_string());
    }
    assert_eq!(objects.len(), 4, "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_during_ingestion_holds_whole_documents() {
    let s3 = S3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // Small chunks: every document below is several chunks, written as one record.
    let config = "chunking:\n  max_tokens: 16\n  overlap: 4\n";
    let source = Worker::start(&tmp.path().join("a"), config, &["--open"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let writer = {
        let (url, stop, acked) = (source.url.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = (0..4)
                    .map(|k| TOPICS[(i + k) % TOPICS.len()])
                    .collect::<Vec<_>>()
                    .join(" ");
                let body = json!({"documents": [{"id": format!("w-{i}"), "text": text, "metadata": {"doc": i}}]});
                let r = post_ok(&url, "/v1/collections/docs/documents", &body).await;
                acked
                    .lock()
                    .unwrap()
                    .push((format!("w-{i}"), r["chunks"].as_u64().unwrap()));
                i += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let acked_before = acked.lock().unwrap().len();
    let target = url("live");
    let manifest = s3.kb_worker_ok(&["backup", "--url", &source.url, "--to", &target])[0].clone();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.iter().all(|(_, chunks)| *chunks > 1), "{acked:?}");

    let data = tmp.path().join("b");
    s3.kb_worker_ok(&restore_args(&target, &data));
    let copy = Worker::start(&data, config, &["--open"]).await;
    let mut present = 0;
    for (i, (id, chunks)) in acked.iter().enumerate() {
        let hits = post_ok(
            &copy.url,
            "/v1/collections/docs/query",
            &json!({"vector": vec![1.0; 384], "top_k": 100, "filter": {"doc": i}, "include_text": false}),
        )
        .await;
        let found = hits["hits"].as_array().unwrap().len() as u64;
        assert!(
            found == 0 || found == *chunks,
            "{id}: {found} of {chunks} chunks in the backup"
        );
        if found > 0 {
            present += 1;
        }
        // Everything acknowledged before the backup started is in it.
        if i < acked_before {
            assert_eq!(found, *chunks, "{id} was acknowledged before the backup");
        }
    }
    // Each request logs two records (create-if-absent, upsert), never split by a snapshot;
    // the first one a third, the collection's model.
    assert_eq!(manifest["sequence"].as_u64().unwrap(), 2 * present + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knowledge_base_restored_from_a_backup_continues_a_fresh_stream() {
    let BackedUp {
        s3,
        tmp,
        target,
        manifest,
    } = backed_up(6, "replicated").await;
    let sequence = manifest["sequence"].as_u64().unwrap();

    let data = tmp.path().join("restored");
    s3.kb_worker_ok(&restore_args(&target, &data));
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    let config = format!(
        "redis:\n  url: {}\n  key_prefix: kb:restored\nreplication:\n  wait_timeout_ms: 5000\n",
        redis.url()
    );
    let worker = Worker::start(&data, &config, &["--open"]).await;
    // New records are numbered after the backup's sequence and applied by the replica
    // (wait=applied answers only then; numbered from 1 they would be skipped as old).
    let resp = post_ok(
        &worker.url,
        "/v1/collections/docs/documents?wait=applied",
        &docs(100, 1),
    )
    .await;
    // Two records: create-if-absent and the upsert.
    assert_eq!(resp["sequence"].as_u64().unwrap(), sequence + 2, "{resp}");
    let hits = post_ok(
        &worker.url,
        "/v1/collections/docs/query",
        &json!({"query": TOPICS[100 % TOPICS.len()], "top_k": 10}),
    )
    .await;
    let ids: Vec<&str> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"doc-100"), "{ids:?}");
    assert!(ids.contains(&"doc-4"), "{ids:?}");
}
