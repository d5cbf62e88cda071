//! The `Degraded` condition: what keeps the KnowledgeBase from working, with what to do.

use super::{Observed, Outcome, Verdict};
use crate::reconcile::pods::PodProblem;

pub(super) fn verdict(outcome: &Outcome, observed: &Observed) -> Verdict {
    match outcome {
        Outcome::Invalid(invalid) => return ("True", invalid.reason, invalid.message.clone()),
        Outcome::ApplyFailed(message) => return ("True", "ApplyFailed", message.clone()),
        Outcome::AdoptionRefused(message) => return ("True", "AdoptionRefused", message.clone()),
        _ => {}
    }
    if let Some(refusal) = &observed.storage_refusal {
        return ("True", refusal.reason, refusal.message.clone());
    }
    match &observed.pod_problem {
        Some(problem) => pod_problem(problem),
        None => ("False", "AsExpected", "no problem found".into()),
    }
}

fn pod_problem(problem: &PodProblem) -> Verdict {
    match problem {
        PodProblem::Crashed(f) if f.reason == "OOMKilled" => (
            "True",
            "WorkerOOMKilled",
            format!(
                "pod {}: the worker was killed at its memory limit ({} restarts): raise \
                 resources.limits.memory (the model, the index with room to grow, and \
                 embedding batches live in the pod's memory)",
                f.pod, f.restarts
            ),
        ),
        PodProblem::Crashed(f) if f.message.as_deref().is_some_and(is_model_mismatch) => (
            "True",
            "ModelMismatch",
            format!(
                "pod {}: the worker's embedding model is not the one the stored collections \
                 were embedded with, and it could not start re-indexing them (its log says \
                 why: a re-index for another model under way, or writes refused), so it stops \
                 instead of mixing two models' vectors; the rolling update waits at this pod \
                 while the others serve. Revert spec.embedding.modelPath or modelVolume (or \
                 the image), or see docs/runbooks/change-model.md: {}",
                f.pod,
                f.message.as_deref().unwrap_or_default()
            ),
        ),
        PodProblem::Crashed(f) => (
            "True",
            "WorkerCrashLooping",
            format!(
                "pod {}: the worker exited with code {} ({}, {} restarts){}",
                f.pod,
                f.exit_code,
                f.reason,
                f.restarts,
                f.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ),
        PodProblem::Unschedulable { pod, message } => (
            "True",
            "WorkerUnschedulable",
            format!(
                "pod {pod} has no node: {message} (free or add nodes with the resources the \
                 spec asks for, or adjust resources, gpu, nodeSelector, tolerations)"
            ),
        ),
        PodProblem::Stuck {
            pod,
            container,
            reason,
            message,
        } => {
            let (reason_out, hint) = match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => (
                    "WorkerImagePullFailed",
                    "check spec.image and spec.imagePullSecrets",
                ),
                _ => (
                    "WorkerConfigError",
                    "check the Secrets and ConfigMaps the spec names",
                ),
            };
            (
                "True",
                reason_out,
                format!("pod {pod}, container {container}: {reason}: {message} ({hint})"),
            )
        }
        PodProblem::InitFailed {
            pod,
            container,
            exit_code,
            restarts,
            message,
        } => (
            "True",
            "WorkerInitFailed",
            format!(
                "pod {pod}: init container {container} exited with code {exit_code} ({restarts} \
                 restarts){}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// The worker's `model_mismatch:` stop (`on_model_mismatch: exit`).
fn is_model_mismatch(message: &str) -> bool {
    message.contains("error: model_mismatch:")
}
