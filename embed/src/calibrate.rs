//! `precision: auto` on a CPU, decided by measurement: a CPU flag says whether bf16 dot
//! products exist, not whether libtorch's bf16 matrix products beat its fp32 ones on that
//! CPU (on a 2-core Xeon with AVX512-BF16 but no AMX, bf16 embedded 95 passages/s and
//! fp32 133; with AMX bf16 is 1.6x fp32). So at start the engine times one executor's
//! forward passes in each candidate precision on representative batches (passages of
//! 128 tokens and queries of 16), checks every candidate's vectors against fp32's, and
//! runs the fastest one within [`MIN_COSINE`] of fp32. The result is logged, exported
//! as metrics, and cached in the data directory keyed by the CPU, libtorch, the model and
//! the executor's threads, so later starts skip the measurement. An explicit `precision`
//! (`fp32`, `bf16`) overrides it. The reranker measures its own precision with the same
//! timing and choice ([`run_candidates`], [`choose`]; see `rerank/precision.rs`). Each
//! calibration times its candidates in interleaved passes ([`fastest_of_passes`]).

pub mod budget;
pub mod layout;

use crate::bert::BertEncoder;
use crate::model_config::BertConfig;
use crate::packing::PackedBatch;
use crate::pooling::{l2_normalize, pool, Pooling};
use crate::EmbedError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A candidate's worst cosine to fp32's vector of the same text must reach this.
pub const MIN_COSINE: f32 = 0.999;

/// The libtorch this build links: torch-sys 0.24 refuses to build against any other.
const LIBTORCH: &str = "2.11";

/// The revision of the encoder's CPU arithmetic: raise it when a change makes a candidate
/// faster or slower (2: bf16 linear layers packed for oneDNN; 3: fp32 ones too where that
/// measures faster), so a worker upgraded over a cache measures again instead of keeping a
/// choice made against the old code.
const CPU_ENGINE_REVISION: u32 = 3;

/// Environment variables that cap the instruction sets oneDNN uses: a capped run measures
/// another CPU, so its calibration must not be read uncapped (or the other way round).
const ONEDNN_CAPS: [&str; 2] = ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"];

/// Timed passes over the candidates of a calibration ([`fastest_of_passes`]).
pub const PASSES: usize = 3;

/// One candidate precision of the embedder, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// `fp32` or `bf16`.
    pub precision: String,
    /// Median seconds of one passage batch plus one query batch.
    pub seconds: f64,
    /// Worst cosine between its vectors and fp32's.
    pub min_cosine: f32,
}

/// A measured candidate precision, as [`choose`] weighs it: the embedder's [`Trial`] and
/// the reranker's [`crate::RerankTrial`].
pub trait Candidate {
    /// `fp32` or `bf16`.
    fn precision(&self) -> &str;
    /// Median seconds of the calibration batches.
    fn seconds(&self) -> f64;
    /// Whether its outputs stay close enough to fp32's to be served.
    fn accurate(&self) -> bool;
}

impl Candidate for Trial {
    fn precision(&self) -> &str {
        &self.precision
    }

    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn accurate(&self) -> bool {
        self.min_cosine >= MIN_COSINE
    }
}

/// What the measurement chose, and from what (`T`: the embedder's [`Trial`] or the
/// reranker's [`crate::RerankTrial`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration<T = Trial> {
    /// What it was measured for (CPU, libtorch, model, threads); a cache of another key
    /// is measured again.
    pub key: String,
    /// The precision chosen.
    pub chosen: String,
    /// Every candidate.
    pub trials: Vec<T>,
    /// Read from the cache rather than measured at this start.
    #[serde(skip)]
    pub cached: bool,
}

impl<T> Calibration<T> {
    /// The chosen precision as a tensor kind.
    pub fn kind(&self) -> Kind {
        kind_of(&self.chosen)
    }
}

