//! The Argo CD health check shipped in `argocd/knowledge.dev/KnowledgeBase/` (Argo CD's
//! resource-customization layout), run by a real Lua interpreter (Lua 5.1, the dialect
//! Argo CD's gopher-lua speaks) on every case of its `health_test.yaml`, as Argo CD's own
//! tests run them.

use mlua::{Lua, LuaSerdeExt, Table};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Cases {
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    health_status: Expected,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Expected {
    status: String,
    message: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("argocd/knowledge.dev/KnowledgeBase")
}

/// Runs `health.lua` with `obj` set to the YAML object, as Argo CD does.
fn health(script: &str, object: &serde_json::Value) -> Expected {
    let lua = Lua::new();
    let obj = lua.to_value(object).unwrap();
    lua.globals().set("obj", obj).unwrap();
    let result: Table = lua.load(script).set_name("health.lua").eval().unwrap();
    Expected {
        status: result.get("status").unwrap(),
        message: result.get("message").unwrap(),
    }
}

#[test]
fn every_health_test_case_gives_its_status_and_message() {
    let dir = dir();
    let script = std::fs::read_to_string(dir.join("health.lua")).unwrap();
    let cases: Cases =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
            .unwrap();
    assert!(cases.tests.len() >= 4);
    let mut statuses = Vec::new();
    for case in cases.tests {
        let input: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join(&case.input_path)).unwrap())
                .unwrap();
        let got = health(&script, &input);
        assert_eq!(got, case.health_status, "{}", case.input_path);
        statuses.push(got.status);
    }
    for wanted in ["Progressing", "Healthy", "Degraded", "Suspended"] {
        assert!(statuses.iter().any(|s| s == wanted), "no {wanted} case");
    }
}

#[test]
fn the_status_the_operator_writes_reads_as_healthy_once_ready() {
    // A status as `conditions::status` writes it for a converged KnowledgeBase.
    use kb_operator::reconcile::conditions::{status, Observed, Outcome};
    let observed = Observed {
        desired_replicas: 2,
        replicas: 2,
        ready_replicas: 2,
        ..Observed::default()
    };
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let written = status(
        Some(3),
        &Outcome::Applied,
        &observed,
        None,
        Default::default(),
        &now,
    );
    let object = serde_json::json!({
        "apiVersion": "knowledge.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "docs", "generation": 3},
        "spec": {"replicas": 2},
        "status": written,
    });
    let script = std::fs::read_to_string(dir().join("health.lua")).unwrap();
    assert_eq!(health(&script, &object).status, "Healthy");
    let mut rolling = observed.clone();
    rolling.rollout.updated_replicas = 1;
    let written = status(
        Some(3),
        &Outcome::Applied,
        &rolling,
        None,
        Default::default(),
        &now,
    );
    let object = serde_json::json!({"metadata": {"generation": 3}, "spec": {}, "status": written});
    let got = health(&script, &object);
    assert_eq!(
        (got.status.as_str(), got.message.as_str()),
        (
            "Progressing",
            "RollingOut: 1/2 replicas run the current revision"
        )
    );
}
