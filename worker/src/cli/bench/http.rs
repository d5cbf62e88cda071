//! Benchmarks against running workers over HTTP:
//!
//! - `kb-worker bench query`: query throughput and latency, spread round-robin over one or
//!   more workers (as a Service spreads them), with latencies split by where the answer came
//!   from (`miss`, `l1`, `l2` cache).
//! - `kb-worker bench replication`: sustained ingestion of documents with their own
//!   vectors through one worker while others are polled, giving the delay from a write's
//!   acknowledgement to its application on each replica and the largest lag seen.

use super::{percentile, round3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `kb-worker bench query`.
#[derive(Debug, clap::Args)]
pub struct BenchQueryArgs {
    /// Worker base URLs, comma-separated; requests go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    #[arg(long, default_value = "bench")]
    pub collection: String,
    #[arg(long, env = "KB_API_KEY")]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Requests in all.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Distinct queries, cycled (fewer than `requests` exercises the cache).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub distinct: u32,
    /// JSONL corpus ({"text"} per line): text queries. Without it, random vectors of `dim`.
    #[arg(long)]
    pub texts: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..))]
    pub dim: u32,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Arguments of `kb-worker bench replication`.
#[derive(Debug, clap::Args)]
pub struct BenchReplicationArgs {
    /// The worker that takes the writes.
    #[arg(long)]
    pub writer: String,
    /// Replicas whose progress is measured, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub readers: Vec<String>,
    #[arg(long, default_value = "bench")]
    pub collection: String,
    #[arg(long, env = "KB_API_KEY")]
    pub api_key: Option<String>,
    /// Documents (one chunk each, with a random vector) to ingest.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: u32,
    /// Documents per request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Dimensions of the vectors (the model's).
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..))]
    pub dim: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

fn client(api_key: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()?)
}

fn random_unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

fn query_bodies(args: &BenchQueryArgs) -> anyhow::Result<Vec<Value>> {
    let n = args.distinct as usize;
    let k = args.top_k;
    match &args.texts {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            let bodies: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["text"].as_str().map(str::to_string))
                .take(n)
                .map(|t| json!({"query": t, "top_k": k, "include_text": false}))
                .collect();
            anyhow::ensure!(
                !bodies.is_empty(),
                "{}: no {{\"text\"}} lines",
                path.display()
            );
            Ok(bodies)
        }
        None => {
            let mut rng = StdRng::seed_from_u64(args.seed);
            Ok((0..n)
                .map(|_| {
                    let v = random_unit(&mut rng, args.dim as usize);
                    json!({"vector": v, "top_k": k, "include_text": false})
                })
                .collect())
        }
    }
}

