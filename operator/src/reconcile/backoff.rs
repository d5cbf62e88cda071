//! Retries of failed reconciles: exponential backoff with jitter per KnowledgeBase.

use super::Context;
use crate::crd::KnowledgeBase;
use crate::Error;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;

/// What the controller does after a failed reconcile: retry with exponential backoff and
/// jitter per KnowledgeBase (1 s doubling to 5 min), reset by the next clean apply.
pub fn error_policy(kb: Arc<KnowledgeBase>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.next(&kb);
    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(delay)
}

/// Consecutive failures per KnowledgeBase, for [`error_policy`].
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    fn key(kb: &KnowledgeBase) -> String {
        format!("{}/{}", kb.namespace().unwrap_or_default(), kb.name_any())
    }

    /// The wait before the next attempt: `BASE * 2^(failures - 1)`, capped at `MAX`, then
    /// scaled by a random factor in [0.5, 1.0] so that many failing KnowledgeBases do not
    /// retry in lockstep.
    pub fn next(&self, kb: &KnowledgeBase) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(Self::key(kb)).or_insert(0);
        *n = n.saturating_add(1);
        let exp = Self::BASE
            .saturating_mul(1u32 << (*n - 1).min(16))
            .min(Self::MAX);
        let jitter = 0.5 + 0.5 * (jitter_unit());
        exp.mul_f64(jitter)
    }

    /// Forgets the failures of `kb` (it converged).
    pub fn reset(&self, kb: &KnowledgeBase) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Self::key(kb));
    }
}

/// A number in [0, 1) from the clock's nanoseconds (jitter needs spread, not secrecy).
fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb(name: &str) -> KnowledgeBase {
        serde_yaml::from_str(&format!(
            "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  embedding: {{device: cpu}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_per_knowledge_base_and_reset() {
        let backoff = Backoff::default();
        let (a, b) = (kb("a"), kb("b"));
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next(&a)).collect();
        for (n, delay) in delays.iter().enumerate() {
            let full = Backoff::BASE
                .saturating_mul(1 << n.min(16) as u32)
                .min(Backoff::MAX);
            // Jitter keeps each wait between half and all of the exponential step.
            assert!(
                *delay >= full / 2 && *delay <= full,
                "{n}: {delay:?} vs {full:?}"
            );
        }
        assert!(delays[11] >= Backoff::MAX / 2, "capped at the maximum");
        // Another KnowledgeBase starts from the beginning; a reset forgets the failures.
        assert!(backoff.next(&b) <= Backoff::BASE);
        backoff.reset(&a);
        assert!(backoff.next(&a) <= Backoff::BASE);
    }
}
