//! Installs the chart, applies the minimal example and waits for it to become Ready.

use std::path::{Path, PathBuf};
use std::process::Command;

const OPERATOR_NS: &str = "kb-e2e-system";
const KB_NS: &str = "kb-e2e";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); run `make setup` and put .tools/bin on PATH"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn cleanup() {
    if std::env::var_os("KB_E2E_KEEP").is_some() {
        return;
    }
    let _ = Command::new("kubectl").args(["delete", "namespace", KB_NS, "--wait=true", "--timeout=120s"]).status();
    let _ = Command::new("helm").args(["uninstall", "kbo", "-n", OPERATOR_NS, "--wait"]).status();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn minimal_example_becomes_ready() {
    let root = repo_root();
    let chart = root.join("charts/knowledgebase-operator");
    let example = root.join("examples/minimal-cpu.yaml");
    run("helm", &["upgrade", "--install", "kbo", chart.to_str().unwrap(), "-n", OPERATOR_NS, "--create-namespace", "--wait", "--timeout", "5m"]);
    // Already existing (a kept earlier run) is fine.
    let _ = Command::new("kubectl").args(["create", "namespace", KB_NS]).status();
    run("kubectl", &["apply", "-n", KB_NS, "-f", example.to_str().unwrap()]);
    run("kubectl", &["wait", "-n", KB_NS, "kb/docs", "--for=condition=Ready", "--timeout=10m"]);
    let children = run("kubectl", &["get", "-n", KB_NS, "statefulset,service,configmap,secret,networkpolicy", "-o", "name"]);
    for child in ["statefulset.apps/docs-worker", "service/docs", "service/docs-headless", "configmap/docs-worker", "secret/docs-api-keys"] {
        assert!(children.contains(child), "{child} missing:\n{children}");
    }
    let endpoint = run("kubectl", &["get", "-n", KB_NS, "kb/docs", "-o", "jsonpath={.status.endpoint}"]);
    assert_eq!(endpoint, format!("http://docs.{KB_NS}.svc:8080"));
    run("kubectl", &["delete", "-n", KB_NS, "kb/docs", "--wait=true", "--timeout=2m"]);
    cleanup();
}
