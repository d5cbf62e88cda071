//! Every series that shipped monitoring configuration reads (the prometheus-adapter rules
//! for `targetQpsPerPod`) exists in a real worker's /metrics.

mod common;

use common::Worker;
use std::path::Path;

/// The metric names in the `seriesQuery` fields of the adapter rules.
fn adapter_series() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(
        root.join("charts/knowledgebase-operator/extras/prometheus-adapter-values.yaml"),
    )
    .unwrap();
    let values: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    values["rules"]["custom"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let query = r["seriesQuery"].as_str().unwrap();
            query.split('{').next().unwrap().trim().to_string()
        })
        .collect()
}

#[tokio::test]
async fn the_series_the_adapter_rules_read_are_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(&tmp.path().join("data"), "", &["--open"]).await;
    // One API request so that the per-route counters have a sample.
    reqwest::get(format!("{}/v1/collections", worker.url))
        .await
        .unwrap();
    let text = reqwest::get(format!("{}/metrics", worker.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = adapter_series();
    assert!(!series.is_empty());
    for name in series {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "{name} is not in the worker's /metrics:\n{text}"
        );
    }
}
