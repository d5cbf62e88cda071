//! The worker's view of its devices: `kb-worker devices`, and a start on a CUDA device
//! libtorch cannot use.

mod common;

use common::json_of_command;

#[test]
fn devices_command_reports_the_gpus_libtorch_sees() {
    let report = json_of_command("devices");
    let gpus = report["gpus"].as_array().unwrap();
    assert_eq!(gpus.len() as i64, tch::Cuda::device_count(), "{report}");
    assert!(report["cuda_driver"].is_boolean());
    // libtorch's own view sits next to the driver's, with a summary in words.
    assert_eq!(report["libtorch_cuda_devices"], tch::Cuda::device_count());
    assert!(report["summary"].as_str().unwrap().contains("libtorch"));
    // And the host memory a CPU index may grow into (this machine has /proc/meminfo).
    let host = &report["host_memory"];
    assert!(
        host["machine_available_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(host["available_bytes"].as_u64().unwrap() > 0, "{report}");
    if gpus.is_empty() {
        return;
    }
    assert!(report["cuda_driver"].as_bool().unwrap());
    assert!(gpus[0]["total_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn asking_for_cuda_that_libtorch_cannot_use_fails_at_start_naming_both_views() {
    // One device past the last one libtorch sees (plain `cuda` without GPUs).
    let count = tch::Cuda::device_count();
    let device = if count == 0 {
        "cuda".to_string()
    } else {
        format!("cuda:{count}")
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kb-worker"))
        .args([
            "serve",
            "--open",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--device", &device, "--model"])
        .arg(common::model_dir())
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the worker started on {device}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("embedding.device {device:?}")),
        "{stderr}"
    );
    assert!(stderr.contains("libtorch"), "{stderr}");
    assert!(
        stderr.contains("CUDA driver") || stderr.contains("no CUDA driver library"),
        "{stderr}"
    );
}
