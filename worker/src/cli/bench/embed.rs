//! `kb-worker bench embed`: passages and tokens per second of the embedding engine.

use super::round3;
use anyhow::Context;
use kb_embed::{Embedder, EmbeddingConfig, Lane, Precision};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Arguments of `kb-worker bench embed`.
#[derive(Debug, clap::Args)]
pub struct BenchEmbedArgs {
    /// Model directory (sentence-transformers layout).
    #[arg(long, env = "KB_MODEL")]
    pub model: PathBuf,
    /// JSONL corpus, one {"id": ..., "text": ...} object per line.
    #[arg(long)]
    pub corpus: PathBuf,
    /// `cpu`, `cuda`, `cuda:0,1` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `auto` (fp16 on CUDA; on CPU the faster of fp32 and bf16, measured at start), `fp32`, `fp16` or `bf16`.
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    pub precision: Precision,
    /// Passages to embed (the first N of the corpus).
    #[arg(long, default_value_t = 2000)]
    pub limit: usize,
    /// Passages per embedding request.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_texts: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Token budget of one engine batch, both lanes [default: the engine's].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Lane the requests go through: `bulk` (ingestion) or `interactive` (queries).
    #[arg(long, default_value = "bulk", value_parser = parse_lane)]
    pub lane: Lane,
    /// Model replicas on the CPU [default: the engine's, one per core, at most 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpu_executors: Option<u32>,
}

fn parse_lane(s: &str) -> Result<Lane, String> {
    Lane::ALL
        .into_iter()
        .find(|lane| lane.name() == s)
        .ok_or_else(|| format!("unknown lane {s:?}: use interactive or bulk"))
}

/// Time and tokens of one request.
struct Timed {
    elapsed: Duration,
    tokens: usize,
}

pub(super) fn run(args: &BenchEmbedArgs) -> anyhow::Result<()> {
    let texts = read_corpus(&args.corpus, args.limit)?;
    let batch = args.batch_texts as usize;
    let mut cfg = EmbeddingConfig {
        device: args.device.clone(),
        precision: args.precision,
        ..EmbeddingConfig::default()
    };
    if let Some(tokens) = args.max_batch_tokens {
        cfg.max_batch_tokens = tokens;
        cfg.bulk_batch_tokens = Some(tokens);
    }
    cfg.cpu_executors = args.cpu_executors.map(|n| n as usize);
    let in_flight = batch * args.concurrency as usize;
    cfg.queue_capacity = cfg.queue_capacity.max(in_flight);
    cfg.bulk_queue_capacity = cfg.bulk_queue_capacity.max(in_flight);
    let embedder = Embedder::load(&args.model, &cfg).context("loading the model")?;
    let groups: Vec<&[String]> = texts.chunks(batch).collect();
    // Warm-up: first kernel launches, allocator growth and lazy initialisation.
    embedder.embed_blocking(args.lane, groups[0].to_vec())?;
    let started = Instant::now();
    let timings = embed_groups(&embedder, args.lane, &groups, args.concurrency as usize)?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = timings.iter().map(|t| t.tokens).sum();
    let mean_ms = timings
        .iter()
        .map(|t| t.elapsed.as_secs_f64() * 1000.0)
        .sum::<f64>()
        / timings.len() as f64;
    let line = serde_json::json!({
        "bench": "embed",
        "device": embedder.devices().join(","),
        "precision": embedder.precision(),
        "passages": texts.len(),
        "seconds": round3(seconds),
        "passages_per_s": round3(texts.len() as f64 / seconds),
        "tokens_per_s": round3(tokens as f64 / seconds),
        "ms_per_batch": round3(mean_ms),
        "batch_texts": batch,
        "concurrency": args.concurrency,
        "lane": args.lane.name(),
        "executors": embedder.stats().devices.len(),
    });
    println!("{line}");
    Ok(())
}

/// Embeds every group, `concurrency` requests at a time, timing each request.
fn embed_groups(
    embedder: &Embedder,
    lane: Lane,
    groups: &[&[String]],
    concurrency: usize,
) -> anyhow::Result<Vec<Timed>> {
    let next = AtomicUsize::new(0);
    let timings = Mutex::new(Vec::with_capacity(groups.len()));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(group) = groups.get(i) else {
                            return Ok(());
                        };
                        let start = Instant::now();
                        let out = embedder.embed_blocking(lane, group.to_vec())?;
                        let timed = Timed {
                            elapsed: start.elapsed(),
                            tokens: out.token_counts.iter().sum(),
                        };
                        timings
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(timed);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("an embedding thread panicked"))?
        })
    })?;
    Ok(timings.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// The `text` of the first `limit` non-blank lines of a JSONL file.
pub(super) fn read_corpus(path: &Path, limit: usize) -> anyhow::Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut texts = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        if texts.len() >= limit {
            break;
        }
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
        let text = value["text"]
            .as_str()
            .with_context(|| format!("{}:{}: no \"text\" string", path.display(), number + 1))?;
        texts.push(text.to_string());
    }
    anyhow::ensure!(!texts.is_empty(), "{} holds no passages", path.display());
    Ok(texts)
}

fn parse_precision(text: &str) -> Result<Precision, String> {
    match text {
        "auto" => Ok(Precision::Auto),
        "fp32" => Ok(Precision::Fp32),
        "fp16" => Ok(Precision::Fp16),
        "bf16" => Ok(Precision::Bf16),
        other => Err(format!(
            "unknown precision {other:?}; use auto, fp32, fp16 or bf16"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_reads_the_first_texts_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.jsonl");
        let lines = "{\"id\":\"1\",\"text\":\"alpha\"}\n\n{\"id\":\"2\",\"text\":\"beta\"}\n{\"id\":\"3\",\"text\":\"gamma\"}\n";
        std::fs::write(&path, lines).unwrap();
        assert_eq!(read_corpus(&path, 2).unwrap(), ["alpha", "beta"]);
        std::fs::write(&path, "{\"id\":\"1\"}\n").unwrap();
        let err = read_corpus(&path, 5).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn precision_names_parse() {
        assert_eq!(parse_precision("bf16"), Ok(Precision::Bf16));
        assert!(parse_precision("int8").is_err());
    }
}
