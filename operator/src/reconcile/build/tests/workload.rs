//! The worker workload: config contract, pod, container, storage, placement.

use super::*;

#[test]
fn worker_config_follows_the_contract() {
    let config = config(&plan_for(&kb("docs")));
    assert_eq!(config.listen, "0.0.0.0:8080");
    assert_eq!(config.metrics_listen, "0.0.0.0:9090");
    assert_eq!(config.data_dir.to_str(), Some("/data"));
    assert_eq!(config.model.unwrap().to_str(), Some("/opt/kb/model"));
    assert_eq!(config.embedding.device, "cpu");
    assert_eq!(
        config.auth.api_keys_file.unwrap().to_str(),
        Some("/etc/kb/keys/api-keys.yaml")
    );
    assert!(config.redis.is_none());
}

#[test]
fn embedding_chunking_and_cache_reach_the_worker_config() {
    let mut kb = kb("docs");
    kb.spec.embedding.precision = crate::crd::Precision::Bf16;
    kb.spec.embedding.max_batch_tokens = 4096;
    kb.spec.embedding.max_seq_len = 128;
    kb.spec.chunking.max_tokens = 100;
    kb.spec.chunking.overlap = 10;
    kb.spec.cache.enabled = false;
    kb.spec.cache.ttl_seconds = 60;
    let config = config(&plan_for(&kb));
    assert_eq!(config.embedding.precision, kb_config::Precision::Bf16);
    assert_eq!(
        (
            config.embedding.max_batch_tokens,
            config.embedding.max_seq_len
        ),
        (4096, 128)
    );
    assert_eq!(
        (config.chunking.max_tokens, config.chunking.overlap),
        (100, 10)
    );
    assert!(!config.cache.enabled);
    assert_eq!(config.cache.ttl_seconds, 60);
}

