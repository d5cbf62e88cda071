//! The snapshot payload of format version 2, written and read a piece at a time, so that
//! neither a snapshot nor a start-up holds a second copy of the index in memory: the
//! writer copies [`CHUNK_ROWS`] rows off the tensors at a time, the reader fills the
//! collection's tensors a chunk at a time ([`FlatIndex::builder`]).
//!
//! The bytes are exactly those of `crate::format::encode(&SnapshotData)` (version byte,
//! then postcard: unsigned LEB128 varints for integers and lengths, strings as length and
//! UTF-8, `f32` as 4 little-endian bytes, enum variants as varint indexes), so files
//! written before this module load, and files written by it load in older builds.

pub(super) use super::sink::{CheckSink, IndexSink, Sink};
use super::{decode_into, io_err, SnapshotError, MAGIC, MAGIC_V1, TRAILER};
use crate::index::catalog::Catalog;
use crate::index::flat::{Frozen, Row, CHUNK_ROWS};
use crate::index::{Index, Placement};
use crate::log::{Metadata, Metric, Seq};
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A writer that keeps the CRC32 and length of what passes (the payload).
pub(super) struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Checksummed<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    /// Writes the trailer (CRC32 and length of the payload) and returns the writer.
    pub(super) fn finish(mut self) -> std::io::Result<W> {
        let crc = self.crc.finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&self.len.to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot file (magic, payload, trailer) of `collections` at `seq` to `w`;
/// I/O errors name `origin`.
pub(super) fn write_file<W: Write>(
    w: W,
    seq: Seq,
    collections: &[(String, Frozen)],
    catalog: &Catalog,
    origin: &Path,
) -> Result<W, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: origin.to_path_buf(),
        source,
    };
    let mut w = w;
    w.write_all(MAGIC).map_err(io)?;
    let mut enc = Encoder {
        w: Checksummed::new(w),
        scratch: Vec::new(),
    };
    enc.payload(seq, collections, catalog)
        .map_err(|e| match e {
            Failure::Io(e) => io(e),
            Failure::Index(e) => SnapshotError::Index(e),
        })?;
    enc.w.finish().map_err(io)
}

enum Failure {
    Io(std::io::Error),
    Index(crate::index::IndexError),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

struct Encoder<W> {
    w: W,
    /// One row's vector as bytes (reused).
    scratch: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    fn payload(
        &mut self,
        seq: Seq,
        collections: &[(String, Frozen)],
        catalog: &Catalog,
    ) -> Result<(), Failure> {
        // An index without bindings or aliases keeps version 2, which older workers read.
        if catalog.is_empty() {
            self.w.write_all(&[crate::format::VERSION])?;
            self.varint(seq)?;
        } else {
            self.w.write_all(&[PAYLOAD_WITH_CATALOG])?;
            self.varint(seq)?;
            let bytes = catalog
                .to_bytes()
                .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
            self.varint(bytes.len() as u64)?;
            self.w.write_all(&bytes)?;
        }
        self.varint(collections.len() as u64)?;
        for (name, c) in collections {
            self.string(name)?;
            self.varint(c.dim as u64)?;
            self.varint(metric_index(c.metric))?;
            self.varint(c.live() as u64)?;
            for chunk in c.chunks() {
                let chunk = chunk.map_err(Failure::Index)?;
                let vectors = chunk.vectors.chunks_exact(c.dim.max(1));
                for (row, v) in chunk.rows.iter().zip(vectors) {
                    self.string(&row.doc_id)?;
                    self.string(&row.chunk_id)?;
                    self.string(&row.text)?;
                    let metadata =
                        serde_json::to_string(&row.metadata).unwrap_or_else(|_| "{}".into());
                    self.string(&metadata)?;
                    self.varint(v.len() as u64)?;
                    self.scratch.clear();
                    self.scratch.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                    self.w.write_all(&self.scratch)?;
                }
            }
        }
        Ok(())
    }

    fn varint(&mut self, mut v: u64) -> std::io::Result<()> {
        let mut buf = [0u8; 10];
        let mut n = 0;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            buf[n] = byte | if v != 0 { 0x80 } else { 0 };
            n += 1;
            if v == 0 {
                return self.w.write_all(&buf[..n]);
            }
        }
    }

