//! Rotating the managed-Redis password: the operator moves Redis and the workers in steps
//! (in-memory API, StatefulSets reported rolled out between passes), and at every moment of
//! the rotation the password a worker presents is accepted by the Redis it can meet,
//! checked against a real redis-server started with each `auth.conf` the operator wrote.

mod common;

use common::{cluster, context, converge, create, get, kb, reconcile_once, set_ready_replicas};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::process::{Command, Stdio};

/// (auth.conf, worker-password) as the Secret holds them.
async fn state(client: &Client) -> (Vec<u8>, Vec<u8>) {
    let secret: Secret = get(client, "docs-redis").await.unwrap();
    let data = secret.data.unwrap();
    (
        data["auth.conf"].0.clone(),
        data["worker-password"].0.clone(),
    )
}

fn template_annotation(sts: &StatefulSet, key: &str) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// Whether a redis-server started with `auth_conf` accepts `password`.
fn accepts(auth_conf: &[u8], password: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("auth.conf"), auth_conf).unwrap();
    let conf = format!(
        "port {port}\nbind 127.0.0.1\nsave \"\"\ninclude {}\n",
        dir.path().join("auth.conf").display()
    );
    std::fs::write(dir.path().join("redis.conf"), conf).unwrap();
    let mut server = Command::new("redis-server")
        .arg(dir.path().join("redis.conf"))
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is not installed: run `make setup`");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a"])
        .arg(String::from_utf8(password.to_vec()).unwrap())
        .arg("ping")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    String::from_utf8_lossy(&output.stdout).trim() == "PONG"
}

#[tokio::test]
async fn a_rotated_password_reaches_redis_and_workers_without_a_rejected_moment() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb(
            "docs",
            "embedding:\n  device: cpu\nreplicas: 2\nredis:\n  managed: {}\n",
        ),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-redis", 1).await;
    converge(&ctx, &writes, "docs").await;
    set_ready_replicas(&client, "docs-worker", 2).await;
    converge(&ctx, &writes, "docs").await;
    let (conf, worker) = state(&client).await;
    assert!(accepts(&conf, &worker), "before: Redis accepts the workers");
    let old = worker.clone();

    // Rotate: a new value under `password`.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let new = b"rotated-0123456789abcdef".to_vec();
    let patch = Secret {
        data: Some([("password".to_string(), ByteString(new.clone()))].into()),
        ..Secret::default()
    };
    secrets
        .patch("docs-redis", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let mut states = vec![(conf, worker)];
    for _ in 0..12 {
        reconcile_once(&ctx, "docs").await.unwrap();
        let now = state(&client).await;
        if states.last() != Some(&now) {
            states.push(now.clone());
        }
        // The StatefulSets roll out what this pass applied.
        set_ready_replicas(&client, "docs-redis", 1).await;
        set_ready_replicas(&client, "docs-worker", 2).await;
        if now.0
            == format!("requirepass {}\n", String::from_utf8(new.clone()).unwrap()).into_bytes()
            && now.1 == new
        {
            break;
        }
    }
    assert_eq!(
        states.len(),
        4,
        "three steps: Redis takes both, workers move, Redis drops the old"
    );
    assert_eq!(states.last().unwrap().1, new);
    assert!(
        !accepts(&states.last().unwrap().0, &old),
        "the old password is gone at the end"
    );
    // While a step rolls out, old and new pods of each side meet: every pair must work.
    for pair in states.windows(2) {
        let ((conf_before, worker_before), (conf_after, worker_after)) = (&pair[0], &pair[1]);
        for (conf, worker) in [
            (conf_before, worker_before),
            (conf_after, worker_before),
            (conf_before, worker_after),
            (conf_after, worker_after),
        ] {
            assert!(
                accepts(conf, worker),
                "a worker with {:?} meets a Redis that refuses it ({:?})",
                String::from_utf8_lossy(worker),
                String::from_utf8_lossy(conf)
            );
        }
    }
    // Each step rolled the side it changed: Redis carries the hash of its auth.conf, the
    // workers the hash of their password.
    let redis: StatefulSet = get(&client, "docs-redis").await.unwrap();
    let workers: StatefulSet = get(&client, "docs-worker").await.unwrap();
    let hash = kb_operator::reconcile::build::short_hash;
    assert_eq!(
        template_annotation(&redis, "knowledge.dev/auth-hash"),
        Some(hash(&states.last().unwrap().0))
    );
    assert_eq!(
        template_annotation(&workers, "knowledge.dev/redis-password-hash"),
        Some(hash(&new))
    );
}
