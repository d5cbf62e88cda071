//! `kb-worker bench search`: batched exact top-k over random unit vectors in a
//! [`FlatIndex`], with the results of one batch checked against an f64 brute force.

use super::{parse_devices, percentile, round3};
use crate::index::filter::Filter;
use crate::index::flat::{select, FlatIndex, Hit, Row};
use crate::log::{Metadata, Metric};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Searches before timing starts (kernel selection, allocator warm-up).
const WARMUP_SEARCHES: usize = 3;
/// Scores this close to the k-th exact score count as ties, not misses: the index adds in
/// f32, so two rows a rounding error apart may legitimately swap at the cut.
const TIE_TOLERANCE: f64 = 1e-5;
/// The same for vectors stored in fp16 (about three decimal digits per element).
const TIE_TOLERANCE_FP16: f64 = 2e-3;
/// The same for vectors stored in bf16 (unit roundoff 2^-8, eight times fp16's).
const TIE_TOLERANCE_BF16: f64 = 1.6e-2;

/// Arguments of `kb-worker bench search`.
#[derive(Debug, clap::Args)]
pub struct BenchSearchArgs {
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rows: u32,
    /// Dimensions per vector.
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..))]
    pub dim: u32,
    /// Queries per search call (one batch).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queries: u32,
    /// Hits per query.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Threads searching at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Timed searches per thread.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// `cpu`, `cuda`, `cuda:N` or `cuda:N,M,...` (shards; a device may repeat): where the
    /// index's vectors live.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the random data, for comparable runs.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Storage precision of the vectors: `auto` (fp16 on CUDA, fp32 on CPU), `fp32`, `fp16`.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Queries of the first batch checked against the f64 brute force (it runs on the CPU).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub check_queries: u32,
    /// How each tile's top-k is selected, comma-separated to compare several on the same
    /// index (one line each): `grouped` (through the maxima of 32-score groups, what the
    /// worker does), `grouped:N` (groups of N scores) or `plain` (libtorch's `topk` over
    /// the whole tile).
    #[arg(long, default_value = "grouped", value_delimiter = ',', value_parser = parse_selection)]
    pub selection: Vec<Selection>,
    /// CPU shards screen batches through a bf16 copy of the vectors (as the server does
    /// with `index.cpu_screen: bf16`).
    #[arg(long)]
    pub cpu_screen: bool,
}

/// One way of taking a tile's top-k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Plain,
    Grouped(i64),
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("plain"),
            Self::Grouped(n) if *n == select::GROUP => f.write_str("grouped"),
            Self::Grouped(n) => write!(f, "grouped:{n}"),
        }
    }
}

fn parse_selection(text: &str) -> Result<Selection, String> {
    match text.split_once(':') {
        None if text == "plain" => Ok(Selection::Plain),
        None if text == "grouped" => Ok(Selection::Grouped(select::GROUP)),
        Some(("grouped", n)) => match n.parse::<i64>() {
            Ok(n) if n >= 2 => Ok(Selection::Grouped(n)),
            _ => Err(format!(
                "{text:?}: the group size must be a whole number >= 2"
            )),
        },
        _ => Err(format!("{text:?}: use plain, grouped or grouped:N")),
    }
}

fn storage_kind(precision: &str, device: tch::Device) -> anyhow::Result<tch::Kind> {
    Ok(match precision {
        "auto" => crate::index::flat::storage_kind(device),
        "fp32" => tch::Kind::Float,
        "fp16" => tch::Kind::Half,
        "bf16" => tch::Kind::BFloat16,
        other => anyhow::bail!("unknown precision {other:?}; use auto, fp32, fp16 or bf16"),
    })
}

