//! Backups, network policies and API keys.

use super::*;

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
    assert_eq!(command.join(" "), "kb-worker backup --url http://docs.default.svc:8080 --to s3://kb-backups/prod/docs --keep 14 --report /dev/termination-log");
    assert_eq!(
        container["terminationMessagePolicy"],
        "FallbackToLogsOnError"
    );
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
    // The operator, from any namespace, reads a model change's progress there.
    let operator = &metrics["from"][0];
    assert_eq!(operator["namespaceSelector"], serde_json::json!({}));
    assert_eq!(
        operator["podSelector"]["matchLabels"]["knowledge.dev/operator"],
        "true"
    );
    let deny = json(&plan, ChildKind::NetworkPolicy, "docs-default-deny");
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
}

#[test]
fn with_monitoring_on_prometheus_may_scrape_from_the_default_or_named_namespace() {
    let metrics_from = |kb: &KnowledgeBase| -> Vec<String> {
        let policy = json(&plan_for(kb), ChildKind::NetworkPolicy, "docs-worker");
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["ports"][0]["port"] == 9090)
            .flat_map(|rule| rule["from"].as_array().unwrap().clone())
            .filter_map(|peer| {
                let name = &peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
                name.as_str().map(String::from)
            })
            .collect()
    };
    let mut kb = kb("docs");
    assert!(
        metrics_from(&kb).is_empty(),
        "no monitoring: metrics port closed to every namespace (the operator aside)"
    );
    kb.spec.monitoring = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    assert_eq!(metrics_from(&kb), vec!["monitoring"]);
    kb.spec.network.monitoring_namespace = Some("observability".into());
    assert_eq!(metrics_from(&kb), vec!["observability"]);
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
fn bootstrap_from_an_s3_backup_restores_in_an_init_container() {
    let mut kb = kb("docs");
    let mut from = crate::crd::FromBackup {
        destination: fixtures::s3_backup().destination,
        backup_name: Some("backup-42-1700000000".into()),
    };
    kb.spec.bootstrap = Some(crate::crd::Bootstrap {
        from_backup: from.clone(),
    });
    let plan = plan_for(&kb);
    let pod = worker_pod(&plan);
    let init = &pod.init_containers.as_ref().expect("an init container")[0];
    assert_eq!(
        init.command.as_ref().unwrap().join(" "),
        "kb-worker restore --from s3://kb-backups/prod/docs/backup-42-1700000000 --data-dir /data --if-empty"
    );
    assert_eq!(init.image, worker_container(&plan).image);
    let env: Vec<_> = init
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["AWS_REGION", "AWS_ENDPOINT_URL"]);
    let secret = init.env_from.as_ref().unwrap()[0]
        .secret_ref
        .as_ref()
        .unwrap();
    assert_eq!(secret.name, "s3-creds");
    let mounts: Vec<_> = init
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [("data", "/data"), ("tmp", "/tmp")]);
    // The workers may reach the bucket's endpoint.
    let policy = json(&plan, ChildKind::NetworkPolicy, "docs-worker");
    let ports: Vec<_> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["ports"][0]["port"].as_i64())
        .collect();
    assert!(ports.contains(&9000), "{policy}");

    // Without a name: the newest complete backup.
    from.backup_name = None;
    kb.spec.bootstrap = Some(crate::crd::Bootstrap { from_backup: from });
    let plan = plan_for(&kb);
    let init = &worker_pod(&plan).init_containers.as_ref().unwrap()[0];
    assert_eq!(
        init.command.as_ref().unwrap()[3],
        "s3://kb-backups/prod/docs"
    );
}

#[test]
fn bootstrap_from_a_pvc_backup_mounts_the_claim_read_only() {
    let mut kb = kb("docs");
    kb.spec.bootstrap = Some(crate::crd::Bootstrap {
        from_backup: crate::crd::FromBackup {
            destination: fixtures::pvc_backup().destination,
            backup_name: Some("backup-7-1700000000".into()),
        },
    });
    let plan = plan_for(&kb);
    let pod = worker_pod(&plan);
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        init.command.as_ref().unwrap()[3],
        "/restore/backup-7-1700000000.kbsnap"
    );
    assert!(init.env_from.is_none());
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "restore-source")
        .expect("the backup claim");
    let claim = volume.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("kb-backups", Some(true))
    );
    // No bootstrap, no init container.
    assert!(worker_pod(&plan_for(&fixtures::kb("docs")))
        .init_containers
        .is_none());
}

#[test]
fn an_on_demand_backup_job_is_the_cronjob_template_named_after_its_request() {
    let mut kb = kb("docs");
    kb.spec.backup = Some(fixtures::s3_backup());
    let plan = plan_for(&kb);
    let cron = json(&plan, ChildKind::CronJob, "docs-backup");
    let names = Names::new(&kb, "default");
    let job = backup_job(&kb.spec, &names, "2026-12-01T10:00").unwrap();
    let again = backup_job(&kb.spec, &names, "2026-12-01T10:00").unwrap();
    let other = backup_job(&kb.spec, &names, "later").unwrap();
    let name = job.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("docs-backup-") && name.len() == "docs-backup-".len() + 8,
        "{name}"
    );
    assert_eq!(again.metadata.name, job.metadata.name);
    assert_ne!(other.metadata.name, job.metadata.name);
    assert_eq!(
        job.metadata.annotations.as_ref().unwrap()[REQUEST_ANNOTATION],
        "2026-12-01T10:00"
    );
    assert_eq!(
        job.metadata.owner_references.as_ref().unwrap()[0].name,
        "docs"
    );
    // The CronJob's template, plus a TTL: history limits do not cover Jobs it did not start.
    let mut spec = serde_json::to_value(job.spec.as_ref().unwrap()).unwrap();
    assert_eq!(spec["ttlSecondsAfterFinished"], 86_400);
    spec.as_object_mut()
        .unwrap()
        .remove("ttlSecondsAfterFinished");
    assert_eq!(spec, cron["spec"]["jobTemplate"]["spec"]);
    assert_eq!(cron["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cron["spec"]["failedJobsHistoryLimit"], 3);
    assert!(backup_job(&fixtures::kb("docs").spec, &names, "x").is_none());
}
