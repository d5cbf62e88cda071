//! The checked-in CRD is the generator's output, and its schema (types, defaults and CEL
//! rules) accepts the examples and rejects the invalid objects with a clear message.

use kb_operator::crd::KnowledgeBase;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn generated_crd() -> String {
    serde_yaml::to_string(&KnowledgeBase::crd()).unwrap()
}

fn schema() -> Value {
    let crd = serde_json::to_value(KnowledgeBase::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// CEL errors for `spec` on a KnowledgeBase named `name`.
fn cel_errors_named(name: &str, spec: Value) -> Vec<String> {
    let object = json!({
        "apiVersion": "knowledge.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    match kube_cel::Validator::new().validate(&schema(), &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

fn cel_errors(spec: Value) -> Vec<String> {
    cel_errors_named("docs", spec)
}

fn assert_rejected(spec: Value, needle: &str) {
    let errors = cel_errors(spec);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:?}"
    );
}

#[test]
fn checked_in_crd_is_the_generator_output() {
    let path = "crds/knowledge.dev_knowledgebases.yaml";
    let checked_in = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
    assert!(
        checked_in == generated_crd(),
        "{path} is stale: run `cargo run -p kb-operator -- crd > {path}`"
    );
    let path = "charts/knowledgebase-operator/templates/crd.yaml";
    let checked_in = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
    assert!(
        checked_in == kb_operator::crd::chart_template().unwrap(),
        "{path} is stale: run `cargo run -p kb-operator -- crd --chart > {path}`"
    );
}

#[test]
fn the_chart_installs_and_upgrades_the_crd_and_keeps_it_on_uninstall() {
    // A CRD in the chart's crds/ folder is never upgraded by helm: it must be a template.
    assert!(
        !repo_root()
            .join("charts/knowledgebase-operator/crds")
            .exists(),
        "the chart's crds/ folder is installed once and never upgraded"
    );
    let root = repo_root();
    let path = std::env::var("PATH").unwrap_or_default();
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let render = |extra: &[&str]| {
        let output = std::process::Command::new(&helm)
            .args(["template", "kbo"])
            .arg(root.join("charts/knowledgebase-operator"))
            .args(extra)
            .env(
                "PATH",
                format!("{}:{path}", root.join(".tools/bin").display()),
            )
            .output()
            .unwrap_or_else(|e| panic!("{helm} not runnable ({e}); run `make setup`"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let rendered = render(&[]);
    let crd = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "CustomResourceDefinition")
        .expect("the chart renders the CRD");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let mut generated: serde_yaml::Value = serde_yaml::from_str(&generated_crd()).unwrap();
    generated["metadata"]["annotations"] =
        serde_yaml::from_str("{helm.sh/resource-policy: keep}").unwrap();
    assert_eq!(crd, generated, "the chart's CRD is the generated one");
    let without = render(&["--set", "crds.install=false"]);
    assert!(!without.contains("kind: CustomResourceDefinition"));
}

#[test]
fn crd_has_names_subresources_and_printer_columns() {
    let crd = serde_json::to_value(KnowledgeBase::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "knowledgebases.knowledge.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["kb"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Replicas",
            "Ready replicas",
            "Reason",
            "Device",
            "Image",
            "Last backup",
            "Age"
        ]
    );
}

#[test]
fn minimal_spec_is_valid() {
    assert_eq!(
        cel_errors(json!({"embedding": {"device": "cpu"}})),
        Vec::<String>::new()
    );
}

#[test]
fn several_replicas_require_redis() {
    assert_rejected(
        json!({"replicas": 3, "embedding": {"device": "cpu"}}),
        "requires spec.redis",
    );
    let with_redis =
        json!({"replicas": 3, "embedding": {"device": "cpu"}, "redis": {"managed": {}}});
    assert_eq!(cel_errors(with_redis), Vec::<String>::new());
}

#[test]
fn autoscaling_requires_redis_and_ordered_bounds() {
    assert_rejected(
        json!({"embedding": {"device": "cpu"}, "autoscaling": {"maxReplicas": 4}}),
        "autoscaling beyond one replica requires spec.redis",
    );
    assert_rejected(
        json!({"embedding": {"device": "cpu"}, "redis": {"managed": {}}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "minReplicas must not exceed",
    );
}

#[test]
fn a_model_surge_requires_redis() {
    let surge = json!({"device": "cpu", "rollout": {"maxSurge": 1}});
    assert_rejected(
        json!({"embedding": surge}),
        "maxSurge above 0 requires spec.redis",
    );
    assert_eq!(
        cel_errors(json!({"embedding": surge, "redis": {"managed": {}}})),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors(
            json!({"embedding": surge, "redis": {"managed": {}}, "autoscaling": {"maxReplicas": 4}})
        ),
        Vec::<String>::new(),
        "autoscaled: the autoscaler's floor is raised for the change"
    );
    let in_place = json!({"device": "cpu", "rollout": {"maxSurge": 0}});
    assert_eq!(
        cel_errors(json!({"embedding": in_place})),
        Vec::<String>::new()
    );
}

#[test]
fn the_bulk_lane_budget_must_hold_one_full_length_input() {
    assert_rejected(
        json!({"embedding": {"device": "cpu", "maxSeqLen": 256, "maxBatchTokens": 4096, "bulkBatchTokens": 128}}),
        "bulkBatchTokens must be at least embedding.maxSeqLen",
    );
    assert_eq!(
        cel_errors(
            json!({"embedding": {"device": "cpu", "maxSeqLen": 256, "maxBatchTokens": 4096, "bulkBatchTokens": 256}})
        ),
        Vec::<String>::new()
    );
}

#[test]
fn gpus_per_replica_requires_cuda() {
    assert_rejected(
        json!({"embedding": {"device": "cpu", "gpusPerReplica": 2}}),
        "requires embedding.device: cuda",
    );
    assert_eq!(
        cel_errors(json!({"embedding": {"device": "cuda", "gpusPerReplica": 2}})),
        Vec::<String>::new()
    );
}

#[test]
fn backup_schedule_must_look_like_cron() {
    let backup = |schedule: &str| json!({"embedding": {"device": "cpu"}, "backup": {"schedule": schedule, "destination": {"pvc": {"claimName": "b"}}}});
    assert_rejected(backup("every night"), "five-field cron");
    assert_rejected(backup("0 2 * *"), "five-field cron");
    assert_eq!(cel_errors(backup("0 2 * * *")), Vec::<String>::new());
    assert_eq!(cel_errors(backup("@daily")), Vec::<String>::new());
}

#[test]
fn exactly_one_redis_and_backup_destination() {
    let both = json!({"embedding": {"device": "cpu"}, "redis": {"managed": {}, "external": {"url": "redis://r:6379"}}});
    assert_rejected(both, "exactly one of redis.managed or redis.external");
    let none = json!({"embedding": {"device": "cpu"}, "backup": {"schedule": "@daily", "destination": {}}});
    assert_rejected(
        none,
        "spec.backup.destination: set exactly one of destination.pvc or destination.s3",
    );
    let both = json!({"embedding": {"device": "cpu"}, "bootstrap": {"fromBackup": {"destination": {
        "pvc": {"claimName": "b"},
        "s3": {"bucket": "kb-backups", "credentialsSecretRef": "c"}}}}});
    assert_rejected(
        both,
        "spec.bootstrap.fromBackup.destination: set exactly one of destination.pvc or destination.s3",
    );
    let named = |name: &str| {
        json!({"embedding": {"device": "cpu"}, "bootstrap": {"fromBackup": {
        "destination": {"pvc": {"claimName": "b"}}, "backupName": name}}})
    };
    assert_eq!(
        cel_errors(named("backup-42-1700000000")),
        Vec::<String>::new()
    );
}

#[test]
fn external_redis_needs_an_address_for_its_mode() {
    let external = |e: Value| json!({"embedding": {"device": "cpu"}, "redis": {"external": e}});
    assert_rejected(external(json!({})), "url is required in standalone mode");
    assert_rejected(external(json!({"mode": "cluster"})), "nodes is required");
    assert_rejected(
        external(json!({"mode": "sentinel", "nodes": ["s:26379"]})),
        "sentinelService is required",
    );
    // WAIT is answered by the node it reaches, not necessarily the stream's shard.
    assert_rejected(
        external(json!({"mode": "cluster", "nodes": ["r:7000"], "minReplicasToAck": 1})),
        "minReplicasToAck is supported in standalone and sentinel mode",
    );
    assert_eq!(
        cel_errors(external(json!({"mode": "sentinel", "nodes": ["s:26379"],
            "sentinelService": "m", "minReplicasToAck": 1}))),
        Vec::<String>::new()
    );
}

#[test]
fn chunk_overlap_must_be_below_chunk_size() {
    assert_rejected(
        json!({"embedding": {"device": "cpu"}, "chunking": {"maxTokens": 50, "overlap": 50}}),
        "overlap must be smaller",
    );
}

#[test]
fn long_names_are_rejected() {
    let errors = cel_errors_named(&"a".repeat(41), json!({"embedding": {"device": "cpu"}}));
    assert!(
        errors.iter().any(|e| e.contains("at most 40 characters")),
        "{errors:?}"
    );
}

#[test]
fn examples_parse_and_pass_the_schema_rules() {
    for example in ["minimal-cpu", "multi-gpu", "external-redis-cluster"] {
        let text =
            std::fs::read_to_string(repo_root().join(format!("examples/{example}.yaml"))).unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        let errors = cel_errors_named(
            value["metadata"]["name"].as_str().unwrap(),
            value["spec"].clone(),
        );
        assert!(errors.is_empty(), "{example}: {errors:?}");
        let kb: KnowledgeBase = serde_yaml::from_str(&text).unwrap();
        kb_operator::reconcile::validate::check(&kb, &[])
            .unwrap_or_else(|e| panic!("{example}: {e:?}"));
    }
}

#[test]
fn model_volume_needs_exactly_one_source_and_batches_fit_a_sequence() {
    let two_sources = json!({"embedding": {"device": "cpu", "modelVolume": {
        "persistentVolumeClaim": {"claimName": "m"}, "nfs": {"server": "n", "path": "/m"}
    }}});
    assert_rejected(
        two_sources,
        "exactly one of persistentVolumeClaim, image, nfs",
    );
    assert_rejected(
        json!({"embedding": {"device": "cpu", "maxBatchTokens": 64, "maxSeqLen": 128}}),
        "maxBatchTokens must be at least",
    );
}

#[test]
fn the_worker_image_has_no_stored_default() {
    // A CRD default would be written into every KnowledgeBase at creation, pinning the
    // workers for good; the operator pins it in status.workerImage instead, where
    // spec.updatePolicy can move it.
    let crd: serde_json::Value = serde_yaml::from_str(&generated_crd()).unwrap();
    let image = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["image"];
    assert!(image.is_object(), "{image}");
    assert!(image.get("default").is_none(), "{image}");
}

/// CEL errors for an update of `docs` from `old` to `new` (transition rules see `oldSelf`).
fn cel_update_errors(old: Value, new: Value) -> Vec<String> {
    let object = |spec: Value| {
        json!({
            "apiVersion": "knowledge.dev/v1alpha1",
            "kind": "KnowledgeBase",
            "metadata": {"name": "docs", "namespace": "default"},
            "spec": spec,
        })
    };
    match kube_cel::Validator::new().validate(&schema(), &object(new), Some(&object(old))) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

#[test]
fn volumes_may_grow_but_never_shrink_or_change_class() {
    let spec = |size: &str, class: Option<&str>| {
        let mut storage = json!({"size": size});
        if let Some(class) = class {
            storage["storageClassName"] = json!(class);
        }
        json!({"embedding": {"device": "cpu"}, "storage": storage})
    };
    let ok = |old: Value, new: Value| {
        let errors = cel_update_errors(old, new);
        assert!(errors.is_empty(), "{errors:?}");
    };
    let refused = |old: Value, new: Value, needle: &str| {
        let errors = cel_update_errors(old, new);
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "expected {needle:?}, got {errors:?}"
        );
    };
    ok(spec("10Gi", Some("fast")), spec("20Gi", Some("fast")));
    // Same value, other spelling.
    ok(spec("1Gi", None), spec("1024Mi", None));
    refused(
        spec("20Gi", None),
        spec("10Gi", None),
        "storage.size cannot shrink",
    );
    refused(
        spec("1Gi", None),
        spec("1000Mi", None),
        "storage.size cannot shrink",
    );
    refused(
        spec("10Gi", Some("fast")),
        spec("10Gi", Some("slow")),
        "storageClassName cannot change",
    );
    refused(
        spec("10Gi", None),
        spec("10Gi", Some("fast")),
        "storageClassName cannot change",
    );
    // A create has no old object: any size and class.
    assert!(cel_errors(spec("1Mi", Some("x"))).is_empty());

    let redis = |size: &str| json!({"embedding": {"device": "cpu"}, "redis": {"managed": {"storageSize": size}}});
    ok(redis("8Gi"), redis("16Gi"));
    refused(
        redis("16Gi"),
        redis("8Gi"),
        "redis.managed.storageSize cannot shrink",
    );
}
