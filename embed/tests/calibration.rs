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