fn kind_of(name: &str) -> Kind {
    match name {
        "bf16" => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// The candidates, in the order they are measured (fp32 first: the reference).
const CANDIDATES: [(&str, Kind); 2] = [("fp32", Kind::Float), ("bf16", Kind::BFloat16)];

/// The fastest accurate trial ([`Candidate::accurate`]; fp32 always is); fp32 when none
/// qualifies (or nothing was measured).
pub fn choose<T: Candidate>(trials: &[T]) -> String {
    trials
        .iter()
        .filter(|t| t.precision() == "fp32" || t.accurate())
        .min_by(|a, b| a.seconds().total_cmp(&b.seconds()))
        .map_or_else(|| "fp32".to_string(), |t| t.precision().to_string())
}

/// The cache key: the CPU's model name and the flags that decide bf16 speed, libtorch,
/// the model's shape and the executor's threads.
pub fn key(cfg: &BertConfig, threads: i32) -> String {
    format!("{}; threads {threads}", base_key(cfg))
}

/// The CPU's model name and the flags that decide bf16 speed, a cap on oneDNN's
/// instruction sets, libtorch, the encoder's CPU revision and the model's shape: what
/// every CPU calibration is keyed by.
fn base_key(cfg: &BertConfig) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let caps: Vec<(&str, String)> = ONEDNN_CAPS
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (*name, v)))
        .collect();
    key_of(&info, &caps, cfg)
}

/// [`base_key`] from `/proc/cpuinfo`'s text and the oneDNN caps set (name, value).
fn key_of(info: &str, caps: &[(&str, String)], cfg: &BertConfig) -> String {
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map_or("", |(_, v)| v.trim())
            .to_string()
    };
    let flags = field("flags");
    let relevant: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| f.contains("bf16") || f.starts_with("amx") || *f == "avx512f" || *f == "avx2")
        .collect();
    let capped: String = caps
        .iter()
        .map(|(name, value)| format!(" {name}={value}"))
        .collect();
    format!(
        "cpu={} [{}]{capped}; libtorch {LIBTORCH}; engine {CPU_ENGINE_REVISION}; bert {}x{}x{}",
        field("model name"),
        relevant.join(" "),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads
    )
}

/// The cached calibration in `dir`'s `file` for `key`, if any.
pub fn cached<T: DeserializeOwned>(dir: &Path, file: &str, key: &str) -> Option<Calibration<T>> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    let mut calibration: Calibration<T> = serde_json::from_str(&text).ok()?;
    (calibration.key == key).then(|| {
        calibration.cached = true;
        calibration
    })
}

/// Writes `calibration` to `dir`'s `file` (atomically: a temporary file renamed).
pub fn store<T: Serialize>(
    dir: &Path,
    file: &str,
    calibration: &Calibration<T>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(calibration)?)?;
    std::fs::rename(tmp, dir.join(file))
}

/// The embedder's cache file in the data directory.
pub const CACHE_FILE: &str = "cpu-calibration.json";

/// The calibration of `key` from `cache_dir` when cached there, else `measure`d (then
/// cached); logged either way. `what` names the engine in the logs.
pub fn cached_or_measured<T>(
    what: &str,
    key: &str,
    file: &str,
    cache_dir: Option<&Path>,
    measure: impl FnOnce() -> Result<Calibration<T>, EmbedError>,
) -> Result<Calibration<T>, EmbedError>
where
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    if let Some(found) = cache_dir.and_then(|dir| cached::<T>(dir, file, key)) {
        tracing::info!(engine = what, chosen = %found.chosen, trials = ?found.trials, "CPU setting from the cached calibration");
        return Ok(found);
    }
    let started = Instant::now();
    let measured = measure()?;
    tracing::info!(engine = what, chosen = %measured.chosen, trials = ?measured.trials, took_ms = started.elapsed().as_millis() as u64, %key, "CPU setting measured");
    if let Some(dir) = cache_dir {
        if let Err(e) = store(dir, file, &measured) {
            tracing::warn!(engine = what, error = %e, "could not cache the CPU calibration; it runs again at the next start");
        }
    }
    Ok(measured)
}

