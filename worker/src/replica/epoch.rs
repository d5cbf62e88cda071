//! Following the stream's epoch: noticing that Redis went behind what this replica applied
//! or was re-seeded, refusing writes meanwhile, and re-seeding when this replica is the
//! most advanced live one (see the parent module).

use super::{Regressed, Replicator, RESEED_AFTER};
use crate::log::redis::{Entry, Epoch, RedisLogError, Regression};
use crate::log::Seq;
use std::sync::atomic::Ordering;

impl Replicator {
    /// Marks writes refused (logged once); returns the reason.
    pub(super) fn regress(&self, regression: &Regression, needs_snapshot: bool) -> String {
        let reason = match regression {
            Regression::EpochChanged { found, .. } => format!(
                "the stream was re-seeded (epoch {found}) by another replica; this replica follows {:?}",
                self.epoch_id()
            ),
            other => other.to_string(),
        };
        let mut slot = self.regressed.lock();
        match slot.as_mut() {
            Some(r) => {
                r.needs_snapshot |= needs_snapshot;
                r.reason.clone()
            }
            None => {
                tracing::error!(%reason, needs_snapshot, "replicated log regressed: writes refused");
                *slot = Some(Regressed {
                    reason: reason.clone(),
                    since: std::time::Instant::now(),
                    needs_snapshot,
                });
                reason
            }
        }
    }

    /// Keeps the entries of the epoch this replica follows. At another epoch: adopts it
    /// when it continues this replica's epoch exactly at its applied sequence (a re-seed
    /// by a peer at the same point), otherwise marks the replica cut off (it needs a peer
    /// snapshot) and keeps nothing.
    pub(super) async fn check_epochs(
        &self,
        entries: Vec<Entry>,
    ) -> Result<Vec<crate::log::Record>, RedisLogError> {
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(epoch) = &entry.epoch {
                let followed = self.epoch.lock().clone();
                match followed {
                    None => *self.epoch.lock() = Some(epoch.clone()),
                    Some(f) if f == *epoch => {}
                    Some(_) if !records.is_empty() => break,
                    Some(_) => {
                        self.follow_current_epoch().await?;
                        if self.is_regressed() {
                            return Ok(Vec::new());
                        }
                    }
                }
            }
            records.push(entry.record);
        }
        Ok(records)
    }

    /// Reads the stream's epoch and follows it when it continues this replica's history
    /// at its applied sequence; marks the replica cut off when it does not.
    async fn follow_current_epoch(&self) -> Result<(), RedisLogError> {
        let Some(current) = self.log.epoch().await? else {
            return Ok(());
        };
        let followed = self.epoch.lock().clone();
        let applied = *self.applied.borrow();
        match followed {
            Some(f) if f == current.id => {}
            None => *self.epoch.lock() = Some(current.id),
            Some(f) if current.parent == f && current.base == applied => {
                tracing::info!(epoch = %current.id, base = current.base, "following the re-seeded stream");
                *self.epoch.lock() = Some(current.id);
                if let Some(r) = self.regressed.lock().take() {
                    tracing::info!(reason = %r.reason, "writes accepted again");
                }
            }
            Some(f) => {
                self.regress(
                    &Regression::EpochChanged {
                        expected: f,
                        found: format!("{} from sequence {}", current.id, current.base),
                    },
                    true,
                );
                self.note_cut_off(applied, &current);
            }
        }
        Ok(())
    }

    fn note_cut_off(&self, applied: Seq, current: &Epoch) {
        let mut slot = self.regressed.lock();
        if let Some(r) = slot.as_mut() {
            r.needs_snapshot = true;
            r.reason = format!(
                "the stream was re-seeded after sequence {} (epoch {}) and this replica, at {applied}, does not continue it: restart it (at start it installs a peer's snapshot and continues from there)",
                current.base, current.id
            );
        }
    }

    /// One heartbeat's look at Redis: the counter or the epoch gone behind what this
    /// replica applied marks it regressed; a regressed replica that is the most advanced
    /// of the live ones re-seeds the stream once every replica had time to register.
    /// `applied` must have been read before `last` (the counter): the counter only grows,
    /// so in a healthy Redis it is never behind what was applied before it was read.
    pub(super) async fn watch_regression(
        &self,
        last: Seq,
        applied: Seq,
    ) -> Result<(), RedisLogError> {
        let current = self.log.epoch().await?;
        let followed = self.epoch.lock().clone();
        match (&current, &followed) {
            (None, _) if applied > 0 && last == 0 && self.log.top_seq().await? == 0 => {
                self.regress(&Regression::Lost { floor: applied }, false);
            }
            (Some(c), Some(f)) if c.id != *f => self.follow_current_epoch().await?,
            (Some(c), None) => *self.epoch.lock() = Some(c.id.clone()),
            _ if last < applied => {
                let top = self.log.top_seq().await?;
                self.regress(
                    &Regression::Behind {
                        counter: last,
                        top,
                        floor: applied,
                    },
                    false,
                );
            }
            _ => {}
        }
        let due = self
            .regressed
            .lock()
            .as_ref()
            .is_some_and(|r| !r.needs_snapshot && r.since.elapsed() >= RESEED_AFTER);
        if due {
            self.try_reseed(applied).await?;
        }
        Ok(())
    }

    /// Re-seeds the stream after `applied` when no live replica applied more and the
    /// stream holds nothing beyond it.
    async fn try_reseed(&self, applied: Seq) -> Result<(), RedisLogError> {
        let others = self.log.applied_by_replica().await?;
        let most = others
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0);
        let (last, top) = (self.log.last_seq().await?, self.log.top_seq().await?);
        if most > applied || last > applied || top > applied {
            tracing::warn!(
                applied,
                most,
                last,
                top,
                "not re-seeding: another replica or the stream is ahead of this one"
            );
            return Ok(());
        }
        let parent = self.epoch_id();
        match self.log.reseed(applied, &parent).await {
            Ok(epoch) => {
                tracing::warn!(epoch = %epoch.id, base = applied, "re-seeded the replicated log after this replica's sequence");
                *self.epoch.lock() = Some(epoch.id);
                self.log_seq.store(applied, Ordering::Relaxed);
                if let Some(r) = self.regressed.lock().take() {
                    tracing::info!(reason = %r.reason, "writes accepted again");
                }
                Ok(())
            }
            // Another replica re-seeded first: follow it if it continues from here.
            Err(RedisLogError::Regressed(Regression::EpochChanged { .. })) => {
                self.follow_current_epoch().await
            }
            Err(RedisLogError::Regressed(r)) => {
                tracing::warn!(reason = %r, "not re-seeding");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
