//! Benchmark: 1,000 KnowledgeBases reconciled from empty against the in-memory API server.
//! Prints one JSON line with the time to converge and the peak resident memory (VmHWM,
//! which includes the in-memory API server's copy of every object).
//!
//! cargo test -p kb-operator --release --test bench -- --ignored --nocapture

mod common;

use common::{cluster, context, inventory_count, kb, reconcile_once};
use futures::StreamExt;
use kb_operator::crd::KnowledgeBase;
use kube::Api;
use std::time::{Duration, Instant};

const COUNT: usize = 1_000;
/// Reconciles in flight at once, like the controller's default concurrency.
const CONCURRENCY: usize = 16;

fn spec(i: usize) -> &'static str {
    // One in ten is a replicated fleet with managed Redis, autoscaling and backups.
    match i % 10 {
        0 => "embedding:\n  device: cpu\nredis:\n  managed: {}\nautoscaling:\n  maxReplicas: 4\nbackup:\n  schedule: '@daily'\n  destination:\n    pvc:\n      claimName: backups\n",
        _ => "embedding:\n  device: cpu\n",
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn reconcile_a_thousand_knowledge_bases_from_empty() {
    let (client, writes) = cluster(None).await;
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let names: Vec<String> = (0..COUNT).map(|i| format!("kb-{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        api.create(&Default::default(), &kb(name, spec(i)))
            .await
            .unwrap();
    }
    let ctx = context(client.clone());
    let start = Instant::now();
    let mut passes = 0;
    loop {
        passes += 1;
        writes.take();
        let failures = futures::stream::iter(&names)
            .map(|name| reconcile_once(&ctx, name))
            .buffer_unordered(CONCURRENCY)
            .filter(|r| futures::future::ready(r.is_err()))
            .count()
            .await;
        if failures == 0 && writes.take() == 0 {
            break;
        }
        assert!(passes < 10, "no convergence after {passes} passes");
    }
    let elapsed = start.elapsed();
    let children = inventory_count(&client).await;
    println!(
        "{{\"bench\":\"reconcile_from_empty\",\"knowledge_bases\":{COUNT},\"children\":{children},\"passes\":{passes},\"seconds\":{:.2},\"peak_rss_mib\":{:.1}}}",
        elapsed.as_secs_f64(),
        peak_rss_kib() as f64 / 1024.0
    );
    assert_eq!(children, COUNT / 10 * 17 + COUNT / 10 * 9 * 8);
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}
