//! NetworkPolicies: default deny for every pod of the KnowledgeBase, then exactly the flows
//! it needs.

use super::names::{Component, Names, HTTP_PORT, METRICS_PORT, REDIS_PORT};
use super::Child;
use crate::crd::{ExternalRedis, KnowledgeBaseSpec, RedisMode, S3Destination};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};

const HTTPS_PORT: i32 = 443;

/// The policies by name; `None` for a policy whose feature is off.
pub(super) fn build(spec: &KnowledgeBaseSpec, names: &Names) -> Vec<(String, Option<Child>)> {
    let on = spec.network.policies;
    let managed_redis = spec.redis.as_ref().is_some_and(|r| r.managed.is_some());
    vec![
        (names.child("default-deny"), on.then(|| default_deny(names))),
        (names.worker(), on.then(|| worker(spec, names))),
        (names.redis(), (on && managed_redis).then(|| redis(names))),
        (
            names.backup(),
            (on && spec.backup.is_some()).then(|| backup(spec, names)),
        ),
    ]
}

fn policy(
    name: String,
    names: &Names,
    pod_selector: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> Child {
    Child::NetworkPolicy(NetworkPolicy {
        metadata: names.meta(name, Component::Worker),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
    })
}

fn default_deny(names: &Names) -> Child {
    let mut instance = names.selector(Component::Worker);
    instance.remove("app.kubernetes.io/component");
    policy(
        names.child("default-deny"),
        names,
        selector(instance),
        vec![],
        vec![],
    )
}

/// Where Prometheus runs when `spec.monitoring` is on and `network.monitoringNamespace`
/// does not say (kube-prometheus-stack's usual namespace).
pub const DEFAULT_MONITORING_NAMESPACE: &str = "monitoring";

/// The namespace allowed to scrape the metrics port: `network.monitoringNamespace`, or
/// with `spec.monitoring` on, [`DEFAULT_MONITORING_NAMESPACE`] (a ServiceMonitor whose
/// Prometheus cannot reach the pods would only fire `TargetDown`).
fn scraper_namespace(spec: &KnowledgeBaseSpec) -> Option<String> {
    let monitored = spec.monitoring.as_ref().is_some_and(|m| m.enabled);
    spec.network
        .monitoring_namespace
        .clone()
        .or_else(|| monitored.then(|| DEFAULT_MONITORING_NAMESPACE.to_string()))
}

fn worker(spec: &KnowledgeBaseSpec, names: &Names) -> Child {
    let workers = pods(names, Component::Worker);
    let mut api_clients = client_peers(spec);
    api_clients.push(workers.clone());
    if spec.backup.is_some() {
        api_clients.push(pods(names, Component::Backup));
    }
    // The metrics port: the operator (a model change's re-index progress) and Prometheus.
    let mut metrics_readers = vec![operator_peer()];
    if let Some(namespace) = scraper_namespace(spec) {
        metrics_readers.push(namespace_peer(&namespace));
    }
    let ingress = vec![
        ingress_rule(api_clients, HTTP_PORT),
        ingress_rule(metrics_readers, METRICS_PORT),
    ];
    let mut egress = vec![dns(), egress_rule(vec![workers], &[HTTP_PORT])];
    match spec.redis.as_ref() {
        Some(redis) if redis.managed.is_some() => {
            egress.push(egress_rule(
                vec![pods(names, Component::Redis)],
                &[REDIS_PORT],
            ));
        }
        Some(redis) => {
            if let Some(external) = &redis.external {
                egress.push(egress_rule(vec![], &external_redis_ports(external)));
            }
        }
        None => {}
    }
    // The restore init container reads the backup bucket.
    let restore_from = spec.bootstrap.as_ref();
    if let Some(s3) = restore_from.and_then(|b| b.from_backup.destination.s3.as_ref()) {
        egress.push(egress_rule(vec![], &[s3_port(s3)]));
    }
    policy(
        names.worker(),
        names,
        selector(names.selector(Component::Worker)),
        ingress,
        egress,
    )
}

fn redis(names: &Names) -> Child {
    let from_workers = ingress_rule(vec![pods(names, Component::Worker)], REDIS_PORT);
    policy(
        names.redis(),
        names,
        selector(names.selector(Component::Redis)),
        vec![from_workers],
        vec![],
    )
}

fn backup(spec: &KnowledgeBaseSpec, names: &Names) -> Child {
    let mut egress = vec![
        dns(),
        egress_rule(vec![pods(names, Component::Worker)], &[HTTP_PORT]),
    ];
    let s3 = spec.backup.as_ref().and_then(|b| b.destination.s3.as_ref());
    if let Some(s3) = s3 {
        egress.push(egress_rule(vec![], &[s3_port(s3)]));
    }
    policy(
        names.backup(),
        names,
        selector(names.selector(Component::Backup)),
        vec![],
        egress,
    )
}

/// The port of an S3 endpoint (443 for AWS).
fn s3_port(s3: &S3Destination) -> i32 {
    s3.endpoint
        .as_deref()
        .and_then(url_port)
        .unwrap_or(HTTPS_PORT)
}

/// API clients: the listed namespaces and pod selectors, else the KnowledgeBase's namespace.
fn client_peers(spec: &KnowledgeBaseSpec) -> Vec<NetworkPolicyPeer> {
    let network = &spec.network;
    if network.allowed_namespaces.is_empty() && network.allowed_pod_selectors.is_empty() {
        return vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }];
    }
    let namespaces = network
        .allowed_namespaces
        .iter()
        .map(|ns| namespace_peer(ns));
    let selectors = network
        .allowed_pod_selectors
        .iter()
        .map(|s| NetworkPolicyPeer {
            pod_selector: Some(s.clone()),
            ..NetworkPolicyPeer::default()
        });
    namespaces.chain(selectors).collect()
}

