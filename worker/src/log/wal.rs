//! Single-node file WAL: segment files of length-prefixed, CRC-checked frames.
//!
//! Segment (format version 2): the 8-byte header `KBWALv02`, then frames
//! `len: u32 LE | crc32(payload): u32 LE | payload`, the payload a [`Record`] in
//! [`crate::format`] (version byte + postcard). Segments of format version 1 have no
//! header and bincode payloads; they are still read (the header's first four bytes, read
//! as a length, exceed any valid frame, so the two cannot be confused), and new records
//! always go to a version-2 segment. A segment is named after the first sequence it holds,
//! so truncation after a snapshot is a matter of deleting whole files.
//!
//! Failures: a torn or corrupt tail of the newest segment (a crash during a write that was
//! therefore never acknowledged) is reported and cut on open. A failed append (ENOSPC,
//! EIO) is cut back to the last good frame at once, so a later append never follows a
//! partial frame and numbering never skips; writes resume when the disk takes them again.
//! A failed fsync poisons the WAL: the kernel may have dropped the unsynced pages, so
//! nothing more is appended (every append answers [`LogError::Poisoned`]) until a restart
//! re-reads what is really on disk.

use super::{Log, LogError, Op, Record, Seq};
use crate::format;
use kb_config::FsyncPolicy;
use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// Header of a version-2 segment.
const SEGMENT_MAGIC: &[u8; 8] = b"KBWALv02";
/// Upper bound of one frame; anything larger in a header is corruption, not a record.
const MAX_FRAME: usize = 1 << 30;

/// The file WAL. See the module docs.
pub struct FileWal {
    dir: PathBuf,
    fsync: FsyncPolicy,
    inner: Mutex<Inner>,
    /// Why appends are refused (a failed fsync), if they are. Outside `inner` so that
    /// health checks never wait for an fsync in progress.
    poisoned: Mutex<Option<String>>,
}

struct Inner {
    /// (first seq, path), oldest first; the last one is open for appends.
    segments: Vec<(Seq, PathBuf)>,
    file: File,
    /// Length of the open segment up to its last good frame.
    len: u64,
    last_seq: Seq,
    /// Records in the open segment.
    records_in_current: u64,
    #[cfg(test)]
    faults: faults::Faults,
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpenReport {
    pub records: u64,
    /// Bytes cut from the tail of the newest segment.
    pub truncated_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first: Seq) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<Seq>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    crate::durable::sync_dir(dir).map_err(io_err(dir))
}

/// Creates (or resets) a version-2 segment holding only its header, durably.
fn create_segment(dir: &Path, path: &Path) -> Result<File, LogError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(0)
        .and_then(|()| file.write_all(SEGMENT_MAGIC))
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))?;
    sync_dir(dir)?;
    Ok(file)
}

