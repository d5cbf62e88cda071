use super::*;

fn at(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(seconds).unwrap())
}

fn observed(ready: i32) -> Observed {
    Observed {
        desired_replicas: 2,
        replicas: 2,
        ready_replicas: ready,
        ..Observed::default()
    }
}

fn compute(
    observed: &Observed,
    previous: Option<&KnowledgeBaseStatus>,
    now: i64,
) -> KnowledgeBaseStatus {
    status(
        Some(1),
        &Outcome::Applied,
        observed,
        previous,
        KnowledgeBaseStatus::default(),
        &at(now),
    )
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let first = compute(&observed(1), None, 100);
    let again = compute(&observed(1), Some(&first), 200);
    assert_eq!(first, again, "nothing changed, so nothing may differ");
    let ready = compute(&observed(2), Some(&first), 300);
    let condition = ready.condition(ConditionType::Ready).unwrap();
    assert_eq!(
        (
            condition.status.as_str(),
            condition.last_transition_time.clone()
        ),
        ("True", at(300))
    );
    let degraded = ready.condition(ConditionType::Degraded).unwrap();
    assert_eq!(
        degraded.last_transition_time,
        at(100),
        "Degraded did not change"
    );
}

#[test]
fn backup_condition_follows_the_cron_job() {
    let scheduled = |schedule: Option<i64>, success: Option<i64>, running: bool| {
        let backup = BackupObserved::Scheduled {
            last_schedule: schedule.map(at),
            last_success: success.map(at),
            running,
        };
        let status = compute(
            &Observed {
                backup,
                ..observed(2)
            },
            None,
            500,
        );
        let c = status
            .condition(ConditionType::BackupSucceeded)
            .unwrap()
            .clone();
        (c.status, c.reason, status.last_backup)
    };
    assert_eq!(
        scheduled(None, None, false),
        ("Unknown".into(), "NoBackupYet".into(), None)
    );
    assert_eq!(
        scheduled(Some(10), Some(20), false),
        ("True".into(), "LastBackupSucceeded".into(), Some(at(20)))
    );
    assert_eq!(scheduled(Some(30), Some(20), true).1, "BackupRunning");
    assert_eq!(scheduled(Some(30), Some(20), false).1, "LastBackupFailed");
}

#[test]
fn apply_failure_is_degraded_and_retrying() {
    let failed = Outcome::ApplyFailed("boom".into());
    let status = status(
        None,
        &failed,
        &observed(2),
        None,
        KnowledgeBaseStatus::default(),
        &at(1),
    );
    let degraded = status.condition(ConditionType::Degraded).unwrap();
    assert_eq!(
        (
            degraded.status.as_str(),
            degraded.reason.as_str(),
            degraded.message.as_str()
        ),
        ("True", "ApplyFailed", "boom")
    );
    assert_eq!(
        status.condition(ConditionType::Progressing).unwrap().reason,
        "Retrying"
    );
}

#[test]
fn backup_status_reports_the_newest_success_and_keeps_what_vanished_pods_told() {
    let report = BackupReport {
        name: "backup-42-1700000000".into(),
        sequence: 42,
        bytes: 4096,
    };
    let mut seen = observed(2);
    seen.backup_jobs = Some(BackupJobs {
        last_success: Some((at(500), "docs-backup-29000".into(), Some(report))),
        failures_since_success: 0,
        last_failure: None,
    });
    seen.backup_request = Some("now-1".into());
    let first = compute(&seen, None, 600);
    let backup = first.backup.clone().unwrap();
    assert_eq!(
        backup.last_backup_name.as_deref(),
        Some("backup-42-1700000000")
    );
    assert_eq!(
        (backup.last_backup_sequence, backup.last_backup_bytes),
        (Some(42), Some(4096))
    );
    assert_eq!(backup.last_request.as_deref(), Some("now-1"));
    assert_eq!(first.last_backup, Some(at(500)));

    // The Job's pod is gone and two later Jobs failed; the request's Job expired.
    seen.backup_jobs = Some(BackupJobs {
        last_success: Some((at(500), "docs-backup-29000".into(), None)),
        failures_since_success: 2,
        last_failure: Some(at(900)),
    });
    seen.backup_request = None;
    let later = compute(&seen, Some(&first), 1000);
    let backup = later.backup.clone().unwrap();
    assert_eq!(backup.last_backup_sequence, Some(42));
    assert_eq!(backup.failures_since_last_success, 2);
    assert_eq!(backup.last_failure_time, Some(at(900)));
    assert_eq!(backup.last_request.as_deref(), Some("now-1"));
    // Without spec.backup there is no backup status, and a known one is kept.
    assert!(compute(&observed(2), None, 600).backup.is_none());
    let removed = compute(&observed(2), Some(&later), 1100);
    assert_eq!(removed.backup, later.backup);
}

#[test]
fn scaling_out_under_the_autoscaler_keeps_ready_and_shows_scaling() {
    // minReplicas 2, the autoscaler asks for 4; 2 serve, 2 are starting.
    let scaling = Observed {
        desired_replicas: 4,
        replicas: 4,
        ready_replicas: 2,
        autoscaling_min: Some(2),
        ..Observed::default()
    };
    let s = compute(&scaling, None, 0);
    let ready = s.condition(ConditionType::Ready).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllReplicasReady")
    );
    let progressing = s.condition(ConditionType::Progressing).unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "ScalingOut")
    );
    // Below the autoscaler's minimum: not ready.
    let short = Observed {
        ready_replicas: 1,
        ..scaling.clone()
    };
    let s = compute(&short, None, 0);
    assert_eq!(s.condition(ConditionType::Ready).unwrap().status, "False");
    // Without autoscaling every replica counts.
    let fixed = Observed {
        autoscaling_min: None,
        ..scaling.clone()
    };
    let s = compute(&fixed, None, 0);
    assert_eq!(s.condition(ConditionType::Ready).unwrap().status, "False");
    // A rollout in progress is not a scale-out.
    let rolling = Observed {
        rollout: Rollout {
            observed: true,
            updated_replicas: 1,
            on_newest_revision: false,
            updated_ready: 1,
        },
        ..scaling
    };
    let s = compute(&rolling, None, 0);
    assert_eq!(s.condition(ConditionType::Ready).unwrap().status, "False");
}
