//! Crash-safe snapshots of the whole index plus the last applied log sequence.
//!
//! File: `KBSNAP02 | payload | crc32(payload) u32 LE | payload length u64 LE`, the payload
//! in [`crate::format`] (version byte + postcard), written and read as a stream
//! ([`stream`]): a snapshot or a start-up holds one chunk of rows at a time, never a copy
//! of the whole index. Files of format version 1 (`KBSNAP01`, bincode payload) still load. Written to a temporary file, fsynced, renamed into place
//! and the directory fsynced, so a crash leaves either the old set of snapshots or the new
//! one, never a half file under a snapshot name; a failed write removes its temporary
//! file, and [`clean_temporary`] removes those a crash left. Loading walks from the newest
//! file to the oldest valid one.

use crate::index::flat::{Row, CHUNK_ROWS};
use crate::index::{Index, Placement};
use crate::log::{Metric, Seq};
use serde::Serialize;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod incoming;
mod sink;
mod stream;
pub use incoming::{Incoming, Received};
pub use stream::{load_file, verify_file};

const MAGIC: &[u8; 8] = b"KBSNAP02";
/// Magic of format version 1 (bincode payload), read but no longer written.
const MAGIC_V1: &[u8; 8] = b"KBSNAP01";
const TRAILER: usize = 12;

/// Errors reading or writing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {0} is invalid: {1}")]
    Invalid(PathBuf, String),
    #[error("snapshot encoding failed: {0}")]
    Encode(String),
    #[error("snapshot holds an inconsistent collection: {0}")]
    Index(#[from] crate::index::IndexError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A whole snapshot's contents in memory: what version-1 files decode into, and (through
/// its serde encoding) the reference the streamed version-2 writer is tested against.
#[derive(Serialize)]
struct SnapshotData {
    seq: Seq,
    collections: Vec<CollectionData>,
}

#[derive(Serialize)]
struct CollectionData {
    name: String,
    dim: usize,
    metric: Metric,
    rows: Vec<RowData>,
}

#[derive(Serialize)]
struct RowData {
    doc_id: String,
    chunk_id: String,
    text: String,
    /// JSON text: the encoding is not self-describing, so untyped JSON travels as text.
    metadata: String,
    vector: Vec<f32>,
}

/// The index's contents at one sequence, frozen under the index lock (tensor views and
/// shared rows, nothing copied: see [`FlatIndex::freeze`]); exporting, encoding and
/// writing it ([`Capture::save`]) needs no lock, so it can run on another thread while
/// the index moves on.
pub struct Capture {
    seq: Seq,
    collections: Vec<(String, crate::index::flat::Frozen)>,
    catalog: crate::index::catalog::Catalog,
}

impl Capture {
    /// Freezes every collection of `index`.
    pub fn of(index: &Index) -> Result<Capture, SnapshotError> {
        let collections = index
            .collections()
            .map(|(name, c)| Ok((name.clone(), c.freeze()?)))
            .collect::<Result<_, SnapshotError>>()?;
        Ok(Capture {
            seq: index.applied(),
            collections,
            catalog: index.catalog().clone(),
        })
    }

    /// The sequence the copy was taken at.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The snapshot file format: magic, versioned payload, CRC32 and length.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        stream::write_file(
            Vec::new(),
            self.seq,
            &self.collections,
            &self.catalog,
            Path::new("<memory>"),
        )
    }

    /// Writes the snapshot into `dir` atomically and removes all but the newest `keep`.
    /// The file is written as the rows are copied off the tensors, a chunk at a time: the
    /// snapshot needs no second copy of the index in memory.
    pub fn save(&self, dir: &Path, keep: usize) -> Result<PathBuf, SnapshotError> {
        let path = write_atomic_with(dir, &file_name(self.seq()), |file, tmp| {
            let w = std::io::BufWriter::with_capacity(1 << 20, file);
            let w = stream::write_file(w, self.seq, &self.collections, &self.catalog, tmp)?;
            w.into_inner().map_err(|e| io_err(tmp)(e.into_error()))?;
            Ok(())
        })?;
        for (_, old) in list(dir)?.into_iter().skip(keep.max(1)) {
            fs::remove_file(&old).map_err(io_err(&old))?;
        }
        Ok(path)
    }
}

/// Serialises the index into the snapshot file format.
pub fn encode(index: &Index) -> Result<Vec<u8>, SnapshotError> {
    Capture::of(index)?.encode()
}

/// Verifies and decodes snapshot bytes into an index on `placement`.
pub fn decode(
    bytes: &[u8],
    placement: impl Into<Placement>,
    origin: &Path,
) -> Result<Index, SnapshotError> {
    let mut sink = stream::IndexSink::new(placement.into());
    let seq = decode_into(bytes, origin, &mut sink)?;
    sink.finish(seq)
}

