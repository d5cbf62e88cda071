//! What ships to a cluster validates offline: rendered examples and the chart pass
//! kubernetes-validate, and the chart passes helm lint. Fails (never skips) when a tool is
//! missing; `make setup` installs them.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

#[test]
fn rendered_examples_and_chart_pass_kubernetes_validate_and_helm_lint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new("bash")
        .arg(root.join("scripts/validate-manifests.sh"))
        .env("KB_OPERATOR", env!("CARGO_BIN_EXE_kb-operator"))
        .output()
        .expect("running scripts/validate-manifests.sh");
    assert!(
        output.status.success(),
        "scripts/validate-manifests.sh failed (run `make setup` if a tool is missing):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The chart's templates rendered by helm with `values` (`--set` pairs), as documents.
fn rendered_chart(root: &Path, values: &[&str]) -> Vec<serde_yaml::Value> {
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let chart = root.join("charts/knowledgebase-operator");
    let mut command = Command::new(&helm);
    command.args([
        "template",
        "kbo",
        chart.to_str().unwrap(),
        "--namespace",
        "kb-system",
    ]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command
        .env("PATH", tool_path(root))
        .output()
        .unwrap_or_else(|e| panic!("{helm} not runnable ({e}); run `make setup`"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A Role's or ClusterRole's rules as `group/resource -> verbs`.
fn rules(role: &serde_yaml::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut rules = BTreeMap::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                let verbs: &mut BTreeSet<String> =
                    rules.entry(format!("{group}/{resource}")).or_default();
                verbs.extend(strings("verbs"));
            }
        }
    }
    rules
}

/// The ClusterRole (rendered by helm) as `group/resource -> verbs`.
fn cluster_role_rules(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let docs = rendered_chart(root, &[]);
    rules(
        docs.iter()
            .find(|doc| doc["kind"] == "ClusterRole")
            .expect("a ClusterRole"),
    )
}

fn tool_path(root: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!(
        "{}:{}:{path}",
        root.join(".venv/bin").display(),
        root.join(".tools/bin").display()
    )
}

#[test]
fn cluster_role_grants_exactly_what_reconcile_uses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = cluster_role_rules(root);
    let children = "get,list,watch,create,patch,delete";
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("knowledge.dev/knowledgebases", "get,list,watch,patch"),
        ("knowledge.dev/knowledgebases/status", "patch"),
        ("knowledge.dev/knowledgebases/finalizers", "update"),
        ("/configmaps", children),
        ("/secrets", children),
        ("/services", children),
        ("/serviceaccounts", children),
        ("/persistentvolumeclaims", "list,patch,delete"),
        ("apps/statefulsets", children),
        ("policy/poddisruptionbudgets", children),
        ("autoscaling/horizontalpodautoscalers", children),
        ("networking.k8s.io/networkpolicies", children),
        ("batch/cronjobs", children),
        ("batch/jobs", "get,list,watch,create"),
        ("monitoring.coreos.com/servicemonitors", children),
        ("monitoring.coreos.com/prometheusrules", children),
        ("/pods", "list"),
        ("events.k8s.io/events", "create,patch"),
    ]
    .into_iter()
    .map(|(resource, verbs)| {
        (
            resource.to_string(),
            verbs.split(',').map(String::from).collect(),
        )
    })
    .collect();
    assert_eq!(rules, expected);
    assert!(
        !rules
            .iter()
            .any(|(r, v)| r.contains('*') || v.contains("*")),
        "no wildcards"
    );
}

#[test]
fn a_namespaced_install_grants_the_same_rules_per_namespace_and_nothing_cluster_wide() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cluster_wide = cluster_role_rules(root);
    let docs = rendered_chart(
        root,
        &["watchNamespaces={team-a,team-b}", "crds.install=false"],
    );
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(
        !kinds.iter().any(|k| k.starts_with("Cluster")),
        "cluster-scoped objects in a namespaced install: {kinds:?}"
    );
    for namespace in ["team-a", "team-b"] {
        let in_namespace = |kind: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["namespace"] == namespace)
                .unwrap_or_else(|| panic!("no {kind} in {namespace}"))
        };
        assert_eq!(rules(in_namespace("Role")), cluster_wide, "{namespace}");
        let binding = in_namespace("RoleBinding");
        assert_eq!(binding["roleRef"]["kind"], "Role");
        assert_eq!(binding["subjects"][0]["namespace"], "kb-system");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--namespaces=team-a,team-b"),
        "{args:?}"
    );
}

#[test]
fn the_operator_pod_carries_the_label_the_worker_network_policy_admits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // With a nameOverride too: the admitted label must not depend on the release's names.
    for values in [&[][..], &["nameOverride=kb-ops"][..]] {
        let docs = rendered_chart(root, values);
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let (key, value) = kb_operator::reconcile::build::OPERATOR_POD_LABEL;
        assert_eq!(labels[key].as_str(), Some(value), "{labels:?}");
    }
}
