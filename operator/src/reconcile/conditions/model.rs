//! `status.model` and `status.modelRollout`: a change of the embedding model as the
//! operator sees it (the workers do the re-index; docs/operator.md, "Changing the model").

use super::Observed;
use crate::crd::{KnowledgeBaseStatus, ModelRollout};
use crate::reconcile::progress::ReindexSeen;
use crate::reconcile::surge::REPLACING;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// `status.model` and `status.modelRollout`. The first observation takes the spec's model
/// (a new KnowledgeBase, or one from a release without the field); after that, a spec
/// naming another model is a rollout until every wanted worker runs the newest revision
/// and is ready, and a spec naming `status.model` again (a revert) ends it.
pub(super) fn rollout(
    observed: &Observed,
    previous: Option<&KnowledgeBaseStatus>,
    now: &Time,
) -> (String, Option<ModelRollout>) {
    let spec = &observed.model;
    let Some(stored) = previous.and_then(|p| p.model.clone()) else {
        return (spec.clone(), None);
    };
    let rollout = &observed.rollout;
    let done = rollout.observed
        && rollout.on_newest_revision
        && rollout.updated_replicas >= observed.desired_replicas
        && rollout.updated_ready >= observed.desired_replicas;
    if &stored == spec || done {
        return (spec.clone(), None);
    }
    let started = previous
        .and_then(|p| p.model_rollout.as_ref())
        .filter(|r| &r.to == spec)
        .map_or_else(|| now.clone(), |r| r.started.clone());
    // Until the StatefulSet's controller has seen the change, its counts are the old
    // revision's.
    let (updated, ready) = match rollout.observed {
        true => (rollout.updated_replicas, rollout.updated_ready),
        false => (0, 0),
    };
    // Once a worker of the new model served, the data is swapped and the old workers are
    // being replaced: the phase stays (the added workers' partition depends on it) while
    // the StatefulSet's controller catches up with each step.
    let replacing = ready > 0 || self::replacing(previous, spec);
    let surge = &observed.surge;
    let (phase, message) = match (replacing, &surge.unschedulable) {
        (true, _) => (REPLACING, None),
        (false, Some(why)) => ("WaitingForCapacity", Some(why.clone())),
        (false, None) => ("Reindexing", None),
    };
    let mut change = ModelRollout {
        from: stored.clone(),
        to: spec.clone(),
        phase: phase.to_string(),
        surge_replicas: surge.replicas,
        surge_gpus: surge.gpus,
        message,
        started,
        updated_replicas: updated.min(observed.desired_replicas),
        updated_ready_replicas: ready.min(observed.desired_replicas),
        documents_done: None,
        documents_total: None,
        estimated_finish: None,
        progress_time: None,
    };
    progress(&mut change, observed, previous, now);
    (stored, Some(change))
}

/// The re-index figures change with every answer, and each status write brings another
/// reconcile: figures younger than this are kept, so a rollout writes its status at most
/// this often for them.
const PROGRESS_EVERY_SECONDS: i64 = 10;

/// Whether the previous status says a change to `to` swapped the data already (phase
/// `Replacing`).
pub(crate) fn replacing(previous: Option<&KnowledgeBaseStatus>, to: &str) -> bool {
    previous
        .and_then(|p| p.model_rollout.as_ref())
        .is_some_and(|r| r.to == to && r.phase == REPLACING)
}

/// The previous status's change to `to` when its re-index figures are younger than
/// [`PROGRESS_EVERY_SECONDS`]: they are kept, and the workers are not asked again.
pub(crate) fn fresh_progress<'a>(
    previous: Option<&'a KnowledgeBaseStatus>,
    to: &str,
    now: &Time,
) -> Option<&'a ModelRollout> {
    previous
        .and_then(|p| p.model_rollout.as_ref())
        .filter(|r| r.to == to)
        .filter(|r| {
            r.progress_time
                .as_ref()
                .is_some_and(|t| now.0.as_second() - t.0.as_second() < PROGRESS_EVERY_SECONDS)
        })
}

