//! Names and labels of the children of one KnowledgeBase.

use crate::crd::KnowledgeBase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "kb-operator";
/// HTTP API port of the workers.
pub const HTTP_PORT: i32 = 8080;
/// Metrics port of the workers.
pub const METRICS_PORT: i32 = 9090;
/// Redis port.
pub const REDIS_PORT: i32 = 6379;

/// The part of the system a child belongs to (`app.kubernetes.io/component`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Worker,
    Redis,
    Backup,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Redis => "redis",
            Self::Backup => "backup",
        }
    }
}

/// Everything derived from the KnowledgeBase's identity.
#[derive(Clone, Debug)]
pub struct Names {
    /// The KnowledgeBase's name.
    pub base: String,
    pub namespace: String,
    owner: Option<OwnerReference>,
}

impl Names {
    /// Names for `kb`, placed in `namespace` (the object's own namespace when it has one).
    pub fn new(kb: &KnowledgeBase, namespace: &str) -> Self {
        Self {
            base: kb.name_any(),
            namespace: kb.namespace().unwrap_or_else(|| namespace.to_string()),
            owner: kb.controller_owner_ref(&()),
        }
    }

    /// `<base>-<suffix>`.
    pub fn child(&self, suffix: &str) -> String {
        format!("{}-{}", self.base, suffix)
    }

    pub fn worker(&self) -> String {
        self.child("worker")
    }

    pub fn headless(&self) -> String {
        self.child("headless")
    }

    pub fn api_keys(&self) -> String {
        self.child("api-keys")
    }

    pub fn redis(&self) -> String {
        self.child("redis")
    }

    pub fn backup(&self) -> String {
        self.child("backup")
    }

    /// In-cluster DNS name of the client Service.
    pub fn service_host(&self) -> String {
        format!("{}.{}.svc", self.base, self.namespace)
    }

    /// In-cluster URL of the API.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.service_host())
    }

    /// Labels that select the pods of one component.
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_string(),
                "knowledgebase".to_string(),
            ),
            ("app.kubernetes.io/instance".to_string(), self.base.clone()),
            (
                "app.kubernetes.io/component".to_string(),
                component.as_str().to_string(),
            ),
        ])
    }

    /// The worker selector as a label-selector string (for `status.selector`).
    pub fn selector_string(&self) -> String {
        self.selector(Component::Worker)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Labels of every child object.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        );
        labels
    }

    /// Metadata of a child: name, namespace, labels and the controller owner reference.
    /// Label selector of every object made for this KnowledgeBase (data claims included).
    pub fn children_selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGER}",
            self.base
        )
    }

    /// Whether `labels` mark an object as a child of this KnowledgeBase.
    pub fn is_child(&self, labels: &BTreeMap<String, String>) -> bool {
        crate::reconcile::apply::is_child_of(labels, &self.base)
    }

    pub fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }
}
