//! Pure computation of `status` from what was observed; no timestamps change unless a
//! condition's status does, so a converged KnowledgeBase's status never churns.

use super::pods::PodProblem;
use super::storage::Refusal;
use super::validate::Invalid;
use crate::crd::{BackupStatus, ConditionType, KnowledgeBaseStatus, ModelRollout, StorageStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// How far this reconcile got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every child was applied.
    Applied,
    /// `spec.paused`: nothing was applied.
    Paused,
    /// The spec or its references are invalid; nothing was applied.
    Invalid(Invalid),
    /// Applying a child failed (will be retried); the other children were applied.
    ApplyFailed(String),
    /// An object with a child's name exists and was not created by this KnowledgeBase;
    /// it is left alone (the other children were applied).
    AdoptionRefused(String),
}

/// State of the children, read from the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Worker replicas wanted (the HPA's choice when autoscaling).
    pub desired_replicas: i32,
    /// `spec.autoscaling.minReplicas` when autoscaling: replicas the autoscaler adds
    /// above it are capacity, not a condition of readiness.
    pub autoscaling_min: Option<i32>,
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The worker StatefulSet's rollout: whether its controller has seen the current spec
    /// and how many pods run the newest revision.
    pub rollout: Rollout,
    pub redis: RedisObserved,
    pub backup: BackupObserved,
    /// The backup Jobs (scheduled and on demand); `None` without `spec.backup`.
    pub backup_jobs: Option<BackupJobs>,
    /// The `knowledge.dev/backup-now` value a Job exists or was just started for.
    pub backup_request: Option<String>,
    /// Why a worker pod is not serving (the first problem found).
    pub pod_problem: Option<PodProblem>,
    /// The data volumes' sizes (`status.storage`); `None` where not observed.
    pub storage: Option<StorageStatus>,
    /// A volume change that could not be made.
    pub storage_refusal: Option<Refusal>,
    /// The worker image and upgrades.
    pub upgrade: UpgradeObserved,
    /// The model `spec.embedding` names ([`crate::crd::Embedding::model_ref`]).
    pub model: String,
    /// A model change's re-index progress, as the new model's workers report it.
    pub reindex: super::progress::ReindexSeen,
    /// Workers a change of the model adds (`spec.embedding.rollout.maxSurge`) and the
    /// GPUs they request together.
    pub surge: Surge,
}

/// Workers added for a change of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Surge {
    pub replicas: i32,
    pub gpus: i32,
    /// The scheduler's words for an added worker no node fits.
    pub unschedulable: Option<String>,
}

/// The worker image in use and the upgrade waiting, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeObserved {
    pub worker_image: Option<String>,
    /// A newer default image not moved to yet.
    pub available: Option<String>,
    /// Why an operator-caused rollout waits for its turn.
    pub queued: Option<String>,
    /// `spec.updatePolicy: supervised`.
    pub supervised: bool,
}

/// The worker StatefulSet's rollout state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `status.observedGeneration == metadata.generation`.
    pub observed: bool,
    /// Pods running the newest revision (`status.updatedReplicas`).
    pub updated_replicas: i32,
    /// `status.currentRevision == status.updateRevision`.
    pub on_newest_revision: bool,
    /// Pods of the newest revision that are ready.
    pub updated_ready: i32,
}

impl Default for Rollout {
    /// A StatefulSet whose controller is up to date (tests of other conditions).
    fn default() -> Self {
        Rollout {
            observed: true,
            updated_replicas: i32::MAX,
            on_newest_revision: true,
            updated_ready: i32::MAX,
        }
    }
}

/// What the backup Jobs that still exist tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupJobs {
    /// The newest successful Job: when it completed, its name, and its pod's report while
    /// the pod exists.
    pub last_success: Option<(Time, String, Option<BackupReport>)>,
    /// Jobs that failed after the last success, and the newest failure time.
    pub failures_since_success: i32,
    pub last_failure: Option<Time>,
}

/// The result line `kb-worker backup --report` wrote (the Job pod's termination message).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct BackupReport {
    pub name: String,
    pub sequence: i64,
    pub bytes: i64,
}

/// Redis as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RedisObserved {
    #[default]
    NotConfigured,
    External,
    Managed {
        ready: bool,
    },
}

/// Backups as observed on the CronJob.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BackupObserved {
    #[default]
    NotConfigured,
    Suspended,
    Scheduled {
        last_schedule: Option<Time>,
        last_success: Option<Time>,
        running: bool,
    },
}

/// One condition before timestamps: status, reason, message.
type Verdict = (&'static str, &'static str, String);