/// Checks `bytes`' framing and feeds their payload to `sink`; returns the sequence.
fn decode_into(
    bytes: &[u8],
    origin: &Path,
    sink: &mut impl stream::Sink,
) -> Result<Seq, SnapshotError> {
    let invalid = |msg: &str| SnapshotError::Invalid(origin.to_path_buf(), msg.to_string());
    let magic = bytes.get(..MAGIC.len());
    if bytes.len() < MAGIC.len() + TRAILER || (magic != Some(MAGIC) && magic != Some(MAGIC_V1)) {
        return Err(invalid("not a snapshot (bad magic or too short)"));
    }
    let end = bytes.len() - TRAILER;
    let payload = &bytes[MAGIC.len()..end];
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[end + 4..].try_into().expect("8 bytes"));
    if len as usize != payload.len() {
        return Err(invalid("length mismatch (truncated file)"));
    }
    if crc32fast::hash(payload) != crc {
        return Err(invalid("checksum mismatch"));
    }
    if magic == Some(MAGIC_V1) {
        let data = decode_v1(payload).map_err(|e| invalid(&format!("undecodable: {e}")))?;
        return feed(data, origin, sink);
    }
    stream::read_payload(payload, len, origin, sink)
}

/// Feeds decoded (version 1) contents to `sink`.
fn feed(
    data: SnapshotData,
    origin: &Path,
    sink: &mut impl stream::Sink,
) -> Result<Seq, SnapshotError> {
    for c in data.collections {
        if c.dim == 0 || c.dim > crate::index::MAX_DIM {
            return Err(SnapshotError::Invalid(
                origin.to_path_buf(),
                format!("a collection of dimension {}", c.dim),
            ));
        }
        if c.rows.iter().any(|r| r.vector.len() != c.dim) {
            return Err(SnapshotError::Invalid(
                origin.to_path_buf(),
                "vector length differs from the collection dimension".into(),
            ));
        }
        sink.collection(c.name, c.dim, c.metric, c.rows.len())?;
        for rows in c.rows.chunks(CHUNK_ROWS) {
            let vectors: Vec<f32> = rows.iter().flat_map(|r| r.vector.iter().copied()).collect();
            let rows = rows
                .iter()
                .map(|r| {
                    Arc::new(Row {
                        doc_id: r.doc_id.clone(),
                        chunk_id: r.chunk_id.clone(),
                        text: r.text.clone(),
                        metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
                    })
                })
                .collect();
            sink.rows(rows, &vectors)?;
        }
    }
    Ok(data.seq)
}

/// The sequence in a snapshot file's name (`snap-<seq>.kbsnap`).
pub fn sequence_of_file_name(path: &Path) -> Option<Seq> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("snap-"))
        .and_then(|n| n.strip_suffix(".kbsnap"))
        .and_then(|n| n.parse::<Seq>().ok())
}

/// Snapshot files in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, SnapshotError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if let Some(seq) = sequence_of_file_name(&path) {
            found.push((seq, path));
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Writes `bytes` to `dir/name` atomically (temp, fsync, rename, fsync dir).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    write_atomic_with(dir, name, |file, tmp| {
        file.write_all(bytes).map_err(io_err(tmp))
    })
}

