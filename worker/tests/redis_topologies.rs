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
