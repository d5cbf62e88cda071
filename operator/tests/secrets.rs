//! Generated Secrets are created once and never regenerated.

mod common;

use common::{cluster, context, converge, create, get, kb, reconcile_once};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;

fn old_api_keys(labels: &[(&str, &str)]) -> Secret {
    let file = "- key: issued-long-ago\n  role: admin\n  collections: ['*']\n";
    let mut existing = secret("docs-api-keys", &[("api-keys.yaml", file)]);
    existing.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    existing
}

#[tokio::test]
async fn an_api_keys_secret_of_this_knowledge_base_is_kept_as_it_is() {
    // Left behind by a KnowledgeBase of the same name (deleted and created again).
    let (client, writes) = cluster(None).await;
    let existing = old_api_keys(&[
        ("app.kubernetes.io/managed-by", "kb-operator"),
        ("app.kubernetes.io/instance", "docs"),
    ]);
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &existing)
        .await
        .unwrap();
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    converge(&context(client.clone()), &writes, "docs").await;
    let secret: Secret = get(&client, "docs-api-keys").await.unwrap();
    assert_eq!(
        secret.data, existing.data,
        "keys clients hold must stay valid"
    );
}

#[tokio::test]
async fn a_secret_of_someone_else_under_a_generated_name_is_refused_not_taken_over() {
    let (client, writes) = cluster(None).await;
    let existing = old_api_keys(&[("app.kubernetes.io/managed-by", "helm")]);
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &existing)
        .await
        .unwrap();
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    let ctx = context(client.clone());
    for _ in 0..3 {
        let _ = reconcile_once(&ctx, "docs").await;
    }
    let secret: Secret = get(&client, "docs-api-keys").await.unwrap();
    assert_eq!(secret.data, existing.data, "not rewritten");
    assert_eq!(
        secret.metadata.labels, existing.metadata.labels,
        "not relabelled"
    );
    let kb: kb_operator::crd::KnowledgeBase = get(&client, "docs").await.unwrap();
    let status = kb.status.unwrap();
    let degraded = status
        .condition(kb_operator::crd::ConditionType::Degraded)
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "AdoptionRefused")
    );
    assert!(
        degraded.message.contains("docs-api-keys"),
        "{}",
        degraded.message
    );
    // The other children were applied, and the plan is stable (no rolling restarts).
    writes.take();
    let _ = reconcile_once(&ctx, "docs").await;
    let sts: k8s_openapi::api::apps::v1::StatefulSet = get(&client, "docs-worker").await.unwrap();
    let _ = reconcile_once(&ctx, "docs").await;
    let again: k8s_openapi::api::apps::v1::StatefulSet = get(&client, "docs-worker").await.unwrap();
    assert_eq!(
        sts.metadata.resource_version,
        again.metadata.resource_version
    );
}

#[tokio::test]
async fn a_secret_the_spec_names_is_never_pruned_even_under_a_generated_name() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    // Point the spec at the Secret the operator generated (keeping its keys).
    let api: Api<kb_operator::crd::KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let patch = serde_json::json!({"spec": {"auth": {"apiKeysSecretRef": "docs-api-keys"}}});
    api.patch(
        "docs",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert!(
        get::<Secret>(&client, "docs-api-keys").await.is_some(),
        "the Secret the spec names was deleted"
    );
}

#[tokio::test]
async fn managed_redis_password_is_generated_once() {
    let (client, writes) = cluster(None).await;
    create(
        &client,
        &kb("docs", "embedding:\n  device: cpu\nredis:\n  managed: {}\n"),
    )
    .await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let first: Secret = get(&client, "docs-redis").await.unwrap();
    let password = &first.data.as_ref().unwrap()["password"];
    assert_eq!(password.0.len(), 64, "32 random bytes, hex encoded");
    Api::<Secret>::namespaced(client.clone(), "default")
        .delete("docs-api-keys", &Default::default())
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    let again: Secret = get(&client, "docs-redis").await.unwrap();
    assert_eq!(again.data, first.data);
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    s
}

async fn secrets_hash(client: &kube::Client) -> Option<String> {
    let sts: k8s_openapi::api::apps::v1::StatefulSet = get(client, "docs-worker").await.unwrap();
    sts.spec?
        .template
        .metadata?
        .annotations?
        .get("knowledge.dev/secrets-hash")
        .cloned()
}

#[tokio::test]
async fn rotating_a_secret_the_workers_read_at_start_rolls_them_and_api_keys_do_not() {
    let (client, writes) = cluster(None).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let keys = "- key: admin-key-0123456789abcdef\n  role: admin\n  collections: ['*']\n";
    for s in [
        secret("redis-auth", &[("password", "first")]),
        secret(
            "my-keys",
            &[
                ("api-keys.yaml", keys),
                ("admin-key", "admin-key-0123456789abcdef"),
            ],
        ),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let spec = "embedding:\n  device: cpu\nauth:\n  apiKeysSecretRef: my-keys\nredis:\n  external:\n    url: redis://r:6379\n    passwordSecretRef: {name: redis-auth, key: password}\n";
    create(&client, &kb("docs", spec)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let first = secrets_hash(&client).await.expect("a secrets hash");

    // New API keys: the workers reload the mounted file themselves, no roll.
    let more =
        format!("{keys}- key: reader-0123456789abcdef\n  role: read\n  collections: ['*']\n");
    secrets
        .replace(
            "my-keys",
            &PostParams::default(),
            &secret(
                "my-keys",
                &[
                    ("api-keys.yaml", &more),
                    ("admin-key", "admin-key-0123456789abcdef"),
                ],
            ),
        )
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    assert_eq!(secrets_hash(&client).await.as_ref(), Some(&first));

    // A new Redis password is read only at start: the pod template changes.
    secrets
        .replace(
            "redis-auth",
            &PostParams::default(),
            &secret("redis-auth", &[("password", "second")]),
        )
        .await
        .unwrap();
    converge(&ctx, &writes, "docs").await;
    let second = secrets_hash(&client).await.unwrap();
    assert_ne!(second, first);
}

#[tokio::test]
async fn a_missing_redis_ca_secret_is_degraded_not_replicas_not_ready() {
    let (client, writes) = cluster(None).await;
    let spec = "embedding:\n  device: cpu\nredis:\n  external:\n    url: rediss://r:6380\n    tlsCaSecretRef: {name: redis-ca}\n";
    create(&client, &kb("docs", spec)).await;
    let ctx = context(client.clone());
    converge(&ctx, &writes, "docs").await;
    let kb: kb_operator::crd::KnowledgeBase = get(&client, "docs").await.unwrap();
    let status = kb.status.unwrap();
    let degraded = status
        .condition(kb_operator::crd::ConditionType::Degraded)
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(
        degraded.message.contains("tlsCaSecretRef"),
        "{}",
        degraded.message
    );
}

#[test]
fn referenced_secrets_are_what_the_spec_names() {
    let kb = kb(
        "docs",
        "embedding:\n  device: cpu\nauth:\n  apiKeysSecretRef: my-keys\nredis:\n  external:\n    url: rediss://r:6380\n    passwordSecretRef: {name: redis-auth, key: password}\n    tlsCaSecretRef: {name: redis-ca}\n",
    );
    assert_eq!(
        kb_operator::reconcile::dereference::referenced_secrets(&kb),
        vec!["my-keys", "redis-auth", "redis-ca"]
    );
}