    fn string(&mut self, s: &str) -> std::io::Result<()> {
        self.varint(s.len() as u64)?;
        self.w.write_all(s.as_bytes())
    }
}

/// The variant index postcard writes for `metric` (the enum's declaration order).
fn metric_index(metric: Metric) -> u64 {
    match metric {
        Metric::Cosine => 0,
        Metric::Dot => 1,
    }
}

/// The payload version of an index with bindings or aliases: version 2's layout with the
/// [`Catalog`] (its postcard bytes, length first) after the sequence.
pub(super) const PAYLOAD_WITH_CATALOG: u8 = 3;

/// Reads a version-2 payload of `len` bytes from `r` into `sink`; returns its sequence.
/// Lengths are checked against the bytes left before anything is allocated for them, and
/// the payload must end exactly where its last row does.
pub(super) fn read_payload(
    r: impl Read,
    len: u64,
    origin: &Path,
    sink: &mut impl Sink,
) -> Result<Seq, SnapshotError> {
    let mut d = Decoder {
        r,
        left: len,
        origin: origin.to_path_buf(),
        scratch: Vec::new(),
    };
    let version = d.byte()?;
    if version != crate::format::VERSION && version != PAYLOAD_WITH_CATALOG {
        return Err(d.invalid(&format!(
            "payload format version {version}, expected 2 or {PAYLOAD_WITH_CATALOG}"
        )));
    }
    let seq = d.varint()?;
    if version == PAYLOAD_WITH_CATALOG {
        let len = d.count(1)?;
        let mut bytes = vec![0u8; len];
        d.fill(&mut bytes)?;
        let catalog =
            Catalog::from_bytes(&bytes).map_err(|e| d.invalid(&format!("catalog: {e}")))?;
        sink.catalog(catalog)?;
    }
    // A collection takes at least 4 bytes (name length, dim, metric, row count).
    let collections = d.count(4)?;
    for _ in 0..collections {
        let name = d.string()?;
        let dim = usize::try_from(d.varint()?).map_err(|_| d.invalid("dimension too large"))?;
        if dim == 0 || dim > crate::index::MAX_DIM {
            return Err(d.invalid(&format!(
                "a collection of dimension {dim} (1 to {} are possible)",
                crate::index::MAX_DIM
            )));
        }
        let metric = match d.varint()? {
            0 => Metric::Cosine,
            1 => Metric::Dot,
            other => return Err(d.invalid(&format!("unknown metric {other}"))),
        };
        // A row takes at least four string lengths, its vector's length and the vector.
        let rows = d.count((dim as u64).saturating_mul(4).saturating_add(5))?;
        sink.collection(name, dim, metric, rows)?;
        let mut left = rows;
        while left > 0 {
            let take = left.min(CHUNK_ROWS);
            let mut chunk = Vec::with_capacity(take);
            let mut vectors = Vec::with_capacity(take * dim);
            for _ in 0..take {
                let (doc_id, chunk_id, text) = (d.string()?, d.string()?, d.string()?);
                let metadata: Metadata = serde_json::from_str(&d.string()?).unwrap_or_default();
                if d.varint()? != dim as u64 {
                    return Err(d.invalid("vector length differs from the collection dimension"));
                }
                d.f32s(dim, &mut vectors)?;
                chunk.push(Arc::new(Row {
                    doc_id,
                    chunk_id,
                    text,
                    metadata,
                }));
            }
            sink.rows(chunk, &vectors)?;
            left -= take;
        }
    }
    if d.left != 0 {
        return Err(d.invalid(&format!("{} bytes after the last row", d.left)));
    }
    Ok(seq)
}

struct Decoder<R> {
    r: R,
    left: u64,
    origin: PathBuf,
    /// One vector's bytes (reused).
    scratch: Vec<u8>,
}

impl<R: Read> Decoder<R> {
    fn invalid(&self, msg: &str) -> SnapshotError {
        SnapshotError::Invalid(self.origin.clone(), format!("undecodable: {msg}"))
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        if buf.len() as u64 > self.left {
            return Err(self.invalid("the payload ends early"));
        }
        self.left -= buf.len() as u64;
        self.r.read_exact(buf).map_err(|source| SnapshotError::Io {
            path: self.origin.clone(),
            source,
        })
    }

