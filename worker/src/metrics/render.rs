//! The sampled gauges, refreshed from the engine at each scrape, and the rendering.

use super::{
    BudgetLabels, CollectionLabels, EngineLabels, GpuLabels, LaneLabels, LayoutLabels, Metrics,
    PrecisionLabels, ReindexLabels,
};
use crate::api::AppState;
use prometheus_client::encoding::text::encode;

impl Metrics {
    /// Refreshes the sampled gauges and renders the text exposition format.
    pub fn render(&self, state: &AppState) -> String {
        if let Ok(engine) = state.engine() {
            let s = engine.embedder.stats();
            self.embed_batches.set(s.batches as i64);
            self.embed_rows.set(s.rows as i64);
            self.embed_tokens.set(s.real_tokens as i64);
            self.embed_padded_tokens.set(s.padded_tokens as i64);
            for device in engine.embedder.devices() {
                self.embed_device_info
                    .get_or_create(&EngineLabels {
                        device,
                        precision: engine.embedder.precision(),
                    })
                    .set(1);
            }
            for trial in engine
                .embedder
                .calibration()
                .map_or(&[][..], |c| c.trials.as_slice())
            {
                let labels = PrecisionLabels {
                    precision: trial.precision.clone(),
                };
                self.embed_calibration_seconds
                    .get_or_create(&labels)
                    .set(trial.seconds);
                self.embed_calibration_min_cosine
                    .get_or_create(&labels)
                    .set(f64::from(trial.min_cosine));
            }
            if let Some(layout) = engine.embedder.layout_calibration() {
                for trial in &layout.trials {
                    let name = trial.name();
                    let labels = LayoutLabels {
                        chosen: (name == layout.chosen).to_string(),
                        layout: name,
                    };
                    self.embed_layout_texts_per_second
                        .get_or_create(&labels)
                        .set(trial.texts_per_second);
                }
            }
            if let Some(budget) = engine.embedder.bulk_budget_calibration() {
                for trial in &budget.trials {
                    let tokens = trial.tokens.to_string();
                    let labels = BudgetLabels {
                        chosen: (tokens == budget.chosen).to_string(),
                        tokens,
                    };
                    self.embed_bulk_budget_tokens_per_second
                        .get_or_create(&labels)
                        .set(trial.tokens_per_second);
                }
            }
            let reranker = engine.reranker.as_ref().and_then(|(r, _)| r.calibration());
            for trial in reranker.map_or(&[][..], |c| c.trials.as_slice()) {
                let labels = PrecisionLabels {
                    precision: trial.precision.clone(),
                };
                self.rerank_calibration_seconds
                    .get_or_create(&labels)
                    .set(trial.seconds);
                self.rerank_calibration_max_logit_error
                    .get_or_create(&labels)
                    .set(f64::from(trial.max_logit_error));
            }
            for lane in &s.lanes {
                let labels = LaneLabels { lane: lane.lane };
                self.embed_queue_depth
                    .get_or_create(&labels)
                    .set(lane.depth as i64);
                self.embed_rejected
                    .get_or_create(&labels)
                    .set(lane.rejected as i64);
            }
            self.embed_busy_seconds
                .set(s.devices.iter().map(|d| d.busy_seconds).sum());
            let view = engine.store.view();
            self.index_chunks.clear();
            self.model_mismatch.clear();
            for (name, c) in &view.collections {
                let labels = CollectionLabels {
                    collection: name.clone(),
                };
                self.index_chunks
                    .get_or_create(&labels)
                    .set(c.chunks as i64);
                // A re-index target is built for the next model, and a source that a job
                // re-indexes for this worker's model is being mended: neither needs anyone.
                let mismatch = engine.is_foreign(c.binding.as_ref()) && !engine.mended(&view, name);
                self.model_mismatch
                    .get_or_create(&labels)
                    .set(i64::from(mismatch));
            }
            self.reindex_documents.clear();
            let runs = engine.reindex.all();
            for job in view.jobs.values() {
                let labels = |kind| ReindexLabels {
                    job: job.target.clone(),
                    kind,
                };
                let source = view.get(&job.source).map_or(0, |c| c.documents);
                self.reindex_documents
                    .get_or_create(&labels("source"))
                    .set(source as i64);
                if let Some(run) = runs.get(&job.target) {
                    self.reindex_documents
                        .get_or_create(&labels("embedded"))
                        .set(run.embedded_documents as i64);
                }
            }
            self.applied_sequence.set(view.applied as i64);
            self.writes_halted
                .set(i64::from(engine.store.halted().is_some()));
            self.snapshot_failures
                .set(i64::from(engine.store.health().snapshot_failures));
            if let Some(last) = engine.store.last_snapshot() {
                self.snapshot_sequence.set(last.sequence as i64);
                self.snapshot_bytes.set(last.bytes as i64);
                self.snapshot_seconds.set(last.seconds);
                self.snapshot_timestamp.set(last.finished_unix);
            }
            self.log_sequence.set(engine.log_seq() as i64);
            if let Some(replicator) = &engine.replicator {
                let status = replicator.status();
                self.replication_lag.set(status.lag as i64);
                self.redis_connected.set(i64::from(status.redis_connected));
                self.replication_regressed
                    .set(i64::from(status.regressed.is_some()));
            }
            let caught_up = engine.replicator.as_ref().is_none_or(|r| r.is_caught_up());
            // As `/readyz`: a collection being re-indexed for this model is not ready yet.
            let matched = engine.mismatched(&view).is_empty();
            self.ready.set(i64::from(
                caught_up && matched && engine.store.halted().is_none(),
            ));
            if let Some((free, total)) = volume_space(engine.store.data_dir()) {
                self.volume_free.set(free as i64);
                self.volume_total.set(total as i64);
            }
        } else {
            self.ready.set(0);
        }
        let host = crate::host::HostMemory::probe();
        self.host_limit.set(host.limit.unwrap_or(0) as i64);
        self.host_working_set.set(host.working_set as i64);
        self.gpu_total.clear();
        self.gpu_used.clear();
        self.gpu_cached.clear();
        for gpu in crate::gpu::sampled_devices() {
            let labels = GpuLabels {
                device: format!("cuda:{}", gpu.ordinal),
                name: gpu.name,
            };
            self.gpu_total
                .get_or_create(&labels)
                .set(gpu.total_bytes as i64);
            self.gpu_used
                .get_or_create(&labels)
                .set(gpu.total_bytes.saturating_sub(gpu.free_bytes) as i64);
            self.gpu_cached
                .get_or_create(&labels)
                .set(gpu.cached_bytes as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Free (available to this user) and total bytes of the filesystem holding `path`.
fn volume_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable
    // memory of the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 or u64); all fit in u64.
    #[allow(clippy::unnecessary_cast)]
    let (block, available, blocks) = (
        stat.f_frsize as u64,
        stat.f_bavail as u64,
        stat.f_blocks as u64,
    );
    Some((available * block, blocks * block))
}
