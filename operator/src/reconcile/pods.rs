//! What the worker pods say about why they are not serving: the first problem found,
//! for the `Degraded` condition.
//!
//! A pod can fail long before the worker runs, and none of those states shows on the
//! StatefulSet: the scheduler finds no node (the usual state of a CUDA KnowledgeBase with
//! no free GPU), the image cannot be pulled, the container cannot be created (a missing
//! Secret or ConfigMap key), or an init container (the restore from a backup) fails.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How long a pod may wait for a node before it counts as a problem: a cluster
/// autoscaler adding a node takes about this long, and a scale-out should not flap the
/// condition.
pub const UNSCHEDULABLE_GRACE_SECONDS: i64 = 90;

/// Container waiting reasons that do not clear by themselves.
const STUCK_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why a worker pod is not serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodProblem {
    /// The worker container keeps ending in failure (the kubelet restarts it).
    Crashed(WorkerFailure),
    /// No node fits the pod; `message` is the scheduler's (insufficient
    /// `nvidia.com/gpu`, untolerated taints, ...).
    Unschedulable { pod: String, message: String },
    /// A container cannot start: its image cannot be pulled or it cannot be created.
    Stuck {
        pod: String,
        container: String,
        reason: String,
        message: String,
    },
    /// An init container (the restore of `spec.bootstrap`) failed.
    InitFailed {
        pod: String,
        container: String,
        exit_code: i32,
        restarts: i32,
        message: Option<String>,
    },
}

/// A worker container that keeps failing, as its pod reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerFailure {
    pub pod: String,
    /// Why its last run ended (`OOMKilled`, `Error`, ...).
    pub reason: String,
    pub exit_code: i32,
    pub restarts: i32,
    /// What the worker said last (its `error: ...` line), from the termination message.
    pub message: Option<String>,
}

/// The first problem of `pods` at `now`, in the order a user fixes them: scheduling,
/// images and configuration, init containers, then the worker itself.
pub fn first_problem(pods: &[Pod], now: &Time) -> Option<PodProblem> {
    let first = |check: &dyn Fn(&Pod) -> Option<PodProblem>| pods.iter().find_map(check);
    first(&|pod| {
        unschedulable(pod, now).map(|message| PodProblem::Unschedulable {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            message,
        })
    })
    .or_else(|| first(&stuck))
    .or_else(|| first(&init_failed))
    .or_else(|| first(&|pod| crashed(pod).map(PodProblem::Crashed)))
}

/// The scheduler's message for a pod it has not placed for the grace period.
fn unschedulable(pod: &Pod, now: &Time) -> Option<String> {
    let scheduled = refused(pod)?;
    let since = scheduled.last_transition_time.as_ref()?;
    let waited = now.0.as_second() - since.0.as_second();
    (waited >= UNSCHEDULABLE_GRACE_SECONDS).then(|| refusal_message(scheduled))
}

/// The scheduler's message for a pending pod it found no node for (at once, no grace).
pub fn scheduler_refusal(pod: &Pod) -> Option<String> {
    refused(pod).map(refusal_message)
}

/// The `PodScheduled` condition of a pending pod the scheduler refused.
fn refused(pod: &Pod) -> Option<&PodCondition> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Pending") {
        return None;
    }
    let scheduled = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable"))
        .then_some(scheduled)
}

fn refusal_message(scheduled: &PodCondition) -> String {
    scheduled
        .message
        .clone()
        .unwrap_or_else(|| "no node fits the pod".into())
}

/// A container (init or main) waiting for a reason that does not clear by itself.
fn stuck(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone()?;
        STUCK_WAITING
            .contains(&reason.as_str())
            .then(|| PodProblem::Stuck {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                container: c.name.clone(),
                reason,
                message: waiting.message.clone().unwrap_or_default(),
            })
    })
}

/// An init container whose last run failed and that has not succeeded since.
fn init_failed(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let ended = last_failure(c)?;
            if c.state.as_ref().is_some_and(|s| s.running.is_some()) {
                return None;
            }
            Some(PodProblem::InitFailed {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                container: c.name.clone(),
                exit_code: ended.exit_code,
                restarts: c.restart_count,
                message: ended.message.as_deref().and_then(last_error),
            })
        })
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The worker container when it is not ready and its last run ended in failure.
fn crashed(pod: &Pod) -> Option<WorkerFailure> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "worker")?;
    let ended = last_failure(status)?;
    let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
    if status.ready || (running && status.restart_count == 0) {
        return None;
    }
    Some(WorkerFailure {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        reason: ended.reason.clone().unwrap_or_else(|| "Error".into()),
        exit_code: ended.exit_code,
        restarts: status.restart_count,
        message: ended.message.as_deref().and_then(last_error),
    })
}

/// The container's current or last termination, when it failed.
fn last_failure(
    c: &ContainerStatus,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
}

/// The worker's last `error: ...` line in a termination message (with
/// `FallbackToLogsOnError`, the tail of its log), else its last line; at most 400 bytes.
pub fn last_error(message: &str) -> Option<String> {
    let lines = || message.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .or_else(|| lines().next_back())?;
    let mut end = line.len().min(400);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "docs-worker-0"}, "status": status}))
            .unwrap()
    }

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    fn unschedulable_pod(since: &str) -> Pod {
        pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "lastTransitionTime": since,
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}))
    }

    #[test]
    fn a_pod_without_a_node_is_reported_after_the_grace_period_with_the_schedulers_words() {
        let pending = unschedulable_pod("2026-01-01T00:00:00Z");
        let since: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let since = since.as_second();
        assert_eq!(
            first_problem(std::slice::from_ref(&pending), &at(since + 30)),
            None
        );
        assert_eq!(
            first_problem(&[pending], &at(since + UNSCHEDULABLE_GRACE_SECONDS)),
            Some(PodProblem::Unschedulable {
                pod: "docs-worker-0".into(),
                message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()
            })
        );
    }

    #[test]
    fn image_pull_and_configuration_errors_are_reported_from_main_and_init_containers() {
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        assert!(matches!(
            first_problem(&[pulling], &at(0)),
            Some(PodProblem::Stuck { reason, container, .. }) if reason == "ImagePullBackOff" && container == "worker"
        ));
        let config = pod(json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "restore", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"s3\" not found"}}}]}));
        assert_eq!(
            first_problem(&[config], &at(0)),
            Some(PodProblem::Stuck {
                pod: "docs-worker-0".into(),
                container: "restore".into(),
                reason: "CreateContainerConfigError".into(),
                message: "secret \"s3\" not found".into()
            })
        );
        // Still creating: not a problem.
        let creating = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(first_problem(&[creating], &at(0)), None);
    }

    #[test]
    fn a_failed_restore_init_container_is_reported_with_its_error_line() {
        let failed = pod(json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "restore", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "error: no backup under s3://b/p"}}}]}));
        assert_eq!(
            first_problem(&[failed], &at(0)),
            Some(PodProblem::InitFailed {
                pod: "docs-worker-0".into(),
                container: "restore".into(),
                exit_code: 1,
                restarts: 2,
                message: Some("error: no backup under s3://b/p".into())
            })
        );
    }
}