/// The label the chart puts on the operator's pods, in whatever namespace it runs.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("knowledge.dev/operator", "true");

fn operator_peer() -> NetworkPolicyPeer {
    let (key, value) = OPERATOR_POD_LABEL;
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(selector(BTreeMap::from([(key.into(), value.into())]))),
        ..NetworkPolicyPeer::default()
    }
}

fn namespace_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

fn pods(names: &Names, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(names.selector(component))),
        ..NetworkPolicyPeer::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    }
}

fn ingress_rule(from: Vec<NetworkPolicyPeer>, port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(vec![tcp(port)]),
    }
}

/// Egress to `to` (anywhere when empty) on the given TCP ports.
fn egress_rule(to: Vec<NetworkPolicyPeer>, ports: &[i32]) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: (!to.is_empty()).then_some(to),
        ports: Some(ports.iter().map(|p| tcp(*p)).collect()),
    }
}

fn dns() -> NetworkPolicyEgressRule {
    let port = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    };
    NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![port("UDP"), port("TCP")]),
    }
}

/// Ports of an external Redis (URL and nodes); 6379 when none is written.
fn external_redis_ports(external: &ExternalRedis) -> Vec<i32> {
    let mut ports: BTreeSet<i32> = external.nodes.iter().filter_map(|n| host_port(n)).collect();
    if let Some(url) = &external.url {
        ports.insert(url_port(url).unwrap_or(REDIS_PORT));
    }
    ports.extend(&external.data_ports);
    // Sentinels answer with the master's address: its data port, not theirs.
    if external.mode == RedisMode::Sentinel && external.data_ports.is_empty() {
        ports.insert(REDIS_PORT);
    }
    if ports.is_empty() {
        ports.insert(REDIS_PORT);
    }
    ports.into_iter().collect()
}

/// Port of `scheme://[user@]host:port[/path]`, if written.
fn url_port(url: &str) -> Option<i32> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host_port_part = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port(host_port_part)
}

fn host_port(host_port: &str) -> Option<i32> {
    let (_, port) = host_port.rsplit_once(':')?;
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_urls_and_nodes() {
        assert_eq!(url_port("rediss://:pw@redis.example:6380/0"), Some(6380));
        assert_eq!(url_port("https://minio.storage:9000"), Some(9000));
        assert_eq!(url_port("https://s3.amazonaws.com"), None);
        let external = ExternalRedis {
            mode: crate::crd::RedisMode::Cluster,
            url: None,
            nodes: vec!["a:7000".into(), "b:7001".into(), "c:7000".into()],
            sentinel_service: None,
            data_ports: vec![],
            password_secret_ref: None,
            tls: false,
            tls_ca_secret_ref: None,
            min_replicas_to_ack: 0,
            replica_ack_timeout_ms: None,
        };
        assert_eq!(external_redis_ports(&external), vec![7000, 7001]);
    }

    #[test]
    fn sentinel_mode_allows_the_data_port_the_sentinels_point_to() {
        let mut external = ExternalRedis {
            mode: RedisMode::Sentinel,
            url: None,
            nodes: vec!["s-0:26379".into(), "s-1:26379".into()],
            sentinel_service: Some("mymaster".into()),
            data_ports: vec![],
            password_secret_ref: None,
            tls: false,
            tls_ca_secret_ref: None,
            min_replicas_to_ack: 0,
            replica_ack_timeout_ms: None,
        };
        assert_eq!(external_redis_ports(&external), vec![6379, 26379]);
        external.data_ports = vec![6380];
        assert_eq!(external_redis_ports(&external), vec![6380, 26379]);
    }
}
