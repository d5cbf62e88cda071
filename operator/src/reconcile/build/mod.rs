//! Pure construction of every child object of a KnowledgeBase.
//!
//! `plan` is what `kb-operator render` prints and what `apply` sends to the API server: it
//! reads only the KnowledgeBase and the [`Inputs`] that `dereference` gathered, so the same
//! inputs always give the same objects.

mod config_map;
mod cronjob;
mod hpa;
mod monitoring;
mod names;
mod network_policy;
mod pdb;
mod pod;
mod redis;
mod scheduling;
mod secret;
mod security;
mod server_form;
mod service;
mod service_account;
mod statefulset;

pub use config_map::{
    is_pinned_key, pinned_key, worker_config, CONFIG_HASH_ANNOTATION, WANTED_MODEL_KEY,
};
pub use cronjob::{on_demand as backup_job, REPORT_FILE, REQUEST_ANNOTATION};
pub use monitoring::{PrometheusRule, ServiceMonitor, ALERTS, SCRAPE_LABEL};
pub use names::{Component, Names, HTTP_PORT, MANAGER, METRICS_PORT, REDIS_PORT};
pub use network_policy::OPERATOR_POD_LABEL;
pub use pod::REDIS_PASSWORD_HASH_ANNOTATION;
pub use redis::AUTH_HASH_ANNOTATION;
pub use secret::{
    short_hash, ADMIN_KEY, API_KEYS_FILE, REDIS_AUTH_CONF_KEY, REDIS_PASSWORD_KEY,
    REDIS_WORKER_PASSWORD_KEY,
};

use crate::crd::{KnowledgeBase, KnowledgeBaseSpec};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;

/// Contents of a Secret, key to bytes.
pub type SecretData = BTreeMap<String, ByteString>;

/// What `build` needs besides the KnowledgeBase: state read from the cluster (or made up
/// offline by `render`).
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// Namespace used when the KnowledgeBase has none (offline rendering).
    pub namespace: String,
    /// Data of the generated API-keys Secret (existing data when it exists); `None` when
    /// `spec.auth.apiKeysSecretRef` names the user's Secret.
    pub generated_api_keys: Option<SecretData>,
    /// Data of the managed-Redis password Secret; `None` without managed Redis.
    pub redis_password: Option<SecretData>,
    /// SHA-256 of the Secret values the workers read only at start (Redis password and
    /// CA, the peer admin key); in the pod template, so rotating them rolls the workers.
    /// The API keys file is not in it: the workers reload it in place.
    pub secrets_hash: Option<String>,
}

/// One child object (the large kinds boxed to keep plans small).
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    StatefulSet(Box<StatefulSet>),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    NetworkPolicy(NetworkPolicy),
    CronJob(Box<CronJob>),
    ServiceMonitor(Box<ServiceMonitor>),
    PrometheusRule(Box<PrometheusRule>),
}

/// The kinds of child objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildKind {
    ServiceAccount,
    ConfigMap,
    Secret,
    Service,
    StatefulSet,
    PodDisruptionBudget,
    HorizontalPodAutoscaler,
    NetworkPolicy,
    CronJob,
    ServiceMonitor,
    PrometheusRule,
}

/// A child identified by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildRef {
    pub kind: ChildKind,
    pub name: String,
}

