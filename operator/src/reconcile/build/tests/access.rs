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
