//! Snapshots of the store: automatic ones written on a background thread, ones written
//! for a download, and the truncation of the log below the oldest one kept.

use super::{Store, StoreError, Writer};
use crate::log::{Log, Seq};
use crate::snapshot::{self, Capture};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// An automatic snapshot being written on its thread.
pub(super) type SnapshotJob = std::thread::JoinHandle<Result<SnapshotWritten, String>>;

/// A snapshot that was written: what it holds and what it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotWritten {
    /// The last record it holds.
    pub sequence: Seq,
    pub bytes: u64,
    /// Writing it (the index frozen beforehand), fsync and rename included.
    pub seconds: f64,
    /// When it was done, in seconds since the Unix epoch.
    pub finished_unix: f64,
}

/// Writes `capture` into `dir` (keeping the newest `keep`) and times it.
fn timed_save(
    capture: &Capture,
    dir: &Path,
    keep: usize,
) -> Result<(PathBuf, SnapshotWritten), snapshot::SnapshotError> {
    let started = Instant::now();
    let path = capture.save(dir, keep)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let finished_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    tracing::info!(seq = capture.seq(), bytes, seconds, snapshot = %path.display(), "snapshot written");
    Ok((
        path,
        SnapshotWritten {
            sequence: capture.seq(),
            bytes,
            seconds,
            finished_unix,
        },
    ))
}

impl Store {
    /// Freezes the index (under the read lock; the caller holds the writer lock so it
    /// cannot move; nothing is copied) and exports, encodes and writes the snapshot on a
    /// background thread, so that applying the stream does not wait for the disk. At most
    /// one such write runs at a time; returns false when one is still running or could not
    /// start (the caller tries again later). The outcome of the previous write feeds the
    /// retry backoff.
    pub(super) fn snapshot_in_background(&self, writer: &mut Writer) -> bool {
        if self.on_demand.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let mut running = self.background.lock();
        match self.reap(&mut running, writer, false) {
            // Still running, or a failed previous write has just set the backoff: no new
            // attempt now.
            Reaped::Running | Reaped::Failed => return false,
            Reaped::Idle | Reaped::Succeeded => {}
        }
        let capture = match snapshot::Capture::of(&self.index()) {
            Ok(capture) => capture,
            Err(e) => {
                writer.snapshot_failed(&e);
                return false;
            }
        };
        let (dir, keep) = (self.snapshots_dir.clone(), self.keep);
        let spawned = std::thread::Builder::new()
            .name("kb-snapshot".into())
            .spawn(move || {
                #[cfg(test)]
                drop(super::tests::SNAPSHOT_GATE.lock());
                timed_save(&capture, &dir, keep)
                    .map(|(_, written)| written)
                    .map_err(|e| e.to_string())
            });
        match spawned {
            Ok(handle) => {
                *running = Some(handle);
                true
            }
            Err(e) => {
                writer.snapshot_failed(&format!("cannot start the snapshot thread: {e}"));
                false
            }
        }
    }

    /// Accounts for a finished background snapshot write (waiting for a running one when
    /// `wait`): its outcome feeds the retry backoff and, once it succeeded, the log is
    /// truncated below the oldest snapshot kept.
    pub(super) fn reap(
        &self,
        running: &mut Option<SnapshotJob>,
        writer: &mut Writer,
        wait: bool,
    ) -> Reaped {
        match running.take() {
            None => Reaped::Idle,
            Some(handle) if !wait && !handle.is_finished() => {
                *running = Some(handle);
                Reaped::Running
            }
            Some(handle) => {
                let written = writer.background_finished(handle.join());
                self.snapshot_failures
                    .store(writer.snapshot_failures, Ordering::Relaxed);
                let Some(written) = written else {
                    return Reaped::Failed;
                };
                *self.last_snapshot.lock() = Some(written);
                if let Err(e) = self.truncate_log() {
                    tracing::warn!(error = %e, "the log was not truncated after a snapshot; the next snapshot tries again");
                }
                Reaped::Succeeded
            }
        }
    }

    /// Waits for a background snapshot write to finish (clean shutdown, tests).
    pub fn wait_for_background_snapshot(&self) {
        let mut writer = self.writer.lock();
        let mut running = self.background.lock();
        self.reap(&mut running, &mut writer, true);
    }

    /// The sequence of the oldest snapshot kept on disk (0 when there is none): the
    /// replicated log must keep every record after it.
    pub fn oldest_snapshot_seq(&self) -> Seq {
        snapshot::list(&self.snapshots_dir)
            .ok()
            .and_then(|l| l.last().map(|(s, _)| *s))
            .unwrap_or(0)
    }

    /// Writes a snapshot now and truncates the log below it; returns its path (see
    /// [`Store::snapshot_file`]).
    pub fn snapshot(&self) -> Result<PathBuf, StoreError> {
        self.snapshot_file().map(|(path, _)| path)
    }

    /// Writes a snapshot now, truncates the log below it and returns its path and the
    /// file, opened (so that retention may unlink it meanwhile: a download still reads
    /// it whole). Only the freezing of the index holds the writer lock (an automatic
    /// snapshot still being written is waited for first): writes go on while the file is
    /// written, and no automatic snapshot starts until it is.
    pub fn snapshot_file(&self) -> Result<(PathBuf, File), StoreError> {
        struct OnDemand<'a>(&'a AtomicU32);
        impl Drop for OnDemand<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let (capture, _on_demand) = {
            let mut writer = self.writer.lock();
            let mut running = self.background.lock();
            self.reap(&mut running, &mut writer, true);
            self.on_demand.fetch_add(1, Ordering::SeqCst);
            let on_demand = OnDemand(&self.on_demand);
            (snapshot::Capture::of(&self.index())?, on_demand)
        };
        #[cfg(test)]
        drop(super::tests::SNAPSHOT_GATE.lock());
        let (path, written) = timed_save(&capture, &self.snapshots_dir, self.keep)?;
        let file = File::open(&path).map_err(|source| {
            StoreError::Snapshot(snapshot::SnapshotError::Io {
                path: path.clone(),
                source,
            })
        })?;
        self.truncate_log()?;
        {
            let mut writer = self.writer.lock();
            writer.snapshot_written();
            self.snapshot_failures
                .store(writer.snapshot_failures, Ordering::Relaxed);
            *self.last_snapshot.lock() = Some(written);
        }
        Ok((path, file))
    }

    /// Truncates the log below the oldest snapshot kept, so that a fallback to it can
    /// still replay (replicated stores have no log: the stream is trimmed by the
    /// heartbeats of [`Store::oldest_snapshot_seq`]).
    pub(super) fn truncate_log(&self) -> Result<(), StoreError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        if let Some((oldest, _)) = snapshot::list(&self.snapshots_dir)?.last() {
            log.truncate_before(*oldest)?;
        }
        Ok(())
    }
}

/// What [`Store::reap`] found of the background snapshot write.
pub(super) enum Reaped {
    /// None had been started since the last look.
    Idle,
    /// One is still being written.
    Running,
    Succeeded,
    Failed,
}
