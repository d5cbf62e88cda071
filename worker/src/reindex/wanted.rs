//! Following the model the KnowledgeBase wants (`KB_MODEL_REF`, `KB_WANTED_MODEL_FILE`).
//!
//! With `on_model_mismatch: reindex` a worker re-indexes every collection of another model
//! for its own. That is right for a worker of the model the KnowledgeBase wants, and wrong
//! for one the spec has left: a pod of the old model that restarts after the new model's
//! re-index swapped the data (its turn in the rolling update has not come yet) would start
//! re-indexing the data back, and its job's swap would undo the change for every replica.
//! The operator writes the wanted model into a file every worker reads again here; a worker
//! whose own model is not that one is *superseded*: it starts no job, cancels the jobs it
//! runs (a revert of the spec mid-way), stays unready for collections of another model
//! (their requests go to a peer that can embed for them) and does not stop over them (the
//! rolling update replaces it). Without the file (older operators, a worker outside
//! Kubernetes) every worker follows its own model, as before.

use super::start_for_mismatched;
use crate::api::{Engine, Wait};
use crate::log::Op;
use kb_config::WorkerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the wanted model is read again (the kubelet updates the mounted file within
/// about a minute of a change).
pub const PERIOD: Duration = Duration::from_secs(10);

/// This worker's model and where the wanted one is written, in the operator's form.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    pub own: Option<String>,
    pub file: Option<PathBuf>,
}

impl Wanted {
    pub fn from_config(cfg: &WorkerConfig) -> Self {
        Self {
            own: cfg.model_ref.clone(),
            file: cfg.wanted_model_file.clone(),
        }
    }

    /// The model wanted instead of this worker's, if the file names another one (an
    /// unreadable or empty file names none).
    pub fn elsewhere(&self) -> Option<String> {
        let (own, file) = (self.own.as_deref()?, self.file.as_ref()?);
        let wanted = std::fs::read_to_string(file).ok()?;
        let wanted = wanted.trim();
        (!wanted.is_empty() && wanted != own).then(|| wanted.to_string())
    }
}

/// One look at the wanted model: records whether this worker is superseded, and starts
/// the re-index of mismatched collections (not superseded) or cancels the jobs it runs
/// (superseded).
pub async fn check(engine: &Arc<Engine>, wanted: &Wanted) {
    let elsewhere = wanted.elsewhere();
    let before = engine.reindex.set_superseded(elsewhere.clone());
    match elsewhere {
        None => start_for_mismatched(engine).await,
        Some(model) => {
            if before.as_ref() != Some(&model) {
                tracing::warn!(
                    wanted = model,
                    own = wanted.own.as_deref().unwrap_or(""),
                    "the KnowledgeBase wants another model than this worker's: it re-indexes \
                     nothing and waits to be replaced"
                );
            }
            cancel_own(engine, &model).await;
        }
    }
}

/// [`check`] every `period` (after the one at start), when there is a file to follow.
pub async fn follow(engine: Arc<Engine>, wanted: Wanted, period: Duration) {
    if wanted.file.is_none() || wanted.own.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(period).await;
        check(&engine, &wanted).await;
    }
}

/// Cancels the jobs this worker runs (for its own model): `model` is wanted instead.
async fn cancel_own(engine: &Arc<Engine>, model: &str) {
    let jobs: Vec<_> = engine
        .store
        .view()
        .jobs
        .values()
        .filter(|job| engine.runs(job))
        .cloned()
        .collect();
    for job in jobs {
        let cancel = Op::CancelReindex {
            target: job.target.clone(),
        };
        match engine.write(vec![cancel], Wait::Applied).await {
            Ok(_) => tracing::warn!(
                source = job.source,
                target = job.target,
                wanted = model,
                "re-index cancelled: the KnowledgeBase wants another model now; the target is \
                 dropped, the source untouched"
            ),
            Err(e) => tracing::warn!(target = job.target, error = %e,
                "could not cancel a re-index for a model no longer wanted; retried"),
        }
    }
}