/// `change`'s re-index figures: none when the workers report no job (not started, or
/// done), else the previous figures while fresh, else what the workers said.
fn progress(
    change: &mut ModelRollout,
    observed: &Observed,
    previous: Option<&KnowledgeBaseStatus>,
    now: &Time,
) {
    if observed.reindex == ReindexSeen::None {
        return;
    }
    if let Some(last) = fresh_progress(previous, &change.to, now) {
        change.documents_done = last.documents_done;
        change.documents_total = last.documents_total;
        change.estimated_finish = last.estimated_finish.clone();
        change.progress_time = last.progress_time.clone();
        return;
    }
    let ReindexSeen::Reported(reindex) = &observed.reindex else {
        return;
    };
    let at = |seconds: f64| {
        let second = now.0.as_second().saturating_add(seconds.ceil() as i64);
        jiff::Timestamp::from_second(second).ok().map(Time)
    };
    change.documents_done = Some(reindex.documents_done as i64);
    change.documents_total = Some(reindex.documents_total as i64);
    change.estimated_finish = reindex.eta_seconds.and_then(at);
    change.progress_time = at(0.0);
}

/// `Progressing`'s message during a change of the model.
pub(super) fn message(change: &ModelRollout, desired: i32) -> String {
    let mut message = format!(
        "changing the embedding model from {} to {}: {} ({}/{} workers on the new model \
         ready); progress on the workers' GET /v1/jobs",
        change.from, change.to, change.phase, change.updated_ready_replicas, desired
    );
    if change.surge_replicas > 0 {
        let gpus = match change.surge_gpus {
            0 => String::new(),
            n => format!(" with {n} GPUs"),
        };
        message.push_str(&format!(
            "; it adds {} worker(s){gpus} while the current ones serve",
            change.surge_replicas
        ));
    }
    if let Some(why) = &change.message {
        message.push_str(&format!("; waiting: {why}"));
    }
    message
}

