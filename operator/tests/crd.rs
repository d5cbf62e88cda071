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
    for path in [
        "crds/knowledge.dev_knowledgebases.yaml",
        "charts/knowledgebase-operator/crds/knowledge.dev_knowledgebases.yaml",
    ] {
        let checked_in = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
        assert!(
            checked_in == generated_crd(),
            "{path} is stale: run `cargo run -p kb-operator -- crd > {path}`"
        );
    }
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
        ["Ready", "Replicas", "Ready replicas", "Device", "Age"]
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
    // workers to the operator release that created it.
    let crd: serde_json::Value = serde_yaml::from_str(&generated_crd()).unwrap();
    let image = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["image"];
    assert!(image.is_object(), "{image}");
    assert!(image.get("default").is_none(), "{image}");
}
