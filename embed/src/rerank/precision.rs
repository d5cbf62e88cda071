//! `precision: auto` of the reranker on a CPU, measured as the embedder's is
//! ([`crate::calibrate`]): fp32 and bf16 forward passes timed on a representative batch of
//! (query, passage) pairs, every candidate's logits checked against fp32's, the fastest
//! accurate one chosen, the result cached in the data directory (its own file, keyed by
//! the reranker model as well as the CPU, libtorch and the executor's threads).

use super::scorer::Scorer;
use super::Pair;
use crate::calibrate::{self, Calibration, Candidate};
use crate::model_config::BertConfig;
use crate::EmbedError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Device;

/// A candidate's logits may differ from fp32's by at most this much (a sigmoid score then
/// by at most a quarter of it), and it must order the batch as fp32 does but for pairs
/// fp32 sets within this much of each other.
pub const MAX_LOGIT_ERROR: f32 = 0.1;

/// The reranker's cache file in the data directory.
pub const CACHE_FILE: &str = "cpu-calibration-reranker.json";

/// One candidate precision of the reranker, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankTrial {
    /// `fp32` or `bf16`.
    pub precision: String,
    /// Median seconds of the calibration batch (16 pairs of a 16-token query and a
    /// 128-token passage).
    pub seconds: f64,
    /// Largest absolute difference of its logits from fp32's.
    pub max_logit_error: f32,
    /// Pairs of the batch it orders otherwise than fp32 does, among those fp32's logits
    /// set more than [`MAX_LOGIT_ERROR`] apart.
    pub swapped: usize,
}

impl Candidate for RerankTrial {
    fn precision(&self) -> &str {
        &self.precision
    }

    fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Within [`MAX_LOGIT_ERROR`] of fp32, in fp32's order.
    fn accurate(&self) -> bool {
        self.max_logit_error <= MAX_LOGIT_ERROR && self.swapped == 0
    }
}

/// The calibration of a reranker on `threads` libtorch threads: cached in `cache_dir`
/// for this model (`name`), CPU, libtorch and thread count, else measured (and cached).
pub(super) fn calibrate_cpu(
    name: &str,
    weights: &Path,
    cfg: &BertConfig,
    threads: i32,
    max_seq_len: usize,
    cache_dir: Option<&Path>,
) -> Result<Calibration<RerankTrial>, EmbedError> {
    let key = format!("reranker {name}; {}", calibrate::key(cfg, threads));
    calibrate::cached_or_measured("reranker", &key, CACHE_FILE, cache_dir, || {
        measure(
            key.clone(),
            weights.to_path_buf(),
            cfg.clone(),
            threads,
            max_seq_len,
        )
    })
}

fn measure(
    key: String,
    weights: PathBuf,
    cfg: BertConfig,
    threads: i32,
    max_seq_len: usize,
) -> Result<Calibration<RerankTrial>, EmbedError> {
    let pairs = sample_pairs(cfg.vocab_size, max_seq_len);
    calibrate::run_candidates(
        key,
        threads,
        move |kind| Scorer::load(&weights, &cfg, Device::Cpu, kind, None),
        move |scorer| {
            let rows: Vec<&Pair> = pairs.iter().collect();
            scorer
                .logits(&rows)
                .map_err(|e| EmbedError::Inference(e.to_string()))
        },
        |precision, seconds, fp32, logits| {
            let fp32 = fp32.unwrap_or(logits);
            Ok(RerankTrial {
                precision: precision.into(),
                seconds,
                max_logit_error: fp32
                    .iter()
                    .zip(logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max),
                swapped: swapped(fp32, logits, MAX_LOGIT_ERROR),
            })
        },
    )
}

/// Pairs `(i, j)` that `got` orders otherwise than `want`, among those `want` sets more
/// than `tie` apart.
fn swapped(want: &[f32], got: &[f32], tie: f32) -> usize {
    let mut count = 0;
    for i in 0..want.len() {
        for j in 0..want.len() {
            if want[i] - want[j] > tie && got[i] <= got[j] {
                count += 1;
            }
        }
    }
    count
}

/// 16 pairs of a 16-token query and a 128-token passage (cut to `max_seq_len`), token ids
/// spread over the vocabulary (deterministic), as `[CLS] q [SEP] p [SEP]` with token types.
fn sample_pairs(vocab: i64, max_seq_len: usize) -> Vec<Pair> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Ordinary word pieces: past the special and unused ids at the start.
        1_000 + (state % (vocab.max(1_001) as u64 - 1_000)) as i64
    };
    let (query, passage) = (16, 128);
    (0..16)
        .map(|_| {
            let total = (query + passage + 3).min(max_seq_len.max(4));
            let first = query.min(total / 2);
            let second = total - 3 - first;
            let mut ids = vec![101];
            ids.extend((0..first).map(|_| next()));
            ids.push(102);
            ids.extend((0..second).map(|_| next()));
            ids.push(102);
            // Any id stays inside a small test vocabulary.
            ids.iter_mut().for_each(|id| *id %= vocab.max(1));
            let mut types = vec![0; first + 2];
            types.resize(ids.len(), 1);
            Pair {
                ids,
                types,
                truncated: false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(precision: &str, seconds: f64, error: f32, swapped: usize) -> RerankTrial {
        RerankTrial {
            precision: precision.into(),
            seconds,
            max_logit_error: error,
            swapped,
        }
    }

    #[test]
    fn the_fastest_precision_that_keeps_logits_and_ranking_wins() {
        let fp32 = trial("fp32", 0.200, 0.0, 0);
        assert_eq!(
            calibrate::choose(&[fp32.clone(), trial("bf16", 0.080, 0.03, 0)]),
            "bf16"
        );
        // Slower: fp32.
        assert_eq!(
            calibrate::choose(&[fp32.clone(), trial("bf16", 0.300, 0.03, 0)]),
            "fp32"
        );
        // Faster but its logits drift, or it reorders the batch: fp32.
        assert_eq!(
            calibrate::choose(&[fp32.clone(), trial("bf16", 0.080, 0.5, 0)]),
            "fp32"
        );
        assert_eq!(
            calibrate::choose(&[fp32, trial("bf16", 0.080, 0.05, 1)]),
            "fp32"
        );
    }

    #[test]
    fn swaps_count_only_pairs_set_clearly_apart() {
        let want = [3.0, 1.0, 0.95, -2.0];
        assert_eq!(swapped(&want, &want, 0.1), 0);
        // 1.0 and 0.95 are a tie at 0.1; swapping them is no error.
        assert_eq!(swapped(&want, &[3.0, 0.95, 1.0, -2.0], 0.1), 0);
        assert_eq!(swapped(&want, &[0.9, 1.0, 0.95, -2.0], 0.1), 2);
    }

    #[test]
    fn sample_pairs_are_query_and_passage_within_the_model_length() {
        let pairs = sample_pairs(30_522, 512);
        assert_eq!(pairs.len(), 16);
        let pair = &pairs[0];
        assert_eq!(pair.ids.len(), 16 + 128 + 3);
        assert_eq!((pair.ids[0], pair.ids[17], pair.ids[146]), (101, 102, 102));
        assert_eq!(pair.types.iter().filter(|&&t| t == 0).count(), 18);
        assert!(sample_pairs(30_522, 64).iter().all(|p| p.ids.len() == 64));
        assert!(sample_pairs(100, 512)
            .iter()
            .all(|p| p.ids.iter().all(|&id| (0..100).contains(&id))));
    }
}