#[test]
fn lanes_model_name_limits_and_index_reach_the_worker_config() {
    let unset = config(&plan_for(&kb("docs")));
    let defaults = kb_config::EmbeddingConfig::default();
    let lanes = |e: &kb_config::EmbeddingConfig| {
        (
            e.bulk_batch_tokens,
            e.queue_capacity,
            e.bulk_queue_capacity,
            e.model_name.clone(),
            e.cpu_executors,
        )
    };
    assert_eq!(lanes(&unset.embedding), lanes(&defaults));
    assert_eq!(unset.limits, kb_config::LimitsConfig::default());
    assert_eq!(unset.index, kb_config::IndexConfig::default());

    let mut kb = kb("docs");
    let e = &mut kb.spec.embedding;
    e.bulk_batch_tokens = Some(512);
    e.queue_capacity = Some(64);
    e.bulk_queue_capacity = Some(100_000);
    e.model_name = Some("text-embedding-3-small".into());
    e.cpu_executors = Some(3);
    kb.spec.limits = crate::crd::Limits {
        max_request_bytes: Some(1 << 20),
        max_documents_per_request: Some(50),
        max_document_bytes: Some(65_536),
        max_top_k: Some(100),
        max_query_bytes: Some(2048),
        max_concurrent_requests: Some(32),
        request_timeout_seconds: Some(5),
        write_timeout_seconds: Some(120),
    };
    kb.spec.index.cpu_screen = crate::crd::CpuScreen::Bf16;
    assert_eq!(
        config(&plan_for(&kb)).index.lexical,
        kb_config::Lexical::Standard,
        "on unless turned off"
    );
    kb.spec.index.lexical = crate::crd::Lexical::English;
    let config = config(&plan_for(&kb));
    assert_eq!(config.index.cpu_screen, kb_config::CpuScreen::Bf16);
    assert_eq!(config.index.lexical, kb_config::Lexical::English);
    assert_eq!(config.embedding.bulk_batch_tokens, Some(512));
    assert_eq!(config.embedding.queue_capacity, 64);
    assert_eq!(config.embedding.bulk_queue_capacity, 100_000);
    assert_eq!(
        config.embedding.model_name.as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(config.embedding.cpu_executors, Some(3));
    assert_eq!(
        config.limits,
        kb_config::LimitsConfig {
            max_request_bytes: 1 << 20,
            max_documents_per_request: 50,
            max_document_bytes: 65_536,
            max_top_k: 100,
            max_query_bytes: 2048,
            max_concurrent_requests: 32,
            request_timeout_seconds: 5,
            write_timeout_seconds: 120,
        }
    );
    config
        .validate()
        .expect("the worker accepts what the operator renders");
}

#[test]
fn query_and_document_prefixes_reach_the_worker_config() {
    let unset = config(&plan_for(&kb("docs")));
    assert_eq!(
        (
            unset.embedding.query_prefix,
            unset.embedding.document_prefix
        ),
        (None, None),
        "unset: the model's own prompts"
    );
    let mut kb = kb("docs");
    kb.spec.embedding.query_prefix = Some("query: ".into());
    kb.spec.embedding.document_prefix = Some(String::new());
    let config = config(&plan_for(&kb));
    assert_eq!(config.embedding.query_prefix.as_deref(), Some("query: "));
    assert_eq!(config.embedding.document_prefix.as_deref(), Some(""));
    let rendered = kb_config::WorkerConfig::from_yaml(&config.to_yaml()).unwrap();
    assert_eq!(
        rendered.embedding, config.embedding,
        "the trailing space survives YAML"
    );
    config
        .validate()
        .expect("the worker accepts what the operator renders");
}

#[test]
fn the_worker_uses_the_cores_of_its_cpu_limit_or_request() {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let cpu = |q: &str| {
        Some(std::collections::BTreeMap::from([(
            "cpu".to_string(),
            Quantity(q.into()),
        )]))
    };
    let cores = |resources: Option<ResourceRequirements>| {
        let mut kb = kb("docs");
        kb.spec.resources = resources;
        config(&plan_for(&kb)).embedding.cpu_cores
    };
    // The default request (one CPU), not the node's cores.
    assert_eq!(cores(None), Some(1));
    let requests = |q: &str| ResourceRequirements {
        requests: cpu(q),
        ..Default::default()
    };
    assert_eq!(cores(Some(requests("3"))), Some(3));
    assert_eq!(cores(Some(requests("250m"))), Some(1));
    // A limit wins over the request, rounded up.
    let limited = ResourceRequirements {
        requests: cpu("4"),
        limits: cpu("1500m"),
        ..Default::default()
    };
    assert_eq!(cores(Some(limited)), Some(2));
}

#[test]
fn config_change_rolls_the_pods() {
    let hash = |kb: &KnowledgeBase| {
        let plan = plan_for(kb);
        let sts = statefulset(&plan, "docs-worker").clone();
        sts.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let mut changed = kb("docs");
    changed.spec.chunking.max_tokens = 300;
    assert_eq!(hash(&kb("docs")), hash(&kb("docs")));
    assert_ne!(hash(&kb("docs")), hash(&changed));
}

#[test]
fn worker_pod_is_hardened() {
    let plan = plan_for(&kb("docs"));
    let pod = worker_pod(&plan);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let security = worker_container(&plan).security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let sa = json(&plan, ChildKind::ServiceAccount, "docs-worker");
    assert_eq!(sa["automountServiceAccountToken"], false);
}

#[test]
fn worker_container_runs_the_worker_contract() {
    let plan = plan_for(&kb("docs"));
    let c = worker_container(&plan);
    assert_eq!(c.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
    assert_eq!(
        c.command.as_ref().unwrap().join(" "),
        "kb-worker serve --config /etc/kb/config.yaml"
    );
    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("metrics".to_string(), 9090)]
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(path(&c.liveness_probe), "/livez");
    assert_eq!(path(&c.readiness_probe), "/readyz");
    assert_eq!(path(&c.startup_probe), "/livez");
    assert!(c.startup_probe.as_ref().unwrap().failure_threshold.unwrap() >= 30);
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    assert_eq!(sts["spec"]["serviceName"], "docs-headless");
    assert_eq!(sts["spec"]["replicas"], 1);
    let headless = json(&plan, ChildKind::Service, "docs-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
}

#[test]
fn model_volume_is_mounted_read_only_at_models() {
    let mut kb = kb("docs");
    kb.spec.embedding.model_volume = Some(
        serde_json::from_value(serde_json::json!({
            "persistentVolumeClaim": {"claimName": "models"}, "subPath": "all-MiniLM-L6-v2"
        }))
        .unwrap(),
    );
    let plan = plan_for(&kb);
    assert_eq!(
        config(&plan).model.unwrap().to_str(),
        Some("/models/all-MiniLM-L6-v2")
    );
    let mount = worker_container(&plan)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "models")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/models", Some(true))
    );
}

#[test]
fn a_reranker_volume_is_mounted_and_its_path_reaches_the_worker_config() {
    let plan = plan_for(&kb("docs"));
    assert!(config(&plan).reranker.is_none());
    let mut kb = kb("docs");
    kb.spec.reranker = Some(
        serde_json::from_value(serde_json::json!({
            "modelVolume": {"image": {"reference": "registry.example/rerankers:1"},
                            "subPath": "/ms-marco-MiniLM-L6-v2/"},
            "maxSeqLen": 256, "maxTexts": 200
        }))
        .unwrap(),
    );
    let plan = plan_for(&kb);
    let rendered = config(&plan);
    let reranker = rendered
        .reranker
        .clone()
        .expect("the worker config has a reranker");
    assert_eq!(
        reranker.model.to_str(),
        Some("/rerankers/ms-marco-MiniLM-L6-v2")
    );
    assert_eq!((reranker.max_seq_len, reranker.max_texts), (Some(256), 200));
    rendered
        .validate()
        .expect("the worker accepts what the operator renders");
    let container = worker_container(&plan);
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "reranker-model")
        .expect("the reranker volume is mounted");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/rerankers", Some(true))
    );
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["name"] == "reranker-model")
        .expect("the pod has the reranker volume");
    assert_eq!(volume["image"]["reference"], "registry.example/rerankers:1");
    // A directory in the image needs no volume.
    let mut kb = kb.clone();
    kb.spec.reranker =
        Some(serde_json::from_value(serde_json::json!({"modelPath": "/opt/kb/reranker"})).unwrap());
    let plan = plan_for(&kb);
    assert_eq!(
        config(&plan).reranker.unwrap().model.to_str(),
        Some("/opt/kb/reranker")
    );
    assert!(!worker_container(&plan)
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "reranker-model"));
}

