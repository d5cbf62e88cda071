use super::*;
use crate::log::Metric;

use std::process::{Child, Command, Stdio};

pub(crate) struct Server(Child, pub(crate) u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn server() -> Server {
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

pub(crate) async fn log(server: &Server) -> RedisLog {
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

/// A redis-server on `port` started with `extra` arguments (not waited for). Its working
/// directory is its own: a primary writes an RDB file for a full resync to a replica, and
/// a later server started in the same directory would load it.
fn redis_on(port: u16, extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("kb-redis-test-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            dir.to_str().unwrap(),
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
    let (first, epoch) = log
        .append(vec![op(0), op(1)], &Guard::default())
        .await
        .unwrap();
    assert_eq!(log.epoch().await.unwrap(), Some(epoch.clone()));
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    let (next, same) = log.append(vec![op(2)], &Guard::default()).await.unwrap();
    assert_eq!(same, epoch, "one history, one epoch");
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
    log.append((0..10).map(op).collect(), &Guard::default())
        .await
        .unwrap();
    log.heartbeat("a", 4, 10, Duration::from_secs(30))
        .await
        .unwrap();
    log.heartbeat("b", 7, 10, Duration::from_secs(30))
        .await
        .unwrap();
    // An expired registration does not hold the stream back.
    log.heartbeat("gone", 1, 1, Duration::ZERO).await.unwrap();
    assert_eq!(log.trim().await.unwrap(), 4);
    let after_four = log.read_after(4, 100, None).await.unwrap();
    assert_eq!(after_four.first().map(|r| r.seq), Some(5));
    assert!(matches!(
        log.read_after(1, 100, None).await,
        Err(RedisLogError::Trimmed { after: 1, .. })
    ));
    // A live replica without a snapshot (0) holds everything.
    log.heartbeat("c", 0, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(log.trim().await.unwrap(), 0);
}

pub(crate) fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &server.1.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn entries_carry_their_epoch_and_the_end_of_their_batch() {
    let server = server();
    let log = log(&server).await;
    let (_, epoch) = log
        .append(vec![op(0), op(1), op(2)], &Guard::default())
        .await
        .unwrap();
    log.append(vec![op(3)], &Guard::default()).await.unwrap();
    let entries = log.read_entries_after(0, 10, None).await.unwrap();
    let ends: Vec<Seq> = entries.iter().map(|e| e.batch_end).collect();
    assert_eq!(ends, [3, 3, 3, 4]);
    assert!(entries
        .iter()
        .all(|e| e.epoch.as_deref() == Some(epoch.id.as_str())));
}

#[tokio::test]
async fn an_append_below_what_a_replica_applied_is_refused_and_numbers_nothing() {
    let server = server();
    let log = log(&server).await;
    let (_, epoch) = log
        .append((0..5).map(op).collect(), &Guard::default())
        .await
        .unwrap();
    // A failover to a Redis replica that missed the last two writes: counter and stream
    // end at 3 while a worker applied 5.
    cli(&server, &["SET", "{t}:seq", "3"]);
    cli(&server, &["XDEL", "{t}:log", "4-1", "5-1"]);
    let guard = Guard {
        epoch: Some(epoch.id.clone()),
        floor: 5,
    };
    let refused = log.append(vec![op(9)], &guard).await;
    assert!(
        matches!(
            refused,
            Err(RedisLogError::Regressed(Regression::Behind {
                counter: 3,
                top: 3,
                floor: 5
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(log.last_seq().await.unwrap(), 3, "nothing was numbered");
    // A writer that never saw sequence 5 is refused too: a live replica registered it.
    log.heartbeat("ahead", 5, 5, Duration::from_secs(30))
        .await
        .unwrap();
    let blind = log.append(vec![op(9)], &Guard::default()).await;
    assert!(
        matches!(
            blind,
            Err(RedisLogError::Regressed(Regression::Behind {
                floor: 5,
                ..
            }))
        ),
        "{blind:?}"
    );
    // An evicted counter with the stream intact is behind the stream's newest entry.
    cli(&server, &["DEL", "{t}:seq", "{t}:applied"]);
    let evicted = log.append(vec![op(9)], &Guard::default()).await;
    assert!(
        matches!(
            evicted,
            Err(RedisLogError::Regressed(Regression::Behind {
                counter: 0,
                top: 3,
                ..
            }))
        ),
        "{evicted:?}"
    );
}

#[tokio::test]
async fn a_flushed_redis_refuses_writers_that_applied_records_and_a_reseed_continues_after_them() {
    let server = server();
    let log = log(&server).await;
    let (_, epoch) = log
        .append((0..4).map(op).collect(), &Guard::default())
        .await
        .unwrap();
    cli(&server, &["FLUSHALL"]);
    let guard = Guard {
        epoch: Some(epoch.id.clone()),
        floor: 4,
    };
    let lost = log.append(vec![op(9)], &guard).await;
    assert!(
        matches!(
            lost,
            Err(RedisLogError::Regressed(Regression::Lost { floor: 4 }))
        ),
        "{lost:?}"
    );
    // Re-seeding continues after the replica's sequence, in an epoch that names its parent.
    let seeded = log.reseed(4, &epoch.id).await.unwrap();
    assert_eq!(
        (seeded.base, seeded.parent.as_str()),
        (4, epoch.id.as_str())
    );
    assert_eq!(log.epoch().await.unwrap(), Some(seeded.clone()));
    // The old epoch's writers are refused; the new one's get sequences after 4.
    assert!(matches!(
        log.append(vec![op(9)], &guard).await,
        Err(RedisLogError::Regressed(Regression::EpochChanged { .. }))
    ));
    let next = Guard {
        epoch: Some(seeded.id.clone()),
        floor: 4,
    };
    let (records, _) = log.append(vec![op(5)], &next).await.unwrap();
    assert_eq!(records[0].seq, 5);
    // A second re-seed from the old epoch (a replica that lost the race) is refused.
    assert!(matches!(
        log.reseed(4, &epoch.id).await,
        Err(RedisLogError::Regressed(Regression::EpochChanged { .. }))
    ));
}

#[tokio::test]
async fn a_write_waits_for_the_redis_replicas_it_requires_and_fails_without_them() {
    let primary = server();
    let cfg = |port: u16, replicas: u32| RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        key_prefix: "t".into(),
        min_replicas_to_ack: replicas,
        replica_ack_timeout_ms: 300,
        ..RedisConfig::default()
    };
    let log = RedisLog::connect(&cfg(primary.1, 1)).await.unwrap();
    let (records, _) = log.append(vec![op(0)], &Guard::default()).await.unwrap();
    let refused = log.await_replicas(records[0].seq).await;
    assert!(
        matches!(
            refused,
            Err(RedisLogError::NotReplicated {
                seq: 1,
                acked: 0,
                wanted: 1,
                ..
            })
        ),
        "no replica: {refused:?}"
    );
    let replica = redis_on(
        free_port(),
        &["--replicaof", "127.0.0.1", &primary.1.to_string()],
    );
    wait_for(&replica);
    let mut confirmed = false;
    for _ in 0..50 {
        let (records, _) = log.append(vec![op(1)], &Guard::default()).await.unwrap();
        if log.await_replicas(records[0].seq).await.is_ok() {
            confirmed = true;
            break;
        }
    }
    assert!(confirmed, "a connected replica confirms writes");
    let replica_log = RedisLog::connect(&cfg(replica.1, 0)).await.unwrap();
    assert_eq!(
        replica_log.last_seq().await.unwrap(),
        log.last_seq().await.unwrap()
    );
}
