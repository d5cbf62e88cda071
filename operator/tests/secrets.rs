//! Generated Secrets are created once and never regenerated.

mod common;

use common::{cluster, context, converge, create, get, kb};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;

#[tokio::test]
async fn existing_api_keys_secret_is_kept_as_it_is() {
    let (client, writes) = cluster(None).await;
    let mut existing = Secret::default();
    existing.metadata.name = Some("docs-api-keys".into());
    let file = "- key: issued-long-ago\n  role: admin\n  collections: ['*']\n";
    existing.data = Some(
        [(
            "api-keys.yaml".to_string(),
            ByteString(file.as_bytes().to_vec()),
        )]
        .into(),
    );
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
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kb-operator")
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
