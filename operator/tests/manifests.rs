//! What ships to a cluster validates offline: rendered examples and the chart pass
//! kubernetes-validate, and the chart passes helm lint. Fails (never skips) when a tool is
//! missing; `make setup` installs them.

use std::path::Path;
use std::process::Command;

#[test]
fn rendered_examples_and_chart_pass_kubernetes_validate_and_helm_lint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new("bash")
        .arg(root.join("scripts/validate-manifests.sh"))
        .env("KB_OPERATOR", env!("CARGO_BIN_EXE_kb-operator"))
        .output()
        .expect("running scripts/validate-manifests.sh");
    assert!(
        output.status.success(),
        "scripts/validate-manifests.sh failed (run `make setup` if a tool is missing):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