pub(super) fn run(args: &BenchSearchArgs) -> anyhow::Result<()> {
    let devices = parse_devices(&args.device)?;
    let device = crate::index::Placement::from(devices).with_cpu_screen(args.cpu_screen);
    let kind = storage_kind(&args.precision, device.primary())?;
    let (dim, k) = (args.dim as usize, args.top_k as usize);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let data = unit_vectors(&mut rng, args.rows as usize, dim);
    let rows = (0..args.rows)
        .map(|i| Row {
            doc_id: i.to_string(),
            chunk_id: format!("{i}#0"),
            text: String::new(),
            metadata: Metadata::new(),
        })
        .collect();
    let index = FlatIndex::from_rows_as(dim, Metric::Cosine, device, kind, rows, &data)?;
    let batches: Vec<Vec<Vec<f32>>> = (0..args.concurrency)
        .map(|_| {
            unit_vectors(&mut rng, args.queries as usize, dim)
                .chunks(dim)
                .map(<[f32]>::to_vec)
                .collect()
        })
        .collect();
    let checked = &batches[0][..(args.check_queries as usize).min(batches[0].len())];
    let truth = exact_kth(&data, dim, checked, k);
    let mut missed = Vec::new();
    for &selection in &args.selection {
        let recall = measure(args, &index, (&data, &truth), &batches, kind, selection)?;
        if recall < 1.0 {
            missed.push(format!("{selection}: recall@{k} = {recall}"));
        }
    }
    anyhow::ensure!(
        missed.is_empty(),
        "exact search missed true neighbours ({})",
        missed.join("; ")
    );
    Ok(())
}

/// Warms up, checks one batch against the f64 brute force (`truth`: the checked queries'
/// exact k-th best scores) and times the searches with `selection`; prints the line and
/// returns the recall.
fn measure(
    args: &BenchSearchArgs,
    index: &FlatIndex,
    (data, truth): (&[f32], &[f64]),
    batches: &[Vec<Vec<f32>>],
    kind: tch::Kind,
    selection: Selection,
) -> anyhow::Result<f64> {
    select::set_group_size(match selection {
        Selection::Plain => None,
        Selection::Grouped(n) => Some(n),
    });
    let (dim, k) = (args.dim as usize, args.top_k as usize);
    let filter = Filter::default();
    for _ in 0..WARMUP_SEARCHES {
        index.search(&batches[0], k, &filter)?;
    }
    let checked = &batches[0][..truth.len()];
    let tolerance = match kind {
        tch::Kind::Half => TIE_TOLERANCE_FP16,
        tch::Kind::BFloat16 => TIE_TOLERANCE_BF16,
        _ => TIE_TOLERANCE,
    };
    let recall = recall_against(
        data,
        dim,
        checked,
        &index.search(&batches[0], k, &filter)?,
        truth,
        k,
        tolerance,
    );
    let (mut latencies_ms, seconds) = timed_searches(index, batches, k, args.iterations)?;
    latencies_ms.sort_by(f64::total_cmp);
    let total_queries = f64::from(args.concurrency * args.iterations * args.queries);
    let line = serde_json::json!({
        "bench": "search",
        "device": args.device,
        "precision": match kind {
            tch::Kind::Half => "fp16",
            tch::Kind::BFloat16 => "bf16",
            _ => "fp32",
        },
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "top_k": args.top_k,
        "selection": selection.to_string(),
        "cpu_screen": args.cpu_screen,
        "concurrency": args.concurrency,
        "iterations": args.iterations,
        "p50_ms": round3(percentile(&latencies_ms, 0.5)),
        "p99_ms": round3(percentile(&latencies_ms, 0.99)),
        "qps": round3(total_queries / seconds),
        "recall": recall,
    });
    println!("{line}");
    Ok(recall)
}

/// `n` random vectors of unit length, row-major.
fn unit_vectors(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for x in row.iter_mut() {
            *x /= norm;
        }
    }
    data
}

