use super::*;
use crate::log::Metric;

use std::process::{Child, Command, Stdio};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server() -> Server {
    let server = redis_on(free_port(), &[]);
    wait_for(&server);
    server
}

fn wait_for(server: &Server) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", server.1)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not start");
}

async fn log(server: &Server) -> RedisLog {
    RedisLog::connect(&RedisConfig {
        url: Some(format!("redis://127.0.0.1:{}", server.1)),
        key_prefix: "t".into(),
        ..RedisConfig::default()
    })
    .await
    .unwrap()
}

/// A free loopback port (nothing listens on it yet).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A redis-server on `port` started with `extra` arguments (not waited for).
fn redis_on(port: u16, extra: &[&str]) -> Server {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is not installed: run `make setup`");
    Server(child, port)
}

fn patient(port: u16, password_env: &str, wait_ms: u64) -> RedisConfig {
    RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        password_env: Some(password_env.into()),
        key_prefix: "t".into(),
        start_wait_ms: wait_ms,
        ..RedisConfig::default()
    }
}

#[tokio::test]
async fn a_worker_waits_for_a_redis_that_starts_after_it() {
    std::env::set_var("KB_TEST_LATE_REDIS_PASSWORD", "secret");
    let port = free_port();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        redis_on(port, &["--requirepass", "secret"])
    });
    let log = RedisLog::connect_patiently(&patient(port, "KB_TEST_LATE_REDIS_PASSWORD", 30_000))
        .await
        .expect("connected once Redis started");
    let _server = starter.join().unwrap();
    assert_eq!(log.last_seq().await.unwrap(), 0);
}

#[tokio::test]
async fn a_password_redis_refuses_for_a_moment_is_retried_and_zero_wait_fails_at_once() {
    // The worker already holds the new password; Redis gets it a moment later, as in
    // a rotation.
    std::env::set_var("KB_TEST_ROTATED_PASSWORD", "new-password");
    let port = free_port();
    let server = redis_on(port, &["--requirepass", "old-password"]);
    wait_for(&server);
    let impatient =
        RedisLog::connect_patiently(&patient(port, "KB_TEST_ROTATED_PASSWORD", 0)).await;
    assert!(impatient.is_err(), "the old password is still in force");
    let rotate = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let status = Command::new("redis-cli")
            .args([
                "-p",
                &port.to_string(),
                "--no-auth-warning",
                "-a",
                "old-password",
            ])
            .args(["CONFIG", "SET", "requirepass", "new-password"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    let log = RedisLog::connect_patiently(&patient(port, "KB_TEST_ROTATED_PASSWORD", 30_000))
        .await
        .expect("connected once Redis took the new password");
    rotate.join().unwrap();
    assert_eq!(log.last_seq().await.unwrap(), 0);
    drop(server);
}

fn op(i: usize) -> Op {
    Op::CreateCollection {
        collection: format!("c{i}"),
        dim: 4,
        metric: Metric::Dot,
    }
}

#[tokio::test]
async fn appends_are_numbered_in_order_and_read_back_by_range_and_tail() {
    let server = server();
    let log = log(&server).await;
    let first = log.append(vec![op(0), op(1)]).await.unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    let next = log.append(vec![op(2)]).await.unwrap();
    assert_eq!(next[0].seq, 3);
    assert_eq!(log.last_seq().await.unwrap(), 3);
    let ranged = log.read_after(1, 10, None).await.unwrap();
    assert_eq!(ranged, [first[1].clone(), next[0].clone()]);
    let one = log.read_after(0, 1, None).await.unwrap();
    assert_eq!(one, [first[0].clone()]);
    let tailed = log
        .read_after(0, 10, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(tailed.len(), 3);
    assert_eq!(tailed[2], next[0]);
    let empty = log
        .read_after(3, 10, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn trim_keeps_what_the_oldest_live_replica_needs_and_reading_past_it_is_an_error() {
    let server = server();
    let log = log(&server).await;
    log.append((0..10).map(op).collect()).await.unwrap();
    log.heartbeat("a", 4, Duration::from_secs(30))
        .await
        .unwrap();
    log.heartbeat("b", 7, Duration::from_secs(30))
        .await
        .unwrap();
    // An expired registration does not hold the stream back.
    log.heartbeat("gone", 1, Duration::ZERO).await.unwrap();
    assert_eq!(log.trim().await.unwrap(), 4);
    let after_four = log.read_after(4, 100, None).await.unwrap();
    assert_eq!(after_four.first().map(|r| r.seq), Some(5));
    assert!(matches!(
        log.read_after(1, 100, None).await,
        Err(RedisLogError::Trimmed { after: 1, .. })
    ));
    // A live replica without a snapshot (0) holds everything.
    log.heartbeat("c", 0, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(log.trim().await.unwrap(), 0);
}
