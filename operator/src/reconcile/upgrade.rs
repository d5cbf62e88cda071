//! Controlled upgrades: an operator upgrade does not restart every KnowledgeBase at once.
//!
//! - **The worker image is resolved once and kept** (`status.workerImage`). A KnowledgeBase
//!   without `spec.image` runs the image it was first given (for one created by an older
//!   operator, the image its StatefulSet runs); a newer operator's default image is an
//!   *available update*. `spec.updatePolicy: auto` (default) moves to it, `supervised`
//!   waits for the annotation `knowledge.dev/approve-update: <image>` and reports
//!   `UpdateAvailable` meanwhile.
//! - **Rollouts the operator causes are rationed** across KnowledgeBases (`--max-concurrent-
//!   upgrades`, default 1): a change of the worker pod template that the KnowledgeBase's
//!   spec did not ask for (a new default image, a template change of a new release) starts
//!   only on a KnowledgeBase that is `Ready`, and only while fewer than that many such
//!   rollouts run. Until then the worker StatefulSet is left as it is (everything else is
//!   applied) and `Progressing` says `UpgradeQueued`. A change the spec asks for (a new
//!   `spec.image`, resources, ...) is never held back, and neither is a Secret rotation.
//!
//! The StatefulSet carries the hash of its pod template (without the Secrets hash) and the
//! KnowledgeBase generation it was applied for, so "the spec did not ask for it" is a
//! comparison of annotations.

use super::build::{Child, ChildKind, ChildRef, Plan};
use crate::crd::{KnowledgeBase, UpdatePolicy};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Approves an available worker image under `updatePolicy: supervised` (its value is the
/// image, as `status.availableWorkerImage` shows it).
pub const APPROVE_ANNOTATION: &str = "knowledge.dev/approve-update";
/// StatefulSet annotation: hash of the pod template as applied, Secrets hash left out.
pub const TEMPLATE_HASH_ANNOTATION: &str = "knowledge.dev/template-hash";
/// StatefulSet annotation: the KnowledgeBase `metadata.generation` it was applied for.
pub const SPEC_GENERATION_ANNOTATION: &str = "knowledge.dev/spec-generation";

/// The worker image to run and the update waiting, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageChoice {
    pub image: String,
    /// A newer default image not (yet) moved to.
    pub available: Option<String>,
}

/// Chooses the worker image: `spec.image` when set; else the image in use (`pinned` from
/// status, or `live` from the StatefulSet of an older operator) unless the policy moves
/// it to `default`; `default` for a new KnowledgeBase.
pub fn choose_image(kb: &KnowledgeBase, live: Option<&str>, default: &str) -> ImageChoice {
    if let Some(image) = &kb.spec.image {
        return ImageChoice {
            image: image.clone(),
            available: None,
        };
    }
    let pinned = kb.status.as_ref().and_then(|s| s.worker_image.as_deref());
    let Some(current) = pinned.or(live) else {
        return ImageChoice {
            image: default.to_string(),
            available: None,
        };
    };
    let approved = kb.annotations().get(APPROVE_ANNOTATION).map(String::as_str);
    let moves = current == default
        || kb.spec.update_policy == UpdatePolicy::Auto
        || approved == Some(default);
    match moves {
        true => ImageChoice {
            image: default.to_string(),
            available: None,
        },
        false => ImageChoice {
            image: current.to_string(),
            available: Some(default.to_string()),
        },
    }
}

/// Slots for operator-caused rollouts, shared by every reconcile.
pub struct Rollouts {
    slots: usize,
    holders: Mutex<BTreeSet<String>>,
}

impl Rollouts {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            holders: Mutex::default(),
        }
    }

    /// Takes a slot for `key` (or keeps the one it holds); false when all are taken.
    pub fn acquire(&self, key: &str) -> bool {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if holders.contains(key) {
            return true;
        }
        if holders.len() >= self.slots {
            return false;
        }
        holders.insert(key.to_string());
        true
    }

    /// Gives back the slot of `key` (its rollout finished, or it was deleted).
    pub fn release(&self, key: &str) {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        holders.remove(key);
    }

    /// KnowledgeBases holding a slot.
    pub fn holders(&self) -> Vec<String> {
        let holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        holders.iter().cloned().collect()
    }
}

impl Default for Rollouts {
    fn default() -> Self {
        Self::new(1)
    }
}

/// What [`gate`] decided for the worker StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing the operator caused is pending: applied as planned.
    Open,
    /// An operator-caused rollout starts (or goes on) in this pass, holding a slot.
    Rolling,
    /// An operator-caused rollout waits: the StatefulSet was left out of the plan.
    Queued(String),
}

