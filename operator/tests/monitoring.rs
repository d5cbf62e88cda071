//! spec.monitoring: the ServiceMonitor and PrometheusRule of the workers, and the shipped
//! dashboard. Every expression parses as PromQL (a real parser, promql-parser), every
//! alert the issue asks for is there, and every `kb_operator_*` metric they name exists in
//! the operator's /metrics (the `kb_worker_*` ones are checked against a running worker in
//! worker/tests/metrics_names.rs). The ServiceMonitors and PrometheusRules of the operator
//! and of the chart are valid against the Prometheus Operator's own CRD schemas (vendored in
//! tests/fixtures/monitoring-crds, checked by scripts/validate-crd-objects.py).

use kb_operator::crd::KnowledgeBase;
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::build::{plan, ChildKind};
use kb_operator::reconcile::dereference::offline;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use std::collections::BTreeSet;
use std::path::Path;

const SPEC: &str = "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: docs, namespace: search}\nspec:\n  embedding: {device: cpu}\n  redis: {managed: {}}\n  replicas: 2\n  monitoring:\n    labels: {release: kube-prometheus-stack}\n    queryLatencySloSeconds: 0.5\n    backupMaxAgeHours: 30\n";

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = ();
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        if let Expr::VectorSelector(v) = expr {
            self.0.extend(v.name.clone());
        }
        if let Expr::MatrixSelector(m) = expr {
            self.0.extend(m.vs.name.clone());
        }
        Ok(true)
    }
}

/// Parses `expr` and returns the metric names it reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

fn rendered() -> (serde_json::Value, serde_json::Value) {
    let kb: KnowledgeBase = serde_yaml::from_str(SPEC).unwrap();
    let plan = plan(&kb, &offline(&kb, "search").unwrap());
    let get = |kind| plan.get(kind, "docs-worker").unwrap().to_json();
    (
        get(ChildKind::ServiceMonitor),
        get(ChildKind::PrometheusRule),
    )
}

#[test]
fn the_service_monitor_scrapes_the_headless_service_once_per_pod() {
    let (monitor, _) = rendered();
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["knowledge.dev/scrape"], "true");
    assert_eq!(selector["app.kubernetes.io/instance"], "docs");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // Only the headless Service carries the scrape label.
    let kb: KnowledgeBase = serde_yaml::from_str(SPEC).unwrap();
    let plan = plan(&kb, &offline(&kb, "search").unwrap());
    let label = |name: &str| {
        plan.get(ChildKind::Service, name).unwrap().to_json()["metadata"]["labels"]
            ["knowledge.dev/scrape"]
            .clone()
    };
    assert_eq!(label("docs-headless"), "true");
    assert!(label("docs").is_null());
}

#[test]
fn every_alert_parses_and_the_ones_that_matter_are_there() {
    let (_, rule) = rendered();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "KnowledgeBaseWorkerNotReady",
        "KnowledgeBaseReindexStalled",
        "KnowledgeBaseReplicationLag",
        "KnowledgeBaseWritesHalted",
        "KnowledgeBaseModelMismatch",
        "KnowledgeBaseSnapshotsFailing",
        "KnowledgeBaseApiKeysFileInvalid",
        "KnowledgeBaseEmbeddingQueueSaturated",
        "KnowledgeBaseRequestsRejected",
        "KnowledgeBaseQueryLatencyHigh",
        "KnowledgeBaseBackupTooOld",
        "KnowledgeBaseDiskNearlyFull",
        "KnowledgeBaseGpuMemoryNearlyFull",
        "KnowledgeBaseHostMemoryNearlyFull",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        assert!(!expr.contains('$'), "unfilled placeholder in {expr}");
        assert!(!metric_names(expr).is_empty(), "{expr}");
        assert!(r["labels"]["severity"].is_string());
        assert!(r["annotations"]["summary"].is_string());
    }
    let latency = rules
        .iter()
        .find(|r| r["alert"] == "KnowledgeBaseQueryLatencyHigh")
        .unwrap();
    assert!(latency["expr"].as_str().unwrap().ends_with("> 0.5"));
    assert!(latency["expr"]
        .as_str()
        .unwrap()
        .contains(r#"namespace="search",service="docs-headless""#));
    let backup = rules
        .iter()
        .find(|r| r["alert"] == "KnowledgeBaseBackupTooOld")
        .unwrap();
    assert!(backup["expr"].as_str().unwrap().ends_with("> 108000"));
}

#[test]
fn without_redis_the_replication_alerts_are_left_out() {
    let kb: KnowledgeBase =
        serde_yaml::from_str(&SPEC.replace("  redis: {managed: {}}\n  replicas: 2\n", "")).unwrap();
    let plan = plan(&kb, &offline(&kb, "search").unwrap());
    let rule = plan
        .get(ChildKind::PrometheusRule, "docs-worker")
        .unwrap()
        .to_json();
    let text = rule.to_string();
    assert!(!text.contains("KnowledgeBaseReplicationLag"));
    assert!(!text.contains("KnowledgeBaseRedisUnreachable"));
    assert!(text.contains("KnowledgeBaseWorkerNotReady"));
}

#[test]
fn without_monitoring_both_objects_are_pruned() {
    let kb: KnowledgeBase = serde_yaml::from_str(
        "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: docs, namespace: search}\nspec:\n  embedding: {device: cpu}\n",
    )
    .unwrap();
    let plan = plan(&kb, &offline(&kb, "search").unwrap());
    for kind in [ChildKind::ServiceMonitor, ChildKind::PrometheusRule] {
        assert!(plan.get(kind, "docs-worker").is_none());
        assert!(plan
            .prune
            .iter()
            .any(|r| r.kind == kind && r.name == "docs-worker"));
    }
}

/// Every expression of the dashboard, with Grafana's variables filled in.
fn dashboard_exprs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(
        root.join("charts/knowledgebase-operator/dashboards/knowledgebase.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", "search")
                .replace("$knowledgebase", "docs")
        })
        .collect()
}

