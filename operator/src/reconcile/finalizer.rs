//! The cleanup finalizer. Both edits carry the object's resourceVersion, so a concurrent
//! change makes them fail with a conflict (and retry) instead of dropping someone else's
//! finalizer.

use crate::crd::KnowledgeBase;
use crate::{Error, Result};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

/// Finalizer that runs the reclaim policy before a KnowledgeBase goes away.
pub const FINALIZER: &str = "knowledge.dev/cleanup";

/// Whether `kb` carries the finalizer.
pub fn present(kb: &KnowledgeBase) -> bool {
    kb.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer.
pub async fn add(api: &Api<KnowledgeBase>, kb: &KnowledgeBase) -> Result<()> {
    let mut finalizers = kb.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    set(api, kb, finalizers).await
}

/// Removes the finalizer, letting the deletion complete.
pub async fn remove(api: &Api<KnowledgeBase>, kb: &KnowledgeBase) -> Result<()> {
    let finalizers = kb
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set(api, kb, finalizers).await
}

async fn set(api: &Api<KnowledgeBase>, kb: &KnowledgeBase, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": kb.resource_version()}
    });
    api.patch(
        &kb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    Ok(())
}
