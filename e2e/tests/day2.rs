//! Day 2 on a real cluster: resizing storage, upgrading the operator (chart and CRD) without
//! restarting workers, and pod failures reported as Degraded. Every test installs the same
//! release (the chart owns the cluster-wide CRD), so run them one at a time:
//! `cargo test --test day2 -- --ignored --test-threads=1`.

use kb_operator_e2e::run;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPERATOR_NS: &str = "kb-e2e-system";
const KB_NS: &str = "kb-e2e-day2";

fn install(extra: &[&str]) {
    kb_operator_e2e::install(OPERATOR_NS, KB_NS, extra);
}

fn apply(name: &str, spec: &str) {
    kb_operator_e2e::apply(KB_NS, name, spec);
}

fn get(what: &str, path: &str) -> String {
    kb_operator_e2e::get(KB_NS, what, path)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn cleanup(name: &str) {
    if std::env::var_os("KB_E2E_KEEP").is_some() {
        return;
    }
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "-n",
            KB_NS,
            &format!("kb/{name}"),
            "--wait=true",
            "--timeout=2m",
        ])
        .status();
}

/// With `KB_E2E_EXPANDABLE_CLASS` (a StorageClass with `allowVolumeExpansion: true`) the
/// claim grows and the StatefulSet is replaced with its pod kept; without it (kind's
/// local-path class cannot expand) the refusal is reported and an image change made in the
/// same edit still applies.
#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn raising_the_storage_size_grows_the_claim_or_says_why_not() {
    install(&[]);
    let class = std::env::var("KB_E2E_EXPANDABLE_CLASS").ok();
    let class_line = class
        .as_deref()
        .map(|c| format!("    storageClassName: {c}\n"))
        .unwrap_or_default();
    let spec = format!("  embedding: {{device: cpu}}\n  storage:\n    size: 1Gi\n{class_line}");
    apply("grow", &spec);
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/grow",
            "--for=condition=Ready",
            "--timeout=10m",
        ],
    );
    let pod_uid = get("pod/grow-worker-0", "{.metadata.uid}");
    let grown = spec.replace("size: 1Gi", "size: 2Gi");
    apply(
        "grow",
        &format!("{grown}  podAnnotations: {{e2e: grown}}\n"),
    );
    if class.is_some() {
        wait_until("the claim to ask for 2Gi", || {
            get(
                "pvc/data-grow-worker-0",
                "{.spec.resources.requests.storage}",
            ) == "2Gi"
        });
        wait_until("the StatefulSet's new template", || {
            get(
                "statefulset/grow-worker",
                "{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}",
            ) == "2Gi"
        });
        assert_eq!(get("kb/grow", "{.status.storage.requested}"), "2Gi");
        // The pod was orphaned and adopted, then rolled for the annotation: it may have
        // been replaced once, but the claim (and the data) is the same.
        let _ = pod_uid;
    } else {
        wait_until("StorageExpansionRefused", || {
            get(
                "kb/grow",
                r#"{.status.conditions[?(@.type=="Degraded")].reason}"#,
            ) == "StorageExpansionRefused"
        });
        wait_until("the annotation to reach the StatefulSet", || {
            get(
                "statefulset/grow-worker",
                "{.spec.template.metadata.annotations.e2e}",
            ) == "grown"
        });
        assert_eq!(
            get(
                "statefulset/grow-worker",
                "{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}"
            ),
            "1Gi"
        );
    }
    // Shrinking is refused at admission by the CRD's CEL rule.
    let file = std::env::temp_dir().join("kb-e2e-shrink.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: grow\nspec:\n{spec}"),
    )
    .unwrap();
    let output = Command::new("kubectl")
        .args(["apply", "-n", KB_NS, "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("storage.size cannot shrink"));
    cleanup("grow");
}

/// `helm upgrade` updates the CRD (a template, not crds/) and restarts the operator; the
/// worker keeps running (same pod), its image is pinned in status.
#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn an_operator_upgrade_updates_the_crd_and_restarts_no_worker() {
    install(&[]);
    apply(
        "steady",
        "  embedding: {device: cpu}\n  updatePolicy: supervised\n",
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/steady",
            "--for=condition=Ready",
            "--timeout=10m",
        ],
    );
    let image = get("kb/steady", "{.status.workerImage}");
    assert!(!image.is_empty());
    let pod_uid = get("pod/steady-worker-0", "{.metadata.uid}");
    let crd_annotation = run(
        "kubectl",
        &[
            "get",
            "crd",
            "knowledgebases.knowledge.dev",
            "-o",
            r#"jsonpath={.metadata.annotations.helm\.sh/resource-policy}"#,
        ],
    );
    assert_eq!(crd_annotation, "keep");
    // A new operator configuration rolls the operator, not the workers.
    install(&["--set", "maxConcurrentUpgrades=2"]);
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(get("pod/steady-worker-0", "{.metadata.uid}"), pod_uid);
    assert_eq!(get("kb/steady", "{.status.workerImage}"), image);
    cleanup("steady");
}

