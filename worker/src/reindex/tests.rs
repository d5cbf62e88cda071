//! Re-index through the API with real models: a collection of the bundled (mean-pooled)
//! model is re-indexed by a worker of the CLS-pooled one, which then answers under the old
//! name with its own vectors (before, sentence-transformers' vectors of the bundled model
//! find each passage; after, those of the CLS-pooled one); a worker started from a copy taken mid-job resumes it; what a
//! job forbids is refused with the reason.

use crate::test_support::{call, cls_model, copy_dir, model_dir, reference_vectors, serve};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn ingest(url: &str, collection: &str, docs: Value) -> (u16, Value) {
    let path = format!("/v1/collections/{collection}/documents?wait=applied");
    call(url, "POST", &path, Some(json!({ "documents": docs }))).await
}

fn texts(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("doc-{i:03}"),
                format!(
                    "Passage {i} about topic {}: the {} fox jumps over {} lazy dogs near river {}.",
                    i % 7,
                    ["quick", "slow", "red", "grey", "young"][i % 5],
                    i % 11,
                    i * 13 % 17
                ),
            )
        })
        .collect()
}

/// A data directory whose collection `docs` (alias `live`) holds `n` documents embedded
/// by the bundled model (each text `repeat` times: longer documents make a longer job),
/// written by a worker that is then left alone.
async fn data_of_the_bundled_model(n: usize, repeat: usize) -> (tempfile::TempDir, String) {
    let (tmp, _state, url) = serve(|_| {}).await;
    for batch in texts(n).chunks(50) {
        let docs: Vec<Value> = batch
            .iter()
            .map(|(id, text)| {
                let text = [text.as_str()].repeat(repeat).join(" ");
                json!({"id": id, "text": text, "metadata": {"n": id}})
            })
            .collect();
        assert_eq!(ingest(&url, "docs", json!(docs)).await.0, 200);
    }
    let (status, _) = call(
        &url,
        "PUT",
        "/v1/aliases/live",
        Some(json!({"collection": "docs"})),
    )
    .await;
    assert_eq!(status, 200);
    (tmp, url)
}

