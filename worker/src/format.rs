//! The encoding of everything the worker persists or replicates: WAL frames, snapshot
//! payloads and Redis stream entries.
//!
//! Format version 2 (current): one version byte, then the value in `postcard` (a
//! maintained, compact serde format). Version 1 (releases up to and including the one
//! that introduced this module) was `bincode` 1.x, which is unmaintained
//! (RUSTSEC-2025-0141); files and stream entries of version 1 are still read by
//! [`legacy`], a small decoder of exactly the types this crate wrote, so upgrading needs no
//! migration step: old WAL segments are read until a snapshot makes them redundant, old
//! snapshots load, and the next snapshot is written in version 2.

use crate::log::{Op, Record};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version written by this build.
pub const VERSION: u8 = 2;

/// Errors decoding persisted bytes.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("empty payload")]
    Empty,
    #[error("format version {0} is newer than this build understands (up to {VERSION}); upgrade the worker")]
    Unknown(u8),
    #[error("undecodable: {0}")]
    Decode(String),
}

/// `VERSION` then the postcard encoding of `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![VERSION];
    postcard::to_io(value, &mut out).map_err(|e| FormatError::Decode(e.to_string()))?;
    Ok(out)
}

/// Decodes bytes written by [`encode`] (any version this build knows, except 1, which has
/// no version byte: see [`legacy`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    match bytes.first() {
        None => Err(FormatError::Empty),
        Some(&VERSION) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| FormatError::Decode(e.to_string()))
        }
        Some(&v) => Err(FormatError::Unknown(v)),
    }
}

/// Encodes a log record (WAL frame payload).
pub fn encode_record(record: &Record) -> Result<Vec<u8>, FormatError> {
    encode(record)
}

/// Encodes an op (Redis stream entry payload; the sequence is the entry id).
pub fn encode_op(op: &Op) -> Result<Vec<u8>, FormatError> {
    encode(op)
}

/// Readers of format version 1: `bincode` 1.x with its default (legacy) options, i.e.
/// fixed-width little-endian integers, `u64` lengths, `u32` enum variant indexes.
pub mod legacy {
    use super::FormatError;
    use crate::log::{ChunkRecord, Metadata, Metric, Op, Record};

    /// A cursor over version-1 bytes.
    pub struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Self { bytes, at: 0 }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&e| e <= self.bytes.len())
                .ok_or_else(|| {
                    FormatError::Decode(format!("unexpected end at byte {}", self.at))
                })?;
            let out = &self.bytes[self.at..end];
            self.at = end;
            Ok(out)
        }

        pub fn u32(&mut self) -> Result<u32, FormatError> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
        }

        pub fn u64(&mut self) -> Result<u64, FormatError> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
        }

        /// A `u64` length, bounded by what is left so a corrupt length cannot allocate.
        fn len(&mut self, elem: usize) -> Result<usize, FormatError> {
            let n = self.u64()?;
            let left = (self.bytes.len() - self.at) as u64;
            if n.saturating_mul(elem.max(1) as u64) > left {
                return Err(FormatError::Decode(format!(
                    "length {n} at byte {} exceeds the data",
                    self.at
                )));
            }
            Ok(n as usize)
        }

        pub fn string(&mut self) -> Result<String, FormatError> {
            let n = self.len(1)?;
            String::from_utf8(self.take(n)?.to_vec())
                .map_err(|e| FormatError::Decode(e.to_string()))
        }

        pub fn f32s(&mut self) -> Result<Vec<f32>, FormatError> {
            let n = self.len(4)?;
            Ok(self
                .take(n * 4)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                .collect())
        }

        /// A sequence of `T`, each at least `min_size` bytes.
        pub fn seq<T>(
            &mut self,
            min_size: usize,
            mut item: impl FnMut(&mut Self) -> Result<T, FormatError>,
        ) -> Result<Vec<T>, FormatError> {
            let n = self.len(min_size)?;
            (0..n).map(|_| item(self)).collect()
        }

        pub fn metric(&mut self) -> Result<Metric, FormatError> {
            match self.u32()? {
                0 => Ok(Metric::Cosine),
                1 => Ok(Metric::Dot),
                v => Err(FormatError::Decode(format!("unknown metric variant {v}"))),
            }
        }

        /// Metadata was stored as JSON text.
        pub fn metadata(&mut self) -> Result<Metadata, FormatError> {
            let text = self.string()?;
            serde_json::from_str(&text).map_err(|e| FormatError::Decode(e.to_string()))
        }

        fn chunk(&mut self) -> Result<ChunkRecord, FormatError> {
            Ok(ChunkRecord {
                chunk_id: self.string()?,
                text: self.string()?,
                metadata: self.metadata()?,
                vector: self.f32s()?,
            })
        }

        pub fn op(&mut self) -> Result<Op, FormatError> {
            Ok(match self.u32()? {
                0 => Op::CreateCollection {
                    collection: self.string()?,
                    dim: self.u64()? as usize,
                    metric: self.metric()?,
                },
                1 => Op::Upsert {
                    collection: self.string()?,
                    doc_id: self.string()?,
                    chunks: self.seq(32, Self::chunk)?,
                },
                2 => Op::Delete {
                    collection: self.string()?,
                    doc_id: self.string()?,
                },
                3 => Op::DropCollection {
                    collection: self.string()?,
                },
                v => return Err(FormatError::Decode(format!("unknown op variant {v}"))),
            })
        }

        /// Fails unless every byte was consumed.
        pub fn finish(self) -> Result<(), FormatError> {
            if self.at == self.bytes.len() {
                Ok(())
            } else {
                Err(FormatError::Decode(format!(
                    "{} trailing bytes",
                    self.bytes.len() - self.at
                )))
            }
        }
    }

    /// A version-1 WAL frame payload.
    pub fn record(bytes: &[u8]) -> Result<Record, FormatError> {
        let mut r = Reader::new(bytes);
        let record = Record {
            seq: r.u64()?,
            op: r.op()?,
        };
        r.finish()?;
        Ok(record)
    }

    /// A version-1 Redis stream entry payload.
    pub fn op(bytes: &[u8]) -> Result<Op, FormatError> {
        let mut r = Reader::new(bytes);
        let op = r.op()?;
        r.finish()?;
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{ChunkRecord, Metric};

    fn upsert() -> Op {
        Op::Upsert {
            collection: "c".into(),
            doc_id: "d".into(),
            chunks: vec![ChunkRecord {
                chunk_id: "d-0".into(),
                text: "t".into(),
                metadata: serde_json::json!({"tags": ["a", "b"], "n": 1.5})
                    .as_object()
                    .unwrap()
                    .clone(),
                vector: vec![0.25, -1.0],
            }],
        }
    }

    #[test]
    fn records_round_trip_with_the_version_byte_first() {
        let record = Record {
            seq: 300,
            op: upsert(),
        };
        let bytes = encode_record(&record).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<Record>(&bytes).unwrap(), record);
        let op = Op::CreateCollection {
            collection: "x".into(),
            dim: 384,
            metric: Metric::Dot,
        };
        assert_eq!(decode::<Op>(&encode_op(&op).unwrap()).unwrap(), op);
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let mut bytes = encode_op(&upsert()).unwrap();
        bytes[0] = VERSION + 1;
        let err = decode::<Op>(&bytes).unwrap_err();
        assert!(err.to_string().contains("upgrade the worker"), "{err}");
    }

    #[test]
    fn legacy_lengths_beyond_the_data_are_errors_not_allocations() {
        // Variant 3 (DropCollection) with a string length of 2^60.
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(legacy::op(&bytes).is_err());
    }
}