#[test]
fn storage_reaches_the_claim_template_and_retention_policy() {
    let mut kb = kb("docs");
    kb.spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("50Gi".into());
    kb.spec.storage.storage_class_name = Some("fast".into());
    kb.spec.storage.reclaim_policy = ReclaimPolicy::Delete;
    let sts = json(&plan_for(&kb), ChildKind::StatefulSet, "docs-worker");
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["resources"]["requests"]["storage"], "50Gi");
    assert_eq!(claim["storageClassName"], "fast");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Delete"
    );
}

#[test]
fn pod_metadata_and_placement_pass_through() {
    let mut kb = kb("docs");
    kb.spec.image = Some("registry.local/kb-worker:dev".into());
    kb.spec.image_pull_policy = Some(crate::crd::PullPolicy::Always);
    kb.spec.image_pull_secrets = vec!["regcred".into()];
    kb.spec
        .pod_annotations
        .insert("team".into(), "search".into());
    kb.spec.pod_labels.insert("tier".into(), "backend".into());
    kb.spec.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }];
    kb.spec.resources = Some(
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "2", "memory": "4Gi"}}))
            .unwrap(),
    );
    let plan = plan_for(&kb);
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    let template = &sts["spec"]["template"];
    assert_eq!(template["metadata"]["annotations"]["team"], "search");
    assert_eq!(template["metadata"]["labels"]["tier"], "backend");
    assert_eq!(template["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(template["spec"]["tolerations"][0]["key"], "dedicated");
    let container = &template["spec"]["containers"][0];
    assert_eq!(
        (
            container["image"].as_str(),
            container["imagePullPolicy"].as_str()
        ),
        (Some("registry.local/kb-worker:dev"), Some("Always"))
    );
    assert_eq!(container["resources"]["requests"]["memory"], "4Gi");
    assert_eq!(container["resources"]["requests"]["cpu"], "2");

    // A limit without a request: Kubernetes uses the limit, no default is added.
    kb.spec.resources =
        Some(serde_json::from_value(serde_json::json!({"limits": {"cpu": "3"}})).unwrap());
    let plan = plan_for(&kb);
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    let resources = &sts["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert!(resources["requests"].get("cpu").is_none(), "{resources}");
    assert_eq!(resources["requests"]["memory"], "2Gi");
}