/// Polls the job until `done` holds for its JSON; the last answer.
async fn wait_job(url: &str, id: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, job) = call(url, "GET", &format!("/v1/jobs/{id}"), None).await;
        if done(status, &job) {
            return (status, job);
        }
        assert!(Instant::now() < deadline, "job {id} stuck: {status} {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_model_reindexes_a_collection_which_then_answers_with_its_vectors() {
    let (data, old) = data_of_the_bundled_model(60, 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let cls = cls_model(tmp.path());
    // Stored vectors of a model are sentence-transformers' vectors of that model: each
    // passage's reference vector finds it with cosine 1.
    let sample: Vec<(String, String)> = texts(60).into_iter().step_by(13).collect();
    let sample_texts: Vec<String> = sample.iter().map(|(_, t)| t.clone()).collect();
    // Each sample passage's score for its own reference vector (0 when another ranks first).
    let own_scores = |url: String, vectors: Vec<Vec<f32>>| {
        let sample = sample.clone();
        async move {
            let mut scores = Vec::new();
            for ((id, _), vector) in sample.iter().zip(vectors) {
                let q = json!({"vector": vector, "top_k": 1});
                let path = "/v1/collections/docs/query";
                let (status, answer) = call(&url, "POST", path, Some(q)).await;
                assert_eq!(status, 200, "{answer}");
                let hit = &answer["hits"][0];
                let own = hit["document_id"] == json!(id);
                scores.push(if own {
                    hit["score"].as_f64().unwrap()
                } else {
                    0.0
                });
            }
            scores
        }
    };
    let mean_vectors = reference_vectors(&model_dir(), &sample_texts);
    let cls_vectors = reference_vectors(&cls, &sample_texts);
    let before = own_scores(old.clone(), mean_vectors).await;
    assert!(before.iter().all(|&s| s > 0.999), "{before:?}");
    let other = own_scores(old.clone(), cls_vectors.clone()).await;
    assert!(
        other.iter().all(|&s| s < 0.99),
        "the CLS-pooled model's vectors are not the bundled one's: {other:?}"
    );
    // The old model's worker has nothing to re-index: its collection is its model's.
    let (status, body) = call(&old, "POST", "/v1/collections/docs/reindex", None).await;
    assert_eq!(status, 409, "{body}");
    let dir = tmp.path().join("data");
    copy_dir(&data.path().join("data"), &dir);
    let (_t, _s, url) = serve(move |cfg| {
        cfg.data_dir = dir;
        cfg.model = Some(cls);
    })
    .await;
    let query = json!({"query": texts(60)[5].1, "top_k": 1});
    assert_eq!(
        call(
            &url,
            "POST",
            "/v1/collections/live/query",
            Some(query.clone())
        )
        .await
        .0,
        409
    );
    // A `model` that is not this worker's is refused with the one it has.
    let wrong = json!({"target": "docs-cls", "model": "another-model"});
    let (status, body) = call(&url, "POST", "/v1/collections/live/reindex", Some(wrong)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("model_mismatch"))
    );
    let (status, job) = call(
        &url,
        "POST",
        "/v1/collections/live/reindex",
        Some(json!({"target": "docs-cls"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        (job["source"].clone(), job["state"].clone()),
        (json!("docs"), json!("running"))
    );
    assert_eq!(job["documents_total"], 60);
    assert_eq!(job["model"]["pooling"], "cls");
    let (status, job) =
        wait_job(&url, "docs-cls", |s, j| s == 200 && j["state"] != "running").await;
    assert_eq!(
        (status, job["state"].clone()),
        (200, json!("finished")),
        "{job}"
    );
    assert_eq!(job["embedded_documents"], 60);
    // The old name and the alias now stand for the new collection, whose vectors are this
    // model's: a passage's own text finds it with cosine 1.
    let (_, aliases) = call(&url, "GET", "/v1/aliases", None).await;
    let pairs: Vec<(Value, Value)> = aliases["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["alias"].clone(), a["collection"].clone()))
        .collect();
    assert!(
        pairs.contains(&(json!("docs"), json!("docs-cls"))),
        "{aliases}"
    );
    assert!(
        pairs.contains(&(json!("live"), json!("docs-cls"))),
        "{aliases}"
    );
    for name in ["docs", "live", "docs-cls"] {
        for (id, text) in texts(60).into_iter().step_by(13) {
            let q = json!({"query": text, "top_k": 1, "mode": "dense"});
            let path = format!("/v1/collections/{name}/query");
            let (status, answer) = call(&url, "POST", &path, Some(q)).await;
            assert_eq!(status, 200, "{answer}");
            let hit = &answer["hits"][0];
            assert_eq!(hit["document_id"], json!(id));
            assert!(hit["score"].as_f64().unwrap() > 0.999, "{hit}");
            assert_eq!(hit["metadata"]["n"], json!(id));
        }
    }
    let after = own_scores(url.clone(), cls_vectors).await;
    assert!(after.iter().all(|&s| s > 0.999), "{after:?}");
    let (status, ready) = call(&url, "GET", "/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    // Writes through the old name land in the new collection, embedded by this model.
    let doc = json!([{"id": "new", "text": "A brand new passage about owls."}]);
    assert_eq!(ingest(&url, "docs", doc).await.0, 200);
    let (_, info) = call(&url, "GET", "/v1/collections/docs-cls", None).await;
    assert_eq!(info["documents"], 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_mid_reindex_resumes_where_it_was_and_a_cancel_drops_the_target() {
    let (data, _old) = data_of_the_bundled_model(400, 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let cls = cls_model(tmp.path());
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    copy_dir(&data.path().join("data"), &first);
    let (model, dir) = (cls.clone(), first.clone());
    let (_t, _s, url) = serve(move |cfg| {
        cfg.data_dir = dir;
        cfg.model = Some(model);
    })
    .await;
    let (status, job) = call(&url, "POST", "/v1/collections/docs/reindex", None).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("docs-"), "{id}");
    // The data as a crash would leave it, part-way through the job.
    let (_, seen) = wait_job(&url, &id, |_, j| j["documents_done"].as_u64() >= Some(64)).await;
    copy_dir(&first, &second);
    assert!(seen["documents_done"].as_u64().unwrap() < 400, "{seen}");
    // The metrics port tells the operator the same progress, with the ETA of the run.
    let (status, answer) = call(&url, "GET", kb_config::progress::JOBS_PATH, None).await;
    assert_eq!(status, 200, "{answer}");
    let progress: kb_config::progress::JobsProgress = serde_json::from_value(answer).unwrap();
    let [job] = progress.jobs.as_slice() else {
        panic!("one job: {progress:?}")
    };
    assert_eq!((job.id.as_str(), job.documents_total), (id.as_str(), 400));
    assert!(job.documents_done >= 64, "{job:?}");
    assert!(job.eta_seconds.is_some_and(|s| s > 0.0), "{job:?}");
    let (_t2, _s2, restarted) = serve(move |cfg| {
        cfg.data_dir = second;
        cfg.model = Some(cls);
    })
    .await;
    let (_, job) = wait_job(&restarted, &id, |s, j| s == 200 && j["state"] != "running").await;
    assert_eq!(job["state"], "finished", "{job}");
    let embedded = job["embedded_documents"].as_u64().unwrap();
    assert!(
        embedded > 0 && embedded + 64 <= 400,
        "the restarted run embeds only what was left: {embedded}"
    );
    let (_, info) = call(&restarted, "GET", "/v1/collections/docs", None).await;
    assert_eq!(
        (info["name"].clone(), info["documents"].clone()),
        (json!(id), json!(400))
    );

    // On the first worker, once finished: a new job of the new collection is refused
    // (it is this model's), and a cancel of a job gone is a 404.
    wait_job(&url, &id, |s, j| s == 200 && j["state"] != "running").await;
    let (status, _) = call(&url, "POST", "/v1/collections/docs/reindex", None).await;
    assert_eq!(status, 409);
    let (status, _) = call(&url, "DELETE", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_reindex_drops_its_target_and_leaves_the_source_serving() {
    let (data, _old) = data_of_the_bundled_model(300, 6).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    copy_dir(&data.path().join("data"), &dir);
    let cls = cls_model(tmp.path());
    let (_t, _s, url) = serve(move |cfg| {
        cfg.data_dir = dir;
        cfg.model = Some(cls);
    })
    .await;
    let body = json!({"target": "docs-next"});
    let (status, job) = call(
        &url,
        "POST",
        "/v1/collections/docs/reindex",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    // A second job of the same collection, or into a taken name, is refused.
    let (status, _) = call(
        &url,
        "POST",
        "/v1/collections/docs/reindex",
        Some(json!({"target": "other"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &url,
        "POST",
        "/v1/collections/docs/reindex",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(&url, "DELETE", "/v1/collections/docs", None).await;
    assert_eq!(status, 409);
    // Nobody writes into the target but the job; the target is no mismatch meanwhile.
    let doc = json!([{"id": "x", "text": "written into the target"}]);
    let (status, body) = ingest(&url, "docs-next", doc).await;
    assert_eq!(status, 409, "{body}");
    let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
    assert_eq!(listed["jobs"][0]["source"], "docs", "{listed}");
    let (_, ready) = call(&url, "GET", "/readyz", None).await;
    let mismatched = ready["model_mismatch"].to_string();
    assert!(
        mismatched.contains("docs (") && !mismatched.contains("docs-next"),
        "{ready}"
    );
    let (status, answer) = call(&url, "DELETE", "/v1/jobs/docs-next", None).await;
    assert_eq!(
        (status, answer["state"].clone()),
        (200, json!("cancelled")),
        "{answer}"
    );
    let (status, _) = call(&url, "GET", "/v1/collections/docs-next", None).await;
    assert_eq!(status, 404);
    let (_, info) = call(&url, "GET", "/v1/collections/docs", None).await;
    assert_eq!(info["documents"], 300);
    let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
    assert_eq!(listed["jobs"], json!([]));
    // The run noticed and stopped: it reports the job cancelled.
    let (_, job) = wait_job(&url, "docs-next", |s, j| {
        s == 200 && j["state"] != "running"
    })
    .await;
    assert_eq!(job["state"], "cancelled");
}

/// Polls `/readyz` until it answers 200; its last body.
async fn wait_ready(url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = call(url, "GET", "/readyz", None).await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_model_mismatch_reindex_a_worker_of_a_new_model_reindexes_by_itself_and_a_revert_cancels(
) {
    let (data, _old) = data_of_the_bundled_model(200, 4).await;
    let tmp = tempfile::tempdir().unwrap();
    let cls = cls_model(tmp.path());
    let (new, reverted) = (tmp.path().join("new"), tmp.path().join("reverted"));
    copy_dir(&data.path().join("data"), &new);
    let dir = new.clone();
    let (_t, _s, url) = serve(move |cfg| {
        cfg.data_dir = dir;
        cfg.model = Some(cls);
        cfg.on_model_mismatch = kb_config::OnModelMismatch::Reindex;
    })
    .await;
    // Nobody asked: the worker started the job itself, into the default name.
    let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
    assert_eq!(listed["jobs"][0]["source"], "docs", "{listed}");
    let id = listed["jobs"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("docs-"), "{id}");
    // Not ready (metrics read first: the job was under way for both), but mended: the
    // mismatch gauge, whose alert pages, stays 0.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, ready) = call(&url, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "not ready while re-indexing: {ready}");
    assert!(
        metrics.contains("kb_worker_collection_model_mismatch{collection=\"docs\"} 0")
            && metrics.contains("kb_worker_ready 0"),
        "{metrics}"
    );
    // A copy of the data part-way through, as a rollback of the model would find it.
    let (_, seen) = wait_job(&url, &id, |_, j| j["documents_done"].as_u64() >= Some(32)).await;
    copy_dir(&new, &reverted);
    assert!(seen["documents_done"].as_u64().unwrap() < 200, "{seen}");

    wait_ready(&url).await;
    let (_, job) = wait_job(&url, &id, |s, j| s == 200 && j["state"] != "running").await;
    assert_eq!(job["state"], "finished", "{job}");
    for (id, text) in texts(200).into_iter().step_by(41) {
        let text = [text.as_str()].repeat(4).join(" ");
        let q = json!({"query": text, "top_k": 1, "mode": "dense"});
        let (status, answer) = call(&url, "POST", "/v1/collections/live/query", Some(q)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["hits"][0]["document_id"], json!(id));
        assert!(
            answer["hits"][0]["score"].as_f64().unwrap() > 0.999,
            "{answer}"
        );
    }

    // The bundled model again on the copy: the job it finds was started for the CLS
    // model by this replica, so it is cancelled; the source was never touched.
    let (_t2, _s2, back) = serve(move |cfg| {
        cfg.data_dir = reverted;
        cfg.on_model_mismatch = kb_config::OnModelMismatch::Reindex;
    })
    .await;
    let (_, listed) = call(&back, "GET", "/v1/jobs", None).await;
    assert_eq!(listed["jobs"], json!([]), "{listed}");
    let (status, _) = call(&back, "GET", &format!("/v1/collections/{id}"), None).await;
    assert_eq!(status, 404);
    let (_, info) = call(&back, "GET", "/v1/collections/live", None).await;
    assert_eq!(
        (info["name"].clone(), info["documents"].clone()),
        (json!("docs"), json!(200))
    );
    wait_ready(&back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_a_model_the_knowledgebase_left_reindexes_nothing_and_a_revert_cancels_its_job()
{
    let (data, _old) = data_of_the_bundled_model(200, 4).await;
    let tmp = tempfile::tempdir().unwrap();
    let cls = cls_model(tmp.path());
    let dir = tmp.path().join("data");
    copy_dir(&data.path().join("data"), &dir);
    // The operator's file: the KnowledgeBase wants the bundled model (the data's).
    let wanted = tmp.path().join("wanted-model");
    std::fs::write(&wanted, "image:/opt/kb/model\n").unwrap();
    let file = wanted.clone();
    let (_t, state, url) = serve(move |cfg| {
        cfg.data_dir = dir;
        cfg.model = Some(cls);
        cfg.on_model_mismatch = kb_config::OnModelMismatch::Reindex;
        cfg.model_ref = Some("image:/opt/kb/model-cls".into());
        cfg.wanted_model_file = Some(file);
    })
    .await;
    // Superseded (an old pod restarted after the swap): no job, not ready, and it does
    // not stop over the mismatch nor page for it; the rolling update replaces it.
    let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
    assert_eq!(listed["jobs"], json!([]), "{listed}");
    let (status, ready) = call(&url, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "{ready}");
    let engine = state.engine().unwrap();
    crate::cli::serve::check_models(&engine, kb_config::OnModelMismatch::Reindex).unwrap();
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kb_worker_collection_model_mismatch{collection=\"docs\"} 0"),
        "{metrics}"
    );

    // The spec names this worker's model: it starts the re-index by itself.
    std::fs::write(&wanted, "image:/opt/kb/model-cls").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
        if let Some(id) = listed["jobs"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no job started: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, job) = call(&url, "GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(job["state"], "running", "{job}");

    // Reverted before the swap: the job is cancelled and its half-built target dropped.
    std::fs::write(&wanted, "image:/opt/kb/model").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, listed) = call(&url, "GET", "/v1/jobs", None).await;
        if listed["jobs"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "job not cancelled: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = call(&url, "GET", &format!("/v1/collections/{id}"), None).await;
    assert_eq!(status, 404);
    let (_, info) = call(&url, "GET", "/v1/collections/live", None).await;
    assert_eq!(
        (info["name"].clone(), info["documents"].clone()),
        (json!("docs"), json!(200))
    );
}