impl FileWal {
    /// Opens (or creates) the WAL in `dir`, cutting a damaged tail of the newest segment.
    /// `floor` is the sequence of the snapshot the caller loaded: numbering continues from
    /// at least there even when older segments were truncated away. Fails when a segment
    /// other than the newest is damaged or records are missing between segments.
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
        floor: Seq,
    ) -> Result<(Self, OpenReport), LogError> {
        crate::durable::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = list_segments(dir)?;
        drop_empty_trailing_segment(dir, &mut segments)?;
        let mut report = OpenReport::default();
        let mut last_seq = floor;
        let mut current = None;
        let count = segments.len();
        let mut expected_next: Option<Seq> = None;
        for (i, (first, path)) in segments.iter().enumerate() {
            // A gap the caller's snapshot covers is no loss (a snapshot ahead of the log
            // starts a new segment after itself, see below).
            if let Some(expected) = expected_next.filter(|e| e != first && *first > floor + 1) {
                return Err(LogError::Corrupt(format!(
                    "{}: segment starts at sequence {first} but the previous one ends at {}; records are missing",
                    path.display(),
                    expected - 1
                )));
            }
            let mut k = 0u64;
            let scan = scan_segment(path, |record| {
                if record.seq != first + k {
                    return Err(LogError::Corrupt(format!(
                        "{}: record {k} has sequence {} where {} belongs",
                        path.display(),
                        record.seq,
                        first + k
                    )));
                }
                k += 1;
                Ok(())
            })?;
            expected_next = Some(first + scan.records);
            if let Some(damage) = &scan.damage {
                if i + 1 < count {
                    return Err(LogError::Corrupt(format!(
                        "{}: {damage} (not the newest segment, refusing to guess)",
                        path.display()
                    )));
                }
                let last_good = first + scan.records - 1;
                if let Some((from, to)) = later_records(path, &scan, last_good)? {
                    return Err(LogError::Corrupt(format!(
                        "{}: {damage} after sequence {}, yet whole records {from}..={to} follow it; \
                         refusing to cut acknowledged records (the file is left as it is). \
                         Restore a backup (`kb-worker restore`) or, in replicated mode, start this \
                         replica on an empty volume so that it bootstraps from a peer; moving the \
                         segment aside instead accepts losing records {}..={to}",
                        path.display(),
                        last_good,
                        last_good + 1
                    )));
                }
                let size = fs::metadata(path).map_err(io_err(path))?.len();
                report.truncated_bytes = size - scan.valid_len;
                tracing::warn!(segment = %path.display(), %damage, cut_bytes = report.truncated_bytes,
                    "cutting damaged WAL tail (unacknowledged write)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(scan.valid_len).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
            }
            report.records += scan.records;
            if scan.records > 0 {
                last_seq = last_seq.max(first + scan.records - 1);
            }
            if i + 1 == count {
                current = Some((scan.format, scan.records, scan.valid_len));
            }
        }
        // A snapshot ahead of the log (records the log lost with `fsync: never`, say, that
        // the snapshot holds): numbering goes on after the snapshot, in a segment named
        // after it, so the next open finds every segment's records where they belong.
        let next_in_log = expected_next.unwrap_or(floor + 1);
        if next_in_log < floor + 1 {
            tracing::warn!(log_ends_at = next_in_log - 1, snapshot = floor,
                "the snapshot is ahead of the write-ahead log; new records start a new segment after it");
            if current.is_some_and(|(_, records, _)| records == 0) {
                let (_, path) = segments.pop().expect("one segment");
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
            current = None;
        }
        // Appends go to a version-2 segment: the newest one, reset when it holds nothing,
        // or a new one after a version-1 segment with records.
        let (file, len, records_in_current) = match current {
            Some((SegmentFormat::V2, records, len)) => {
                let path = &segments.last().expect("one segment").1;
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                (file, len, records)
            }
            Some((SegmentFormat::V1, records, _)) if records > 0 => {
                let path = segment_path(dir, last_seq + 1);
                let file = create_segment(dir, &path)?;
                segments.push((last_seq + 1, path));
                (file, HEADER as u64, 0)
            }
            Some(_) => {
                let path = &segments.last().expect("one segment").1;
                (create_segment(dir, path)?, HEADER as u64, 0)
            }
            None => {
                let path = segment_path(dir, last_seq + 1);
                let file = create_segment(dir, &path)?;
                segments.push((last_seq + 1, path));
                (file, HEADER as u64, 0)
            }
        };
        sync_dir(dir)?;
        let inner = Inner {
            segments,
            file,
            len,
            last_seq,
            records_in_current,
            #[cfg(test)]
            faults: faults::Faults::default(),
        };
        let wal = Self {
            dir: dir.to_path_buf(),
            fsync,
            inner: Mutex::new(inner),
            poisoned: Mutex::new(None),
        };
        Ok((wal, report))
    }

    /// Hands every record with `seq > after` to `visit`, in order, reading one frame at a
    /// time (start-up replay: the log is never held in memory); returns how many. A
    /// damaged frame is an error ([`FileWal::open`] has already cut a torn tail).
    pub fn replay_after<E: From<LogError>>(
        &self,
        after: Seq,
        mut visit: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<u64, E> {
        let segments = self.inner.lock().segments.clone();
        let mut visited = 0;
        for (i, (_, path)) in segments.iter().enumerate() {
            // Skip segments that end at or before `after`.
            if segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= after + 1)
            {
                continue;
            }
            let scan = scan_segment(path, |record| {
                if record.seq > after {
                    visited += 1;
                    visit(record)?;
                }
                Ok::<(), E>(())
            })?;
            if let Some(damage) = scan.damage {
                return Err(LogError::Corrupt(format!("{}: {damage}", path.display())).into());
            }
        }
        Ok(visited)
    }

    fn rotate(&self, inner: &mut Inner) -> Result<(), LogError> {
        let first = inner.last_seq + 1;
        let path = segment_path(&self.dir, first);
        #[cfg(test)]
        if std::mem::take(&mut inner.faults.fail_rotate) {
            // A disk that fills while the new segment is created: its file exists, empty.
            File::create(&path).map_err(io_err(&path))?;
            return Err(self.abandon_segment(&path, std::io::ErrorKind::StorageFull.into()));
        }
        inner.file = match create_segment(&self.dir, &path) {
            Ok(file) => file,
            Err(LogError::Io { source, .. }) => return Err(self.abandon_segment(&path, source)),
            Err(e) => return Err(e),
        };
        inner.segments.push((first, path));
        inner.records_in_current = 0;
        inner.len = HEADER as u64;
        Ok(())
    }

    /// Removes a segment whose creation failed (appends go on in the current one), so no
    /// empty file named after a sequence the current segment goes on to hold is left.
    fn abandon_segment(&self, path: &Path, error: std::io::Error) -> LogError {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(segment = %path.display(), error = %e,
                "cannot remove a segment whose creation failed; the next start ignores it"),
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "cannot sync the WAL directory");
        }
        io_err(path)(error)
    }

    /// The first sequence the WAL can hold (records before it were truncated away after a
    /// snapshot): the caller's snapshot must reach at least the one before it.
    pub fn first_seq(&self) -> Option<Seq> {
        self.inner.lock().segments.first().map(|(s, _)| *s)
    }

    /// Why appends are refused, if they are.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().clone()
    }

    #[cfg(test)]
    fn faults(&self) -> parking_lot::MappedMutexGuard<'_, faults::Faults> {
        parking_lot::MutexGuard::map(self.inner.lock(), |i| &mut i.faults)
    }
}

