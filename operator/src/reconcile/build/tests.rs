//! Unit tests of `plan`: every spec option reaches the children.

use super::fixtures::{self, kb};
use super::*;
use crate::crd::{Device, ReclaimPolicy};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kb_config::WorkerConfig;

fn plan_for(kb: &KnowledgeBase) -> Plan {
    plan(kb, &fixtures::inputs(kb))
}

fn statefulset<'a>(plan: &'a Plan, name: &str) -> &'a StatefulSet {
    match plan.get(ChildKind::StatefulSet, name) {
        Some(Child::StatefulSet(s)) => s,
        other => panic!("no StatefulSet {name}: {other:?}"),
    }
}

fn worker_pod(plan: &Plan) -> &PodSpec {
    let sts = statefulset(plan, "docs-worker");
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn worker_container(plan: &Plan) -> &Container {
    &worker_pod(plan).containers[0]
}

fn config(plan: &Plan) -> WorkerConfig {
    match plan.get(ChildKind::ConfigMap, "docs-worker") {
        Some(Child::ConfigMap(cm)) => {
            WorkerConfig::from_yaml(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap()
        }
        other => panic!("no worker ConfigMap: {other:?}"),
    }
}

fn json(plan: &Plan, kind: ChildKind, name: &str) -> serde_json::Value {
    plan.get(kind, name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}"))
        .to_json()
}

fn pruned(plan: &Plan, kind: ChildKind, name: &str) -> bool {
    plan.prune.contains(&ChildRef {
        kind,
        name: name.into(),
    })
}

#[test]
fn minimal_cpu_plans_core_children_and_prunes_optional_ones() {
    let plan = plan_for(&kb("docs"));
    let mut names: Vec<_> = plan
        .children
        .iter()
        .map(|c| c.reference())
        .map(|r| format!("{:?}/{}", r.kind, r.name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ConfigMap/docs-worker",
            "NetworkPolicy/docs-default-deny",
            "NetworkPolicy/docs-worker",
            "Secret/docs-api-keys",
            "Service/docs",
            "Service/docs-headless",
            "ServiceAccount/docs-worker",
            "StatefulSet/docs-worker",
        ]
    );
    for (kind, name) in [
        (ChildKind::PodDisruptionBudget, "docs-worker"),
        (ChildKind::HorizontalPodAutoscaler, "docs-worker"),
        (ChildKind::CronJob, "docs-backup"),
        (ChildKind::StatefulSet, "docs-redis"),
        (ChildKind::Secret, "docs-redis"),
        (ChildKind::NetworkPolicy, "docs-redis"),
        (ChildKind::NetworkPolicy, "docs-backup"),
    ] {
        assert!(
            pruned(&plan, kind, name),
            "{kind:?} {name} should be pruned"
        );
    }
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::managed_redis());
    kb.spec.autoscaling = Some(fixtures::autoscaling(2, 8));
    kb.spec.backup = Some(fixtures::s3_backup());
    for child in plan_for(&kb).children {
        let value = child.to_json();
        let meta = &value["metadata"];
        assert_eq!(meta["namespace"], "default", "{value}");
        assert_eq!(meta["ownerReferences"][0]["uid"], "uid-docs", "{value}");
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "kb-operator"
        );
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "docs");
    }
}

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
fn gpu_workers_request_gpus_and_land_on_gpu_nodes() {
    let mut kb = kb("docs");
    kb.spec.embedding.device = Device::Cuda;
    kb.spec.embedding.gpus_per_replica = Some(4);
    kb.spec.gpu.runtime_class_name = Some("nvidia".into());
    kb.spec
        .gpu
        .node_selector
        .insert("nvidia.com/gpu.product".into(), "H100".into());
    kb.spec
        .node_selector
        .insert("pool".into(), "inference".into());
    let plan = plan_for(&kb);
    let pod = worker_pod(&plan);
    let limits = worker_container(&plan)
        .resources
        .as_ref()
        .unwrap()
        .limits
        .clone()
        .unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "4");
    assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
    let selector = pod.node_selector.clone().unwrap();
    assert_eq!(
        (
            selector["pool"].as_str(),
            selector["nvidia.com/gpu.product"].as_str()
        ),
        ("inference", "H100")
    );
    let toleration = &pod.tolerations.as_ref().unwrap()[0];
    assert_eq!(toleration.key.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(config(&plan).embedding.device, "cuda");
}

