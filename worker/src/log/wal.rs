//! Single-node file WAL: segment files of length-prefixed, CRC-checked frames.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload (bincode Record)`. A segment is
//! named after the first sequence it may hold, so truncation after a snapshot is a matter
//! of deleting whole files. A torn or corrupt tail of the newest segment (a crash during a
//! write that was therefore never acknowledged) is reported and cut on open.

use super::{Log, LogError, Op, Record, Seq};
use kb_config::FsyncPolicy;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const HEADER: usize = 8;
/// Upper bound of one frame; anything larger in a header is corruption, not a record.
const MAX_FRAME: usize = 1 << 30;

/// The file WAL. See the module docs.
pub struct FileWal {
    dir: PathBuf,
    fsync: FsyncPolicy,
    inner: Mutex<Inner>,
}

struct Inner {
    /// (first seq, path), oldest first; the last one is open for appends.
    segments: Vec<(Seq, PathBuf)>,
    file: File,
    last_seq: Seq,
    /// Records in the open segment.
    records_in_current: u64,
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

/// Result of scanning one segment.
struct Scan {
    records: Vec<Record>,
    /// Offset just past the last valid frame.
    valid_len: u64,
    /// Why scanning stopped before the end of the file, if it did.
    damage: Option<String>,
}

/// A frame whose checksum holds but whose record does not decode was written whole by an
/// incompatible writer: cutting it would drop acknowledged writes, so it is an error.
fn undecodable(path: &Path, at: usize, e: &bincode::Error) -> LogError {
    LogError::Corrupt(format!(
        "{}: record at offset {at} has a valid checksum but does not decode ({e}); refusing to cut acknowledged data",
        path.display()
    ))
}

fn scan_segment(path: &Path) -> Result<Scan, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        if bytes.len() - at < HEADER {
            break Some(format!("torn frame header at offset {at}"));
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_FRAME || bytes.len() - at - HEADER < len {
            break Some(format!("torn frame at offset {at} (length {len})"));
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break Some(format!("checksum mismatch at offset {at}"));
        }
        match bincode::deserialize::<Record>(payload) {
            Ok(record) => records.push(record),
            Err(e) => return Err(undecodable(path, at, &e)),
        }
        at += HEADER + len;
    };
    Ok(Scan {
        records,
        valid_len: at as u64,
        damage,
    })
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl FileWal {
    /// Opens (or creates) the WAL in `dir`, cutting a damaged tail of the newest segment.
    /// `floor` is the sequence of the snapshot the caller loaded: numbering continues from
    /// at least there even when older segments were truncated away.
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
        floor: Seq,
    ) -> Result<(Self, OpenReport), LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = list_segments(dir)?;
        let mut report = OpenReport::default();
        let mut last_seq = floor;
        let mut records_in_current = 0;
        let count = segments.len();
        for (i, (_, path)) in segments.iter().enumerate() {
            let scan = scan_segment(path)?;
            if let Some(damage) = &scan.damage {
                if i + 1 < count {
                    return Err(LogError::Corrupt(format!(
                        "{}: {damage} (not the newest segment, refusing to guess)",
                        path.display()
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
            report.records += scan.records.len() as u64;
            if let Some(last) = scan.records.last() {
                last_seq = last_seq.max(last.seq);
            }
            records_in_current = scan.records.len() as u64;
        }
        if segments.is_empty() {
            segments.push((last_seq + 1, segment_path(dir, last_seq + 1)));
        }
        let current = &segments.last().expect("one segment").1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(current)
            .map_err(io_err(current))?;
        sync_dir(dir)?;
        let inner = Inner {
            segments,
            file,
            last_seq,
            records_in_current,
        };
        let wal = Self {
            dir: dir.to_path_buf(),
            fsync,
            inner: Mutex::new(inner),
        };
        Ok((wal, report))
    }

    fn rotate(&self, inner: &mut Inner) -> Result<(), LogError> {
        let first = inner.last_seq + 1;
        let path = segment_path(&self.dir, first);
        inner.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        inner.segments.push((first, path));
        inner.records_in_current = 0;
        sync_dir(&self.dir)
    }
}

impl Log for FileWal {
    fn append(&self, ops: Vec<Op>) -> Result<Vec<Record>, LogError> {
        let mut inner = self.inner.lock().expect("wal lock");
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let record = Record {
                seq: inner.last_seq + 1 + i as u64,
                op,
            };
            let payload =
                bincode::serialize(&record).map_err(|e| LogError::Encode(e.to_string()))?;
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            records.push(record);
        }
        let path = inner.segments.last().expect("one segment").1.clone();
        inner.file.write_all(&buf).map_err(io_err(&path))?;
        if self.fsync == FsyncPolicy::Always {
            inner.file.sync_data().map_err(io_err(&path))?;
        }
        inner.last_seq += records.len() as u64;
        inner.records_in_current += records.len() as u64;
        Ok(records)
    }

    fn read_after(&self, after: Seq) -> Result<Vec<Record>, LogError> {
        let segments = self.inner.lock().expect("wal lock").segments.clone();
        let mut out = Vec::new();
        for (i, (_, path)) in segments.iter().enumerate() {
            // Skip segments that end at or before `after`.
            if segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= after + 1)
            {
                continue;
            }
            let scan = scan_segment(path)?;
            if let Some(damage) = scan.damage {
                return Err(LogError::Corrupt(format!("{}: {damage}", path.display())));
            }
            out.extend(scan.records.into_iter().filter(|r| r.seq > after));
        }
        Ok(out)
    }

    fn last_seq(&self) -> Seq {
        self.inner.lock().expect("wal lock").last_seq
    }

    fn truncate_before(&self, upto: Seq) -> Result<(), LogError> {
        let mut inner = self.inner.lock().expect("wal lock");
        if inner.records_in_current > 0 {
            self.rotate(&mut inner)?;
        }
        // A segment is redundant when the next one starts at or below upto + 1.
        let mut keep = Vec::new();
        let segments = std::mem::take(&mut inner.segments);
        for (i, seg) in segments.iter().enumerate() {
            let redundant = segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= upto + 1);
            if redundant {
                fs::remove_file(&seg.1).map_err(io_err(&seg.1))?;
            } else {
                keep.push(seg.clone());
            }
        }
        inner.segments = keep;
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Metric;

    #[test]
    fn records_with_metadata_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        let upsert = Op::Upsert {
            collection: "c".into(),
            doc_id: "d".into(),
            chunks: vec![crate::log::ChunkRecord {
                chunk_id: "d#0".into(),
                text: "t".into(),
                metadata: serde_json::json!({"n": 1, "tags": ["a"], "ok": true})
                    .as_object()
                    .unwrap()
                    .clone(),
                vector: vec![0.5, 0.25],
            }],
        };
        wal.append(vec![op(1), upsert.clone()]).unwrap();
        drop(wal);
        let (wal, report) = open(dir.path());
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(wal.read_after(1).unwrap()[0].op, upsert);
    }

    #[test]
    fn checksummed_but_undecodable_frame_is_an_error_not_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        wal.append(vec![op(1)]).unwrap();
        drop(wal);
        let seg = list_segments(dir.path()).unwrap()[0].1.clone();
        let payload = [0xffu8; 5];
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&crc32fast::hash(&payload).to_le_bytes())
            .unwrap();
        f.write_all(&payload).unwrap();
        drop(f);
        let err = FileWal::open(dir.path(), FsyncPolicy::Always, 0)
            .err()
            .expect("corrupt");
        assert!(matches!(err, LogError::Corrupt(_)), "{err}");
    }

    fn op(n: usize) -> Op {
        Op::CreateCollection {
            collection: format!("c{n}"),
            dim: n,
            metric: Metric::Cosine,
        }
    }

    fn open(dir: &Path) -> (FileWal, OpenReport) {
        FileWal::open(dir, FsyncPolicy::Always, 0).unwrap()
    }

    #[test]
    fn appended_records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        let recs = wal.append(vec![op(1), op(2)]).unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        wal.append(vec![op(3)]).unwrap();
        drop(wal);
        let (wal, report) = open(dir.path());
        assert_eq!(report.records, 3);
        assert_eq!(wal.last_seq(), 3);
        let all = wal.read_after(1).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(all[1].op, op(3));
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        wal.append(vec![op(1), op(2)]).unwrap();
        drop(wal);
        let seg = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (wal, report) = open(dir.path());
        assert_eq!(report.truncated_bytes, 7);
        assert_eq!(wal.last_seq(), 2);
        wal.append(vec![op(3)]).unwrap();
        assert_eq!(wal.read_after(0).unwrap().len(), 3);
    }

    #[test]
    fn flipped_byte_in_tail_is_detected_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        wal.append(vec![op(1)]).unwrap();
        wal.append(vec![op(2)]).unwrap();
        drop(wal);
        let seg = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let (wal, report) = open(dir.path());
        assert!(report.truncated_bytes > 0);
        assert_eq!(wal.last_seq(), 1);
    }

    #[test]
    fn truncation_drops_only_segments_covered_by_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        wal.append(vec![op(1), op(2)]).unwrap();
        wal.truncate_before(2).unwrap();
        wal.append(vec![op(3)]).unwrap();
        wal.truncate_before(2).unwrap();
        wal.append(vec![op(4)]).unwrap();
        assert_eq!(
            wal.read_after(2)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        drop(wal);
        let (wal, _) = FileWal::open(dir.path(), FsyncPolicy::Always, 2).unwrap();
        assert_eq!(wal.last_seq(), 4);
        assert_eq!(list_segments(dir.path()).unwrap()[0].0, 3);
    }

    #[test]
    fn numbering_continues_from_the_snapshot_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = FileWal::open(dir.path(), FsyncPolicy::Always, 41).unwrap();
        assert_eq!(wal.append(vec![op(1)]).unwrap()[0].seq, 42);
    }
}