impl Inner {
    fn write_frames(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(keep) = self.faults.fail_write_after.take() {
            // A disk that fills mid-frame: part of the buffer lands, then ENOSPC.
            self.file.write_all(&buf[..keep.min(buf.len())])?;
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        self.file.write_all(buf)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_sync) {
            return Err(std::io::Error::other("injected EIO"));
        }
        self.file.sync_data()
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_cut) {
            return Err(std::io::Error::other("injected EIO"));
        }
        self.file.set_len(self.len)
    }
}

impl Log for FileWal {
    fn append(&self, ops: Vec<Op>) -> Result<Vec<Record>, LogError> {
        let mut inner = self.inner.lock();
        if let Some(reason) = self.poisoned() {
            return Err(LogError::Poisoned(reason));
        }
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let record = Record {
                seq: inner.last_seq + 1 + i as u64,
                op,
            };
            let payload =
                format::encode_record(&record).map_err(|e| LogError::Encode(e.to_string()))?;
            if payload.len() > MAX_FRAME {
                return Err(LogError::Encode(format!(
                    "record of {} bytes exceeds the frame limit of {MAX_FRAME}",
                    payload.len()
                )));
            }
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            records.push(record);
        }
        let path = inner.segments.last().expect("one segment").1.clone();
        if let Err(e) = inner.write_frames(&buf) {
            // Cut the partial frame so that the next append follows the last good one.
            if let Err(cut) = inner.cut_back() {
                let reason = format!(
                    "a failed write could not be cut back ({}); restart the worker",
                    super::io_public_message(&cut)
                );
                tracing::error!(segment = %path.display(), error = %cut, "WAL poisoned: a partial frame could not be removed");
                *self.poisoned.lock() = Some(reason);
            }
            return Err(io_err(&path)(e));
        }
        if self.fsync == FsyncPolicy::Always {
            if let Err(e) = inner.sync() {
                let reason = format!(
                    "fsync of the write-ahead log failed ({}); restart the worker to recover from what is on disk",
                    super::io_public_message(&e)
                );
                tracing::error!(segment = %path.display(), error = %e, "WAL poisoned: fsync failed");
                *self.poisoned.lock() = Some(reason.clone());
                return Err(LogError::Poisoned(reason));
            }
        }
        inner.len += buf.len() as u64;
        inner.last_seq += records.len() as u64;
        inner.records_in_current += records.len() as u64;
        Ok(records)
    }

    fn read_after(&self, after: Seq) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        self.replay_after(after, |record| {
            out.push(record);
            Ok::<(), LogError>(())
        })?;
        Ok(out)
    }

    fn last_seq(&self) -> Seq {
        self.inner.lock().last_seq
    }

    fn truncate_before(&self, upto: Seq) -> Result<(), LogError> {
        if self.poisoned().is_some() {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        if inner.records_in_current > 0 {
            self.rotate(&mut inner)?;
        }
        // A segment is redundant when the next one starts at or below upto + 1.
        let mut keep = Vec::new();
        let segments = std::mem::take(&mut inner.segments);
        let mut failed = None;
        for (i, seg) in segments.iter().enumerate() {
            let redundant = segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= upto + 1);
            if redundant && failed.is_none() {
                if let Err(e) = fs::remove_file(&seg.1) {
                    // Keep it (and everything after it) listed: the WAL stays whole.
                    failed = Some(io_err(&seg.1)(e));
                    keep.push(seg.clone());
                }
            } else {
                keep.push(seg.clone());
            }
        }
        inner.segments = keep;
        match failed {
            Some(e) => Err(e),
            None => sync_dir(&self.dir),
        }
    }
}

#[cfg(test)]
mod faults {
    /// Failures the next append meets (each fires once).
    #[derive(Debug, Default)]
    pub struct Faults {
        /// Write this many bytes of the next append, then fail with ENOSPC.
        pub fail_write_after: Option<usize>,
        /// The next fsync fails with EIO.
        pub fail_sync: bool,
        /// Cutting a failed append back fails with EIO.
        pub fail_cut: bool,
        /// The next rotation fails with ENOSPC after creating the new segment's file.
        pub fail_rotate: bool,
    }
}

mod segment;
#[cfg(test)]
mod tests;
use segment::{drop_empty_trailing_segment, later_records, scan_segment, SegmentFormat};
