//! `ServiceMonitor` and `PrometheusRule` of the workers (Prometheus Operator CRDs), typed
//! here with only the fields this operator writes.

use super::names::{Component, Names};
use super::Child;
use crate::crd::{KnowledgeBaseSpec, Monitoring};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Label that marks the one worker Service the ServiceMonitor scrapes (the headless one,
/// so each pod is scraped once).
pub const SCRAPE_LABEL: &str = "knowledge.dev/scrape";

/// The alert rules, with placeholders (see the file's header).
pub const ALERTS: &str = include_str!("alerts.yaml");

/// `monitoring.coreos.com/v1` ServiceMonitor.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<Endpoint>,
}

/// One scraped port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
}

/// `monitoring.coreos.com/v1` PrometheusRule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PrometheusRule",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

/// A group of rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// One alerting rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// An entry of `alerts.yaml`.
#[derive(Deserialize)]
struct AlertTemplate {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    severity: String,
    summary: String,
    /// Only for replicated KnowledgeBases (the gauges exist, but mean nothing, without Redis).
    #[serde(default)]
    replicated: bool,
}

fn enabled(spec: &KnowledgeBaseSpec) -> Option<&Monitoring> {
    spec.monitoring.as_ref().filter(|m| m.enabled)
}

fn meta(names: &Names, monitoring: &Monitoring) -> kube::api::ObjectMeta {
    let mut meta = names.meta(names.worker(), Component::Worker);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(monitoring.labels.clone());
    meta
}

pub(super) fn service_monitor(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Child> {
    let monitoring = enabled(spec)?;
    let mut labels = names.selector(Component::Worker);
    labels.insert(SCRAPE_LABEL.to_string(), "true".to_string());
    Some(Child::ServiceMonitor(Box::new(ServiceMonitor {
        metadata: meta(names, monitoring),
        spec: ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            },
            endpoints: vec![Endpoint {
                port: "metrics".to_string(),
                path: "/metrics".to_string(),
                interval: monitoring.interval.clone(),
            }],
        },
    })))
}

/// The rules of `alerts.yaml` for this KnowledgeBase.
pub fn rules(names: &Names, monitoring: &Monitoring, replicated: bool) -> Vec<Rule> {
    let templates: Vec<AlertTemplate> =
        serde_yaml::from_str(ALERTS).expect("alerts.yaml is checked by the tests");
    let selector = format!(
        "namespace=\"{}\",service=\"{}\"",
        names.namespace,
        names.headless()
    );
    let fill = |text: &str| {
        text.replace("$SELECTOR", &selector)
            .replace("$NAMESPACE", &names.namespace)
            .replace("$KB", &names.base)
            .replace("$SLO", &monitoring.query_latency_slo_seconds.to_string())
            .replace(
                "$BACKUP_MAX_AGE",
                &(i64::from(monitoring.backup_max_age_hours) * 3600).to_string(),
            )
    };
    templates
        .into_iter()
        .filter(|t| replicated || !t.replicated)
        .map(|t| Rule {
            alert: t.alert,
            expr: fill(&t.expr),
            for_: t.for_,
            labels: BTreeMap::from([
                ("severity".to_string(), t.severity),
                ("knowledgebase".to_string(), names.base.clone()),
            ]),
            annotations: BTreeMap::from([
                ("summary".to_string(), fill(&t.summary)),
                (
                    "runbook_url".to_string(),
                    "https://github.com/knowledge-dev/knowledgebase-operator/blob/main/docs/observability.md"
                        .to_string(),
                ),
            ]),
        })
        .collect()
}

pub(super) fn prometheus_rule(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Child> {
    let monitoring = enabled(spec)?;
    Some(Child::PrometheusRule(Box::new(PrometheusRule {
        metadata: meta(names, monitoring),
        spec: PrometheusRuleSpec {
            groups: vec![RuleGroup {
                name: format!("knowledgebase-{}", names.base),
                rules: rules(names, monitoring, spec.redis.is_some()),
            }],
        },
    })))
}
