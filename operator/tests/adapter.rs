//! The prometheus-adapter rules shipped for `targetQpsPerPod` and
//! `targetEmbedQueueDepthPerPod` serve exactly the metrics the operator's
//! HorizontalPodAutoscalers ask for. (That the series they read exists in a
//! worker's /metrics is checked in worker/tests/metrics_names.rs.)

use kb_operator::crd::KnowledgeBase;
use kb_operator::reconcile::build::{plan, ChildKind};
use std::path::Path;

#[test]
fn the_adapter_serves_the_metric_the_hpa_scales_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            root.join("charts/knowledgebase-operator/extras/prometheus-adapter-values.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let served: Vec<String> = values["rules"]["custom"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["name"]["as"].as_str().unwrap().to_string())
        .collect();
    let kb: KnowledgeBase = serde_yaml::from_str(
        "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: docs, namespace: default}\nspec:\n  embedding: {device: cpu}\n  redis: {external: {url: 'redis://r:6379'}}\n  autoscaling: {minReplicas: 1, maxReplicas: 4, targetQpsPerPod: 40, targetEmbedQueueDepthPerPod: 64}\n",
    )
    .unwrap();
    let inputs = kb_operator::reconcile::dereference::offline(&kb, "default").unwrap();
    let plan = plan(&kb, &inputs);
    let hpa = plan
        .get(ChildKind::HorizontalPodAutoscaler, "docs-worker")
        .unwrap()
        .to_json();
    let asked: Vec<String> = hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["pods"]["metric"]["name"].as_str().map(String::from))
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    for metric in &asked {
        assert!(served.contains(metric), "{metric} not in {served:?}");
    }
    // The queue-depth signal counts the interactive lane only: a bulk ingest fills the
    // bulk lane by design and must not scale the fleet out.
    let queue = values["rules"]["custom"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["name"]["matches"] == "^kb_worker_embed_queue_depth$")
        .expect("a queue-depth rule");
    let query = queue["metricsQuery"].as_str().unwrap();
    assert!(query.contains(r#"lane="interactive""#), "{query}");
    assert!(asked.contains(&queue["name"]["as"].as_str().unwrap().to_string()));
}
