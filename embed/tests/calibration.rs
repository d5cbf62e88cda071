//! `precision: auto` on the CPU is measured on the real model, and the measurement is
//! cached for the next start.

mod common;

use common::model_dir;
use kb_embed::{Embedder, EmbeddingConfig, Lane, Precision};

#[test]
fn auto_precision_on_the_cpu_is_measured_once_and_then_read_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Auto,
        ..Default::default()
    };
    let first = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    let measured = first
        .calibration()
        .expect("auto on a CPU is calibrated")
        .clone();
    assert!(!measured.cached);
    let names: Vec<&str> = measured
        .trials
        .iter()
        .map(|t| t.precision.as_str())
        .collect();
    assert_eq!(names, ["fp32", "bf16"]);
    assert!(measured.trials.iter().all(|t| t.seconds > 0.0));
    // The real model in bf16 stays within the accuracy bound of fp32.
    assert!(
        measured.trials[1].min_cosine > 0.99,
        "{:?}",
        measured.trials
    );
    assert_eq!(
        first.precision(),
        measured.chosen,
        "the engine runs what was chosen"
    );
    let out = first
        .embed_blocking(Lane::Interactive, vec!["calibrated".into()])
        .unwrap();
    assert_eq!(out.vectors[0].len(), 384);
    drop(first);

    let second = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    let cached = second.calibration().unwrap();
    assert!(cached.cached, "the second start reads the cache");
    assert_eq!(cached.trials, measured.trials);
    assert_eq!(second.precision(), measured.chosen);

    // An explicit precision is not calibrated.
    let fixed = EmbeddingConfig {
        precision: Precision::Fp32,
        ..cfg
    };
    let explicit = Embedder::load_calibrated(&model_dir(), &fixed, Some(cache.path())).unwrap();
    assert!(explicit.calibration().is_none());
    assert_eq!(explicit.precision(), "fp32");
}

/// The executors of the layout `name` (`2x1`: two executors of one thread).
fn executors_in(name: &str) -> usize {
    name.split_once('x').unwrap().0.parse().unwrap()
}

#[test]
fn the_split_of_the_cores_into_executors_is_measured_cached_and_run() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Fp32,
        cpu_cores: Some(2),
        ..Default::default()
    };
    let first = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    let measured = first
        .layout_calibration()
        .expect("cpu_executors unset: the layout is measured")
        .clone();
    assert!(!measured.cached);
    let names: Vec<String> = measured.trials.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["1x2", "2x1"]);
    assert!(measured.trials.iter().all(|t| t.texts_per_second > 0.0));
    assert_eq!(
        first.stats().devices.len(),
        executors_in(&measured.chosen),
        "the engine runs the layout chosen"
    );
    let out = first
        .embed_blocking(Lane::Bulk, vec!["split".into(), "cores".into()])
        .unwrap();
    assert_eq!(out.vectors.len(), 2);
    drop(first);

    // The next start reads the cache, and runs what it says: the other layout here.
    let file = cache.path().join("cpu-layout.json");
    let mut cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let other = if measured.chosen == "1x2" {
        "2x1"
    } else {
        "1x2"
    };
    cached["chosen"] = other.into();
    std::fs::write(&file, cached.to_string()).unwrap();
    let second = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    let read = second.layout_calibration().unwrap();
    assert!(read.cached, "the second start reads the cache");
    assert_eq!(read.trials, measured.trials);
    assert_eq!(second.stats().devices.len(), executors_in(other));
    drop(second);

    // An explicit executor count is not measured; one core leaves nothing to choose.
    let explicit = EmbeddingConfig {
        cpu_executors: Some(2),
        ..cfg.clone()
    };
    let fixed = Embedder::load_calibrated(&model_dir(), &explicit, Some(cache.path())).unwrap();
    assert!(fixed.layout_calibration().is_none());
    assert_eq!(fixed.stats().devices.len(), 2);
    let one_core = EmbeddingConfig {
        cpu_cores: Some(1),
        ..cfg
    };
    let single = Embedder::load(&model_dir(), &one_core).unwrap();
    assert!(single.layout_calibration().is_none());
    assert_eq!(single.stats().devices.len(), 1);
}

#[test]
fn the_bulk_batch_budget_is_measured_cached_and_run() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = EmbeddingConfig {
        device: "cpu".into(),
        precision: Precision::Fp32,
        cpu_executors: Some(1),
        ..Default::default()
    };
    let first = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    let measured = first
        .bulk_budget_calibration()
        .expect("bulk_batch_tokens unset: the budget is measured")
        .clone();
    assert!(!measured.cached);
    let tried: Vec<usize> = measured.trials.iter().map(|t| t.tokens).collect();
    assert_eq!(tried, [512, 1024, 2048]);
    assert!(measured.trials.iter().all(|t| t.tokens_per_second > 0.0));
    assert_eq!(
        first.bulk_batch_tokens().to_string(),
        measured.chosen,
        "the bulk lane runs the budget chosen"
    );
    drop(first);

    // The next start reads the cache, and runs what it says.
    let file = cache.path().join("cpu-bulk-budget.json");
    let mut cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let other = if measured.chosen == "512" {
        "1024"
    } else {
        "512"
    };
    cached["chosen"] = other.into();
    std::fs::write(&file, cached.to_string()).unwrap();
    let second = Embedder::load_calibrated(&model_dir(), &cfg, Some(cache.path())).unwrap();
    assert!(second.bulk_budget_calibration().unwrap().cached);
    assert_eq!(second.bulk_batch_tokens().to_string(), other);
    let out = second
        .embed_blocking(Lane::Bulk, vec!["budget".into(); 40])
        .unwrap();
    assert_eq!(out.vectors.len(), 40);
    drop(second);

    // An explicit budget is not measured.
    let explicit = EmbeddingConfig {
        bulk_batch_tokens: Some(768),
        ..cfg
    };
    let fixed = Embedder::load_calibrated(&model_dir(), &explicit, Some(cache.path())).unwrap();
    assert!(fixed.bulk_budget_calibration().is_none());
    assert_eq!(fixed.bulk_batch_tokens(), 768);
}
