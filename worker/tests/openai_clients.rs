//! `/v1/embeddings` and `/v1/models` driven by the real clients users have: openai-python
//! and LangChain's `OpenAIEmbeddings` from the project virtualenv, unchanged (the script
//! is worker/tests/clients/openai_clients.py). Fails, never skips, when they are missing.

mod common;

use common::{model_dir, start_keyed, venv_bin, ADMIN_KEY};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_and_langchain_work_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = start_keyed(tmp.path()).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/openai_clients.py"
    );
    let python = venv_bin("python");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .env("KB_URL", &worker.url)
            .env("KB_KEY", ADMIN_KEY)
            .env("KB_MODEL_DIR", model_dir())
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("OPENAI_BASE_URL", "")
            .output()
            .unwrap_or_else(|e| panic!("{} not runnable ({e}); run `make setup`", python.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the client script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
