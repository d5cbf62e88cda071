//! Replicated mode against real `redis-server` processes on free loopback ports: workers
//! share one stream, a late replica bootstraps from a peer's snapshot, Redis killed
//! mid-ingestion loses no acknowledged write, cached results are shared and never outlive a
//! write, and Sentinel and Cluster topologies work.

mod common;

use common::{free_port, Worker};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` with an fsync-always AOF in its own directory; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path, port: u16) -> Redis {
        Redis::start_with(dir, port, &[])
    }

    /// Starts with extra `--name value` arguments (cluster mode, for example).
    fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", dir.to_str().unwrap()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run `make setup`");
        wait_for_port(port);
        Redis {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        *self = Redis::start(&self.dir.clone(), self.port);
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after 20 s");
}

fn config(redis: &str, extra: &str) -> String {
    format!(
        "redis:\n  url: {redis}\n  key_prefix: kb:test\nsnapshot:\n  every_records: 5\n  keep: 2\nreplication:\n  max_ready_lag: 0\n  wait_timeout_ms: 20000\n{extra}"
    )
}

async fn ingest(url: &str, docs: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/collections/c/documents"))
        .json(&json!({ "documents": docs }))
        .send()
        .await
        .unwrap()
}

async fn ingest_ok(url: &str, docs: Value) -> u64 {
    let resp = ingest(url, docs).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap()
}

async fn query(url: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/collections/c/query"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// The document with metadata `origin`/`n`, found by filter once `min_sequence` applied.
async fn find(url: &str, origin: &str, n: usize, min_sequence: u64) -> Value {
    let probe = json!({
        "vector": vec![1.0; 384], "top_k": 1, "min_sequence": min_sequence,
        "filter": {"origin": origin, "n": n}, "include_text": false,
    });
    query(url, probe).await["hits"][0]["document_id"].clone()
}

async fn documents(url: &str) -> u64 {
    let v: Value = reqwest::get(format!("{url}/v1/collections/c"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["documents"].as_u64().unwrap()
}

/// The highest sequence this worker has applied.
async fn ingestion_progress(url: &str) -> u64 {
    readyz(url).await["applied_sequence"].as_u64().unwrap()
}

async fn readyz(url: &str) -> Value {
    reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn docs(prefix: &str, n: usize) -> Value {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("{prefix}-{i}"),
                "text": format!("{prefix} document number {i} about topic {}", i * 7 % 5),
                "metadata": {"origin": prefix, "n": i},
            })
        })
        .collect()
}

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
        query(&workers[1].url, after_delete).await["hits"]
    );
    assert_eq!(documents(&late.url).await, 35);
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

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_topology_replicates() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    let sentinel_port = free_port();
    let sentinel_conf = tmp.path().join("sentinel.conf");
    std::fs::write(
        &sentinel_conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor kbmaster 127.0.0.1 {} 1\n",
            redis.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-sentinel")
        .arg(&sentinel_conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-sentinel is not installed: run `make setup`");
    wait_for_port(sentinel_port);
    let cfg = format!(
        "redis:\n  mode: sentinel\n  nodes: [\"127.0.0.1:{sentinel_port}\"]\n  sentinel_service: kbmaster\n  key_prefix: kb:sentinel\nreplication:\n  max_ready_lag: 0\n"
    );
    let a = Worker::start(&tmp.path().join("a"), &cfg, &["--open"]).await;
    let b = Worker::start(&tmp.path().join("b"), &cfg, &["--open"]).await;
    let seq = ingest_ok(&a.url, docs("sentinel", 3)).await;
    assert_eq!(find(&b.url, "sentinel", 2, seq).await, "sentinel-2");
    assert_eq!(redis.cli(&["GET", "{kb:sentinel}:seq"]), seq.to_string());
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

async fn metrics(w: &Worker) -> String {
    reqwest::get(format!("{}/metrics", w.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one counter line of the exposition text (0 when absent).
fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls until Redis holds at least one key matching `pattern` (L2 writes are asynchronous).
async fn wait_for_key(redis: &Redis, pattern: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["--scan", "--pattern", pattern]).is_empty() {
        assert!(Instant::now() < deadline, "no key matching {pattern}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

#[tokio::test(flavor = "multi_thread")]
async fn cluster_topology_replicates_and_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes: Vec<Redis> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("node{i}"));
            // The bus port defaults to port + 10000, which may not exist for a high port.
            let bus = free_port().to_string();
            let args = ["--cluster-enabled", "yes", "--cluster-port", &bus];
            Redis::start_with(&dir, free_port(), &args)
        })
        .collect();
    let addresses: Vec<String> = nodes.iter().map(Redis::address).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "cluster never became ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = format!(
        "redis:\n  mode: cluster\n  nodes: {addresses:?}\n  key_prefix: kb:cluster\nreplication:\n  max_ready_lag: 0\n"
    );
    let a = Worker::start(&tmp.path().join("a"), &cfg, &["--open"]).await;
    let b = Worker::start(&tmp.path().join("b"), &cfg, &["--open"]).await;
    let seq = ingest_ok(&a.url, docs("cluster", 3)).await;
    assert_eq!(find(&b.url, "cluster", 2, seq).await, "cluster-2");
    let probe = json!({"query": "cluster document number 1", "top_k": 2, "min_sequence": seq});
    let first = query(&b.url, probe.clone()).await;
    assert_eq!(first["cache"], "miss");
    // The L2 entry lands on whichever node owns its slot; the other replica finds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().all(|n| {
        n.cli(&["--scan", "--pattern", "kb:cluster:cache:r:*"])
            .is_empty()
    }) {
        assert!(Instant::now() < deadline, "no cache entry on any node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = query(&a.url, probe).await;
    assert_eq!(shared["cache"], "l2");
    assert_eq!(shared["hits"], first["hits"]);
}

/// Runs openssl; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is not installed: run `make setup`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
fn private_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=kb-test-ca",
            days[0],
            days[1],
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-extfile",
            "san.cnf",
            days[0],
            days[1],
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca_and_a_password_replicates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    private_ca(&certs);
    let (port, password) = (free_port(), "s3cret-redis-password");
    let path = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    // Plain TCP is off: only TLS clients that know the password get in.
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        password,
    ];
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    wait_for_port(port);
    let cfg = format!(
        "redis:\n  url: rediss://127.0.0.1:{port}\n  password_env: KB_TEST_REDIS_PASSWORD\n  tls_ca_file: {ca}\n  key_prefix: kb:tls\nreplication:\n  max_ready_lag: 0\n"
    );
    let env = [("KB_TEST_REDIS_PASSWORD", password)];
    let a = Worker::start_with_env(&tmp.path().join("a"), &cfg, &["--open"], &env).await;
    let b = Worker::start_with_env(&tmp.path().join("b"), &cfg, &["--open"], &env).await;
    let seq = ingest_ok(&a.url, docs("tls", 3)).await;
    assert_eq!(find(&b.url, "tls", 2, seq).await, "tls-2");
    // The stream really lives in that Redis, behind TLS and the password.
    let out = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            &ca,
            "-p",
            &port.to_string(),
            "-a",
            password,
        ])
        .args(["--no-auth-warning", "GET", "{kb:tls}:seq"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), seq.to_string());
    let _ = redis.kill();
    let _ = redis.wait();
}