/// An Event at each phase of a model change: started, the new model serving, finished
/// or reverted.
pub(crate) fn event(
    before: Option<&KnowledgeBaseStatus>,
    after: &KnowledgeBaseStatus,
) -> Option<(&'static str, String)> {
    let old = before.and_then(|s| s.model_rollout.as_ref());
    match (old, after.model_rollout.as_ref()) {
        (None, Some(new)) => Some((
            "ModelRolloutStarted",
            format!(
                "embedding model {} -> {}: {} re-indexes the stored texts while the others \
                 serve",
                new.from,
                new.to,
                match new.surge_replicas {
                    0 => "the first worker of the new model".to_string(),
                    n => format!("{n} added worker(s) of the new model"),
                }
            ),
        )),
        (Some(old), Some(new)) if old.to != new.to => Some((
            "ModelRolloutStarted",
            format!(
                "embedding model {} -> {} (instead of {})",
                new.from, new.to, old.to
            ),
        )),
        (Some(old), Some(new)) if old.phase != new.phase && new.phase == "WaitingForCapacity" => {
            Some((
                "ModelRolloutWaitingForCapacity",
                format!(
                    "no node fits the {} worker(s) added for {} yet: {}; the current workers \
                     keep serving",
                    new.surge_replicas,
                    new.to,
                    new.message.as_deref().unwrap_or("unschedulable")
                ),
            ))
        }
        (Some(old), Some(new)) if old.phase != new.phase && new.phase == REPLACING => Some((
            "ModelRolloutServing",
            format!(
                "a worker of {} finished re-indexing and serves; replacing the others",
                new.to
            ),
        )),
        (Some(old), None) if after.model.as_ref() == Some(&old.to) => Some((
            "ModelRolloutFinished",
            format!("every worker runs embedding model {}", old.to),
        )),
        (Some(old), None) => Some((
            "ModelRolloutReverted",
            format!(
                "spec.embedding names {} again: the change to {} is abandoned (a re-index \
                 under way is cancelled by its worker)",
                old.from, old.to
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::Rollout;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    /// Three workers wanted, `updated` of them on the newest revision, `ready` of those
    /// ready.
    fn observed(model: &str, seen: bool, updated: i32, ready: i32) -> Observed {
        Observed {
            desired_replicas: 3,
            model: model.to_string(),
            rollout: Rollout {
                observed: seen,
                updated_replicas: updated,
                on_newest_revision: updated == 3,
                updated_ready: ready,
            },
            ..Observed::default()
        }
    }

    fn status(model: &str, rollout: Option<ModelRollout>) -> KnowledgeBaseStatus {
        KnowledgeBaseStatus {
            model: Some(model.to_string()),
            model_rollout: rollout,
            ..KnowledgeBaseStatus::default()
        }
    }

    #[test]
    fn a_change_is_reindexing_then_replacing_until_every_worker_runs_it_ready() {
        // First observation: the spec's model is the data's.
        assert_eq!(
            rollout(&observed("a", true, 3, 3), None, &at(1)),
            ("a".into(), None)
        );
        let old = status("a", None);
        assert_eq!(
            rollout(&observed("a", true, 3, 3), Some(&old), &at(2)),
            ("a".into(), None)
        );
        // The spec names b; the StatefulSet has not seen it yet.
        let (model, change) = rollout(&observed("b", false, 3, 3), Some(&old), &at(10));
        let change = change.unwrap();
        assert_eq!(model, "a", "the data is still a's");
        assert_eq!(
            (
                change.from.as_str(),
                change.to.as_str(),
                change.phase.as_str()
            ),
            ("a", "b", "Reindexing")
        );
        assert_eq!(
            (change.updated_replicas, change.started.clone()),
            (0, at(10))
        );
        // One pod of b, re-indexing (not ready): still Reindexing, started kept.
        let during = status("a", Some(change));
        let (_, change) = rollout(&observed("b", true, 1, 0), Some(&during), &at(20));
        let change = change.unwrap();
        assert_eq!(
            (change.phase.as_str(), change.started.clone()),
            ("Reindexing", at(10))
        );
        // It serves: the others are being replaced.
        let during = status("a", Some(change));
        let (_, change) = rollout(&observed("b", true, 2, 1), Some(&during), &at(30));
        let change = change.unwrap();
        assert_eq!(
            (change.phase.as_str(), change.updated_ready_replicas),
            ("Replacing", 1)
        );
        // The StatefulSet's controller has not seen the next step yet (no counts): the
        // phase holds, it never goes back to Reindexing.
        let during = status("a", Some(change));
        let (_, held) = rollout(&observed("b", false, 2, 1), Some(&during), &at(35));
        assert_eq!(held.unwrap().phase, "Replacing");
        // Every pod on b but one not ready yet: not done.
        let (model, change) = rollout(&observed("b", true, 3, 2), Some(&during), &at(40));
        assert_eq!((model.as_str(), change.is_some()), ("a", true));
        // All ready on b: done, the data is b's.
        let (model, change) = rollout(&observed("b", true, 3, 3), Some(&during), &at(50));
        assert_eq!((model.as_str(), change), ("b", None));
    }

    #[test]
    fn an_added_worker_no_node_fits_is_a_wait_for_capacity_with_the_schedulers_words() {
        let old = status("a", None);
        let waiting = Observed {
            surge: crate::reconcile::conditions::Surge {
                replicas: 2,
                gpus: 4,
                unschedulable: Some("0/3 nodes: Insufficient nvidia.com/gpu".into()),
            },
            ..observed("b", true, 0, 0)
        };
        let change = rollout(&waiting, Some(&old), &at(10)).1.unwrap();
        assert_eq!(
            (
                change.phase.as_str(),
                change.message.as_deref(),
                change.surge_replicas,
                change.surge_gpus
            ),
            (
                "WaitingForCapacity",
                Some("0/3 nodes: Insufficient nvidia.com/gpu"),
                2,
                4
            )
        );
        let text = message(&change, 3);
        assert!(
            text.contains("adds 2 worker(s) with 4 GPUs") && text.contains("Insufficient"),
            "{text}"
        );
        // Placed: re-indexing.
        let placed = Observed {
            surge: crate::reconcile::conditions::Surge {
                unschedulable: None,
                ..waiting.surge.clone()
            },
            ..waiting
        };
        let change = rollout(&placed, Some(&old), &at(20)).1.unwrap();
        assert_eq!(
            (change.phase.as_str(), change.message),
            ("Reindexing", None)
        );
    }

    #[test]
    fn reindex_figures_come_from_the_workers_and_refresh_at_most_every_ten_seconds() {
        use crate::reconcile::progress::ReindexProgress;
        let old = status("a", None);
        let reporting = |done: u64, eta: Option<f64>| Observed {
            reindex: ReindexSeen::Reported(ReindexProgress {
                documents_done: done,
                documents_total: 1000,
                eta_seconds: eta,
            }),
            ..observed("b", true, 1, 0)
        };
        // No answer yet: no figures.
        let (_, change) = rollout(&observed("b", true, 1, 0), Some(&old), &at(100));
        let change = change.unwrap();
        assert_eq!(
            (change.documents_done, change.progress_time.clone()),
            (None, None)
        );
        // The first answer: done/total, and the finish at the run's pace.
        let during = status("a", Some(change));
        let (_, change) = rollout(&reporting(250, Some(29.2)), Some(&during), &at(103));
        let change = change.unwrap();
        assert_eq!(
            (
                change.documents_done,
                change.documents_total,
                change.estimated_finish.clone(),
                change.progress_time.clone()
            ),
            (Some(250), Some(1000), Some(at(133)), Some(at(103)))
        );
        // Another answer 9 s later leaves the status as it was (no write, no new reconcile).
        let during = status("a", Some(change.clone()));
        let (_, kept) = rollout(&reporting(400, Some(20.0)), Some(&during), &at(112));
        assert_eq!(kept.unwrap(), change);
        // So does a reconcile that did not ask the workers because of that.
        let not_asked = Observed {
            reindex: ReindexSeen::Kept,
            ..observed("b", true, 1, 0)
        };
        let (_, kept) = rollout(&not_asked, Some(&during), &at(112));
        assert_eq!(kept.unwrap(), change);
        // 10 s later the new figures replace them; without an ETA, no finish.
        let (_, change) = rollout(&reporting(500, None), Some(&during), &at(113));
        let change = change.unwrap();
        assert_eq!(
            (
                change.documents_done,
                change.estimated_finish.clone(),
                change.progress_time.clone()
            ),
            (Some(500), None, Some(at(113)))
        );
        // Once the workers report no job (the new model serves), the figures go at once.
        let during = status("a", Some(change));
        let (_, change) = rollout(&observed("b", true, 2, 1), Some(&during), &at(114));
        assert_eq!(change.unwrap().documents_done, None);
    }

    #[test]
    fn a_revert_ends_the_change_and_another_model_restarts_it() {
        let (_, change) = rollout(
            &observed("b", true, 1, 0),
            Some(&status("a", None)),
            &at(10),
        );
        let during = status("a", change);
        // The spec names a again: no change under way, the data is a's.
        assert_eq!(
            rollout(&observed("a", true, 1, 0), Some(&during), &at(20)),
            ("a".into(), None)
        );
        // The spec names c instead of b: a change to c, started now.
        let (model, change) = rollout(&observed("c", true, 0, 0), Some(&during), &at(30));
        let change = change.unwrap();
        assert_eq!(
            (model.as_str(), change.to.as_str(), change.started),
            ("a", "c", at(30))
        );
    }
}
