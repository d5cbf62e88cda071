//! Backups to a folder (what the operator's backup CronJob does with a PVC destination):
//! the snapshot streams into the folder and is verified on the way, retention keeps the
//! newest, and a restore skips a damaged newest file and installs the newest valid one,
//! which answers as the source did.

mod common;

use common::{post_ok, Worker};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Runs `kb-worker ARGS`; returns its stdout's JSON lines and its stderr.
fn kb_worker_ok(args: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kb-worker"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kb-worker {args:?} failed:\n{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

async fn ingest(url: &str, i: usize) {
    let text = format!("Document {i} is about topic {} and nothing else.", i % 4);
    let body = json!({"documents": [{"id": format!("doc-{i}"), "text": text}]});
    post_ok(url, "/v1/collections/docs/documents", &body).await;
}

async fn answer(url: &str) -> Value {
    let body = json!({"query": "topic 2", "top_k": 5});
    post_ok(url, "/v1/collections/docs/query", &body).await["hits"].clone()
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_backups_stream_keep_the_newest_and_restore_the_newest_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Worker::start(&tmp.path().join("a"), "", &["--open"]).await;
    let folder = tmp.path().join("backups");
    let target = folder.to_str().unwrap();
    let mut last = json!({"sequence": 0});
    for round in 0..3 {
        ingest(&source.url, round).await;
        let args = [
            "backup",
            "--url",
            &source.url,
            "--to",
            target,
            "--keep",
            "2",
        ];
        let (lines, _) = kb_worker_ok(&args);
        let line = lines[0].clone();
        assert!(
            line["sequence"].as_u64() > last["sequence"].as_u64(),
            "{line} after {last}"
        );
        last = line;
        let file = Path::new(last["file"].as_str().unwrap());
        assert_eq!(
            last["bytes"],
            std::fs::metadata(file).unwrap().len(),
            "{last}"
        );
    }
    // The worker exports the snapshot it wrote for the last backup.
    let metrics = reqwest::get(format!("{}/metrics", source.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (series, value) in [
        ("kb_worker_snapshot_last_sequence", &last["sequence"]),
        ("kb_worker_snapshot_last_bytes", &last["bytes"]),
    ] {
        assert!(
            metrics.contains(&format!("{series} {value}\n")),
            "{series} {value}:\n{metrics}"
        );
    }
    let kept = backups_in(&folder);
    assert_eq!(kept.len(), 2, "retention: {kept:?}");
    assert!(
        kept.iter().all(|n| !n.starts_with('.')),
        "a temporary file was left: {kept:?}"
    );
    let expected = answer(&source.url).await;

    // A newer but damaged file: skipped, with a note, in favour of the newest valid one.
    let good = std::fs::read(last["file"].as_str().unwrap()).unwrap();
    let damaged = folder.join("backup-99-9999999999.kbsnap");
    std::fs::write(&damaged, &good[..good.len() / 2]).unwrap();
    let data = tmp.path().join("b");
    let restore = [
        "restore",
        "--from",
        target,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let (lines, stderr) = kb_worker_ok(&restore);
    assert_eq!(lines[0]["sequence"], last["sequence"], "{}", lines[0]);
    assert!(stderr.contains("skipping"), "{stderr}");
    let restored = Worker::start(&data, "", &["--open"]).await;
    assert_eq!(answer(&restored.url).await, expected);
}
