//! `kb-worker bench embed|search|snapshot|retrieval|query|replication`: throughput and latency figures for the
//! benchmark records, one JSON object per line on stdout (progress notes go to stderr).

mod embed;
mod http;
#[cfg(feature = "tantivy-compare")]
mod lexical_engines;
mod retrieval;
mod search;
mod snapshot;

pub use embed::BenchEmbedArgs;
pub use http::{BenchQueryArgs, BenchReplicationArgs};
#[cfg(feature = "tantivy-compare")]
pub use lexical_engines::BenchLexicalEnginesArgs;
pub use retrieval::BenchRetrievalArgs;
pub use search::BenchSearchArgs;
pub use snapshot::BenchSnapshotArgs;

/// Arguments of `kb-worker bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Embedding throughput of a model over a JSONL corpus ({"id","text"} per line).
    Embed(BenchEmbedArgs),
    /// Exact top-k search latency over random vectors, checked against an f64 brute force.
    Search(BenchSearchArgs),
    /// Time and memory of writing and loading a snapshot of random vectors.
    Snapshot(BenchSnapshotArgs),
    /// Recall@10 of dense, lexical and hybrid search on corpus passages, and the lexical
    /// index's latency, build time and memory at scale.
    Retrieval(BenchRetrievalArgs),
    /// Our lexical index against tantivy in RAM: build time, memory, latency and recall@10
    /// on the retrieval query sets (feature tantivy-compare).
    #[cfg(feature = "tantivy-compare")]
    LexicalEngines(BenchLexicalEnginesArgs),
    /// Query throughput and latency of running workers (round-robin), split by cache level.
    Query(BenchQueryArgs),
    /// Replication delay and lag of replicas while one worker takes sustained writes.
    Replication(BenchReplicationArgs),
}

/// Runs `kb-worker bench`. The in-process benchmarks block (libtorch), so they run off the
/// async runtime's threads; the HTTP ones are async.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Embed(args) => tokio::task::spawn_blocking(move || embed::run(&args)).await?,
        BenchCommand::Search(args) => {
            tokio::task::spawn_blocking(move || search::run(&args)).await?
        }
        BenchCommand::Snapshot(args) => {
            tokio::task::spawn_blocking(move || snapshot::run(&args)).await?
        }
        BenchCommand::Retrieval(args) => {
            tokio::task::spawn_blocking(move || retrieval::run(&args)).await?
        }
        #[cfg(feature = "tantivy-compare")]
        BenchCommand::LexicalEngines(args) => {
            tokio::task::spawn_blocking(move || lexical_engines::run(&args)).await?
        }
        BenchCommand::Query(args) => http::query(args).await,
        BenchCommand::Replication(args) => http::replication(args).await,
    }
}

/// Rounds for printing: benchmark records need no more than three decimals.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Parses `cpu`, `cuda` (device 0) or `cuda:N`, failing when CUDA is asked for but absent.
fn parse_device(text: &str) -> anyhow::Result<tch::Device> {
    let device = match text {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => tch::Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => tch::Device::Cuda(n),
            _ => anyhow::bail!("unknown device {other:?}; use cpu, cuda or cuda:N"),
        },
    };
    let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    match device {
        tch::Device::Cuda(n) if n >= visible => {
            anyhow::bail!("{text}: only {visible} CUDA device(s) visible")
        }
        _ => Ok(device),
    }
}

/// Parses a placement: `cpu`, `cuda`, `cuda:N`, or a comma-separated list of them, which
/// shards the vectors over the listed devices (`cuda:0,1`: a bare number after the first
/// is a CUDA ordinal; a device may repeat).
fn parse_devices(text: &str) -> anyhow::Result<Vec<tch::Device>> {
    text.split(',')
        .enumerate()
        .map(|(i, part)| match (i, part.parse::<usize>()) {
            (i, Ok(n)) if i > 0 => parse_device(&format!("cuda:{n}")),
            _ => parse_device(part),
        })
        .collect()
}

/// The `q`-quantile of ascending `sorted` values by the nearest-rank method.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn devices_parse_and_unknown_names_are_rejected() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert!(parse_device("cuda:999").is_err());
    }
}