/// The status for `outcome` and `observed`; `previous` keeps transition times stable.
pub fn status(
    generation: Option<i64>,
    outcome: &Outcome,
    observed: &Observed,
    previous: Option<&KnowledgeBaseStatus>,
    base: KnowledgeBaseStatus,
    now: &Time,
) -> KnowledgeBaseStatus {
    let (model, model_rollout) = model::rollout(observed, previous, now);
    let conditions = verdicts(outcome, observed, model_rollout.as_ref())
        .into_iter()
        .map(|(kind, (status, reason, message))| {
            let old = previous.and_then(|p| p.condition(kind));
            let last_transition_time = match old {
                Some(old) if old.status == status => old.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: kind.as_str().to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    let backup = backup_status(observed, previous.and_then(|p| p.backup.as_ref()));
    let last_backup = match &observed.backup {
        BackupObserved::Scheduled { last_success, .. } => last_success.clone(),
        _ => previous.and_then(|p| p.last_backup.clone()),
    };
    // An on-demand backup is newer than the schedule's last one.
    let from_jobs = backup.as_ref().and_then(|b| b.last_success_time.clone());
    let last_backup = match (last_backup, from_jobs) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    KnowledgeBaseStatus {
        observed_generation: generation,
        conditions,
        replicas: observed.replicas,
        ready_replicas: observed.ready_replicas,
        last_backup,
        backup,
        worker_image: observed.upgrade.worker_image.clone(),
        available_worker_image: observed.upgrade.available.clone(),
        storage: observed
            .storage
            .clone()
            .or_else(|| previous.and_then(|p| p.storage.clone())),
        model: Some(model),
        model_rollout,
        ..base
    }
}

/// `status.backup` from the Jobs; what a vanished pod can no longer tell (the report of
/// the same Job) and a request whose Job is gone are kept from `previous`, and so is the
/// whole block once `spec.backup` is removed (like `lastBackup`: history, not state).
fn backup_status(observed: &Observed, previous: Option<&BackupStatus>) -> Option<BackupStatus> {
    let Some(jobs) = observed.backup_jobs.as_ref() else {
        return previous.cloned();
    };
    let mut status = BackupStatus {
        failures_since_last_success: jobs.failures_since_success,
        last_failure_time: jobs.last_failure.clone(),
        last_request: observed
            .backup_request
            .clone()
            .or_else(|| previous.and_then(|p| p.last_request.clone())),
        ..BackupStatus::default()
    };
    match &jobs.last_success {
        Some((time, job, report)) => {
            status.last_success_time = Some(time.clone());
            status.last_job = Some(job.clone());
            match report {
                Some(r) => {
                    status.last_backup_name = Some(r.name.clone());
                    status.last_backup_sequence = Some(r.sequence);
                    status.last_backup_bytes = Some(r.bytes);
                }
                None => {
                    if let Some(p) = previous.filter(|p| p.last_job.as_ref() == Some(job)) {
                        status.last_backup_name = p.last_backup_name.clone();
                        status.last_backup_sequence = p.last_backup_sequence;
                        status.last_backup_bytes = p.last_backup_bytes;
                    }
                }
            }
        }
        // Every Job of the last success is gone (history limits): keep what was known.
        None => {
            if let Some(p) = previous {
                status.last_success_time = p.last_success_time.clone();
                status.last_job = p.last_job.clone();
                status.last_backup_name = p.last_backup_name.clone();
                status.last_backup_sequence = p.last_backup_sequence;
                status.last_backup_bytes = p.last_backup_bytes;
            }
        }
    }
    Some(status)
}

fn verdicts(
    outcome: &Outcome,
    observed: &Observed,
    model_rollout: Option<&ModelRollout>,
) -> [(ConditionType, Verdict); 6] {
    let (redis_ok, redis) = redis(&observed.redis);
    let rollout = &observed.rollout;
    let rolled_out = rollout.observed
        && rollout.on_newest_revision
        && rollout.updated_replicas >= observed.desired_replicas;
    let workers_ready = observed.ready_replicas >= observed.desired_replicas && rolled_out;
    // Scaling out: every replica the KnowledgeBase needs serves on the current revision;
    // those the autoscaler just added are still starting.
    let scaling_out = !workers_ready
        && rolled_out
        && observed.autoscaling_min.is_some_and(|min| {
            observed.ready_replicas >= min.max(1).min(observed.desired_replicas)
        });
    let ready_verdict = match scaling_out && redis_ok && outcome_allows_ready(outcome) {
        true => (
            "True",
            "AllReplicasReady",
            format!(
                "{}/{} replicas ready (the autoscaler's new replicas are starting)",
                observed.ready_replicas, observed.desired_replicas
            ),
        ),
        false => ready(outcome, observed, workers_ready, redis_ok),
    };
    let progressing_verdict = match scaling_out && redis_ok {
        true if outcome_allows_ready(outcome) => (
            "True",
            "ScalingOut",
            format!(
                "{}/{} replicas ready: the autoscaler added replicas that are starting",
                observed.ready_replicas, observed.desired_replicas
            ),
        ),
        _ => match (&observed.upgrade.queued, model_rollout) {
            (_, Some(change)) if outcome_allows_ready(outcome) => (
                "True",
                "ModelRollout",
                model::message(change, observed.desired_replicas),
            ),
            (Some(why), _) if outcome_allows_ready(outcome) => {
                ("True", "UpgradeQueued", why.clone())
            }
            _ => progressing(outcome, workers_ready && redis_ok),
        },
    };
    [
        (ConditionType::Ready, ready_verdict),
        (ConditionType::Progressing, progressing_verdict),
        (
            ConditionType::Degraded,
            degraded::verdict(outcome, observed),
        ),
        (ConditionType::RedisReady, redis),
        (ConditionType::BackupSucceeded, backup(&observed.backup)),
        (ConditionType::UpdateAvailable, update(&observed.upgrade)),
    ]
}

fn update(upgrade: &UpgradeObserved) -> Verdict {
    match &upgrade.available {
        Some(image) if upgrade.supervised => (
            "True",
            "UpdateAvailable",
            format!(
                "worker image {image} is available; approve it with `kubectl annotate kb \
                 <name> knowledge.dev/approve-update={image} --overwrite`"
            ),
        ),
        Some(image) => (
            "True",
            "UpdateQueued",
            format!("worker image {image} rolls out when this KnowledgeBase's turn comes"),
        ),
        None => (
            "False",
            "UpToDate",
            match &upgrade.worker_image {
                Some(image) => format!("running {image}"),
                None => "no worker image applied yet".into(),
            },
        ),
    }
}

/// Outcomes under which readiness comes from the children alone.
fn outcome_allows_ready(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Invalid(_))
}

fn ready(outcome: &Outcome, observed: &Observed, workers_ready: bool, redis_ok: bool) -> Verdict {
    let counts = format!(
        "{}/{} replicas ready",
        observed.ready_replicas, observed.desired_replicas
    );
    let rollout = &observed.rollout;
    match outcome {
        Outcome::Invalid(invalid) => ("False", invalid.reason, invalid.message.clone()),
        _ if observed.ready_replicas < observed.desired_replicas => {
            ("False", "ReplicasNotReady", counts)
        }
        _ if !rollout.observed => (
            "False",
            "RolloutPending",
            "the StatefulSet controller has not seen the current spec yet".into(),
        ),
        _ if rollout.updated_replicas < observed.desired_replicas
            || !rollout.on_newest_revision =>
        {
            (
                "False",
                "RollingOut",
                format!(
                    "{}/{} replicas run the current revision",
                    rollout.updated_replicas.min(observed.desired_replicas),
                    observed.desired_replicas
                ),
            )
        }
        _ if !workers_ready => ("False", "ReplicasNotReady", counts),
        _ if !redis_ok => (
            "False",
            "RedisNotReady",
            "managed Redis is not ready".into(),
        ),
        _ => ("True", "AllReplicasReady", counts),
    }
}

fn progressing(outcome: &Outcome, converged: bool) -> Verdict {
    match outcome {
        Outcome::Paused => (
            "False",
            "Paused",
            "spec.paused is true: children are not reconciled".into(),
        ),
        Outcome::Invalid(_) => ("False", "Invalid", "fix the spec to continue".into()),
        Outcome::ApplyFailed(_) | Outcome::AdoptionRefused(_) => (
            "True",
            "Retrying",
            "some children could not be applied; retrying with backoff".into(),
        ),
        _ if converged => (
            "False",
            "Converged",
            "all children are up to date and ready".into(),
        ),
        _ => (
            "True",
            "RollingOut",
            "waiting for children to become ready".into(),
        ),
    }
}

/// Whether Redis allows readiness, and its condition.
fn redis(redis: &RedisObserved) -> (bool, Verdict) {
    match redis {
        RedisObserved::NotConfigured => (
            true,
            (
                "False",
                "NotConfigured",
                "spec.redis is not set: single replica with a file log".into(),
            ),
        ),
        RedisObserved::External => (
            true,
            (
                "True",
                "External",
                "external Redis is configured (not probed by the operator)".into(),
            ),
        ),
        RedisObserved::Managed { ready: true } => (
            true,
            ("True", "ManagedRedisReady", "managed Redis is ready".into()),
        ),
        RedisObserved::Managed { ready: false } => (
            false,
            (
                "False",
                "ManagedRedisNotReady",
                "managed Redis is not ready".into(),
            ),
        ),
    }
}

fn backup(backup: &BackupObserved) -> Verdict {
    let BackupObserved::Scheduled {
        last_schedule,
        last_success,
        running,
    } = backup
    else {
        return match backup {
            BackupObserved::Suspended => {
                ("Unknown", "Suspended", "spec.backup.suspend is true".into())
            }
            _ => ("False", "NotConfigured", "spec.backup is not set".into()),
        };
    };
    let Some(scheduled) = last_schedule else {
        return (
            "Unknown",
            "NoBackupYet",
            "no backup has been scheduled yet".into(),
        );
    };
    match last_success {
        Some(success) if success.0 >= scheduled.0 => (
            "True",
            "LastBackupSucceeded",
            format!("last backup completed at {}", success.0),
        ),
        _ if *running => (
            "Unknown",
            "BackupRunning",
            format!("backup scheduled at {} is running", scheduled.0),
        ),
        _ => (
            "False",
            "LastBackupFailed",
            format!("backup scheduled at {} did not succeed", scheduled.0),
        ),
    }
}

mod degraded;
pub(crate) mod model;
#[cfg(test)]
mod tests;