/// The embedder's CPU precision of `precision: auto`: cached for this CPU, libtorch,
/// model and thread count in `cache_dir`, else measured (and cached). Logged either way.
pub(crate) fn embedder(
    weights: &Path,
    model: &crate::model_config::ModelSpec,
    threads: i32,
    max_seq_len: usize,
    cache_dir: Option<&Path>,
) -> Result<Calibration, EmbedError> {
    let key = key(&model.bert, threads);
    cached_or_measured("embedder", &key, CACHE_FILE, cache_dir, || {
        measure(
            weights,
            &model.bert,
            model.head.pooling,
            threads,
            max_seq_len,
        )
    })
}

/// Measures every candidate precision on a thread of its own with `threads` libtorch
/// threads, as an executor runs: `load(kind)` loads the model in `kind` (every candidate
/// at once) and `run(model)` runs its calibration batches, timed in [`fastest_of_passes`];
/// `judge(precision, seconds, fp32's outputs, these outputs)` makes the trial (fp32's own
/// is judged against nothing). The choice is [`choose`]'s.
pub fn run_candidates<M, O, T>(
    key: String,
    threads: i32,
    load: impl Fn(Kind) -> Result<M, EmbedError> + Send + 'static,
    run: impl Fn(&M) -> Result<O, EmbedError> + Send + 'static,
    judge: impl Fn(&str, f64, Option<&O>, &O) -> Result<T, EmbedError> + Send + 'static,
) -> Result<Calibration<T>, EmbedError>
where
    T: Candidate + Send + 'static,
{
    let trials = std::thread::spawn(move || -> Result<Vec<T>, EmbedError> {
        // As an executor does: libtorch sets a thread's OpenMP count on its first
        // parallel op from the process-wide value; take that step first.
        let _ = tch::get_num_threads();
        tch::set_num_threads(threads);
        let _no_grad = tch::no_grad_guard();
        let models = CANDIDATES
            .iter()
            .map(|(_, kind)| load(*kind))
            .collect::<Result<Vec<M>, EmbedError>>()?;
        let timed = fastest_of_passes(&models, &run)?;
        let mut trials = Vec::new();
        let reference = timed.first().map(|(_, outputs)| outputs);
        for ((name, _), (seconds, outputs)) in CANDIDATES.iter().zip(&timed) {
            let against = reference.filter(|_| *name != "fp32");
            trials.push(judge(name, *seconds, against, outputs)?);
        }
        Ok(trials)
    })
    .join()
    .map_err(|_| EmbedError::ModelLoad("the precision calibration thread panicked".into()))??;
    Ok(Calibration {
        key,
        chosen: choose(&trials),
        trials,
        cached: false,
    })
}

/// Measures fp32 and bf16 forward passes of the encoder in `weights` on the CPU with
/// `threads` libtorch threads (on a thread of its own, as an executor runs), pooled as
/// the model pools; the vectors are compared normalised (by their cosine) either way.
pub fn measure(
    weights: &Path,
    cfg: &BertConfig,
    pooling: Pooling,
    threads: i32,
    max_seq_len: usize,
) -> Result<Calibration, EmbedError> {
    let (weights, cfg2) = (weights.to_path_buf(), cfg.clone());
    let batches = sample_batches(cfg.vocab_size, max_seq_len);
    run_candidates(
        key(cfg, threads),
        threads,
        move |kind| BertEncoder::load(&weights, &cfg2, Device::Cpu, kind),
        move |encoder| embed_batches(encoder, &batches, pooling),
        |precision, seconds, fp32, vectors| {
            Ok(Trial {
                precision: precision.into(),
                seconds,
                min_cosine: fp32.map_or(Ok(1.0), |fp32| worst_cosine(fp32, vectors))?,
            })
        },
    )
}

