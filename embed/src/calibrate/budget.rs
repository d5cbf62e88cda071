//! The bulk lane's batch budget on the CPU (`embedding.bulk_batch_tokens` unset), decided
//! by measurement like the precision and the executors: a bulk batch keeps its executor
//! until it ends, so the smaller the budget the sooner a query gets the executor back,
//! while too small a batch wastes the matrix units. One executor (its threads, the
//! precision chosen) embeds a batch of passages filling each candidate budget, and the
//! smallest budget whose tokens per second come within [`TOLERANCE`] of the best serves
//! (the budgets timed in interleaved passes, [`super::fastest_of_passes`]).
//! Logged, exported and cached in the data directory like the others.

use super::{cached_or_measured, embed_batches, fastest_of_passes, sample_batches, Calibration};
use crate::bert::BertEncoder;
use crate::model_config::BertConfig;
use crate::pooling::Pooling;
use crate::EmbedError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The cache file in the data directory.
pub const CACHE_FILE: &str = "cpu-bulk-budget.json";

/// The budgets tried, in tokens per batch. Not 256: two 128-token passages per batch
/// measured near the others in calibration, but real bulk batches of mixed lengths ran
/// 373-439 passages/s at 256 against 466-488 at 1024 (docs/benchmarks.md).
const CANDIDATES: [usize; 3] = [512, 1024, 2048];

/// A budget within this fraction of the best tokens per second counts as fast: the
/// smallest of those serves.
pub const TOLERANCE: f64 = 0.05;

/// One candidate budget, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetTrial {
    /// Tokens of one bulk batch.
    pub tokens: usize,
    /// Tokens per second of one executor embedding batches of that size.
    pub tokens_per_second: f64,
}

/// The budgets that hold a whole input (`max_seq_len`) and fit `max_batch_tokens`.
pub fn candidates(max_seq_len: usize, max_batch_tokens: usize) -> Vec<usize> {
    CANDIDATES
        .into_iter()
        .filter(|&t| t >= max_seq_len && t <= max_batch_tokens)
        .collect()
}

/// The smallest budget within [`TOLERANCE`] of the best rate; `None` when nothing was
/// measured.
pub fn choose(trials: &[BudgetTrial]) -> Option<usize> {
    let best = trials
        .iter()
        .map(|t| t.tokens_per_second)
        .fold(f64::NAN, f64::max);
    trials
        .iter()
        .filter(|t| t.tokens_per_second >= best * (1.0 - TOLERANCE))
        .map(|t| t.tokens)
        .min()
}

/// The chosen budget of a calibration.
pub fn tokens_of(calibration: &Calibration<BudgetTrial>) -> Option<usize> {
    calibration.chosen.parse().ok()
}

/// The bulk budget from the cache in `cache_dir`, else measured on one executor with
/// `threads` libtorch threads and the encoder in `weights` loaded in `kind` (then
/// cached); logged either way. `None` when no candidate fits.
#[allow(clippy::too_many_arguments)]
pub fn cached_or_measured_budget(
    weights: &Path,
    cfg: &BertConfig,
    pooling: Pooling,
    kind: tch::Kind,
    threads: i32,
    max_seq_len: usize,
    max_batch_tokens: usize,
    cache_dir: Option<&Path>,
) -> Result<Option<Calibration<BudgetTrial>>, EmbedError> {
    let tried = candidates(max_seq_len, max_batch_tokens);
    if tried.is_empty() {
        return Ok(None);
    }
    let precision = crate::device::kind_name(kind);
    let key = format!(
        "{}; threads {threads}; {precision}; budgets {tried:?}",
        super::base_key(cfg)
    );
    let (weights, cfg) = (weights.to_path_buf(), cfg.clone());
    let measured = cached_or_measured("embedder bulk budget", &key, CACHE_FILE, cache_dir, || {
        let key = key.clone();
        std::thread::spawn(move || -> Result<Calibration<BudgetTrial>, EmbedError> {
            // As an executor does (see `run_candidates`).
            let _ = tch::get_num_threads();
            tch::set_num_threads(threads);
            let _no_grad = tch::no_grad_guard();
            let encoder = BertEncoder::load(&weights, &cfg, tch::Device::Cpu, kind)?;
            // The calibration's 128-token passages, repeated to fill each budget.
            let passages = sample_batches(cfg.vocab_size, max_seq_len).swap_remove(0);
            let row = passages[0].len();
            let batches: Vec<[Vec<Vec<i64>>; 1]> = tried
                .iter()
                .map(|&tokens| {
                    [passages
                        .iter()
                        .cycle()
                        .take(tokens / row)
                        .cloned()
                        .collect()]
                })
                .collect();
            let timed =
                fastest_of_passes(&batches, |batch| embed_batches(&encoder, batch, pooling))?;
            let trials: Vec<BudgetTrial> = tried
                .iter()
                .zip(&batches)
                .zip(&timed)
                .map(|((&tokens, batch), (seconds, _))| BudgetTrial {
                    tokens,
                    tokens_per_second: (batch[0].len() * row) as f64 / seconds.max(1e-9),
                })
                .collect();
            let chosen = choose(&trials).map_or_else(String::new, |t| t.to_string());
            Ok(Calibration {
                key,
                chosen,
                trials,
                cached: false,
            })
        })
        .join()
        .map_err(|_| EmbedError::ModelLoad("the bulk budget calibration thread panicked".into()))?
    })?;
    Ok(Some(measured))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(tokens: usize, tokens_per_second: f64) -> BudgetTrial {
        BudgetTrial {
            tokens,
            tokens_per_second,
        }
    }

    #[test]
    fn budgets_hold_a_whole_input_and_fit_the_batch_limit() {
        assert_eq!(candidates(256, 16_384), [512, 1024, 2048]);
        assert_eq!(candidates(1024, 16_384), [1024, 2048]);
        assert_eq!(candidates(256, 1024), [512, 1024]);
        assert!(candidates(4096, 16_384).is_empty());
    }

    #[test]
    fn the_smallest_budget_near_the_best_rate_wins() {
        // Larger batches keep paying off: the largest.
        let growing = [
            trial(512, 7_000.0),
            trial(1024, 9_000.0),
            trial(2048, 12_000.0),
        ];
        assert_eq!(choose(&growing), Some(2048));
        // Flat (within 5%): 512, so queries wait the least behind ingestion.
        let flat = [
            trial(512, 9_700.0),
            trial(1024, 10_000.0),
            trial(2048, 9_900.0),
        ];
        assert_eq!(choose(&flat), Some(512));
        // 512 falls short: 1024.
        let knee = [
            trial(512, 8_000.0),
            trial(1024, 10_000.0),
            trial(2048, 10_200.0),
        ];
        assert_eq!(choose(&knee), Some(1024));
        assert_eq!(choose(&[]), None);
    }
}