#[test]
fn cpu_workers_ignore_gpu_scheduling() {
    let mut kb = kb("docs");
    kb.spec.gpu.runtime_class_name = Some("nvidia".into());
    kb.spec.gpu.resource_name = "amd.com/gpu".into();
    let plan = plan_for(&kb);
    let pod = worker_pod(&plan);
    assert!(pod.runtime_class_name.is_none() && pod.tolerations.is_none());
    assert!(worker_container(&plan).resources.is_none());
    let affinity = pod.affinity.as_ref().unwrap();
    assert!(
        affinity.pod_anti_affinity.is_some(),
        "replicas spread across nodes by default"
    );
    assert!(pod.topology_spread_constraints.is_some());
}

#[test]
fn hpa_owns_replicas_when_autoscaling() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::managed_redis());
    kb.spec.autoscaling = Some(fixtures::autoscaling(2, 8));
    let plan = plan_for(&kb);
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    assert!(
        sts["spec"].get("replicas").is_none(),
        "replicas must be omitted: {}",
        sts["spec"]
    );
    let hpa = json(&plan, ChildKind::HorizontalPodAutoscaler, "docs-worker");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "docs-worker");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].as_i64(),
            hpa["spec"]["maxReplicas"].as_i64()
        ),
        (Some(2), Some(8))
    );
    let metrics = hpa["spec"]["metrics"].as_array().unwrap();
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 60);
    assert_eq!(
        metrics[1]["pods"]["metric"]["name"],
        "kb_http_requests_per_second"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["type"],
        "Pods"
    );
    assert!(plan
        .get(ChildKind::PodDisruptionBudget, "docs-worker")
        .is_some());
}

#[test]
fn fixed_replicas_are_written_and_hpa_is_pruned() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::managed_redis());
    kb.spec.replicas = 3;
    let plan = plan_for(&kb);
    assert_eq!(
        json(&plan, ChildKind::StatefulSet, "docs-worker")["spec"]["replicas"],
        3
    );
    assert!(pruned(
        &plan,
        ChildKind::HorizontalPodAutoscaler,
        "docs-worker"
    ));
    let pdb = json(&plan, ChildKind::PodDisruptionBudget, "docs-worker");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

#[test]
fn managed_redis_gets_its_own_children_and_workers_use_it() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::managed_redis());
    let plan = plan_for(&kb);
    let conf = json(&plan, ChildKind::ConfigMap, "docs-redis");
    let conf = conf["data"]["redis.conf"].as_str().unwrap();
    assert!(
        conf.contains("appendonly yes") && conf.contains("maxmemory-policy volatile-lru"),
        "{conf}"
    );
    assert!(plan.get(ChildKind::Secret, "docs-redis").is_some());
    assert!(plan.get(ChildKind::Service, "docs-redis").is_some());
    assert!(plan.get(ChildKind::NetworkPolicy, "docs-redis").is_some());
    let redis = json(&plan, ChildKind::StatefulSet, "docs-redis");
    assert_eq!(
        redis["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            ["readOnlyRootFilesystem"],
        true
    );
    let worker_redis = config(&plan).redis.unwrap();
    assert_eq!(
        worker_redis.url.as_deref(),
        Some("redis://docs-redis.default.svc:6379")
    );
    assert_eq!(
        worker_redis.password_env.as_deref(),
        Some("KB_REDIS_PASSWORD")
    );
    assert_eq!(worker_redis.key_prefix, "kb:default:docs");
    let env = &worker_container(&plan).env.as_ref().unwrap()[0];
    assert_eq!(env.name, "KB_REDIS_PASSWORD");
    assert_eq!(
        env.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "docs-redis"
    );
}

