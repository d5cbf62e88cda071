//! The serialised writer's bookkeeping: records since the last snapshot, and the
//! backoff of failed automatic snapshots.

use super::{SNAPSHOT_BACKOFF, SNAPSHOT_BACKOFF_MAX};
use std::time::Instant;

/// State of the (serialised) writer.
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// Records applied since the last snapshot.
    pub(super) since_snapshot: u64,
    /// Consecutive failed automatic snapshots, and when to try the next one.
    pub(super) snapshot_failures: u32,
    pub(super) retry_snapshot_at: Option<Instant>,
}

impl Writer {
    /// Whether an automatic snapshot is due after `every` records (0: never).
    pub(super) fn snapshot_due(&self, every: u64) -> bool {
        every > 0
            && self.since_snapshot >= every
            && self.retry_snapshot_at.is_none_or(|t| Instant::now() >= t)
    }

    /// A snapshot was written: failures and their backoff are over. (Records applied
    /// while it was written count towards the next one.)
    pub(super) fn snapshot_written(&mut self) {
        self.snapshot_failures = 0;
        self.retry_snapshot_at = None;
    }

    /// Records how a background snapshot write ended; its result when it succeeded.
    pub(super) fn background_finished<T>(
        &mut self,
        outcome: std::thread::Result<Result<T, String>>,
    ) -> Option<T> {
        match outcome {
            Ok(Ok(written)) => {
                self.snapshot_written();
                Some(written)
            }
            Ok(Err(e)) => {
                self.snapshot_failed(&e);
                None
            }
            Err(_) => {
                self.snapshot_failed(&"the snapshot thread panicked");
                None
            }
        }
    }

    pub(super) fn snapshot_failed(&mut self, error: &dyn std::fmt::Display) {
        self.snapshot_failures += 1;
        let wait = SNAPSHOT_BACKOFF
            .saturating_mul(1 << self.snapshot_failures.min(16).saturating_sub(1))
            .min(SNAPSHOT_BACKOFF_MAX);
        self.retry_snapshot_at = Some(Instant::now() + wait);
        tracing::error!(%error, failures = self.snapshot_failures, retry_in_s = wait.as_secs(),
            "automatic snapshot failed; the log keeps every record until one succeeds");
    }
}
