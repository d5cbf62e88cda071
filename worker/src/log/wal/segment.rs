//! Reading one WAL segment: its format, then its frames in order, one in memory at a
//! time, up to the first damaged one.

use super::{io_err, LogError, Record, HEADER, MAX_FRAME, SEGMENT_MAGIC};
use crate::format;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

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
    })
}