    fn byte(&mut self) -> Result<u8, SnapshotError> {
        let mut b = [0u8];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(self.invalid("integer overflow"));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.invalid("integer overflow"))
    }

    /// A count of items of at least `min_bytes` each: more than the bytes left can hold
    /// is corruption, refused before anything is allocated for it.
    fn count(&mut self, min_bytes: u64) -> Result<usize, SnapshotError> {
        let n = self.varint()?;
        if n.saturating_mul(min_bytes) > self.left {
            return Err(self.invalid(&format!(
                "{n} items announced, the payload cannot hold them"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, SnapshotError> {
        let len = self.count(1)?;
        let mut bytes = vec![0u8; len];
        self.fill(&mut bytes)?;
        String::from_utf8(bytes).map_err(|_| self.invalid("a string is not UTF-8"))
    }

    fn f32s(&mut self, n: usize, out: &mut Vec<f32>) -> Result<(), SnapshotError> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.resize(4 * n, 0);
        self.fill(&mut bytes)?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
        self.scratch = bytes;
        Ok(())
    }
}

/// Loads the snapshot file at `path` in one pass that decodes the payload straight into
/// the collections' tensors (a chunk of rows at a time: no copy of the file or of the
/// vectors is held in memory) and checksums it; the index is returned only when the
/// checksum holds. Every length is checked against the bytes left before anything is
/// allocated for it. Files of version 1 are read whole.
pub fn load_file(path: &Path, placement: impl Into<Placement>) -> Result<Index, SnapshotError> {
    let mut sink = IndexSink::new(placement.into());
    let seq = read_file(path, &mut sink)?;
    sink.finish(seq)
}

/// Verifies the snapshot file at `path` as [`load_file`] reads it (checksum, then the
/// structure of every row) without building an index or holding the file; returns its
/// sequence.
pub fn verify_file(path: &Path) -> Result<Seq, SnapshotError> {
    read_file(path, &mut CheckSink)
}

/// Feeds the payload of the snapshot file at `path` to `sink` once its checksum holds.
fn read_file(path: &Path, sink: &mut impl Sink) -> Result<Seq, SnapshotError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut magic = [0u8; 8];
    let invalid = |msg: &str| SnapshotError::Invalid(path.to_path_buf(), msg.to_string());
    let len = payload_len(file_len).ok_or_else(|| invalid("not a snapshot (too short)"))?;
    file.read_exact(&mut magic).map_err(io_err(path))?;
    if &magic == MAGIC_V1 {
        let bytes = fs::read(path).map_err(io_err(path))?;
        return decode_into(&bytes, path, sink);
    }
    if &magic != MAGIC {
        return Err(invalid("not a snapshot (bad magic or too short)"));
    }
    // The trailer first (a truncated file is refused before anything is decoded), then
    // one pass that decodes and checksums the payload together; the index it built is
    // dropped when the checksum does not hold.
    let mut trailer = [0u8; TRAILER];
    file.seek(SeekFrom::Start(file_len - TRAILER as u64))
        .and_then(|_| file.read_exact(&mut trailer))
        .and_then(|()| file.seek(SeekFrom::Start(MAGIC.len() as u64)))
        .map_err(io_err(path))?;
    if u64::from_le_bytes(trailer[4..].try_into().expect("8 bytes")) != len {
        return Err(invalid("length mismatch (truncated file)"));
    }
    let expected = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let mut payload = Crc32Reader {
        inner: BufReader::with_capacity(1 << 20, file).take(len),
        crc: crc32fast::Hasher::new(),
    };
    let decoded = read_payload(&mut payload, len, path, sink);
    match &decoded {
        Ok(_) => {}
        // An undecodable payload is most likely a corrupt one: say so when the checksum
        // disagrees too.
        Err(SnapshotError::Invalid(..)) => {
            std::io::copy(&mut payload, &mut std::io::sink()).map_err(io_err(path))?;
        }
        // I/O, or a collection that does not fit: not the file's fault.
        Err(_) => return decoded,
    }
    if payload.crc.finalize() != expected {
        return Err(invalid("checksum mismatch"));
    }
    decoded
}

/// A reader that checksums what passes through it.
struct Crc32Reader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Crc32Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// The payload length of a snapshot file of `file_len` bytes (magic and trailer off).
pub(super) fn payload_len(file_len: u64) -> Option<u64> {
    file_len.checked_sub((MAGIC.len() + TRAILER) as u64)
}
