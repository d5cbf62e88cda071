//! Benchmark: 1,000 KnowledgeBases reconciled from empty against the in-memory API server.
//! Prints one JSON line with the time to converge and the peak resident memory (VmHWM,
//! which includes the in-memory API server's copy of every object).
//!
//! cargo test -p kb-operator --release --test bench -- --ignored --nocapture

mod common;

use common::{cluster, context, inventory_count, kb, reconcile_once, Writes};
use futures::StreamExt;
use kb_operator::crd::KnowledgeBase;
use kb_operator::reconcile::Context;
use kube::Api;
use std::sync::Arc;
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

/// A `/proc/self/status` memory field (`VmHWM`: peak resident, `VmRSS`: current) in MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
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
    let rss_before = memory_mib("VmRSS");
    let start = Instant::now();
    let mut passes = 0;
    while !pass(&ctx, &writes, &names).await {
        passes += 1;
        assert!(passes < 10, "no convergence after {passes} passes");
    }
    let elapsed = start.elapsed();
    let (peak, rss_after) = (memory_mib("VmHWM"), memory_mib("VmRSS"));
    // The store of the in-memory API server grows with every object written and dominates
    // the figures above. Reset the high-water mark and measure one more full pass over the
    // converged KnowledgeBases: its growth is the reconciler's own working memory.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let rss_steady = memory_mib("VmRSS");
    assert!(
        pass(&ctx, &writes, &names).await,
        "converged KnowledgeBases must not be written"
    );
    let working = memory_mib("VmHWM") - rss_steady;
    let children = inventory_count(&client).await;
    println!(
        "{{\"bench\":\"reconcile_from_empty\",\"knowledge_bases\":{COUNT},\"children\":{children},\"passes\":{},\"seconds\":{:.2},\"peak_rss_mib\":{peak:.1},\"rss_before_mib\":{rss_before:.1},\"rss_after_mib\":{rss_after:.1},\"reconcile_pass_working_set_mib\":{working:.1}}}",
        passes + 1,
        elapsed.as_secs_f64(),
    );
    assert_eq!(children, COUNT / 10 * 17 + COUNT / 10 * 9 * 8);
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

/// Reconciles every KnowledgeBase once, `CONCURRENCY` at a time; true when none failed and
/// nothing was written.
async fn pass(ctx: &Arc<Context>, writes: &Writes, names: &[String]) -> bool {
    writes.take();
    let failures = futures::stream::iter(names)
        .map(|name| reconcile_once(ctx, name))
        .buffer_unordered(CONCURRENCY)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    failures == 0 && writes.take() == 0
}
