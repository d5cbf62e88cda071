//! The embedding engine of `kb-worker`.
//!
//! Loads a sentence-transformers model directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`),
//! runs its BERT encoder (any width and depth) on libtorch (CPU or one replica per CUDA
//! device), and pools (CLS, mean, max or mean/sqrt(length)) and L2-normalises when the
//! model has a `Normalize` module, exactly as sentence-transformers does. Queries and
//! documents can get the prefixes the model was trained with ([`TextKind`]). Concurrent
//! requests share batches through a dynamic batcher with two bounded lanes, interactive
//! ahead of bulk:
//!
//! ```no_run
//! use kb_embed::{Embedder, EmbeddingConfig, Lane};
//! let cfg = EmbeddingConfig { device: "cpu".into(), ..Default::default() };
//! let embedder = Embedder::load(std::path::Path::new("model"), &cfg)?;
//! let out = embedder.embed_blocking(Lane::Interactive, vec!["hello".into()])?;
//! assert_eq!(out.vectors[0].len(), embedder.dim());
//! # Ok::<(), kb_embed::EmbedError>(())
//! ```
// Unsafe code only in `cuda_alloc` and `onednn` (C calls into the shims in csrc/).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod batcher;
mod bert;
mod calibrate;
#[allow(unsafe_code)]
pub mod cuda_alloc;
mod device;
mod engine;
mod error;
mod executor;
mod model_config;
mod modules;
#[allow(unsafe_code)]
mod onednn;
mod packing;
mod pooling;
mod prefix;
mod request;
mod rerank;
mod stats;
mod tokenize;

pub use batcher::Lane;
pub use calibrate::budget::BudgetTrial;
pub use calibrate::layout::LayoutTrial;

/// The files in the data directory where [`Embedder::load_calibrated`] caches what it
/// measured on the CPU (the precision, the executors' layout, the bulk batch budget).
pub const CALIBRATION_FILES: [&str; 3] = [
    calibrate::CACHE_FILE,
    calibrate::layout::CACHE_FILE,
    calibrate::budget::CACHE_FILE,
];
pub use calibrate::{Calibration, Trial};
pub use device::cpu_has_native_bf16;
pub use engine::Embedder;
pub use error::EmbedError;
pub use kb_config::{EmbeddingConfig, Precision};
pub use pooling::Pooling;
pub use prefix::TextKind;
pub use request::Embedded;
pub use rerank::{Activation, RerankTrial, Reranker, Scored};
pub use stats::{DeviceStats, EngineStats, LaneStats};
