//! Replication over other Redis topologies and security settings: Sentinel, a 3-node
//! Cluster, and TLS with a private CA plus a password.

mod common;

use common::redis::{wait_for_port, Redis};
use common::replicated::*;
use common::{free_port, Worker};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-sentinel` monitoring the primary on `primary_port` as `kbmaster` (quorum 1),
/// with `extra` configuration lines; returns it and its port.
fn start_sentinel(dir: &Path, primary_port: u16, extra: &str) -> (std::process::Child, u16) {
    let port = free_port();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!("port {port}\nbind 127.0.0.1\nsentinel monitor kbmaster 127.0.0.1 {primary_port} 1\n{extra}"),
    )
    .unwrap();
    let sentinel = Command::new("redis-sentinel")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-sentinel is not installed: run `make setup`");
    wait_for_port(port);
    (sentinel, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_topology_replicates() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"), free_port());
    let (mut sentinel, sentinel_port) = start_sentinel(tmp.path(), redis.port, "");
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
    // The later `--port 0` overrides the plain port that `start_with` sets.
    let _redis = Redis::start_with(&tmp.path().join("redis"), port, &args);
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
}

/// A TCP proxy whose forwarding can be cut: data sent after the cut is dropped, as a
/// replication link that loses its last writes.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, flag.clone()));
                tokio::spawn(forward(server_read, client_write, flag.clone()));
            }
        });
        Proxy { port, cut }
    }
}

/// Copies `from` to `to` until either closes, dropping what arrives while `cut` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if !cut.load(std::sync::atomic::Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err()
        {
            break;
        }
    }
}

/// A Sentinel failover to a Redis replica that missed the last acknowledged writes: the
/// new primary's counter is behind what the workers applied. Writes are refused (503
/// naming the cause), never numbered below it; the workers re-seed the stream after what
/// they applied and writes resume, with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_to_a_replica_that_missed_writes_never_reuses_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Redis::start(&tmp.path().join("primary"), free_port());
    let link = Proxy::start(primary.port).await;
    let replica_port = free_port();
    let replica = Redis::start_with(
        &tmp.path().join("replica"),
        replica_port,
        &["--replicaof", "127.0.0.1", &link.port.to_string()],
    );
    let fast = "sentinel down-after-milliseconds kbmaster 1000\nsentinel failover-timeout kbmaster 10000\n";
    let (mut sentinel, sentinel_port) = start_sentinel(tmp.path(), primary.port, fast);
    let cfg = format!(
        "redis:\n  mode: sentinel\n  nodes: [\"127.0.0.1:{sentinel_port}\"]\n  sentinel_service: kbmaster\n  key_prefix: kb:failover\nreplication:\n  max_ready_lag: 0\n  wait_timeout_ms: 20000\n"
    );
    let a = Worker::start(&tmp.path().join("a"), &cfg, &["--open"]).await;
    let b = Worker::start(&tmp.path().join("b"), &cfg, &["--open"]).await;
    let first = ingest_ok(&a.url, docs("before", 3)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.cli(&["GET", "{kb:failover}:seq"]) != first.to_string() {
        assert!(Instant::now() < deadline, "the Redis replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replication link loses what follows; the primary acknowledges it and dies.
    link.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let missed = ingest_ok(&a.url, docs("missed", 3)).await;
    assert_eq!(find(&b.url, "missed", 2, missed).await, "missed-2");
    primary.kill();
    // Sentinel promotes the replica, whose counter is at `first`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !replica.cli(&["ROLE"]).starts_with("master") {
        assert!(
            Instant::now() < deadline,
            "Sentinel never promoted the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        replica.cli(&["GET", "{kb:failover}:seq"]),
        first.to_string()
    );
    // Writes are refused with the cause, or (once re-seeded) numbered after `missed`.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refusals = 0;
    let after = loop {
        assert!(Instant::now() < deadline, "writes never resumed");
        let resp = ingest(&b.url, docs("after", 2)).await;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        match status.as_u16() {
            200 => break body["sequence"].as_u64().unwrap(),
            503 => {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                if message.contains("repaired") {
                    refusals += 1;
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(refusals > 0, "writes were refused while Redis was behind");
    assert!(
        after > missed,
        "sequence {after} reuses one at or below {missed}"
    );
    for url in [&a.url, &b.url] {
        assert_eq!(find(url, "missed", 2, after).await, "missed-2");
        assert_eq!(find(url, "after", 1, after).await, "after-1");
        assert_eq!(documents(url).await, 8);
    }
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}
