//! Pure computation of `status` from what was observed; no timestamps change unless a
//! condition's status does, so a converged KnowledgeBase's status never churns.

use super::validate::Invalid;
use crate::crd::{ConditionType, KnowledgeBaseStatus};
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
    /// Applying a child failed (will be retried).
    ApplyFailed(String),
}

/// State of the children, read from the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Worker replicas wanted (the HPA's choice when autoscaling).
    pub desired_replicas: i32,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub redis: RedisObserved,
    pub backup: BackupObserved,
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

/// One condition before timestamps: type, status, reason, message.
type Verdict = (ConditionType, &'static str, &'static str, String);

/// The status for `outcome` and `observed`; `previous` keeps transition times stable.
pub fn status(
    generation: Option<i64>,
    outcome: &Outcome,
    observed: &Observed,
    previous: Option<&KnowledgeBaseStatus>,
    base: KnowledgeBaseStatus,
    now: &Time,
) -> KnowledgeBaseStatus {
    let conditions = verdicts(outcome, observed)
        .into_iter()
        .map(|(kind, status, reason, message)| {
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
    let last_backup = match &observed.backup {
        BackupObserved::Scheduled { last_success, .. } => last_success.clone(),
        _ => previous.and_then(|p| p.last_backup.clone()),
    };
    KnowledgeBaseStatus {
        observed_generation: generation,
        conditions,
        replicas: observed.replicas,
        ready_replicas: observed.ready_replicas,
        last_backup,
        ..base
    }
}

fn verdicts(outcome: &Outcome, observed: &Observed) -> Vec<Verdict> {
    let (redis_ok, redis) = redis(&observed.redis);
    let workers_ready = observed.ready_replicas >= observed.desired_replicas;
    let ready = match outcome {
        Outcome::Invalid(invalid) => (
            ConditionType::Ready,
            "False",
            invalid.reason,
            invalid.message.clone(),
        ),
        _ if !workers_ready => (
            ConditionType::Ready,
            "False",
            "ReplicasNotReady",
            format!(
                "{}/{} replicas ready",
                observed.ready_replicas, observed.desired_replicas
            ),
        ),
        _ if !redis_ok => (
            ConditionType::Ready,
            "False",
            "RedisNotReady",
            "managed Redis is not ready".into(),
        ),
        _ => (
            ConditionType::Ready,
            "True",
            "AllReplicasReady",
            format!(
                "{}/{} replicas ready",
                observed.ready_replicas, observed.desired_replicas
            ),
        ),
    };
    let converged = workers_ready && redis_ok;
    let progressing = match outcome {
        Outcome::Paused => (
            ConditionType::Progressing,
            "False",
            "Paused",
            "spec.paused is true: children are not reconciled".into(),
        ),
        Outcome::Invalid(_) => (
            ConditionType::Progressing,
            "False",
            "Invalid",
            "fix the spec to continue".into(),
        ),
        Outcome::ApplyFailed(_) => (
            ConditionType::Progressing,
            "True",
            "Retrying",
            "applying children failed; retrying".into(),
        ),
        _ if converged => (
            ConditionType::Progressing,
            "False",
            "Converged",
            "all children are up to date and ready".into(),
        ),
        _ => (
            ConditionType::Progressing,
            "True",
            "RollingOut",
            "waiting for children to become ready".into(),
        ),
    };
    let degraded = match outcome {
        Outcome::Invalid(invalid) => (
            ConditionType::Degraded,
            "True",
            invalid.reason,
            invalid.message.clone(),
        ),
        Outcome::ApplyFailed(message) => (
            ConditionType::Degraded,
            "True",
            "ApplyFailed",
            message.clone(),
        ),
        _ => (
            ConditionType::Degraded,
            "False",
            "AsExpected",
            "no problem found".into(),
        ),
    };
    vec![
        ready,
        progressing,
        degraded,
        redis,
        backup(&observed.backup),
    ]
}

/// Whether Redis allows readiness, and its condition.
fn redis(redis: &RedisObserved) -> (bool, Verdict) {
    let kind = ConditionType::RedisReady;
    match redis {
        RedisObserved::NotConfigured => (
            true,
            (
                kind,
                "False",
                "NotConfigured",
                "spec.redis is not set: single replica with a file log".into(),
            ),
        ),
        RedisObserved::External => (
            true,
            (
                kind,
                "True",
                "External",
                "external Redis is configured (not probed by the operator)".into(),
            ),
        ),
        RedisObserved::Managed { ready: true } => (
            true,
            (
                kind,
                "True",
                "ManagedRedisReady",
                "managed Redis is ready".into(),
            ),
        ),
        RedisObserved::Managed { ready: false } => (
            false,
            (
                kind,
                "False",
                "ManagedRedisNotReady",
                "managed Redis is not ready".into(),
            ),
        ),
    }
}

fn backup(backup: &BackupObserved) -> Verdict {
    let kind = ConditionType::BackupSucceeded;
    match backup {
        BackupObserved::NotConfigured => (
            kind,
            "False",
            "NotConfigured",
            "spec.backup is not set".into(),
        ),
        BackupObserved::Suspended => (
            kind,
            "Unknown",
            "Suspended",
            "spec.backup.suspend is true".into(),
        ),
        BackupObserved::Scheduled {
            last_schedule: None,
            ..
        } => (
            kind,
            "Unknown",
            "NoBackupYet",
            "no backup has been scheduled yet".into(),
        ),
        BackupObserved::Scheduled {
            last_schedule: Some(scheduled),
            last_success,
            running,
        } => match last_success {
            Some(success) if success.0 >= scheduled.0 => (
                kind,
                "True",
                "LastBackupSucceeded",
                format!("last backup completed at {}", success.0),
            ),
            _ if *running => (
                kind,
                "Unknown",
                "BackupRunning",
                format!("backup scheduled at {} is running", scheduled.0),
            ),
            _ => (
                kind,
                "False",
                "LastBackupFailed",
                format!("backup scheduled at {} did not succeed", scheduled.0),
            ),
        },
    }
}