#[test]
fn the_dashboard_parses_and_covers_the_operator_and_workers() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 12);
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for wanted in [
        "kb_worker_http_requests_total",
        "kb_worker_http_request_duration_seconds_bucket",
        "kb_worker_embed_queue_depth",
        "kb_worker_cache_lookups_total",
        "kb_worker_replication_lag",
        "kb_worker_index_chunks",
        "kb_worker_gpu_memory_used_bytes",
        "kb_worker_host_memory_working_set_bytes",
        "kb_worker_snapshot_last_bytes",
        "kb_worker_snapshot_last_duration_seconds",
        "kb_operator_reconciles_total",
        "kb_operator_reconcile_errors_total",
    ] {
        assert!(names.contains(wanted), "{wanted} not on the dashboard");
    }
}

#[test]
fn every_operator_metric_named_by_alerts_and_dashboard_is_exported() {
    let (_, rule) = rendered();
    let mut exprs: Vec<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.extend(dashboard_exprs());
    let named: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|n| n.starts_with("kb_operator_"))
        .collect();
    assert!(!named.is_empty());
    let metrics = Metrics::default();
    // Families appear in the exposition once they have a sample.
    metrics.reconcile_started();
    metrics.reconcile_failed(&kb_operator::Error::MissingField("x"));
    metrics.last_backup("search", "docs", 1);
    let text = metrics.encode();
    for name in named {
        let base = name.trim_end_matches("_bucket");
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                || l.starts_with(&format!("{name} "))
                || l.starts_with(&format!("{base}_bucket"))),
            "{name} is not exported by the operator:\n{text}"
        );
    }
}

/// `helm template` of the chart with every monitoring object on.
fn chart_with_monitoring() -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        root.join(".venv/bin").display(),
        root.join(".tools/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let chart = root.join("charts/knowledgebase-operator");
    let mut args = vec![
        "template".to_string(),
        "kbo".into(),
        chart.display().to_string(),
    ];
    for key in ["serviceMonitor", "prometheusRule", "grafanaDashboard"] {
        args.extend(["--set".into(), format!("monitoring.{key}.enabled=true")]);
    }
    args.extend(["--set".into(), "monitoring.labels.release=prom".into()]);
    let output = std::process::Command::new(&helm)
        .args(&args)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{helm} not runnable ({e}); run `make setup`"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8(output.stdout).unwrap())
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn the_chart_ships_the_operator_monitor_rules_and_the_dashboard() {
    let docs = chart_with_monitoring();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["labels"]["release"] == "prom")
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let monitor = find("ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let rule = find("PrometheusRule");
    let exprs: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap())
        .collect();
    assert!(!exprs.is_empty());
    for expr in exprs {
        assert!(metric_names(expr)
            .iter()
            .all(|n| n.starts_with("kb_operator_")));
    }
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("charts/knowledgebase-operator/dashboards/knowledgebase.json"),
    )
    .unwrap();
    let embedded: serde_json::Value =
        serde_json::from_str(dashboard["data"]["knowledgebase.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        embedded,
        serde_json::from_str::<serde_json::Value>(&shipped).unwrap()
    );
}

