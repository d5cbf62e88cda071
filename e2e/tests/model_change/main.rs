//! Changing the embedding model on a real cluster (docs/operator.md, "Changing the model";
//! docs/runbooks/change-model.md; docs/worker.md, "Re-index").
//!
//! - `changing_the_model_reindexes_with_queries_and_writes_running`: a two-replica
//!   KnowledgeBase with data gets new prefixes (a new `status.model`). While an added pod of
//!   the new model re-indexes (the StatefulSet at three replicas, partition two) and then
//!   the StatefulSet rolls, an in-cluster client queries and writes through
//!   the Service the whole time. The test proves: the rollout is reported
//!   (`status.modelRollout` phase `Reindexing`, then gone with the new `status.model`;
//!   Events `ModelRolloutStarted`, `ModelRolloutServing`, `ModelRolloutFinished`), no query
//!   fails, no acknowledged write is lost on any replica, `docs` is then an alias of a
//!   new collection embedded with the new prefixes, and the added pod's claim is deleted
//!   with it after the shrink (claims are retained on scale-down again afterwards). A
//!   current worker deleted during the re-index comes back on the old revision's
//!   configuration, which the ConfigMap keeps until the rollout is over.
//! - `reverting_the_model_mid_way_keeps_the_old_model_and_its_data`: the same change,
//!   reverted while the re-index job runs. The test proves: the rollout ends as reverted
//!   (`status.model` is the original again, Event `ModelRolloutReverted`, no
//!   `ModelRolloutFinished`), the job is cancelled on every replica, and `docs` is still the
//!   original collection with the same documents.
//! - `an_autoscaled_knowledgebase_changes_the_model_with_a_worker_the_autoscaler_adds`:
//!   with autoscaling (2 to 2) the same change raises the HorizontalPodAutoscaler's bounds
//!   to 3 while the two current workers are held on the old model (partition and
//!   `knowledge.dev/model-surge-base` 2) and the autoscaler, not the operator, runs the
//!   third; afterwards the bounds are the spec's, the autoscaler is back at two workers and
//!   both hold every document under the new model.
//!
//! The tests reach the API from inside the cluster: a `curlimages/curl` pod (image from
//! `KB_E2E_CURL_IMAGE`) that gets the generated admin key (`<kb>-api-keys`, key
//! `admin-key`) as an environment variable. Every test installs the same release (the chart
//! owns the cluster-wide CRD), so run them one at a time:
//! `cargo test --test model_change -- --ignored --test-threads=1` (add `--nocapture` to see
//! the rollout's timeline). Each takes several minutes on CPU workers.

mod client;
mod cluster;
mod json;
mod worker;

use std::time::{Duration, Instant};

use client::{parse_client_log, Request};
use cluster::{get, install, unix_now, wait_until, Kb};
use json::Json;
use worker::documents;

pub(crate) const OPERATOR_NS: &str = "kb-e2e-system";
pub(crate) const KB_NS: &str = "kb-e2e-model";
/// Two replicas with Redis, so one pod of the old model serves while the new one
/// re-indexes; claims deleted with the KnowledgeBase, so a rerun starts empty.
pub(crate) const SPEC: &str = "  replicas: 2\n  embedding: {device: cpu}\n  redis: {managed: {}}\n  storage: {reclaimPolicy: Delete}\n";
const REPLICAS: usize = 2;
/// Replicas while the model changes: one worker added (`embedding.rollout.maxSurge`).
const REPLICAS_ADDED: usize = 3;
/// [`SPEC`] autoscaled between two and two workers: the autoscaler's count is known
/// without load or a metrics server (it raises a count below its floor without metrics).
const AUTOSCALED_SPEC: &str = "  replicas: 2\n  embedding: {device: cpu}\n  redis: {managed: {}}\n  storage: {reclaimPolicy: Delete}\n  autoscaling: {minReplicas: 2, maxReplicas: 2}\n";
const NEW_PREFIXES: &str =
    r#"{"spec":{"embedding":{"queryPrefix":"query: ","documentPrefix":"passage: "}}}"#;
