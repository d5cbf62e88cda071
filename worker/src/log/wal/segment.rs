//! Reading one WAL segment: its format, then its frames in order, one in memory at a
//! time, up to the first damaged one.

use super::{io_err, sync_dir, LogError, Record, Seq, HEADER, MAX_FRAME, SEGMENT_MAGIC};
use crate::format;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The format of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SegmentFormat {
    /// No header, bincode payloads.
    V1,
    /// `SEGMENT_MAGIC`, versioned payloads.
    V2,
    /// Empty, or a torn version-2 header: holds nothing.
    Empty,
}

/// Result of scanning one segment.
pub(super) struct Scan {
    pub(super) format: SegmentFormat,
    /// Records read.
    pub(super) records: u64,
    /// Offset just past the last valid frame.
    pub(super) valid_len: u64,
    /// Why scanning stopped before the end of the file, if it did.
    pub(super) damage: Option<String>,
    /// Payload length of the largest valid frame.
    pub(super) largest: usize,
}

/// A frame whose checksum holds but whose record does not decode was written whole by an
/// incompatible writer: cutting it would drop acknowledged writes, so it is an error.
fn undecodable(path: &Path, at: u64, e: &format::FormatError) -> LogError {
    LogError::Corrupt(format!(
        "{}: record at offset {at} has a valid checksum but does not decode ({e}); refusing to cut acknowledged data",
        path.display()
    ))
}

/// Reads one segment's frames in order and hands each record to `visit`, stopping at the
/// first damaged frame (reported in [`Scan::damage`]). One frame is in memory at a time,
/// so opening and replaying a log needs no room for the log.
pub(super) fn scan_segment<E: From<LogError>>(
    path: &Path,
    mut visit: impl FnMut(Record) -> Result<(), E>,
) -> Result<Scan, E> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let read = |r: &mut BufReader<File>, buf: &mut [u8]| -> Result<(), LogError> {
        r.read_exact(buf).map_err(io_err(path))
    };
    let mut head = [0u8; HEADER];
    let head_len = size.min(HEADER as u64) as usize;
    read(&mut r, &mut head[..head_len])?;
    let (format, start) = if head_len == HEADER && &head == SEGMENT_MAGIC {
        (SegmentFormat::V2, HEADER)
    } else if head_len < HEADER && SEGMENT_MAGIC.starts_with(&head[..head_len]) {
        (SegmentFormat::Empty, head_len)
    } else {
        // Version 1 has no header: its first frame starts at 0.
        r.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        (SegmentFormat::V1, 0)
    };
    let (mut at, mut records, mut payload) = (start as u64, 0u64, Vec::new());
    let mut largest = 0;
    let damage = loop {
        if at == size {
            break None;
        }
        if size - at < HEADER as u64 {
            break Some(format!("torn frame header at offset {at}"));
        }
        let mut frame = [0u8; HEADER];
        read(&mut r, &mut frame)?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME || size - at - (HEADER as u64) < len as u64 {
            break Some(format!("torn frame at offset {at} (length {len})"));
        }
        // Zeros (a file extended but never written, after a crash): the CRC of nothing is
        // 0, so this would otherwise pass as a whole frame that does not decode.
        if len == 0 {
            break Some(format!("empty frame at offset {at}"));
        }
        payload.resize(len, 0);
        read(&mut r, &mut payload)?;
        if crc32fast::hash(&payload) != crc {
            break Some(format!("checksum mismatch at offset {at}"));
        }
        let decoded = match format {
            SegmentFormat::V1 => format::legacy::record(&payload),
            _ => format::decode::<Record>(&payload),
        };
        match decoded {
            Ok(record) => {
                records += 1;
                largest = largest.max(len);
                visit(record)?;
            }
            Err(e) => return Err(undecodable(path, at, &e).into()),
        }
        at += (HEADER + len) as u64;
    };
    Ok(Scan {
        format,
        records,
        valid_len: at,
        damage,
        largest,
    })
}