/// The Prometheus Operator CRDs vendored under tests/fixtures/monitoring-crds.
fn monitoring_crds() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monitoring-crds");
    ["servicemonitors", "prometheusrules"]
        .iter()
        .map(|plural| dir.join(format!("monitoring.coreos.com_{plural}.yaml")))
        .collect()
}

/// Runs scripts/validate-crd-objects.py on `objects` against the vendored CRDs, with the
/// project virtualenv's python (`$VIRTUAL_ENV`, else `.venv`); fails (never skips) when it
/// cannot run. Returns whether they are valid, and what it printed.
fn validate_against_crds(objects: &[serde_json::Value]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = std::env::var("VIRTUAL_ENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv"));
    let python = venv.join("bin/python");
    let mut command = std::process::Command::new(&python);
    command.arg(root.join("scripts/validate-crd-objects.py"));
    for crd in monitoring_crds() {
        command.arg("--crd").arg(crd);
    }
    let input: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    let mut child = command
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} not runnable ({e}); run `make setup`", python.display()));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        _ => {
            panic!("scripts/validate-crd-objects.py could not validate (run `make setup`):\n{text}")
        }
    }
}

#[test]
fn the_rendered_monitor_and_rule_are_valid_against_the_prometheus_operator_crds() {
    let (monitor, rule) = rendered();
    let kb: KnowledgeBase =
        serde_yaml::from_str(&SPEC.replace("  redis: {managed: {}}\n  replicas: 2\n", "")).unwrap();
    let plan = plan(&kb, &offline(&kb, "search").unwrap());
    let unreplicated = plan
        .get(ChildKind::PrometheusRule, "docs-worker")
        .unwrap()
        .to_json();
    let (valid, text) = validate_against_crds(&[monitor, rule, unreplicated]);
    assert!(valid, "{text}");
    assert!(text.contains("3 object(s) valid"), "{text}");
}

#[test]
fn the_charts_monitor_and_rule_are_valid_against_the_prometheus_operator_crds() {
    let objects: Vec<serde_json::Value> = chart_with_monitoring()
        .into_iter()
        .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["PrometheusRule", "ServiceMonitor"]),
        "{objects:?}"
    );
    let (valid, text) = validate_against_crds(&objects);
    assert!(valid, "{text}");
}

/// Negative controls: the validation above would catch an unknown field, a wrong type, a
/// value out of pattern, a non-string label and a duplicate list-map key.
#[test]
fn the_crd_validation_rejects_what_the_api_server_would() {
    let (monitor, rule) = rendered();
    let (valid, text) = validate_against_crds(&[monitor.clone(), rule.clone()]);
    assert!(valid, "{text}");
    let mutated = |object: &serde_json::Value, change: &dyn Fn(&mut serde_json::Value)| {
        let mut copy = object.clone();
        change(&mut copy);
        copy
    };
    let cases = [
        (
            mutated(&monitor, &|m| {
                let endpoints = m["spec"].as_object_mut().unwrap().remove("endpoints");
                m["spec"]["endpoint"] = endpoints.unwrap();
            }),
            "('endpoint' was unexpected)",
        ),
        (
            mutated(&monitor, &|m| {
                m["spec"]["endpoints"][0]["interval"] = "30 seconds".into()
            }),
            "spec.endpoints[0].interval: '30 seconds' does not match",
        ),
        (
            mutated(&monitor, &|m| m["metadata"]["labels"]["release"] = 1.into()),
            "metadata.labels.release: 1 is not of type 'string'",
        ),
        (
            mutated(&rule, &|r| {
                r["spec"]["groups"][0]["rules"][0]["for"] = 600.into()
            }),
            "spec.groups[0].rules[0].for: 600 is not of type 'string'",
        ),
        (
            mutated(&rule, &|r| {
                let group = r["spec"]["groups"][0].clone();
                r["spec"]["groups"].as_array_mut().unwrap().push(group);
            }),
            "spec.groups: duplicate entry with name='knowledgebase-docs'",
        ),
    ];
    for (object, expected) in cases {
        let (valid, text) = validate_against_crds(&[object]);
        assert!(!valid, "accepted, expected {expected}");
        assert!(text.contains(expected), "expected {expected} in:\n{text}");
    }
}
