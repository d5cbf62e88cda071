//! Running re-index jobs ([`ReindexJob`]): the worker that owns a job walks the source
//! collection in document order, embeds again (on the bulk lane, so queries keep their
//! priority) every document the target lacks or holds with other chunks, deletes from the
//! target what the source no longer has, and starts over until a whole pass finds nothing
//! to do. Then it logs [`Op::FinishReindex`], which every replica applies only if the two
//! collections hold the same documents at that record: writes that arrived meanwhile make
//! it a no-op and the walk goes on, so no write is lost. The job's state is the target
//! itself, so a restarted worker resumes where it was (documents already there are not
//! embedded again).

use crate::api::{Engine, Wait};
use crate::index::flat::{Differences, StoredDocument};
use crate::log::{ChunkRecord, Op, ReindexJob};
use kb_embed::{EmbedError, Lane, TextKind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Documents of the source compared with the target under one read lock.
const SCAN: usize = 4096;
/// Documents embedded and written in one step.
const BATCH: usize = 32;

/// What this worker's runs have done, by target (the jobs it runs).
#[derive(Default)]
pub struct Runs {
    runs: Mutex<BTreeMap<String, Run>>,
    /// The model the KnowledgeBase wants instead of this worker's ([`wanted`]).
    superseded: Mutex<Option<String>>,
}

/// One run of a job in this process (a restart starts a new run).
#[derive(Debug, Clone)]
pub struct Run {
    pub started: Instant,
    /// Documents embedded and written into the target by this run.
    pub embedded_documents: u64,
    pub embedded_chunks: u64,
    /// Target documents deleted because the source no longer has them.
    pub deleted_documents: u64,
    /// Whole passes over the source.
    pub passes: u64,
    /// The last failure (the run retries), if the last step failed.
    pub last_error: Option<String>,
    /// Whether the run ended (finished or cancelled).
    pub ended: bool,
}

impl Runs {
    /// This worker's run of the job into `target`, if it runs (or ran) it.
    pub fn get(&self, target: &str) -> Option<Run> {
        self.lock().get(target).cloned()
    }

    /// Every run of this process.
    pub fn all(&self) -> BTreeMap<String, Run> {
        self.lock().clone()
    }

    /// The model wanted instead of this worker's, when the spec has left it: the worker
    /// re-indexes nothing and waits to be replaced ([`wanted`]).
    pub fn superseded(&self) -> Option<String> {
        self.superseded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records [`Runs::superseded`]; the previous value.
    fn set_superseded(&self, model: Option<String>) -> Option<String> {
        let mut superseded = self.superseded.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut superseded, model)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run of `target`; false when one is already going.
    fn claim(&self, target: &str) -> bool {
        let mut runs = self.lock();
        if runs.get(target).is_some_and(|r| !r.ended) {
            return false;
        }
        runs.insert(
            target.to_string(),
            Run {
                started: Instant::now(),
                embedded_documents: 0,
                embedded_chunks: 0,
                deleted_documents: 0,
                passes: 0,
                last_error: None,
                ended: false,
            },
        );
        true
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut Run)) {
        if let Some(run) = self.lock().get_mut(target) {
            f(run);
        }
    }
}

impl Engine {
    /// Whether this worker runs `job`: it owns it and embeds with the job's model.
    pub fn runs(&self, job: &ReindexJob) -> bool {
        job.owner == self.replica && !self.is_foreign(Some(&job.binding))
    }

    /// A job re-indexing `source` for this worker's model, run by this worker, into
    /// `target` (absent: the source's name, `-` and 8 hex digits of the model digest).
    pub fn new_job(&self, source: &str, target: Option<String>) -> ReindexJob {
        let target = target.unwrap_or_else(|| {
            let digest = &self.model.digest;
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            format!("{source}-{}", &hex[..hex.len().min(8)])
        });
        ReindexJob {
            source: source.to_string(),
            target,
            binding: self.binding(),
            owner: self.replica.clone(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Starts a run of every job this worker runs (after a restart: resumes them), and
/// cancels the jobs it owns for another model than its own: its model changed back since
/// it started them (a reverted rollout), and nobody else would run them.
pub async fn resume(engine: &Arc<Engine>) {
    let jobs: Vec<ReindexJob> = engine.store.view().jobs.values().cloned().collect();
    for job in jobs {
        if engine.runs(&job) {
            tracing::info!(
                source = job.source,
                target = job.target,
                "resuming the re-index"
            );
            tokio::spawn(run(engine.clone(), job.target));
        } else if job.owner == engine.replica {
            let cancel = Op::CancelReindex {
                target: job.target.clone(),
            };
            match engine.write(vec![cancel], Wait::Applied).await {
                Ok(_) => tracing::warn!(
                    source = job.source,
                    target = job.target,
                    model = %engine.model.describe(),
                    "re-index cancelled: this worker started it for another model than the one \
                     it runs now (the model change was reverted); the target is dropped, the \
                     source untouched"
                ),
                Err(e) => tracing::warn!(target = job.target, error = %e,
                    "could not cancel a re-index for another model; retried at the next start"),
            }
        }
    }
}

/// Starts a job for every collection of another model that no job re-indexes for this
/// worker's model yet (`on_model_mismatch: reindex`), into the default target name.
/// Another replica of the same model may start one first: its job is taken as is.
pub async fn start_for_mismatched(engine: &Arc<Engine>) {
    let view = engine.store.view();
    let sources: Vec<String> = view
        .collections
        .iter()
        .filter(|(name, c)| {
            engine.is_foreign(c.binding.as_ref())
                && !view.jobs.contains_key(*name)
                && view.jobs.values().all(|j| j.source != **name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for source in sources {
        let job = engine.new_job(&source, None);
        let target = job.target.clone();
        match engine
            .write(vec![Op::StartReindex { job }], Wait::Applied)
            .await
        {
            Ok(_) => {
                tracing::warn!(source, target, model = %engine.model.describe(),
                    "collection of another model: re-indexing it for this worker's model \
                     (on_model_mismatch: reindex); not ready until done");
                tokio::spawn(run(engine.clone(), target));
            }
            Err(e) => tracing::warn!(source, target, error = %e, "could not start a re-index"),
        }
    }
}

/// Runs the job into `target` until it finishes or is cancelled.
pub async fn run(engine: Arc<Engine>, target: String) {
    if !engine.reindex.claim(&target) {
        return;
    }
    let mut after: Option<String> = None;
    // Whether the pass under way has found nothing to do so far.
    let mut clean = true;
    let mut backoff = Duration::from_millis(100);
    while let Some(job) = engine.store.view().jobs.get(&target).cloned() {
        let step = match step(&engine, &job, after.clone(), &mut clean).await {
            Ok(step) => {
                backoff = Duration::from_millis(100);
                engine.reindex.update(&target, |r| r.last_error = None);
                step
            }
            Err(e) => {
                tracing::warn!(target, error = %e, retry_ms = backoff.as_millis() as u64, "re-index step failed; retrying");
                engine
                    .reindex
                    .update(&target, |r| r.last_error = Some(e.clone()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        after = step;
        if after.is_some() {
            continue;
        }
        engine.reindex.update(&target, |r| r.passes += 1);
        if clean {
            // A whole pass without differences: finish (a no-op if writes came since).
            let finish = Op::FinishReindex {
                target: target.clone(),
            };
            if let Err(e) = engine.write(vec![finish], Wait::Applied).await {
                tracing::warn!(target, error = %e, "could not log the end of the re-index; retrying");
                tokio::time::sleep(backoff).await;
            } else if !engine.store.view().jobs.contains_key(&target) {
                tracing::info!(
                    source = job.source,
                    target,
                    "re-index finished: {} now stands for {target}",
                    job.source
                );
                break;
            }
        }
        clean = true;
    }
    engine.reindex.update(&target, |r| r.ended = true);
}

/// One step from `after`: compares, embeds and writes; returns where the next starts.
async fn step(
    engine: &Arc<Engine>,
    job: &ReindexJob,
    after: Option<String>,
    clean: &mut bool,
) -> Result<Option<String>, String> {
    let (store, source, target) = (engine.store.clone(), job.source.clone(), job.target.clone());
    let diff = tokio::task::spawn_blocking(move || {
        let index = store.index();
        match (index.get(&source), index.get(&target)) {
            (Some(s), Some(t)) => Some(s.differences(t, after.as_deref(), SCAN, BATCH)),
            _ => None,
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    // The job ended under us (finished or cancelled): the loop sees it.
    let Some(Differences {
        stale, extra, next, ..
    }) = diff
    else {
        return Ok(None);
    };
    if stale.is_empty() && extra.is_empty() {
        return Ok(next);
    }
    *clean = false;
    let chunks = stale.iter().map(|d| d.chunks.len() as u64).sum::<u64>();
    let mut ops = embed(engine, &job.target, &stale).await?;
    ops.extend(extra.iter().map(|id| Op::Delete {
        collection: job.target.clone(),
        doc_id: id.clone(),
    }));
    engine
        .write(ops, Wait::Applied)
        .await
        .map_err(|e| e.to_string())?;
    engine.reindex.update(&job.target, |r| {
        r.embedded_documents += stale.len() as u64;
        r.embedded_chunks += chunks;
        r.deleted_documents += extra.len() as u64;
    });
    Ok(next)
}

/// The upserts that put `docs` into `target` with this worker's vectors of their chunks.
async fn embed(
    engine: &Arc<Engine>,
    target: &str,
    docs: &[StoredDocument],
) -> Result<Vec<Op>, String> {
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|d| d.chunks.iter().map(|c| c.text.clone()))
        .collect();
    let embedded = loop {
        match (engine.embedder)
            .embed_as(Lane::Bulk, TextKind::Document, texts.clone())
            .await
        {
            // The bulk lane is full of ingestion: wait for room rather than fail.
            Err(EmbedError::QueueFull { retry_after_ms }) => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms.clamp(10, 5000))).await;
            }
            other => break other.map_err(|e| e.to_string())?,
        }
    };
    let mut vectors = embedded.vectors.into_iter();
    Ok(docs
        .iter()
        .map(|d| Op::Upsert {
            collection: target.to_string(),
            doc_id: d.id.clone(),
            chunks: d
                .chunks
                .iter()
                .map(|row| ChunkRecord {
                    chunk_id: row.chunk_id.clone(),
                    text: row.text.clone(),
                    metadata: row.metadata.clone(),
                    vector: vectors.next().unwrap_or_default(),
                })
                .collect(),
        })
        .collect())
}

/// The progress of a job as anyone may ask for it: documents of the source the target
/// holds as they are, out of the source's (exact, one comparison of the two).
pub fn progress(engine: &Engine, job: &ReindexJob) -> (usize, usize) {
    let index = engine.store.index();
    match (index.get(&job.source), index.get(&job.target)) {
        (Some(s), Some(t)) => (s.matching_documents(t), s.stats().documents),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests;
pub mod wanted;
