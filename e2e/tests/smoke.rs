//! Installs the chart, applies the minimal example and waits for it to become Ready.

use kb_operator_e2e::{repo_root, run};
use std::process::Command;

const OPERATOR_NS: &str = "kb-e2e-system";
const KB_NS: &str = "kb-e2e";

fn cleanup() {
    if std::env::var_os("KB_E2E_KEEP").is_some() {
        return;
    }
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "namespace",
            KB_NS,
            "--wait=true",
            "--timeout=120s",
        ])
        .status();
    let _ = Command::new("helm")
        .args(["uninstall", "kbo", "-n", OPERATOR_NS, "--wait"])
        .status();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn minimal_example_becomes_ready() {
    let root = repo_root();
    let chart = root.join("charts/knowledgebase-operator");
    let example = root.join("examples/minimal-cpu.yaml");
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            "kbo",
            chart.to_str().unwrap(),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    // Already existing (a kept earlier run) is fine.
    let _ = Command::new("kubectl")
        .args(["create", "namespace", KB_NS])
        .status();
    run(
        "kubectl",
        &["apply", "-n", KB_NS, "-f", example.to_str().unwrap()],
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/docs",
            "--for=condition=Ready",
            "--timeout=10m",
        ],
    );
    let children = run(
        "kubectl",
        &[
            "get",
            "-n",
            KB_NS,
            "statefulset,service,configmap,secret,networkpolicy",
            "-o",
            "name",
        ],
    );
    for child in [
        "statefulset.apps/docs-worker",
        "service/docs",
        "service/docs-headless",
        "configmap/docs-worker",
        "secret/docs-api-keys",
    ] {
        assert!(children.contains(child), "{child} missing:\n{children}");
    }
    let endpoint = run(
        "kubectl",
        &[
            "get",
            "-n",
            KB_NS,
            "kb/docs",
            "-o",
            "jsonpath={.status.endpoint}",
        ],
    );
    assert_eq!(endpoint, format!("http://docs.{KB_NS}.svc:8080"));
    run(
        "kubectl",
        &[
            "delete",
            "-n",
            KB_NS,
            "kb/docs",
            "--wait=true",
            "--timeout=2m",
        ],
    );
    cleanup();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn removals_propagate_and_the_replica_count_survives_autoscaling_handover() {
    let root = repo_root();
    let chart = root.join("charts/knowledgebase-operator");
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            "kbo",
            chart.to_str().unwrap(),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let _ = Command::new("kubectl")
        .args(["create", "namespace", KB_NS])
        .status();
    let kb = "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: handover\nspec:\n  replicas: 3\n  embedding: {device: cpu}\n  redis: {managed: {}}\n  nodeSelector: {kubernetes.io/os: linux}\n";
    let file = std::env::temp_dir().join("kb-e2e-handover.yaml");
    std::fs::write(&file, kb).unwrap();
    run(
        "kubectl",
        &["apply", "-n", KB_NS, "-f", file.to_str().unwrap()],
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/handover",
            "--for=condition=Ready",
            "--timeout=10m",
        ],
    );
    // Removing nodeSelector from the spec removes it from the StatefulSet (real SSA).
    run(
        "kubectl",
        &[
            "patch",
            "-n",
            KB_NS,
            "kb/handover",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/nodeSelector"}]"#,
        ],
    );
    let selector = || {
        run(
            "kubectl",
            &[
                "get",
                "-n",
                KB_NS,
                "statefulset/handover-worker",
                "-o",
                "jsonpath={.spec.template.spec.nodeSelector}",
            ],
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while selector().contains("kubernetes.io/os") {
        assert!(
            std::time::Instant::now() < deadline,
            "nodeSelector was never removed"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    // Turning autoscaling on keeps 3 replicas (the field keeps an owner).
    run(
        "kubectl",
        &[
            "patch",
            "-n",
            KB_NS,
            "kb/handover",
            "--type=merge",
            "-p",
            r#"{"spec":{"autoscaling":{"enabled":true,"minReplicas":1,"maxReplicas":5}}}"#,
        ],
    );
    std::thread::sleep(std::time::Duration::from_secs(10));
    let replicas = run(
        "kubectl",
        &[
            "get",
            "-n",
            KB_NS,
            "statefulset/handover-worker",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert!(replicas.parse::<i32>().unwrap() >= 1);
    assert_ne!(
        replicas, "1",
        "the replica count was reset to 1 by the handover"
    );
    run(
        "kubectl",
        &[
            "delete",
            "-n",
            KB_NS,
            "kb/handover",
            "--wait=true",
            "--timeout=2m",
        ],
    );
    cleanup();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn a_worker_killed_at_its_memory_limit_is_reported_degraded_with_the_limit_to_raise() {
    let root = repo_root();
    let chart = root.join("charts/knowledgebase-operator");
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            "kbo",
            chart.to_str().unwrap(),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let _ = Command::new("kubectl")
        .args(["create", "namespace", KB_NS])
        .status();
    // libtorch and the model alone need far more than 96 MiB: the kernel kills the worker.
    let kb = "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: tight\nspec:\n  embedding: {device: cpu}\n  resources:\n    requests: {cpu: 500m, memory: 96Mi}\n    limits: {memory: 96Mi}\n";
    let file = std::env::temp_dir().join("kb-e2e-tight.yaml");
    std::fs::write(&file, kb).unwrap();
    run(
        "kubectl",
        &["apply", "-n", KB_NS, "-f", file.to_str().unwrap()],
    );
    run(
        "kubectl",
        &[
            "wait",
            "-n",
            KB_NS,
            "kb/tight",
            "--for=condition=Degraded",
            "--timeout=5m",
        ],
    );
    let condition = |field: &str| {
        run(
            "kubectl",
            &[
                "get",
                "-n",
                KB_NS,
                "kb/tight",
                "-o",
                &format!(r#"jsonpath={{.status.conditions[?(@.type=="Degraded")].{field}}}"#),
            ],
        )
    };
    assert_eq!(condition("reason"), "WorkerOOMKilled");
    let message = condition("message");
    assert!(message.contains("resources.limits.memory"), "{message}");
    run(
        "kubectl",
        &[
            "delete",
            "-n",
            KB_NS,
            "kb/tight",
            "--wait=true",
            "--timeout=2m",
        ],
    );
    cleanup();
}