/// A JSON merge patch: `null` removes the fields, back to the model's own prompts.
const NO_PREFIXES: &str = r#"{"spec":{"embedding":{"queryPrefix":null,"documentPrefix":null}}}"#;

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn changing_the_model_reindexes_with_queries_and_writes_running() {
    install(&[]);
    let kb = Kb { name: "reindex" };
    kb.create();
    let seeded = kb.ingest("seed", 200, 12, 200);
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        wait_until(
            &format!("the 200 documents on {worker}"),
            Duration::from_secs(120),
            || kb.document_ids(&worker) == seeded,
        );
    }

    // The client runs before, during and after the change.
    kb.start_client();

    let old_model = get(&kb.resource(), "{.status.model}");
    assert!(!old_model.is_empty(), "status.model is not reported");
    let old_config = kb.config("config.yaml");
    kb.patch(NEW_PREFIXES);
    let new_model = format!(r#"{old_model} queryPrefix="query: " documentPrefix="passage: ""#);

    // What the operator reports, polled every 2 s, as `unix-seconds state` lines.
    let mut timeline: Vec<String> = vec![format!("{} spec patched", unix_now())];
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    // How long Reindexing lasted, and whether the workers' figures reached the status.
    let (mut reindexing_since, mut reindexing_for, mut figures) = (None, Duration::ZERO, false);
    let mut surged = false;
    // A current worker deleted during Reindexing (its uid), and whether its replacement
    // was seen mounting the old revision's configuration.
    let (mut deleted, mut kept_config) = (None::<String>, false);
    loop {
        let model = get(&kb.resource(), "{.status.model}");
        let phase = get(&kb.resource(), "{.status.modelRollout.phase}");
        let done = get(&kb.resource(), "{.status.modelRollout.documentsDone}");
        let total = get(&kb.resource(), "{.status.modelRollout.documentsTotal}");
        if phase == "Reindexing" {
            // One worker added for the change (maxSurge 1 by default with Redis), the
            // current ones held on the old model by the partition.
            let workers = format!("statefulset/{}-worker", kb.name);
            let shape = (
                get(&workers, "{.spec.replicas}"),
                get(&workers, "{.spec.updateStrategy.rollingUpdate.partition}"),
            );
            surged |= shape == (REPLICAS_ADDED.to_string(), REPLICAS.to_string());
            let since = *reindexing_since.get_or_insert_with(Instant::now);
            reindexing_for = since.elapsed();
            figures |= !total.is_empty();
            // A current worker restarts mid-change (a node reboot, a crash): the
            // StatefulSet recreates it from the old revision, which must still read the old
            // configuration (the old model), not the spec's new one.
            match &deleted {
                None => deleted = Some(kb.delete_worker(0)),
                Some(uid) if !kept_config => {
                    let pod = format!("pod/{}-worker-0", kb.name);
                    let now = get(&pod, "{.metadata.uid}");
                    if !now.is_empty() && &now != uid {
                        assert_eq!(kb.mounted_config(0), old_config);
                        kept_config = true;
                    }
                }
                Some(_) => {}
            }
        }
        let state = match phase.as_str() {
            "" => format!("no modelRollout, model {model}"),
            phase if total.is_empty() => format!("modelRollout phase {phase}"),
            phase => format!("modelRollout phase {phase} {done}/{total} documents"),
        };
        if state != last {
            timeline.push(format!("{} {state}", unix_now()));
            last = state;
        }
        if phase.is_empty() && model != old_model {
            assert_eq!(model, new_model, "timeline:\n{}", timeline.join("\n"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the model change did not finish in 20 minutes:\n{}",
            timeline.join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("rollout timeline (host clock):\n{}", timeline.join("\n"));
    assert!(
        timeline
            .iter()
            .any(|s| s.contains("modelRollout phase Reindexing")),
        "phase Reindexing was never reported:\n{}",
        timeline.join("\n")
    );
    assert!(
        kept_config,
        "worker 0, deleted during Reindexing, was not seen again on the old configuration \
         before the phase ended:\n{}",
        timeline.join("\n")
    );
    assert!(
        surged,
        "the StatefulSet never ran {REPLICAS_ADDED} replicas with partition {REPLICAS} \
         during Reindexing:\n{}",
        timeline.join("\n")
    );
    wait_until(
        "the StatefulSet back to its replicas",
        Duration::from_secs(120),
        || {
            get(
                &format!("statefulset/{}-worker", kb.name),
                "{.spec.replicas}",
            ) == REPLICAS.to_string()
        },
    );
    kb.wait_added_claim_deleted();
    // The operator asks the re-indexing worker at each reconcile (15 s apart at most).
    assert!(
        figures || reindexing_for < Duration::from_secs(40),
        "Reindexing for {reindexing_for:?} without documentsDone/documentsTotal:\n{}",
        timeline.join("\n")
    );
    kb.wait_ready();
    wait_until(
        "the old revision's configuration removed",
        Duration::from_secs(60),
        || kb.pinned_configs() == 1,
    );
    wait_until("the model rollout Events", Duration::from_secs(60), || {
        let reasons = kb.event_reasons();
        [
            "ModelRolloutStarted",
            "ModelRolloutServing",
            "ModelRolloutFinished",
        ]
        .iter()
        .all(|r| reasons.iter().any(|e| e == r))
    });
    assert!(!kb
        .event_reasons()
        .iter()
        .any(|r| r == "ModelRolloutReverted"));

    // A little traffic on the new model's pods, then the client stops.
    std::thread::sleep(Duration::from_secs(15));
    let log = kb.stop_client();
    let (requests, rounds, other) = parse_client_log(&log);
    let rounds = rounds.unwrap_or_else(|| panic!("the client's log is incomplete:\n{log}"));
    assert!(
        other.is_empty(),
        "unexpected lines in the client's log: {other:#?}"
    );
    let queries: Vec<&Request> = requests.iter().filter(|r| r.kind == "query").collect();
    let writes: Vec<&Request> = requests.iter().filter(|r| r.kind == "write").collect();
    assert_eq!(
        (queries.len(), writes.len()),
        (rounds, rounds),
        "lines are missing:\n{log}"
    );
    assert!(rounds >= 30, "the client made only {rounds} rounds:\n{log}");

    // No query fails: every attempt answered 200, no retries (a 409 from an old pod
    // after the swap, a 503 or no answer while a pod goes are all failures).
    let failed: Vec<&str> = queries
        .iter()
        .filter(|r| r.status != "200")
        .map(|r| r.line)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} queries failed during the model change.\nrollout timeline (host clock):\n{}\nfailed queries:\n{}",
        failed.len(),
        queries.len(),
        timeline.join("\n"),
        failed.join("\n")
    );

    // No acknowledged write is lost: every 2xx write and every seed document is in `docs`
    // on every replica (given 2 minutes to catch up). A refused write (not acknowledged)
    // may or may not be there and is only reported; at least half the writes must be
    // acknowledged, so that the check is not vacuous.
    let refused: Vec<&str> = writes
        .iter()
        .filter(|r| !r.status.starts_with('2'))
        .map(|r| r.line)
        .collect();
    println!(
        "{} of {} writes refused (not acknowledged):\n{}",
        refused.len(),
        writes.len(),
        refused.join("\n")
    );
    let mut acknowledged = seeded.clone();
    acknowledged.extend(
        writes
            .iter()
            .filter(|r| r.status.starts_with('2'))
            .map(|r| r.id.to_string()),
    );
    assert!(
        acknowledged.len() >= seeded.len() + rounds / 2,
        "fewer than half the writes were acknowledged:\n{}",
        refused.join("\n")
    );
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let present = kb.document_ids(&worker);
            let missing: Vec<&String> = acknowledged.difference(&present).collect();
            if missing.is_empty() {
                let documents = kb.collection(&worker).get("documents").number();
                assert_eq!(
                    documents,
                    Some(present.len() as f64),
                    "{worker}: count and listing differ"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{worker} lacks {} acknowledged documents: {missing:?}",
                missing.len()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    // `docs` is now an alias of the re-indexed collection, embedded with the new prefixes.
    let aliases = kb.aliases(&kb.service());
    let target = aliases
        .iter()
        .find(|(alias, _)| alias == "docs")
        .map(|(_, collection)| collection.clone())
        .unwrap_or_else(|| panic!("docs is not an alias after the change: {aliases:?}"));
    assert!(target.starts_with("docs-"), "docs points at {target}");
    for ordinal in 0..REPLICAS {
        let collection = kb.collection(&kb.worker(ordinal));
        assert_eq!(collection.get("name").str(), Some(target.as_str()));
        assert_eq!(collection.get("model_mismatch"), &Json::Bool(false));
        let model = collection.get("model");
        assert_eq!(model.get("query_prefix").str(), Some("query: "));
        assert_eq!(model.get("document_prefix").str(), Some("passage: "));
    }
    kb.cleanup();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn reverting_the_model_mid_way_keeps_the_old_model_and_its_data() {
    install(&[]);
    let kb = Kb { name: "revert" };
    kb.create();
    // Enough text that the re-index runs long enough to be reverted while it runs (about
    // as long as this ingestion took); raise KB_E2E_REVERT_DOCS on fast nodes.
    let count = std::env::var("KB_E2E_REVERT_DOCS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let started = Instant::now();
    let ingested = kb.ingest("doc", count, 150, 100);
    println!("ingested {count} documents in {:?}", started.elapsed());
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        wait_until(
            &format!("the documents on {worker}"),
            Duration::from_secs(120),
            || kb.document_ids(&worker) == ingested,
        );
    }
    let old_model = get(&kb.resource(), "{.status.model}");
    assert!(!old_model.is_empty(), "status.model is not reported");

    kb.patch(NEW_PREFIXES);
    wait_until("phase Reindexing", Duration::from_secs(120), || {
        get(&kb.resource(), "{.status.modelRollout.phase}") == "Reindexing"
    });
    // Every replica knows the job from the log; the old-model pod answers through the
    // Service while the new one is not ready.
    let too_fast = "the re-index finished before it could be reverted; raise KB_E2E_REVERT_DOCS";
    let mut job = String::new();
    wait_until("a running re-index job", Duration::from_secs(600), || {
        let running = kb
            .jobs(&kb.service())
            .into_iter()
            .find(|(_, state)| state == "running");
        job = running.map(|(id, _)| id).unwrap_or_default();
        let phase = get(&kb.resource(), "{.status.modelRollout.phase}");
        assert_eq!(phase, "Reindexing", "{too_fast}");
        !job.is_empty()
    });
    kb.patch(NO_PREFIXES);

    wait_until(
        "the reverted rollout to end",
        Duration::from_secs(600),
        || get(&kb.resource(), "{.status.modelRollout}").is_empty(),
    );
    assert_eq!(get(&kb.resource(), "{.status.model}"), old_model);
    kb.wait_ready();
    wait_until(
        "Event ModelRolloutReverted",
        Duration::from_secs(60),
        || {
            kb.event_reasons()
                .iter()
                .any(|r| r == "ModelRolloutReverted")
        },
    );
    let reasons = kb.event_reasons();
    assert!(
        reasons.iter().any(|r| r == "ModelRolloutStarted"),
        "{reasons:?}"
    );
    assert!(
        !reasons.iter().any(|r| r == "ModelRolloutFinished"),
        "{reasons:?}"
    );

    // The added pod, rolled back, cancels its job at start (every replica applies the
    // cancel); then it goes.
    wait_until(
        "the StatefulSet back to its replicas",
        Duration::from_secs(300),
        || {
            get(
                &format!("statefulset/{}-worker", kb.name),
                "{.spec.replicas}",
            ) == REPLICAS.to_string()
        },
    );
    kb.wait_added_claim_deleted();
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        wait_until(
            &format!("no running job on {worker}"),
            Duration::from_secs(120),
            || !kb.jobs(&worker).iter().any(|(_, state)| state == "running"),
        );
    }
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        assert!(kb.aliases(&worker).is_empty(), "{worker}: docs was swapped");
        let collections = kb.ok("GET", &format!("{worker}/v1/collections"), None);
        let names: Vec<&str> = collections
            .get("collections")
            .items()
            .iter()
            .filter_map(|c| c.get("name").str())
            .collect();
        assert_eq!(
            names,
            ["docs"],
            "{worker}: the target {job} was not dropped"
        );
        let collection = kb.collection(&worker);
        assert_eq!(collection.get("name").str(), Some("docs"));
        assert_eq!(collection.get("model_mismatch"), &Json::Bool(false));
        assert_ne!(
            collection.get("model").get("document_prefix").str(),
            Some("passage: ")
        );
        assert_eq!(
            collection.get("documents").number(),
            Some(count as f64),
            "{worker}"
        );
        assert_eq!(kb.document_ids(&worker), ingested, "{worker}");
    }
    // The old model still answers text queries.
    let query = r#"{"query":"seed document number 7","top_k":3}"#;
    let url = format!("{}/v1/collections/docs/query", kb.service());
    let answer = kb.ok("POST", &url, Some(query));
    assert_eq!(answer.get("hits").items().len(), 3, "{answer:?}");
    kb.cleanup();
}

#[test]
#[ignore = "needs a real cluster in KUBECONFIG"]
fn an_autoscaled_knowledgebase_changes_the_model_with_a_worker_the_autoscaler_adds() {
    install(&[]);
    let kb = Kb { name: "autoscaled" };
    kb.create_with(AUTOSCALED_SPEC);
    let seeded = kb.ingest("seed", 100, 12, 100);
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        wait_until(
            &format!("the 100 documents on {worker}"),
            Duration::from_secs(120),
            || kb.document_ids(&worker) == seeded,
        );
    }
    let old_model = get(&kb.resource(), "{.status.model}");
    kb.patch(NEW_PREFIXES);
    let workers = format!("statefulset/{}-worker", kb.name);
    let hpa = format!("hpa/{}-worker", kb.name);
    // (HPA min, HPA max, StatefulSet replicas, partition, base annotation) seen during
    // Reindexing.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    loop {
        let phase = get(&kb.resource(), "{.status.modelRollout.phase}");
        let model = get(&kb.resource(), "{.status.model}");
        if phase == "Reindexing" {
            let shape = [
                get(&hpa, "{.spec.minReplicas}"),
                get(&hpa, "{.spec.maxReplicas}"),
                get(&workers, "{.spec.replicas}"),
                get(&workers, "{.spec.updateStrategy.rollingUpdate.partition}"),
                get(
                    &workers,
                    r"{.metadata.annotations.knowledge\.dev/model-surge-base}",
                ),
            ];
            if seen.last() != Some(&shape) {
                seen.push(shape);
            }
        }
        if phase.is_empty() && model != old_model {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the model change did not finish in 20 minutes; shapes seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        seen.iter().any(|s| s == &["3", "3", "3", "2", "2"]),
        "never saw the autoscaler's bounds at 3 running 3 workers with 2 held: {seen:?}"
    );
    wait_until(
        "the autoscaler's bounds back to the spec's and two workers",
        Duration::from_secs(180),
        || {
            get(&hpa, "{.spec.minReplicas}") == "2"
                && get(&hpa, "{.spec.maxReplicas}") == "2"
                && get(&workers, "{.spec.replicas}") == REPLICAS.to_string()
                && get(&workers, "{.metadata.annotations}")
                    .find("model-surge")
                    .is_none()
        },
    );
    kb.wait_ready();
    for ordinal in 0..REPLICAS {
        let worker = kb.worker(ordinal);
        assert_eq!(kb.document_ids(&worker), seeded, "{worker}");
        let collection = kb.collection(&worker);
        assert_eq!(
            collection.get("model").get("document_prefix").str(),
            Some("passage: "),
            "{worker}"
        );
    }
    kb.cleanup();
}

/// The JSON reader, the documents' body and the client's log, without a cluster (runs with
/// a plain `cargo test`).
#[test]
fn the_readers_understand_the_worker_and_the_client() {
    let answer = Json::parse(
        r#"{"aliases":[{"alias":"docs","collection":"docs-1f0e7c2a"}],"next":null,
            "documents":12.0,"model":{"query_prefix":"query: ","e":"\u00e9\ud83d\ude00\"\\\n"},"ok":true,"l":[]}"#,
    );
    assert_eq!(
        answer.get("aliases").items()[0].get("collection").str(),
        Some("docs-1f0e7c2a")
    );
    assert_eq!(answer.get("next"), &Json::Null);
    assert_eq!(answer.get("absent"), &Json::Null);
    assert_eq!(answer.get("documents").number(), Some(12.0));
    assert_eq!(
        answer.get("model").get("query_prefix").str(),
        Some("query: ")
    );
    assert_eq!(answer.get("model").get("e").str(), Some("é😀\"\\\n"));
    assert_eq!(answer.get("ok"), &Json::Bool(true));
    assert!(answer.get("l").items().is_empty());

    let body = documents("doc", 0..2, 3);
    let parsed = Json::parse(&body);
    let docs = parsed.get("documents").items();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].get("id").str(), Some("doc-0001"));

    let log = "query q-1 200 1767225600\nwrite w-1 200 1767225600\n\
               query q-2 409 1767225601 {\"error\":{\"code\":\"model_mismatch\"}}\n\
               write w-2 000 1767225602 curl: (7) Failed to connect\nstopped after 2 rounds\n";
    let (requests, rounds, other) = parse_client_log(log);
    assert_eq!(rounds, Some(2));
    assert!(other.is_empty());
    assert_eq!(requests.len(), 4);
    assert_eq!(
        (requests[2].kind, requests[2].id, requests[2].status),
        ("query", "q-2", "409")
    );
    assert_eq!(requests[3].status, "000");
}