/// Removes the newest segment when it holds no record (empty, or a header or part of
/// one) and an older segment exists: what a rotation that failed midway (ENOSPC while
/// creating the file) leaves behind, named after a sequence the older segment went on to
/// hold. Appends continue in the older one, as they did before the restart.
pub(super) fn drop_empty_trailing_segment(
    dir: &Path,
    segments: &mut Vec<(Seq, PathBuf)>,
) -> Result<(), LogError> {
    let [.., _, (_, last)] = segments.as_slice() else {
        return Ok(());
    };
    let size = std::fs::metadata(last).map_err(io_err(last))?.len();
    let mut head = vec![0u8; size.min(HEADER as u64) as usize];
    File::open(last)
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .map_err(io_err(last))?;
    if size > HEADER as u64 || !SEGMENT_MAGIC.starts_with(&head) {
        return Ok(());
    }
    tracing::warn!(segment = %last.display(), "removing an empty trailing WAL segment");
    std::fs::remove_file(last).map_err(io_err(last))?;
    segments.pop();
    sync_dir(dir)
}

/// After the damaged frame that ended `scan`, looks for whole frames further on that carry
/// records after `after`: acknowledged writes that cutting the tail would drop (a bad
/// sector or a flipped bit in the middle of the segment, not a torn last write). Returns
/// the first and last such sequence. Version-2 segments only.
///
/// Every offset is a candidate: the frame's length must fit the file (and the largest
/// frame seen, twice over), its payload must start with the format version and a
/// sequence after `after`; only then is the checksum computed and the record decoded.
pub(super) fn later_records(
    path: &Path,
    scan: &Scan,
    after: Seq,
) -> Result<Option<(Seq, Seq)>, LogError> {
    if scan.format != SegmentFormat::V2 {
        return Ok(None);
    }
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let limit = (scan.largest.max(1 << 20) * 2).min(MAX_FRAME);
    const WINDOW: usize = 1 << 20;
    // Frame header, version byte, a sequence varint.
    const PEEK: usize = HEADER + 1 + 10;
    let mut block = Vec::new();
    let mut base = scan.valid_len + 1;
    while base + (HEADER as u64) < size {
        let want = ((size - base) as usize).min(WINDOW + PEEK);
        block.resize(want, 0);
        file.read_exact_at(&mut block, base).map_err(io_err(path))?;
        let offsets = want.min(WINDOW);
        for i in 0..offsets {
            let at = base + i as u64;
            if !plausible_frame(&block[i..], at, size, limit, after) {
                continue;
            }
            if let Some((first, len)) = frame_at(&file, at, size).filter(|(r, _)| r.seq > after) {
                let mut last = first.seq;
                let mut next = at + (HEADER + len) as u64;
                while let Some((record, len)) = frame_at(&file, next, size) {
                    last = last.max(record.seq);
                    next += (HEADER + len) as u64;
                }
                return Ok(Some((first.seq, last)));
            }
        }
        base += offsets as u64;
    }
    Ok(None)
}

/// Cheap tests on the bytes at a candidate frame start (see [`later_records`]).
fn plausible_frame(bytes: &[u8], at: u64, size: u64, limit: usize, after: Seq) -> bool {
    if bytes.len() < HEADER + 2 {
        return false;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    if len < 2 || len > limit || at + (HEADER + len) as u64 > size {
        return false;
    }
    if bytes[HEADER] != format::VERSION {
        return false;
    }
    // The record's first field, its sequence, as postcard writes it (LEB128).
    let mut seq: u64 = 0;
    for (i, byte) in bytes[HEADER + 1..].iter().take(10).enumerate() {
        seq |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return seq > after;
        }
    }
    false
}

/// The whole, checksummed, decodable frame at `at`, and its payload length.
fn frame_at(file: &File, at: u64, size: u64) -> Option<(Record, usize)> {
    let mut head = [0u8; HEADER];
    file.read_exact_at(&mut head, at).ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME || at + (HEADER + len) as u64 > size {
        return None;
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, at + HEADER as u64).ok()?;
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    format::decode::<Record>(&payload).ok().map(|r| (r, len))
}
