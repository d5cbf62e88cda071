//! The `kb-operator` command line: `crd` and `render`.

use std::path::Path;
use std::process::{Command, Output};

fn kb_operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kb-operator"))
        .args(args)
        .output()
        .unwrap()
}

fn example(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    root.join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .filter_map(|doc| {
            doc.lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .map(String::from)
        })
        .collect()
}

#[test]
fn crd_prints_the_custom_resource_definition() {
    let out = kb_operator(&["crd"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("kind: CustomResourceDefinition")
            && text.contains("name: knowledgebases.knowledge.dev")
    );
}

#[test]
fn render_prints_every_child_of_the_multi_gpu_example() {
    let out = kb_operator(&["render", "-f", &example("multi-gpu.yaml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut kinds = kinds(&format!("\n{text}"));
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "CronJob",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
    );
    assert!(text.contains("namespace: search"));
    assert!(
        text.contains("nvidia.com/gpu: '4'") || text.contains("nvidia.com/gpu: \"4\""),
        "GPU limit missing"
    );
}

#[test]
fn render_rejects_an_invalid_knowledge_base_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kb.yaml");
    std::fs::write(&file, "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: docs\nspec:\n  replicas: 3\n  embedding:\n    device: cpu\n").unwrap();
    let out = kb_operator(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RedisRequired"));
}