/// Writes `dir/name` atomically with `write`, which gets the temporary file and its path
/// (for errors): fsync, rename, fsync of the directory. A failure removes the temporary
/// file (a full disk must not also keep the partial file that filled it).
pub fn write_atomic_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File, &Path) -> Result<(), SnapshotError>,
) -> Result<PathBuf, SnapshotError> {
    crate::durable::create_dir_all(dir).map_err(io_err(dir))?;
    // Unique within the process too: two writers of the same name never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{n}{TEMP_MARK}{}", std::process::id()));
    let written = File::create(&tmp).map_err(io_err(&tmp)).and_then(|mut f| {
        write(&mut f, &tmp)?;
        f.sync_all().map_err(io_err(&tmp))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let path = dir.join(name);
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    crate::durable::sync_dir(dir).map_err(io_err(dir))?;
    Ok(path)
}

/// What [`StreamCheck`] found in a complete snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The sequence the snapshot was taken at (read from its payload).
    pub sequence: Seq,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// `KBSNAP01` or `KBSNAP02`.
    pub format: String,
}

/// Verifies a snapshot that passes through in pieces (a download streamed to object
/// storage) without holding it: magic, payload CRC32 and length from the trailer, the
/// sequence from the payload's first field, and a SHA-256 of every byte for the manifest.
#[derive(Default)]
pub struct StreamCheck {
    /// The first bytes: magic and the start of the payload.
    head: Vec<u8>,
    /// The last `TRAILER` bytes seen; the CRC covers what falls out of this window.
    tail: Vec<u8>,
    crc: crc32fast::Hasher,
    sha: sha2::Sha256,
    total: u64,
}

/// Bytes of the head kept: magic, version byte and a 10-byte varint (or a u64).
const HEAD: usize = 32;

impl StreamCheck {
    pub fn update(&mut self, mut data: &[u8]) {
        use sha2::Digest;
        self.sha.update(data);
        self.total += data.len() as u64;
        // The magic is not covered by the CRC.
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(data.len());
            let magic_left = MAGIC.len().saturating_sub(self.head.len()).min(take);
            self.head.extend_from_slice(&data[..take]);
            self.push_payload(&data[magic_left..take]);
            data = &data[take..];
        }
        self.push_payload(data);
    }

    /// Feeds payload-or-trailer bytes: everything but the last `TRAILER` goes to the CRC.
    fn push_payload(&mut self, data: &[u8]) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > TRAILER {
            let out = self.tail.len() - TRAILER;
            self.crc.update(&self.tail[..out]);
            self.tail.drain(..out);
        }
    }

    /// Checks the trailer against what passed; fails on a truncated or corrupt stream.
    pub fn finish(self) -> Result<Checked, String> {
        use sha2::Digest;
        let magic = self.head.get(..MAGIC.len());
        if magic != Some(MAGIC) && magic != Some(MAGIC_V1) {
            return Err("not a snapshot (bad magic or too short)".into());
        }
        if self.tail.len() < TRAILER {
            return Err("truncated snapshot (no trailer)".into());
        }
        let crc = u32::from_le_bytes(self.tail[..4].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(self.tail[4..].try_into().expect("8 bytes"));
        if len != self.total - (MAGIC.len() + TRAILER) as u64 {
            return Err("length mismatch (truncated snapshot)".into());
        }
        if self.crc.finalize() != crc {
            return Err("checksum mismatch".into());
        }
        let sequence = sequence_of(&self.head).ok_or("payload does not start with a sequence")?;
        Ok(Checked {
            sequence,
            bytes: self.total,
            sha256: hex::encode(self.sha.finalize()),
            format: String::from_utf8_lossy(&self.head[..MAGIC.len()]).into_owned(),
        })
    }
}

/// The sequence in the first bytes of a snapshot file (its payload's first field).
pub fn sequence_of(head: &[u8]) -> Option<Seq> {
    let payload = head.get(MAGIC.len()..)?;
    if head.starts_with(MAGIC_V1) {
        return Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?));
    }
    // Version byte, then the sequence as a postcard varint (7 bits per byte, LSB first).
    let (&version, varint) = payload.split_first()?;
    if version != crate::format::VERSION && version != stream::PAYLOAD_WITH_CATALOG {
        return None;
    }
    let mut value = 0u64;
    for (i, &b) in varint.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Part of the name of a snapshot being written (`.NAME.N.tmp-PID`).
const TEMP_MARK: &str = ".tmp-";

/// Removes temporary files that a crash during a snapshot write left in `dir`; returns how
/// many. Call before anything writes snapshots.
pub fn clean_temporary(dir: &Path) -> Result<usize, SnapshotError> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARK));
        if stale {
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Decodes a format-version-1 payload (see [`crate::format::legacy`]).
fn decode_v1(payload: &[u8]) -> Result<SnapshotData, crate::format::FormatError> {
    let mut r = crate::format::legacy::Reader::new(payload);
    let data = SnapshotData {
        seq: r.u64()?,
        collections: r.seq(28, |r| {
            Ok(CollectionData {
                name: r.string()?,
                dim: r.u64()? as usize,
                metric: r.metric()?,
                rows: r.seq(40, |r| {
                    Ok(RowData {
                        doc_id: r.string()?,
                        chunk_id: r.string()?,
                        text: r.string()?,
                        metadata: r.string()?,
                        vector: r.f32s()?,
                    })
                })?,
            })
        })?,
    };
    r.finish()?;
    Ok(data)
}

/// File name of the snapshot at `seq`.
pub fn file_name(seq: Seq) -> String {
    format!("snap-{seq:020}.kbsnap")
}

/// Writes a snapshot of `index` into `dir` and removes all but the newest `keep`.
pub fn save(index: &Index, dir: &Path, keep: usize) -> Result<PathBuf, SnapshotError> {
    Capture::of(index)?.save(dir, keep)
}

/// Loads the newest valid snapshot; invalid ones are reported and skipped. A snapshot
/// that is valid but does not fit (memory, device) is an error, not a reason to fall back
/// to an older one: the worker must not come up with less than it had.
pub fn load_newest(
    dir: &Path,
    device: impl Into<Placement>,
) -> Result<Option<Index>, SnapshotError> {
    let device = device.into();
    for (_, path) in list(dir)? {
        match load_file(&path, device.clone()) {
            Ok(index) => return Ok(Some(index)),
            Err(SnapshotError::Index(e)) if e.is_resource() => return Err(SnapshotError::Index(e)),
            Err(e) => tracing::error!(error = %e, "skipping invalid snapshot"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
