//! Benchmark: 1,000 KnowledgeBases reconciled from empty against the in-memory API server.
//! Prints one JSON line: time to converge, peak resident memory of the process (VmHWM, which
//! includes the in-memory API server's copy of every object and its managedFields), and
//! heap figures that separate the reconciler's own memory from that store.
//!
//! cargo test -p kb-operator --test bench -- --ignored --nocapture

mod common;

use common::{cluster, context, inventory_count, kb, reconcile_once, Writes};
use futures::StreamExt;
use kb_operator::crd::KnowledgeBase;
use kb_operator::reconcile::Context;
use kube::Api;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts live heap bytes so the reconciler's memory can be told apart from the store's.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1048576.0
}

/// Resets the heap high-water mark to the current live size; returns that size in MiB.
fn reset_peak() -> f64 {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    live_mib()
}

fn peak_mib() -> f64 {
    PEAK.load(Ordering::Relaxed) as f64 / 1048576.0
}

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
    let start = Instant::now();
    let mut passes = 0;
    while !pass(&ctx, &writes, &names).await {
        passes += 1;
        assert!(passes < 10, "no convergence after {passes} passes");
    }
    let elapsed = start.elapsed();
    let (peak_rss, store_heap) = (memory_mib("VmHWM"), live_mib());
    // The in-memory API server's store dominates the figures above. One more full pass
    // over the converged KnowledgeBases shows the reconciler's own transient memory, and
    // holding every KnowledgeBase shows what the controller's cache of them costs.
    let before_pass = reset_peak();
    assert!(
        pass(&ctx, &writes, &names).await,
        "converged KnowledgeBases must not be written"
    );
    let pass_heap = peak_mib() - before_pass;
    let before_cache = live_mib();
    let cached = api.list(&Default::default()).await.unwrap();
    let cache_heap = live_mib() - before_cache;
    drop(cached);
    let children = inventory_count(&client).await;
    println!(
        "{{\"bench\":\"reconcile_from_empty\",\"knowledge_bases\":{COUNT},\"children\":{children},\"passes\":{},\"seconds\":{:.2},\"peak_rss_mib\":{peak_rss:.1},\"heap_after_converge_mib\":{store_heap:.1},\"reconcile_pass_peak_heap_mib\":{pass_heap:.2},\"knowledge_base_cache_heap_mib\":{cache_heap:.2}}}",
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
