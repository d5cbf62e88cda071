//! Readiness changes are published as Kubernetes Events on the KnowledgeBase.

mod common;

use common::{cluster, converge, create, kb};
use k8s_openapi::api::events::v1::Event;
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::Context;
use kube::Api;
use std::sync::Arc;

#[tokio::test]
async fn readiness_change_is_published_as_an_event() {
    let (client, writes) = cluster(None).await;
    create(&client, &kb("docs", "embedding:\n  device: cpu\n")).await;
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(Metrics::default())));
    converge(&ctx, &writes, "docs").await;
    let events = Api::<Event>::namespaced(client, "default")
        .list(&Default::default())
        .await
        .unwrap();
    let reasons: Vec<_> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"ReplicasNotReady".to_string()),
        "{reasons:?}"
    );
    let about = events.items[0].regarding.as_ref().unwrap();
    assert_eq!(
        (about.kind.as_deref(), about.name.as_deref()),
        (Some("KnowledgeBase"), Some("docs"))
    );
}