/// Each thread searches its own batch `iterations` times; returns every call's latency
/// in milliseconds and the wall-clock seconds of the whole run.
fn timed_searches(
    index: &FlatIndex,
    batches: &[Vec<Vec<f32>>],
    k: usize,
    iterations: u32,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let filter = Filter::default();
    let started = Instant::now();
    let per_thread: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = batches
            .iter()
            .map(|batch| {
                let filter = &filter;
                scope.spawn(move || {
                    (0..iterations)
                        .map(|_| {
                            let start = Instant::now();
                            index.search(batch, k, filter)?;
                            Ok(start.elapsed().as_secs_f64() * 1000.0)
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a search thread panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for thread in per_thread {
        latencies.extend(thread?);
    }
    Ok((latencies, seconds))
}

/// Fraction of returned hits that belong to the exact top-k computed in f64 (ties within
/// `tolerance` of the k-th score count as correct); `hits` may cover more queries than
/// are checked.
/// The fraction of `hits` (the first `k` per query) scoring within `tolerance` of the
/// query's exact k-th best score `kth`.
fn recall_against(
    data: &[f32],
    dim: usize,
    queries: &[Vec<f32>],
    hits: &[Vec<Hit>],
    kth: &[f64],
    k: usize,
    tolerance: f64,
) -> f64 {
    let correct: usize = queries
        .iter()
        .zip(hits)
        .zip(kth)
        .map(|((query, hits), &kth)| {
            hits.iter()
                .take(k)
                .filter_map(|hit| hit.row.doc_id.parse::<usize>().ok())
                .filter(|&row| exact_score(data, dim, query, row) >= kth - tolerance)
                .count()
        })
        .sum();
    correct as f64 / (queries.len() * k) as f64
}

/// Each query's exact k-th best score over every row (f64, a thread per query): the
/// brute force is computed once and every measured selection is checked against it.
fn exact_kth(data: &[f32], dim: usize, queries: &[Vec<f32>], k: usize) -> Vec<f64> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = queries
            .iter()
            .map(|query| {
                scope.spawn(move || {
                    let mut exact: Vec<f64> = (0..data.len() / dim)
                        .map(|row| exact_score(data, dim, query, row))
                        .collect();
                    let k = k.min(exact.len()).max(1);
                    exact.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                    exact[k - 1]
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(f64::INFINITY))
            .collect()
    })
}

/// The cosine of `query` with row `row` in f64 (rows are unit vectors).
fn exact_score(data: &[f32], dim: usize, query: &[f32], row: usize) -> f64 {
    let norm = query
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    data[row * dim..(row + 1) * dim]
        .iter()
        .zip(query)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum::<f64>()
        / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn recall(
        data: &[f32],
        dim: usize,
        queries: &[Vec<f32>],
        hits: &[Vec<Hit>],
        k: usize,
        tolerance: f64,
    ) -> f64 {
        let kth = exact_kth(data, dim, queries, k);
        recall_against(data, dim, queries, hits, &kth, k, tolerance)
    }

    #[test]
    fn flat_index_search_has_full_recall_on_random_data() {
        let mut rng = StdRng::seed_from_u64(7);
        // 62 groups of 32 rows for 5 picks: the grouped selection runs.
        let (n, dim, k) = (2000, 16, 5);
        let data = unit_vectors(&mut rng, n, dim);
        let rows = (0..n)
            .map(|i| Row {
                doc_id: i.to_string(),
                chunk_id: format!("{i}#0"),
                text: String::new(),
                metadata: Metadata::new(),
            })
            .collect();
        let index = FlatIndex::from_rows(dim, Metric::Cosine, Device::Cpu, rows, &data).unwrap();
        let queries: Vec<Vec<f32>> = unit_vectors(&mut rng, 8, dim)
            .chunks(dim)
            .map(<[f32]>::to_vec)
            .collect();
        let hits = index.search(&queries, k, &Filter::default()).unwrap();
        assert_eq!(recall(&data, dim, &queries, &hits, k, TIE_TOLERANCE), 1.0);
    }

    #[test]
    fn selections_parse_and_print_back() {
        assert_eq!(parse_selection("plain"), Ok(Selection::Plain));
        assert_eq!(
            parse_selection("grouped"),
            Ok(Selection::Grouped(select::GROUP))
        );
        assert_eq!(parse_selection("grouped:64"), Ok(Selection::Grouped(64)));
        assert_eq!(Selection::Grouped(64).to_string(), "grouped:64");
        assert_eq!(Selection::Grouped(select::GROUP).to_string(), "grouped");
        assert!(parse_selection("grouped:1").is_err());
        assert!(parse_selection("grouped:x").is_err());
        assert!(parse_selection("fast").is_err());
    }

    #[test]
    fn wrong_neighbours_lower_recall() {
        let mut rng = StdRng::seed_from_u64(9);
        let dim = 8;
        let data = unit_vectors(&mut rng, 100, dim);
        let query = data[..dim].to_vec();
        let wrong: Vec<Hit> = (50..52)
            .map(|i| Hit {
                row: std::sync::Arc::new(Row {
                    doc_id: i.to_string(),
                    chunk_id: String::new(),
                    text: String::new(),
                    metadata: Metadata::new(),
                }),
                score: 0.0,
            })
            .collect();
        let right = Hit {
            row: std::sync::Arc::new(Row {
                doc_id: "0".into(),
                ..Row::clone(&wrong[0].row)
            }),
            score: 1.0,
        };
        let hits = vec![right, wrong[0].clone()];
        assert!(recall(&data, dim, &[query], &[hits], 2, TIE_TOLERANCE) < 1.0);
    }
}
