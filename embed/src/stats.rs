//! Counters the executors bump and the worker's `/metrics` reads.

use crate::batcher::Lane;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of the engine's counters since load (monotonic, except `queue_depth`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineStats {
    /// Batches run by the encoder.
    pub batches: u64,
    /// Texts embedded.
    pub rows: u64,
    /// Tokens of those texts, special tokens included.
    pub real_tokens: u64,
    /// Tokens of the batches' padded grids (`rows x longest row` per batch). The encoder
    /// computes every op but attention on the real tokens only, and attention on the CPU
    /// in groups of rows of similar length, so this is an upper bound of its padding.
    pub padded_tokens: u64,
    /// Times a batch was halved after the device ran out of memory.
    pub oom_splits: u64,
    /// Texts admitted and not yet answered, both lanes together.
    pub queue_depth: usize,
    /// Fill level and refusals of each lane, interactive first.
    pub lanes: Vec<LaneStats>,
    /// One entry per device, in the order of [`crate::Embedder::devices`].
    pub devices: Vec<DeviceStats>,
}

/// Counters of one device's executor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceStats {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// Batches this device ran.
    pub batches: u64,
    /// Seconds spent running batches (host to device copy, encoder, pooling, copy back).
    pub busy_seconds: f64,
}

/// Counters of one lane of the queue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaneStats {
    /// `interactive` or `bulk`.
    pub lane: &'static str,
    /// Texts admitted into this lane and not yet answered.
    pub depth: usize,
    /// Requests refused because this lane was full (answered 429 by the worker).
    pub rejected: u64,
}

#[derive(Default)]
struct LaneCounters {
    depth: AtomicUsize,
    rejected: AtomicU64,
}

struct DeviceCounters {
    name: String,
    batches: AtomicU64,
    busy_nanos: AtomicU64,
}

/// The live counters behind [`EngineStats`], shared by the queue and the executors.
pub(crate) struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
    real_tokens: AtomicU64,
    padded_tokens: AtomicU64,
    oom_splits: AtomicU64,
    lanes: [LaneCounters; 2],
    devices: Vec<DeviceCounters>,
}

/// What one executed batch adds to the counters.
pub(crate) struct BatchRecord {
    pub device: usize,
    pub rows: usize,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub busy: Duration,
}

impl Counters {
    pub(crate) fn new(device_names: Vec<String>) -> Counters {
        Counters {
            batches: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            real_tokens: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            oom_splits: AtomicU64::new(0),
            lanes: Default::default(),
            devices: device_names
                .into_iter()
                .map(|name| DeviceCounters {
                    name,
                    batches: AtomicU64::new(0),
                    busy_nanos: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub(crate) fn record_batch(&self, r: &BatchRecord) {
        self.batches.fetch_add(1, Relaxed);
        self.rows.fetch_add(r.rows as u64, Relaxed);
        self.real_tokens.fetch_add(r.real_tokens as u64, Relaxed);
        self.padded_tokens
            .fetch_add(r.padded_tokens as u64, Relaxed);
        let device = &self.devices[r.device];
        device.batches.fetch_add(1, Relaxed);
        device
            .busy_nanos
            .fetch_add(r.busy.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn depth(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].depth.load(Relaxed)
    }

    pub(crate) fn add_depth(&self, lane: Lane, texts: usize) {
        self.lanes[lane.index()].depth.fetch_add(texts, Relaxed);
    }

    pub(crate) fn sub_depth(&self, lane: Lane, texts: usize) {
        self.lanes[lane.index()].depth.fetch_sub(texts, Relaxed);
    }

    pub(crate) fn record_rejection(&self, lane: Lane) {
        self.lanes[lane.index()].rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_oom_split(&self) {
        self.oom_splits.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EngineStats {
        EngineStats {
            batches: self.batches.load(Relaxed),
            rows: self.rows.load(Relaxed),
            real_tokens: self.real_tokens.load(Relaxed),
            padded_tokens: self.padded_tokens.load(Relaxed),
            oom_splits: self.oom_splits.load(Relaxed),
            queue_depth: Lane::ALL.iter().map(|&lane| self.depth(lane)).sum(),
            lanes: Lane::ALL
                .iter()
                .map(|&lane| LaneStats {
                    lane: lane.name(),
                    depth: self.depth(lane),
                    rejected: self.lanes[lane.index()].rejected.load(Relaxed),
                })
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceStats {
                    device: d.name.clone(),
                    batches: d.batches.load(Relaxed),
                    busy_seconds: d.busy_nanos.load(Relaxed) as f64 / 1e9,
                })
                .collect(),
        }
    }

    /// How long the texts now queued ahead of a `lane` request (that lane's; for bulk,
    /// both lanes') should take at the throughput seen so far, so a rejected client neither
    /// hammers the queue nor waits far longer than needed.
    pub(crate) fn retry_after_ms(&self, lane: Lane) -> u64 {
        let rows = self.rows.load(Relaxed);
        let busy_nanos: u64 = self
            .devices
            .iter()
            .map(|d| d.busy_nanos.load(Relaxed))
            .sum();
        if rows == 0 || busy_nanos == 0 {
            return 100;
        }
        let nanos_per_row = busy_nanos as f64 / rows as f64 / self.devices.len() as f64;
        let depth = match lane {
            Lane::Interactive => self.depth(lane),
            Lane::Bulk => Lane::ALL.iter().map(|&l| self.depth(l)).sum(),
        } as f64;
        ((depth * nanos_per_row / 1e6) as u64).clamp(10, 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_measured_throughput() {
        let counters = Counters::new(vec!["cpu".into()]);
        assert_eq!(counters.retry_after_ms(Lane::Interactive), 100);
        counters.record_batch(&BatchRecord {
            device: 0,
            rows: 100,
            real_tokens: 1000,
            padded_tokens: 1200,
            busy: Duration::from_secs(1),
        });
        counters.add_depth(Lane::Interactive, 500);
        assert_eq!(counters.retry_after_ms(Lane::Interactive), 5000);
        counters.add_depth(Lane::Bulk, 500);
        assert_eq!(counters.retry_after_ms(Lane::Interactive), 5000);
        assert_eq!(counters.retry_after_ms(Lane::Bulk), 10_000);
        let stats = counters.snapshot();
        assert_eq!(
            (stats.batches, stats.rows, stats.padded_tokens),
            (1, 100, 1200)
        );
        assert_eq!(stats.devices[0].busy_seconds, 1.0);
    }
}
