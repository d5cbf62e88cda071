//! Real-cluster tests live in `tests/`; see README.md. What they share: helm and kubectl
//! invocations, the chart installed as release `kbo`, KnowledgeBases applied from a spec.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The operator's chart.
pub fn chart() -> PathBuf {
    repo_root().join("charts/knowledgebase-operator")
}

/// `program args`, which must succeed; its standard output.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not runnable ({e}); run `make setup` and put .tools/bin on PATH")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl args` whose failure is fine (creating or deleting what may exist or not).
pub fn kubectl_quietly(args: &[&str]) {
    let _ = Command::new("kubectl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Installs or upgrades the chart as release `kbo` in `operator_ns` (with `extra` helm
/// flags), waiting for it, and creates the namespace `kb_ns` the tests use.
pub fn install(operator_ns: &str, kb_ns: &str, extra: &[&str]) {
    let chart = chart();
    let mut args = vec![
        "upgrade",
        "--install",
        "kbo",
        chart.to_str().unwrap(),
        "-n",
        operator_ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend_from_slice(extra);
    run("helm", &args);
    kubectl_quietly(&["create", "namespace", kb_ns]);
}

/// Applies the KnowledgeBase `name` in `ns` with `spec` (YAML indented by two spaces).
pub fn apply(ns: &str, name: &str, spec: &str) {
    let file = std::env::temp_dir().join(format!("kb-e2e-{name}.yaml"));
    let manifest = format!(
        "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: {name}\nspec:\n{spec}"
    );
    std::fs::write(&file, manifest).unwrap();
    run(
        "kubectl",
        &["apply", "-n", ns, "-f", file.to_str().unwrap()],
    );
}

/// `kubectl get` of `what` in `ns`, as the jsonpath `path` prints it.
pub fn get(ns: &str, what: &str, path: &str) -> String {
    run(
        "kubectl",
        &["get", "-n", ns, what, "-o", &format!("jsonpath={path}")],
    )
}
