//! `kb-worker bench snapshot`: how long a snapshot of a collection takes to write and to
//! load (what a restart waits for), on the CPU or GPUs, and how much host memory each
//! needs above the index itself (peak resident set, reset before each step through
//! `/proc/self/clear_refs`).

use super::{parse_devices, round3};
use crate::index::flat::{FlatIndex, Row};
use crate::index::{Index, Placement};
use crate::log::{Metadata, Metric};
use crate::snapshot;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Arguments of `kb-worker bench snapshot`.
#[derive(Debug, clap::Args)]
pub struct BenchSnapshotArgs {
    /// Rows (chunks) in the collection.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rows: u32,
    /// Dimensions per vector.
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..))]
    pub dim: u32,
    /// Bytes of text per row.
    #[arg(long, default_value_t = 500)]
    pub text_bytes: usize,
    /// Folder to write the snapshot in (a temporary folder under it is removed after).
    #[arg(long, default_value = ".")]
    pub dir: std::path::PathBuf,
    /// Seed of the random data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the collection lives when written and when loaded: `cpu`, `cuda`, `cuda:N`
    /// or `cuda:N,M,...` (shards), as in `bench search` (fp16 on CUDA, fp32 on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Drop the written file from the page cache before loading it, as after a restart
    /// on another node: the load reads it from the disk.
    #[arg(long)]
    pub cold: bool,
}

pub(super) fn run(args: &BenchSnapshotArgs) -> anyhow::Result<()> {
    let (n, dim) = (args.rows as usize, args.dim as usize);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let text: String = (0..args.text_bytes)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let placement = Placement::from(parse_devices(&args.device)?);
    let mut index = Index::new(placement.clone());
    {
        let data: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let rows = (0..n)
            .map(|i| Row {
                doc_id: format!("doc-{}", i / 8),
                chunk_id: format!("doc-{}#{}", i / 8, i % 8),
                text: text.clone(),
                metadata: Metadata::new(),
            })
            .collect();
        let flat = FlatIndex::from_rows(dim, Metric::Cosine, placement.clone(), rows, &data)?;
        index.insert("bench".into(), flat);
    }
    index.set_applied(1);
    let dir = Scratch(
        args.dir
            .join(format!("kb-bench-snapshot-{}", std::process::id())),
    );

    let before = Rss::reset()?;
    let started = Instant::now();
    let path = snapshot::save(&index, &dir.0, 1)?;
    let save_s = started.elapsed().as_secs_f64();
    let save = before.step()?;
    let file_bytes = std::fs::metadata(&path)?.len();
    // The written index stays: memory it freed would be reused by the load and hide
    // what the load needs.

    if args.cold {
        evict(&path)?;
    }
    let before = Rss::reset()?;
    let started = Instant::now();
    let loaded = snapshot::load_newest(&dir.0, placement)?
        .ok_or_else(|| anyhow::anyhow!("the snapshot written does not load"))?;
    let load_s = started.elapsed().as_secs_f64();
    let load = before.step()?;
    drop(index);
    anyhow::ensure!(
        loaded.get("bench").map(|c| c.stats().chunks) == Some(n),
        "the loaded snapshot does not hold the {n} rows written"
    );
    let mb = |bytes: u64| round3(bytes as f64 / 1e6);
    let line = serde_json::json!({
        "bench": "snapshot",
        "device": args.device,
        "cold": args.cold,
        "rows": n,
        "dim": dim,
        "text_bytes": args.text_bytes,
        "file_mb": mb(file_bytes),
        "save_s": round3(save_s),
        "save_mb_per_s": round3(file_bytes as f64 / 1e6 / save_s),
        "save_peak_extra_rss_mb": mb(save.peak_extra),
        "load_s": round3(load_s),
        "load_mb_per_s": round3(file_bytes as f64 / 1e6 / load_s),
        "load_kept_rss_mb": mb(load.kept),
        "load_peak_extra_rss_mb": mb(load.peak_extra),
        "load_transient_rss_mb": mb(load.peak_extra.saturating_sub(load.kept)),
    });
    println!("{line}");
    Ok(())
}

/// Drops `path`'s pages from the page cache (they are clean: the snapshot was fsynced).
fn evict(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise(DONTNEED) failed: error {rc}");
    Ok(())
}

/// A folder removed when dropped (also when the benchmark fails).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The resident set at the start of a step (its peak reset to it).
struct Rss(u64);

/// What a step did to the resident set.
struct Step {
    /// The peak above the start.
    peak_extra: u64,
    /// What stayed resident after it.
    kept: u64,
}

impl Rss {
    fn reset() -> anyhow::Result<Self> {
        std::fs::write("/proc/self/clear_refs", "5")
            .map_err(|e| anyhow::anyhow!("cannot reset the peak resident set: {e}"))?;
        Ok(Self(status_kib("VmRSS:")? * 1024))
    }

    fn step(self) -> anyhow::Result<Step> {
        let (peak, now) = (status_kib("VmHWM:")? * 1024, status_kib("VmRSS:")? * 1024);
        Ok(Step {
            peak_extra: peak.saturating_sub(self.0),
            kept: now.saturating_sub(self.0),
        })
    }
}

/// A `kB` field of /proc/self/status.
fn status_kib(key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/self/status"))
}