/// A passage batch (8 x 128 tokens) and a query batch (16 x 16), of token ids spread
/// over the vocabulary (deterministic), wrapped in [CLS] ... [SEP] as real inputs are.
fn sample_batches(vocab: i64, max_seq_len: usize) -> Vec<Vec<Vec<i64>>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Ordinary word pieces: past the special and unused ids at the start.
        1_000 + (state % (vocab.max(1_001) as u64 - 1_000)) as i64
    };
    let vocab = vocab.max(1);
    let mut row = |len: usize| {
        let len = len.min(max_seq_len).max(3);
        let mut ids = vec![101];
        ids.extend((0..len - 2).map(|_| next()));
        ids.push(102);
        // Any id stays inside a small test vocabulary.
        ids.iter_mut().for_each(|id| *id %= vocab);
        ids
    };
    vec![
        (0..8).map(|_| row(128)).collect(),
        (0..16).map(|_| row(16)).collect(),
    ]
}

/// The vectors of `batches`, normalised.
fn embed_batches(
    encoder: &BertEncoder,
    batches: &[Vec<Vec<i64>>],
    pooling: Pooling,
) -> Result<Vec<Tensor>, EmbedError> {
    batches
        .iter()
        .map(|rows| {
            let ids: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
            let batch = PackedBatch::new(&ids, Device::Cpu)?;
            let hidden = encoder.forward(&batch)?;
            Ok(l2_normalize(&pool(&hidden, &batch, pooling)?)?)
        })
        .collect()
}

