//! GPU scheduling, autoscaling and Redis.

use super::*;

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
    // No GPU limit; only the default requests (the HPA's CPU target needs them).
    let resources = worker_container(&plan).resources.clone().unwrap();
    assert!(resources.limits.is_none());
    let requests = resources.requests.unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("1", "2Gi")
    );
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
        "kb_worker_http_requests_per_second"
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
        conf.contains("appendonly yes")
            && conf.contains("appendfsync always")
            && conf.contains("maxmemory-policy volatile-lru"),
        "{conf}"
    );
    // The password reaches Redis through an included file, never its command line.
    assert!(conf.contains("include /etc/redis-auth/auth.conf"), "{conf}");
    let Some(Child::Secret(secret)) = plan.get(ChildKind::Secret, "docs-redis") else {
        panic!("no Redis Secret");
    };
    let data = secret.data.as_ref().unwrap();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    assert_eq!(
        text("auth.conf"),
        format!("requirepass {}\n", text("password"))
    );
    // The workers present the worker password (the same, outside a rotation).
    assert_eq!(text("worker-password"), text("password"));
    let redis_pod = json(&plan, ChildKind::StatefulSet, "docs-redis");
    let container = &redis_pod["spec"]["template"]["spec"]["containers"][0];
    assert!(!container["command"].to_string().contains("requirepass"));
    assert!(!container["readinessProbe"].to_string().contains(" -a "));
    assert!(plan.get(ChildKind::Service, "docs-redis").is_some());
    // One Redis: a budget of minAvailable 1 could never be met and would block drains.
    assert!(pruned(&plan, ChildKind::PodDisruptionBudget, "docs-redis"));
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
    assert_eq!(
        secret_env(&plan, "KB_REDIS_PASSWORD"),
        ("docs-redis".into(), "worker-password".into())
    );
    // Replicas bootstrap from ready peers behind the headless Service with the admin key.
    let replication = config(&plan).replication;
    assert_eq!(
        replication.peer_service.as_deref(),
        Some("docs-headless.default.svc:8080")
    );
    assert_eq!(
        replication.peer_api_key_env.as_deref(),
        Some("KB_PEER_API_KEY")
    );
    assert_eq!(
        secret_env(&plan, "KB_PEER_API_KEY"),
        ("docs-api-keys".into(), "admin-key".into())
    );
    let pod_name = worker_container(&plan)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(pod_name.as_deref(), Some("metadata.name"));
}

/// `(secret, key)` of the worker's environment variable `name`.
fn secret_env(plan: &Plan, name: &str) -> (String, String) {
    let env = worker_container(plan)
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in the worker environment"));
    let selector = env.value_from.unwrap().secret_key_ref.unwrap();
    (selector.name, selector.key)
}

#[test]
fn without_redis_workers_get_no_replication_settings() {
    let plan = plan_for(&kb("docs"));
    assert_eq!(
        config(&plan).replication,
        kb_config::ReplicationConfig::default()
    );
    // Only the model settings: a worker whose model is not its data's re-indexes it (and
    // stops, its reason reaching Degraded (ModelMismatch), where it cannot), if its model
    // is the one the KnowledgeBase wants (the ConfigMap's file, mounted as a directory).
    let env = worker_container(&plan).env.clone().unwrap();
    let names: Vec<(&str, Option<&str>)> = env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("KB_ON_MODEL_MISMATCH", Some("reindex")),
            ("KB_MODEL_REF", Some("image:/opt/kb/model")),
            ("KB_WANTED_MODEL_FILE", Some("/etc/kb/wanted/model")),
        ]
    );
    let mut worker = kb_config::WorkerConfig::default();
    let vars = env.into_iter().map(|e| (e.name, e.value.unwrap()));
    worker.apply_env(vars).unwrap();
    assert_eq!(
        worker.on_model_mismatch,
        kb_config::OnModelMismatch::Reindex
    );
    let container = worker_container(&plan);
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/kb/wanted")
        .unwrap();
    assert_eq!(
        mount.sub_path, None,
        "a directory: the kubelet updates it in place"
    );
    let Some(Child::ConfigMap(cm)) = plan.get(ChildKind::ConfigMap, "docs-worker") else {
        panic!("no worker ConfigMap");
    };
    assert_eq!(
        cm.data.as_ref().unwrap()["wanted-model"],
        worker.model_ref.unwrap()
    );
}

#[test]
fn an_external_redis_private_ca_is_mounted_and_trusted() {
    let mut kb = kb("docs");
    let mut redis = fixtures::external_cluster_redis();
    let external = redis.external.as_mut().unwrap();
    external.tls = false;
    external.tls_ca_secret_ref = Some(crate::crd::CaSecretRef {
        name: "redis-ca".into(),
        key: "tls.ca".into(),
    });
    kb.spec.redis = Some(redis);
    let plan = plan_for(&kb);
    let redis = config(&plan).redis.unwrap();
    assert!(redis.tls, "a CA implies TLS");
    assert_eq!(
        redis.tls_ca_file.as_deref(),
        Some(std::path::Path::new("/etc/kb/redis-ca/ca.crt"))
    );
    let sts = json(&plan, ChildKind::StatefulSet, "docs-worker");
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "redis-ca")
        .expect("a redis-ca volume");
    assert_eq!(volume["secret"]["secretName"], "redis-ca");
    assert_eq!(volume["secret"]["items"][0]["key"], "tls.ca");
    assert_eq!(volume["secret"]["items"][0]["path"], "ca.crt");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "redis-ca")
        .expect("a redis-ca mount");
    assert_eq!(mount["mountPath"], "/etc/kb/redis-ca");
    assert_eq!(mount["readOnly"], true);
    // Without a CA there is no such volume.
    let plain = plan_for(&{
        let mut kb = kb.clone();
        kb.spec.redis = Some(fixtures::external_cluster_redis());
        kb
    });
    let sts = json(&plain, ChildKind::StatefulSet, "docs-worker");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes.iter().all(|v| v["name"] != "redis-ca"));
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
    assert_eq!(redis.min_replicas_to_ack, 0);
    assert_eq!(secret_env(&plan, "KB_REDIS_PASSWORD").0, "redis-auth");
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
