//! Embedding throughput on a corpus, printed as one JSON line for the benchmark records.
//!
//! ```text
//! cargo run --release -p kb-embed --example bench_embed -- CORPUS.jsonl \
//!     [--n 2000] [--chunk 256] [--clients 2] [--device cpu] [--precision fp32|bf16|fp16] \
//!     [--max-batch-tokens 16384] [--threads N]
//! ```
//! The model comes from `KB_MODEL_DIR`. CORPUS is JSONL with a `text` field per line; the
//! first `--n` passages are embedded in requests of `--chunk` texts sent by `--clients`
//! threads, after a warm-up request.

use kb_embed::{Embedder, EmbeddingConfig, Lane, Precision};
use std::collections::HashMap;
use std::io::BufRead;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (corpus, opts) = parse_args()?;
    let get = |key: &str, default: &str| opts.get(key).cloned().unwrap_or(default.to_string());
    let n: usize = get("n", "2000").parse()?;
    let chunk: usize = get("chunk", "256").parse()?;
    let clients: usize = get("clients", "2").parse()?;
    if let Some(threads) = opts.get("threads") {
        tch::set_num_threads(threads.parse()?);
    }
    let cfg = EmbeddingConfig {
        device: get("device", "cpu"),
        precision: parse_precision(&get("precision", "auto"))?,
        max_batch_tokens: get("max-batch-tokens", "16384").parse()?,
        ..EmbeddingConfig::default()
    };
    let model_dir = std::env::var("KB_MODEL_DIR").map_err(|_| "set KB_MODEL_DIR")?;
    let texts = read_passages(&corpus, n)?;
    let embedder = Embedder::load(model_dir.as_ref(), &cfg)?;
    embedder.embed_blocking(Lane::Bulk, texts.iter().take(chunk).cloned().collect())?;

    let before = embedder.stats();
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = texts.chunks(chunk).map(<[String]>::to_vec).collect();
    run_clients(&embedder, chunks, clients)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = embedder.stats();

    let batches = (after.batches - before.batches).max(1);
    let busy: f64 = after.devices.iter().map(|d| d.busy_seconds).sum::<f64>()
        - before.devices.iter().map(|d| d.busy_seconds).sum::<f64>();
    let record = serde_json::json!({
        "bench": "embed",
        "passages": texts.len(),
        "passages_per_s": texts.len() as f64 / seconds,
        "tokens_per_s": (after.real_tokens - before.real_tokens) as f64 / seconds,
        "ms_per_batch": busy * 1000.0 / batches as f64,
        "batches": batches,
        "padding_ratio": (after.padded_tokens - before.padded_tokens) as f64
            / (after.real_tokens - before.real_tokens).max(1) as f64,
        "device": embedder.devices().join(","),
        "precision": embedder.precision(),
        "torch_threads": tch::get_num_threads(),
        "chunk": chunk,
        "clients": clients,
        "max_batch_tokens": cfg.max_batch_tokens,
        "seconds": seconds,
    });
    println!("{record}");
    Ok(())
}

fn run_clients(
    embedder: &Embedder,
    chunks: Vec<Vec<String>>,
    clients: usize,
) -> Result<(), kb_embed::EmbedError> {
    let next = std::sync::Mutex::new(chunks.into_iter());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|_| {
                scope.spawn(|| loop {
                    let Some(texts) = next.lock().unwrap().next() else {
                        return Ok(());
                    };
                    embedder.embed_blocking(Lane::Bulk, texts)?;
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap())
    })
}

fn read_passages(path: &str, n: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut texts = Vec::with_capacity(n);
    for line in file.lines().take(n) {
        let value: serde_json::Value = serde_json::from_str(&line?)?;
        let text = value["text"]
            .as_str()
            .ok_or("corpus line without a text field")?;
        texts.push(text.to_string());
    }
    Ok(texts)
}

fn parse_precision(name: &str) -> Result<Precision, String> {
    match name {
        "auto" => Ok(Precision::Auto),
        "fp32" => Ok(Precision::Fp32),
        "fp16" => Ok(Precision::Fp16),
        "bf16" => Ok(Precision::Bf16),
        other => Err(format!("unknown precision {other:?}")),
    }
}

fn parse_args() -> Result<(String, HashMap<String, String>), String> {
    let mut args = std::env::args().skip(1);
    let mut corpus = None;
    let mut opts = HashMap::new();
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--") {
            Some(key) => {
                let value = args.next().ok_or(format!("--{key} needs a value"))?;
                opts.insert(key.to_string(), value);
            }
            None => corpus = Some(arg),
        }
    }
    Ok((
        corpus.ok_or("usage: bench_embed CORPUS.jsonl [--n N] ...")?,
        opts,
    ))
}
