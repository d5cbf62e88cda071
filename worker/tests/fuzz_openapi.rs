//! The API fuzzed from its own OpenAPI document with schemathesis (from the project
//! virtualenv): every operation gets generated valid and invalid requests (bodies, query
//! strings, headers, methods, missing or wrong keys), and no answer may be a 5xx, leave
//! the documented statuses, content types or headers, or accept a request without a valid
//! key. The worker keeps running throughout (a crash fails every later case).
//! `KB_FUZZ_EXAMPLES` and `KB_FUZZ_SEED` widen or vary the run.

mod common;

use common::{start_keyed, venv_bin, ADMIN_KEY};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contract_violation() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = start_keyed(tmp.path()).await;
    // One collection and document to aim at, named in the path parameters below.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/collections/c/documents", worker.url))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"documents": [{"id": "d", "text": "fuzzing target"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    std::fs::write(
        tmp.path().join("schemathesis.toml"),
        "[parameters]\n\"path.collection\" = \"c\"\n\"path.id\" = \"d\"\n",
    )
    .unwrap();
    let examples = std::env::var("KB_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("KB_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let schemathesis = venv_bin("schemathesis");
    let (url, dir) = (worker.url.clone(), tmp.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&schemathesis)
            .current_dir(&dir)
            .args(["run", &format!("{url}/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {ADMIN_KEY}")])
            // Every check except the two that compare the schema's strictness with the
            // server's (the document is looser than the handlers in places, on purpose:
            // e.g. `dimensions` depends on the loaded model).
            .args(["-c", "all"])
            .args([
                "--exclude-checks",
                "positive_data_acceptance,negative_data_rejection",
            ])
            .args(["-n", &examples, "--seed", &seed, "--request-timeout", "30"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} not runnable ({e}); run `make setup`",
                    schemathesis.display()
                )
            })
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    drop(worker);
}

/// The generated document is a valid OpenAPI 3.1 document (openapi-spec-validator from
/// the project virtualenv): every response described, every schema well-formed.
#[test]
fn the_generated_document_is_valid_openapi_3_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_kb-worker"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openapi.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let python = venv_bin("python");
    let check = Command::new(&python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
             print('valid')",
        ])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{} not runnable ({e}); run `make setup`", python.display()));
    assert!(
        check.status.success(),
        "the OpenAPI document is not valid:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
