//! Several executors on the CPU: they run batches side by side, each with its share of the
//! cores, and the rest of the process (CPU searches) starts its threads with that share.

mod common;

use common::cpu_embedder;
use kb_embed::Lane;

#[test]
fn cpu_executors_run_batches_side_by_side_on_their_share_of_the_cores() {
    let fresh_thread_count = || std::thread::spawn(tch::get_num_threads).join().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // fp32 and one bulk budget everywhere: `auto` measures each engine on its own (under
    // the other tests' load it may pick bf16 for one and fp32 for another), and this test
    // compares vectors across engines.
    let embedder = cpu_embedder(|cfg| {
        cfg.cpu_executors = Some(2);
        cfg.bulk_batch_tokens = Some(256);
        cfg.precision = kb_embed::Precision::Fp32;
    });
    let share = i32::try_from((cores / 2).max(1)).unwrap();
    assert_eq!(
        fresh_thread_count(),
        share,
        "a thread started after the engine (a CPU search) gets the executors' share"
    );
    let texts: Vec<String> = (0..64)
        .map(|i| format!("Passage {i} about write-ahead logs, snapshots and replicas."))
        .collect();
    let out = embedder.embed_blocking(Lane::Bulk, texts.clone()).unwrap();
    assert_eq!(out.vectors.len(), 64);
    let stats = embedder.stats();
    let names: Vec<&str> = stats.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["cpu#0", "cpu#1"]);
    assert!(
        stats.devices.iter().all(|d| d.batches > 0),
        "both executors took bulk batches: {:?}",
        stats.devices
    );
    assert_eq!(embedder.devices(), ["cpu"], "one device, two executors");
    // Same vectors as a single executor computes.
    // `cpu_cores` stands in for the CPUs the process sees (the operator sets it from the
    // pod's CPU limit or request): one core, one executor.
    let one_core = cpu_embedder(|cfg| cfg.cpu_cores = Some(1));
    assert_eq!(one_core.stats().devices.len(), 1);
    assert_eq!(fresh_thread_count(), 1);
    drop(one_core);
    let single = cpu_embedder(|cfg| {
        cfg.cpu_executors = Some(1);
        cfg.bulk_batch_tokens = Some(256);
        cfg.precision = kb_embed::Precision::Fp32;
    });
    assert_eq!(fresh_thread_count(), i32::try_from(cores).unwrap());
    let reference = single.embed_blocking(Lane::Bulk, texts).unwrap();
    for (a, b) in out.vectors.iter().zip(&reference.vectors) {
        assert!(common::cosine(a, b) > 0.99999);
    }
}