/// For each of `candidates`, the seconds of its fastest run of `run` over [`PASSES`]
/// passes that run every candidate in turn (after one warm-up run of each), and its last
/// output. On a shared host the same setting measured 114 to 249 texts/s from one start
/// to the next (a 2-vCPU AMD EPYC VM); measured one after the other, a slow moment
/// during one candidate's runs decides the choice, while interleaved passes put it on
/// one pass of one candidate, and the fastest pass is what the hardware can do.
pub fn fastest_of_passes<C, O>(
    candidates: &[C],
    run: impl Fn(&C) -> Result<O, EmbedError>,
) -> Result<Vec<(f64, O)>, EmbedError> {
    let mut timed = candidates
        .iter()
        .map(|c| Ok((f64::INFINITY, run(c)?)))
        .collect::<Result<Vec<(f64, O)>, EmbedError>>()?;
    for _ in 0..PASSES {
        for (candidate, (fastest, output)) in candidates.iter().zip(&mut timed) {
            let start = Instant::now();
            *output = run(candidate)?;
            *fastest = fastest.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(timed)
}

/// The smallest row-wise dot product of unit vectors `a` and `b` (their cosine).
fn worst_cosine(a: &[Tensor], b: &[Tensor]) -> Result<f32, EmbedError> {
    let mut worst = 1.0f32;
    for (x, y) in a.iter().zip(b) {
        let cos = x
            .f_mul(y)?
            .f_sum_dim_intlist(1, false, Kind::Float)?
            .f_min()?;
        worst = worst.min(cos.double_value(&[]) as f32);
    }
    Ok(worst)
}

/// The shape of the bundled MiniLM, for the calibration tests' cache keys.
#[cfg(test)]
fn minilm_config() -> BertConfig {
    serde_json::from_str(
        r#"{"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
            "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512}"#,
    )
    .expect("a valid BERT config")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(precision: &str, seconds: f64, min_cosine: f32) -> Trial {
        Trial {
            precision: precision.into(),
            seconds,
            min_cosine,
        }
    }

    #[test]
    fn the_fastest_accurate_precision_wins_whatever_the_cpu_flags_say() {
        // A Xeon with AVX512-BF16 but no AMX: fp32 is faster.
        assert_eq!(
            choose(&[trial("fp32", 0.100, 1.0), trial("bf16", 0.140, 0.9999)]),
            "fp32"
        );
        // With AMX: bf16 is faster and accurate.
        assert_eq!(
            choose(&[trial("fp32", 0.100, 1.0), trial("bf16", 0.060, 0.9999)]),
            "bf16"
        );
        // Faster but not accurate enough: fp32.
        assert_eq!(
            choose(&[trial("fp32", 0.100, 1.0), trial("bf16", 0.060, 0.99)]),
            "fp32"
        );
        assert_eq!(choose::<Trial>(&[]), "fp32");
    }

    #[test]
    fn candidates_are_timed_in_interleaved_passes_and_each_keeps_its_fastest() {
        let calls = std::cell::RefCell::new(Vec::new());
        let timed = fastest_of_passes(&["fp32", "bf16"], |c| {
            let n = calls.borrow().len();
            calls.borrow_mut().push(*c);
            // bf16's first timed pass hits a slow moment of the host.
            if n == 3 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Ok(n)
        })
        .unwrap();
        let order = calls.borrow().clone();
        assert_eq!(order.len(), 2 * (PASSES + 1));
        assert!(
            order.chunks(2).all(|pass| pass == ["fp32", "bf16"]),
            "{order:?}"
        );
        // The slow pass is not bf16's figure; the outputs are each one's last run.
        assert!(timed[1].0 < 0.3, "{timed:?}");
        assert_eq!((timed[0].1, timed[1].1), (2 * PASSES, 2 * PASSES + 1));
    }

    #[test]
    fn a_cached_calibration_is_used_only_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let calibration = Calibration {
            key: "cpu=x; libtorch 2.11; threads 1".into(),
            chosen: "bf16".into(),
            trials: vec![trial("fp32", 0.1, 1.0), trial("bf16", 0.05, 0.9999)],
            cached: false,
        };
        store(dir.path(), CACHE_FILE, &calibration).unwrap();
        let read: Calibration = cached(dir.path(), CACHE_FILE, &calibration.key).unwrap();
        assert!(read.cached);
        assert_eq!(read.kind(), Kind::BFloat16);
        assert_eq!(read.trials, calibration.trials);
        assert!(
            cached::<Trial>(dir.path(), CACHE_FILE, "cpu=x; libtorch 2.11; threads 2").is_none()
        );
        std::fs::write(dir.path().join(CACHE_FILE), "not json").unwrap();
        assert!(
            cached::<Trial>(dir.path(), CACHE_FILE, &calibration.key).is_none(),
            "a damaged cache is measured again"
        );
    }

    #[test]
    fn the_key_names_the_cpu_a_onednn_cap_and_the_engine_revision() {
        let info = "processor\t: 0\nmodel name\t: Example CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 sse4_2\n";
        let cfg = minilm_config();
        let plain = key_of(info, &[], &cfg);
        assert_eq!(
            plain,
            format!(
                "cpu=Example CPU [avx2 avx512f avx512_bf16 amx_bf16]; libtorch {LIBTORCH}; \
                 engine {CPU_ENGINE_REVISION}; bert 6x384x12"
            )
        );
        let capped = key_of(
            info,
            &[("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16".to_string())],
            &cfg,
        );
        assert_ne!(capped, plain, "a capped run is keyed apart");
        assert!(
            capped.contains("ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"),
            "{capped}"
        );
    }

    #[test]
    fn sample_batches_are_wrapped_and_bounded_by_the_model_length() {
        let batches = sample_batches(30_522, 64);
        assert_eq!(batches[0].len(), 8);
        assert!(batches[0]
            .iter()
            .all(|r| r.len() == 64 && r[0] == 101 && r[63] == 102));
        assert!(batches[1].iter().all(|r| r.len() == 16));
        assert!(batches
            .iter()
            .flatten()
            .flatten()
            .all(|&id| id == 101 || id == 102 || (1_000..30_522).contains(&id)));
    }
}