/// A worker that asks for more CPU than any node has is reported with the scheduler's
/// words; an image that does not exist is reported as an image pull failure.
#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn pods_that_cannot_start_are_degraded_with_the_cause() {
    install(&[]);
    apply(
        "nowhere",
        "  embedding: {device: cpu}\n  resources:\n    requests: {cpu: '512', memory: 1Gi}\n",
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/nowhere",
            "--for=condition=Degraded",
            "--timeout=5m",
        ],
    );
    assert_eq!(
        get(
            "kb/nowhere",
            r#"{.status.conditions[?(@.type=="Degraded")].reason}"#
        ),
        "WorkerUnschedulable"
    );
    assert!(get(
        "kb/nowhere",
        r#"{.status.conditions[?(@.type=="Degraded")].message}"#
    )
    .contains("Insufficient cpu"));
    cleanup("nowhere");
    apply(
        "badimage",
        "  embedding: {device: cpu}\n  image: registry.invalid/kb-worker:none\n",
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/badimage",
            "--for=condition=Degraded",
            "--timeout=5m",
        ],
    );
    assert_eq!(
        get(
            "kb/badimage",
            r#"{.status.conditions[?(@.type=="Degraded")].reason}"#
        ),
        "WorkerImagePullFailed"
    );
    cleanup("badimage");
}

/// A new managed-Redis password reaches Redis and the workers in steps; the KnowledgeBase
/// never reports a crash-looping worker on the way and ends Ready on the new password.
#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn rotating_the_managed_redis_password_keeps_the_workers_running() {
    install(&[]);
    apply(
        "rotate",
        "  replicas: 2\n  embedding: {device: cpu}\n  redis: {managed: {}}\n",
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/rotate",
            "--for=condition=Ready",
            "--timeout=10m",
        ],
    );
    let patch = r#"{"stringData":{"password":"rotated0123456789abcdef0123456789abcdef"}}"#;
    run(
        "kubectl",
        &[
            "patch",
            "-n",
            KB_NS,
            "secret/rotate-redis",
            "--type=merge",
            "-p",
            patch,
        ],
    );
    let decoded = |key: &str| {
        let b64 = get(
            "secret/rotate-redis",
            &format!("{{.data.{}}}", key.replace('.', "\\.")),
        );
        let out = Command::new("base64")
            .args(["-d"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = out.unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b64.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let reason = get(
            "kb/rotate",
            r#"{.status.conditions[?(@.type=="Degraded")].reason}"#,
        );
        assert!(
            !reason.starts_with("Worker"),
            "a worker failed during the rotation: {reason}"
        );
        let done = decoded("auth.conf").trim()
            == "requirepass rotated0123456789abcdef0123456789abcdef"
            && decoded("worker-password") == "rotated0123456789abcdef0123456789abcdef"
            && get(
                "kb/rotate",
                r#"{.status.conditions[?(@.type=="Ready")].status}"#,
            ) == "True";
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation did not finish");
        std::thread::sleep(Duration::from_secs(5));
    }
    cleanup("rotate");
}