impl Child {
    /// Kind and name of this child.
    pub fn reference(&self) -> ChildRef {
        let (kind, meta) = match self {
            Child::ServiceAccount(o) => (ChildKind::ServiceAccount, &o.metadata),
            Child::ConfigMap(o) => (ChildKind::ConfigMap, &o.metadata),
            Child::Secret(o) => (ChildKind::Secret, &o.metadata),
            Child::Service(o) => (ChildKind::Service, &o.metadata),
            Child::StatefulSet(o) => (ChildKind::StatefulSet, &o.metadata),
            Child::PodDisruptionBudget(o) => (ChildKind::PodDisruptionBudget, &o.metadata),
            Child::HorizontalPodAutoscaler(o) => (ChildKind::HorizontalPodAutoscaler, &o.metadata),
            Child::NetworkPolicy(o) => (ChildKind::NetworkPolicy, &o.metadata),
            Child::CronJob(o) => (ChildKind::CronJob, &o.metadata),
            Child::ServiceMonitor(o) => (ChildKind::ServiceMonitor, &o.metadata),
            Child::PrometheusRule(o) => (ChildKind::PrometheusRule, &o.metadata),
        };
        ChildRef {
            kind,
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as JSON (with `apiVersion` and `kind`), in the form the API server
    /// stores it (see [`server_form`]): what `apply` sends and `render` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = self.to_json_as_built();
        server_form::normalize(&mut value);
        value
    }

    /// The object as JSON, as the builders made it.
    pub fn to_json_as_built(&self) -> serde_json::Value {
        let value = match self {
            Child::ServiceAccount(o) => serde_json::to_value(o),
            Child::ConfigMap(o) => serde_json::to_value(o),
            Child::Secret(o) => serde_json::to_value(o),
            Child::Service(o) => serde_json::to_value(o),
            Child::StatefulSet(o) => serde_json::to_value(o),
            Child::PodDisruptionBudget(o) => serde_json::to_value(o),
            Child::HorizontalPodAutoscaler(o) => serde_json::to_value(o),
            Child::NetworkPolicy(o) => serde_json::to_value(o),
            Child::CronJob(o) => serde_json::to_value(o),
            Child::ServiceMonitor(o) => serde_json::to_value(o),
            Child::PrometheusRule(o) => serde_json::to_value(o),
        };
        value.expect("Kubernetes objects always serialise")
    }
}

/// Children to apply and children that must not exist (their feature is off).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub children: Vec<Child>,
    pub prune: Vec<ChildRef>,
}

impl Plan {
    /// The child of the given kind and name.
    pub fn get(&self, kind: ChildKind, name: &str) -> Option<&Child> {
        self.children.iter().find(|c| {
            c.reference()
                == ChildRef {
                    kind,
                    name: name.to_string(),
                }
        })
    }

    /// The child of the given kind and name, to adjust it.
    pub fn get_mut(&mut self, kind: ChildKind, name: &str) -> Option<&mut Child> {
        self.children
            .iter_mut()
            .find(|c| c.reference().kind == kind && c.reference().name == name)
    }

    fn add(&mut self, kind: ChildKind, name: String, child: Option<Child>) {
        match child {
            Some(child) => self.children.push(child),
            None => self.prune.push(ChildRef { kind, name }),
        }
    }
}

/// Every child of `kb`. A paused KnowledgeBase plans nothing: no object is written or deleted.
pub fn plan(kb: &KnowledgeBase, inputs: &Inputs) -> Plan {
    let mut plan = Plan::default();
    if kb.spec.paused {
        return plan;
    }
    let names = Names::new(kb, &inputs.namespace);
    let spec = &kb.spec;
    add_workers(&mut plan, spec, kb.metadata.generation, &names, inputs);
    let worker = names.worker();
    plan.add(
        ChildKind::PodDisruptionBudget,
        worker.clone(),
        pdb::build(spec, &names),
    );
    plan.add(
        ChildKind::HorizontalPodAutoscaler,
        worker,
        hpa::build(spec, &names),
    );
    for (name, policy) in network_policy::build(spec, &names) {
        plan.add(ChildKind::NetworkPolicy, name, policy);
    }
    redis::add_to_plan(&mut plan, spec, &names, inputs.redis_password.clone());
    plan.add(
        ChildKind::ServiceMonitor,
        names.worker(),
        monitoring::service_monitor(spec, &names),
    );
    plan.add(
        ChildKind::PrometheusRule,
        names.worker(),
        monitoring::prometheus_rule(spec, &names),
    );
    plan.add(
        ChildKind::CronJob,
        names.backup(),
        cronjob::build(spec, &names),
    );
    // A Secret the spec names is the user's, even under a generated name: never pruned.
    let named = crate::reconcile::dereference::referenced_secrets(kb);
    plan.prune
        .retain(|r| !(r.kind == ChildKind::Secret && named.contains(&r.name)));
    plan
}

/// The children every KnowledgeBase has: identity, configuration, keys, Services, workers.
fn add_workers(
    plan: &mut Plan,
    spec: &KnowledgeBaseSpec,
    generation: Option<i64>,
    names: &Names,
    inputs: &Inputs,
) {
    let (config, config_hash) = config_map::worker_config_map(spec, names);
    let api_keys = inputs
        .generated_api_keys
        .clone()
        .map(|data| secret::api_keys(names, data));
    plan.add(ChildKind::Secret, names.api_keys(), api_keys);
    plan.children.extend([
        service_account::build(names),
        Child::ConfigMap(config),
        service::client(names),
        service::headless(names),
        statefulset::build(spec, generation, names, &config_hash, inputs),
    ]);
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
