//! Network isolation of the workers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// NetworkPolicies around the knowledge base. Empty client lists allow every pod in the
/// KnowledgeBase's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Create NetworkPolicies (default deny plus the allow rules below).
    #[serde(default = "crate::crd::default_true")]
    pub policies: bool,
    /// Namespaces whose pods may call the API on port 8080.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Pods (in the KnowledgeBase's namespace) that may call the API on port 8080.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_pod_selectors: Vec<LabelSelector>,
    /// Namespace allowed to scrape metrics on port 9090.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_namespace: Option<String>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            policies: true,
            allowed_namespaces: Vec::new(),
            allowed_pod_selectors: Vec::new(),
            monitoring_namespace: None,
        }
    }
}