/// Runs `kb-worker bench query`.
pub(super) async fn query(args: BenchQueryArgs) -> anyhow::Result<()> {
    let http = client(args.api_key.as_deref())?;
    let bodies = Arc::new(query_bodies(&args)?);
    let urls: Arc<Vec<String>> = Arc::new(
        args.url
            .iter()
            .map(|u| {
                format!(
                    "{}/v1/collections/{}/query",
                    u.trim_end_matches('/'),
                    args.collection
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let total = args.requests as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, bodies, urls, next) = (http.clone(), bodies.clone(), urls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<(String, f64)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let resp = http
                    .post(&urls[i % urls.len()])
                    .json(&bodies[i % bodies.len()])
                    .send()
                    .await?;
                let status = resp.status();
                let body: Value = resp.json().await?;
                anyhow::ensure!(status.is_success(), "HTTP {status}: {body}");
                let level = body["cache"].as_str().unwrap_or("miss").to_string();
                samples.push((level, t.elapsed().as_secs_f64() * 1e3));
            }
            anyhow::Ok(samples)
        }));
    }
    let mut by_level: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut all = Vec::new();
    for task in tasks {
        for (level, ms) in task.await?? {
            all.push(ms);
            by_level.entry(level).or_default().push(ms);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let mut levels = serde_json::Map::new();
    for (level, mut v) in by_level {
        v.sort_by(f64::total_cmp);
        levels.insert(
            level,
            json!({"count": v.len(), "p50_ms": round3(percentile(&v, 0.5)), "p99_ms": round3(percentile(&v, 0.99))}),
        );
    }
    let record = json!({
        "bench": "query", "workers": args.url.len(), "concurrency": args.concurrency,
        "requests": total, "distinct": bodies.len(),
        "kind": if args.texts.is_some() { "text" } else { "vector" },
        "seconds": round3(seconds), "qps": round3(total as f64 / seconds),
        "p50_ms": round3(percentile(&all, 0.5)), "p99_ms": round3(percentile(&all, 0.99)),
        "by_cache": levels,
    });
    println!("{record}");
    Ok(())
}

/// Polls a replica's `/readyz` until `stop`, returning (time, applied sequence, lag) samples.
async fn poll_progress(
    http: reqwest::Client,
    url: String,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(f64, u64, u64)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(resp) = http.get(format!("{url}/readyz")).send().await {
            if let Ok(v) = resp.json::<Value>().await {
                let applied = v["applied_sequence"].as_u64().unwrap_or(0);
                let lag = v["replication"]["lag"].as_u64().unwrap_or(0);
                samples.push((start.elapsed().as_secs_f64(), applied, lag));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples
}

/// Runs `kb-worker bench replication`.
pub(super) async fn replication(args: BenchReplicationArgs) -> anyhow::Result<()> {
    let http = client(args.api_key.as_deref())?;
    let writer = args.writer.trim_end_matches('/').to_string();
    let ingest_url = format!("{writer}/v1/collections/{}/documents", args.collection);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = args
        .readers
        .iter()
        .map(|r| {
            let url = r.trim_end_matches('/').to_string();
            tokio::spawn(poll_progress(http.clone(), url, start, stop.clone()))
        })
        .collect();
    let batches = args.chunks.div_ceil(args.batch) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..args.concurrency {
        let (http, url, next) = (http.clone(), ingest_url.clone(), next.clone());
        let (batch, chunks, dim) = (args.batch as usize, args.chunks as usize, args.dim as usize);
        let seed = args.seed + u64::from(w);
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut acks = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let docs: Vec<Value> = (b * batch..((b + 1) * batch).min(chunks))
                    .map(|i| {
                        json!({"id": format!("bench-{i}"), "text": format!("benchmark chunk {i}"),
                               "vector": random_unit(&mut rng, dim)})
                    })
                    .collect();
                let resp = http
                    .post(&url)
                    .json(&json!({"documents": docs}))
                    .send()
                    .await?;
                let status = resp.status();
                let body: Value = resp.json().await?;
                anyhow::ensure!(status.is_success(), "HTTP {status}: {body}");
                let seq = body["sequence"].as_u64().unwrap_or(0);
                acks.push((start.elapsed().as_secs_f64(), seq));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.await??);
    }
    let ingest_seconds = start.elapsed().as_secs_f64();
    let last = acks.iter().map(|(_, s)| *s).max().unwrap_or(0);
    // Let every replica catch up to the last acknowledged write, then stop polling.
    let deadline = Instant::now() + Duration::from_secs(300);
    for r in &args.readers {
        loop {
            let v: Value = http
                .get(format!("{}/readyz", r.trim_end_matches('/')))
                .send()
                .await?
                .json()
                .await?;
            if v["applied_sequence"].as_u64().unwrap_or(0) >= last {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{r} did not catch up in 300 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut replicas = Vec::new();
    for (reader, poller) in args.readers.iter().zip(pollers) {
        let samples = poller.await?;
        // For each acknowledged write: when did this replica first report it applied?
        let mut delays: Vec<f64> = acks
            .iter()
            .filter_map(|&(t, seq)| {
                samples
                    .iter()
                    .find(|(_, applied, _)| *applied >= seq)
                    .map(|(ts, _, _)| (ts - t).max(0.0) * 1e3)
            })
            .collect();
        delays.sort_by(f64::total_cmp);
        let max_lag = samples.iter().map(|s| s.2).max().unwrap_or(0);
        replicas.push(json!({
            "replica": reader, "samples": samples.len(),
            "apply_delay_p50_ms": round3(percentile(&delays, 0.5)),
            "apply_delay_p99_ms": round3(percentile(&delays, 0.99)),
            "apply_delay_max_ms": round3(delays.last().copied().unwrap_or(0.0)),
            "max_lag_records": max_lag,
        }));
    }
    let record = json!({
        "bench": "replication", "chunks": args.chunks, "batch": args.batch,
        "concurrency": args.concurrency, "requests": acks.len(),
        "ingest_seconds": round3(ingest_seconds),
        "chunks_per_second": round3(f64::from(args.chunks) / ingest_seconds),
        "replicas": replicas,
    });
    println!("{record}");
    Ok(())
}