#[test]
fn external_redis_cluster_is_configured_and_reachable() {
    let mut kb = kb("docs");
    kb.spec.redis = Some(fixtures::external_cluster_redis());
    let plan = plan_for(&kb);
    let redis = config(&plan).redis.unwrap();
    assert_eq!(redis.mode, kb_config::RedisMode::Cluster);
    assert_eq!(redis.nodes.len(), 2);
    assert!(redis.tls);
    let env = &worker_container(&plan).env.as_ref().unwrap()[0];
    assert_eq!(
        env.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "redis-auth"
    );
    assert!(pruned(&plan, ChildKind::StatefulSet, "docs-redis"));
    let policy = json(&plan, ChildKind::NetworkPolicy, "docs-worker");
    let egress_ports: Vec<_> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ports"][0]["port"].clone())
        .collect();
    assert!(
        egress_ports.contains(&serde_json::json!(7000)),
        "{egress_ports:?}"
    );
}

#[test]
fn s3_backups_run_kb_worker_backup_with_the_admin_key() {
    let mut kb = kb("docs");
    kb.spec.backup = Some(fixtures::s3_backup());
    let plan = plan_for(&kb);
    let cron = json(&plan, ChildKind::CronJob, "docs-backup");
    assert_eq!(cron["spec"]["schedule"], "0 2 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let container = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<_> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command.join(" "), "kb-worker backup --url http://docs.default.svc:8080 --to s3://kb-backups/prod/docs --keep 14");
    assert_eq!(container["env"][0]["name"], "KB_API_KEY");
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"]["key"],
        "admin-key"
    );
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], "s3-creds");
    let policy = json(&plan, ChildKind::NetworkPolicy, "docs-backup");
    assert_eq!(policy["spec"]["egress"][2]["ports"][0]["port"], 9000);
}

#[test]
fn pvc_backups_mount_the_claim() {
    let mut kb = kb("docs");
    let mut backup = fixtures::pvc_backup();
    backup.suspend = true;
    kb.spec.backup = Some(backup);
    let cron = json(&plan_for(&kb), ChildKind::CronJob, "docs-backup");
    assert_eq!(cron["spec"]["suspend"], true);
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][1]["persistentVolumeClaim"]["claimName"],
        "kb-backups"
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][1]["mountPath"],
        "/backup"
    );
    assert!(pod["containers"][0]["command"]
        .to_string()
        .contains("\"--to\",\"/backup\""));
}

#[test]
fn network_rules_admit_listed_clients_and_monitoring() {
    let mut kb = kb("docs");
    kb.spec.network.allowed_namespaces = vec!["apps".into()];
    kb.spec.network.allowed_pod_selectors = vec![fixtures::selector("role", "rag")];
    kb.spec.network.monitoring_namespace = Some("monitoring".into());
    let plan = plan_for(&kb);
    let policy = json(&plan, ChildKind::NetworkPolicy, "docs-worker");
    let api = &policy["spec"]["ingress"][0];
    assert_eq!(api["ports"][0]["port"], 8080);
    assert_eq!(
        api["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "apps"
    );
    assert_eq!(api["from"][1]["podSelector"]["matchLabels"]["role"], "rag");
    assert_eq!(
        api["from"][2]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "worker"
    );
    let metrics = &policy["spec"]["ingress"][1];
    assert_eq!(metrics["ports"][0]["port"], 9090);
    let deny = json(&plan, ChildKind::NetworkPolicy, "docs-default-deny");
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
}

#[test]
fn disabling_network_policies_prunes_them() {
    let mut kb = kb("docs");
    kb.spec.network.policies = false;
    let plan = plan_for(&kb);
    assert!(pruned(&plan, ChildKind::NetworkPolicy, "docs-default-deny"));
    assert!(pruned(&plan, ChildKind::NetworkPolicy, "docs-worker"));
}

#[test]
fn paused_plan_touches_nothing() {
    let mut kb = kb("docs");
    kb.spec.paused = true;
    assert_eq!(plan_for(&kb), Plan::default());
}

#[test]
fn user_api_keys_secret_replaces_the_generated_one() {
    let mut kb = kb("docs");
    kb.spec.auth.api_keys_secret_ref = Some("my-keys".into());
    kb.spec.backup = Some(fixtures::pvc_backup());
    let plan = plan_for(&kb);
    assert!(pruned(&plan, ChildKind::Secret, "docs-api-keys"));
    let volume = worker_pod(&plan)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "api-keys")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("my-keys")
    );
    let cron = json(&plan, ChildKind::CronJob, "docs-backup");
    let env = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "my-keys");
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
    kb.spec.image = "registry.local/kb-worker:dev".into();
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
}