/// Holds back an operator-caused change of the worker pod template unless `kb` is ready
/// and a slot is free. `live` is the worker StatefulSet as stored.
pub fn gate(
    kb: &KnowledgeBase,
    key: &str,
    ready: bool,
    live: Option<&StatefulSet>,
    plan: &mut Plan,
    rollouts: &Rollouts,
) -> Gate {
    let worker = format!("{}-worker", kb.name_any());
    let Some(Child::StatefulSet(desired)) = plan.get(ChildKind::StatefulSet, &worker) else {
        return Gate::Open;
    };
    let Some(live) = live else {
        return Gate::Open;
    };
    let annotation = |sts: &StatefulSet, key: &str| sts.annotations().get(key).cloned();
    let wanted = annotation(desired, TEMPLATE_HASH_ANNOTATION);
    if annotation(live, TEMPLATE_HASH_ANNOTATION) == wanted {
        return Gate::Open;
    }
    // Applied for another generation of the spec: the user changed it, nothing to hold.
    // (A StatefulSet of an older operator has no annotation: its change is the upgrade's.)
    let applied_for = annotation(live, SPEC_GENERATION_ANNOTATION);
    let generation = kb.metadata.generation.map(|g| g.to_string());
    if applied_for.is_some() && applied_for != generation {
        return Gate::Open;
    }
    if ready && rollouts.acquire(key) {
        return Gate::Rolling;
    }
    if rollouts.holders().iter().any(|h| h == key) {
        return Gate::Rolling;
    }
    plan.children.retain(|c| {
        c.reference()
            != ChildRef {
                kind: ChildKind::StatefulSet,
                name: worker.clone(),
            }
    });
    let why = match ready {
        false => "the KnowledgeBase is not Ready".to_string(),
        true => format!(
            "other KnowledgeBases are being upgraded ({})",
            rollouts.holders().join(", ")
        ),
    };
    Gate::Queued(format!(
        "a new worker pod template from the operator waits: {why}"
    ))
}

/// The image of the `worker` container of a worker StatefulSet.
pub fn live_image(sts: &StatefulSet) -> Option<&str> {
    let pod = sts.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers
        .iter()
        .find(|c| c.name == "worker")?
        .image
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb(extra: &str, pinned: Option<&str>) -> KnowledgeBase {
        let mut kb: KnowledgeBase = serde_yaml::from_str(&format!(
            "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: docs, namespace: default}}\nspec:\n  embedding: {{device: cpu}}\n{extra}"
        ))
        .unwrap();
        if let Some(image) = pinned {
            kb.status = Some(crate::crd::KnowledgeBaseStatus {
                worker_image: Some(image.into()),
                ..Default::default()
            });
        }
        kb
    }

    #[test]
    fn a_new_knowledge_base_takes_the_default_and_spec_image_wins() {
        assert_eq!(choose_image(&kb("", None), None, "w:2").image, "w:2");
        let pinned = kb("  image: mine:1\n", Some("w:1"));
        assert_eq!(
            choose_image(&pinned, Some("w:1"), "w:2"),
            ImageChoice {
                image: "mine:1".into(),
                available: None
            }
        );
    }

    #[test]
    fn auto_moves_to_the_new_default_and_supervised_waits_for_approval() {
        let auto = kb("", Some("w:1"));
        assert_eq!(choose_image(&auto, None, "w:2").image, "w:2");
        let supervised = kb("  updatePolicy: supervised\n", Some("w:1"));
        assert_eq!(
            choose_image(&supervised, None, "w:2"),
            ImageChoice {
                image: "w:1".into(),
                available: Some("w:2".into())
            }
        );
        // An older operator's StatefulSet tells the image when status does not.
        let older = kb("  updatePolicy: supervised\n", None);
        assert_eq!(choose_image(&older, Some("w:0"), "w:2").image, "w:0");
        let mut approved = supervised.clone();
        approved
            .annotations_mut()
            .insert(APPROVE_ANNOTATION.into(), "w:2".into());
        assert_eq!(choose_image(&approved, None, "w:2").image, "w:2");
        // An approval of another image approves nothing.
        let mut other = supervised;
        other
            .annotations_mut()
            .insert(APPROVE_ANNOTATION.into(), "w:3".into());
        assert_eq!(choose_image(&other, None, "w:2").image, "w:1");
    }

    #[test]
    fn slots_are_rationed_and_kept_by_their_holder() {
        let rollouts = Rollouts::new(1);
        assert!(rollouts.acquire("a"));
        assert!(rollouts.acquire("a"));
        assert!(!rollouts.acquire("b"));
        rollouts.release("a");
        assert!(rollouts.acquire("b"));
    }
}
