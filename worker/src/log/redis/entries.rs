//! Stream entries and the epoch of the history they belong to, and why Redis may refuse
//! to number a write.

use super::RedisLogError;
use crate::log::{LogError, Op, Record, Seq};
use fred::prelude::*;

/// The history the stream belongs to: a random id, the sequence it started after and the
/// epoch it continues (empty when it started a knowledge base or its parent is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    pub base: Seq,
    pub parent: String,
}

impl Epoch {
    pub(super) fn parse(value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, ':');
        Some(Self {
            id: parts.next()?.to_string(),
            base: parts.next()?.parse().ok()?,
            parent: parts.next().unwrap_or("").to_string(),
        })
    }

    pub(super) fn fresh_id() -> String {
        format!("{:016x}", rand::random::<u64>())
    }
}

/// Why Redis refused to number a write: it went behind what replicas already applied, or
/// the stream was re-seeded under another epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Regression {
    #[error("Redis lost the log: its counter, stream and epoch are gone while replicas applied up to sequence {floor} (a FLUSHALL, a recreated volume or a failover to an empty replica)")]
    Lost { floor: Seq },
    #[error("the Redis log went backwards: its counter is at {counter} and its newest entry at {top}, but replicas already applied or saw sequence {floor} (a failover to a replica that missed writes, or an evicted counter)")]
    Behind { counter: Seq, top: Seq, floor: Seq },
    #[error("the stream was re-seeded: it now follows epoch {found:?}, this replica follows {expected:?}")]
    EpochChanged { expected: String, found: String },
    #[error("the stream moved past this replica's sequence during a re-seed (counter {counter})")]
    Ahead { counter: Seq },
}

impl Regression {
    pub(super) fn from_script(message: &str) -> Option<Self> {
        let start = message.find("KB")?;
        let (tag, rest) = message[start..].trim().split_once(' ')?;
        let numbers: Vec<Seq> = rest
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match (tag, numbers.as_slice()) {
            ("KBLOST", [floor]) => Some(Self::Lost { floor: *floor }),
            ("KBBEHIND", [counter, top, floor]) => Some(Self::Behind {
                counter: *counter,
                top: *top,
                floor: *floor,
            }),
            ("KBAHEAD", [counter]) => Some(Self::Ahead { counter: *counter }),
            ("KBEPOCH", _) => Some(Self::EpochChanged {
                expected: String::new(),
                found: rest.trim().to_string(),
            }),
            _ => None,
        }
    }
}

/// What a writer sends with an append so that Redis refuses to reuse sequences.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The epoch id the writer follows (`None`: adopt the current one).
    pub epoch: Option<String>,
    /// The highest sequence the writer applied or saw logged.
    pub floor: Seq,
}

/// One stream entry: the record, its epoch id (absent in entries written before epochs)
/// and the sequence of the last entry of the batch it was appended with.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub record: Record,
    pub epoch: Option<String>,
    pub batch_end: Seq,
}

/// Decodes XRANGE (`xread == false`) or XREAD replies, RESP2 arrays or RESP3 maps, into
/// entries.
pub(super) fn decode_entries(value: Value, xread: bool) -> Result<Vec<Entry>, RedisLogError> {
    let entries = match value {
        Value::Null => return Ok(Vec::new()),
        // XREAD: [[stream, entries]] or {stream: entries}.
        Value::Map(map) => map.inner().into_iter().next().map(|(_, v)| v),
        Value::Array(items) if xread => match items.into_iter().next() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            _ => None,
        },
        other => Some(other),
    };
    let Some(Value::Array(entries)) = entries else {
        return Ok(Vec::new());
    };
    entries.into_iter().map(decode_entry).collect()
}

fn decode_entry(entry: Value) -> Result<Entry, RedisLogError> {
    let corrupt = |m: &str| RedisLogError::Log(LogError::Corrupt(format!("stream entry: {m}")));
    let Value::Array(mut parts) = entry else {
        return Err(corrupt("not an array"));
    };
    if parts.len() != 2 {
        return Err(corrupt("expected [id, fields]"));
    }
    let fields = parts.pop().unwrap();
    let id = parts.pop().unwrap();
    let id = id
        .as_string()
        .ok_or_else(|| corrupt("id is not a string"))?;
    let seq: Seq = id
        .split_once('-')
        .and_then(|(s, _)| s.parse().ok())
        .ok_or_else(|| corrupt("id is not SEQ-1"))?;
    let pairs: Vec<(Option<String>, Value)> = match fields {
        Value::Array(kv) if kv.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(kv.len() / 2);
            let mut items = kv.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k.as_string(), v));
            }
            pairs
        }
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| (k.as_str().map(str::to_string), v))
            .collect(),
        _ => return Err(corrupt("fields are not name/value pairs")),
    };
    let mut op = None;
    let mut epoch = None;
    let mut batch_end = seq;
    for (field, value) in pairs {
        match field.as_deref() {
            Some(name @ ("r" | "op")) => {
                let bytes = match value {
                    Value::Bytes(b) => b.to_vec(),
                    Value::String(s) => s.as_bytes().to_vec(),
                    _ => return Err(corrupt("payload is not bytes")),
                };
                let decoded = if name == "op" {
                    crate::format::legacy::op(&bytes)
                } else {
                    crate::format::decode::<Op>(&bytes)
                };
                op =
                    Some(decoded.map_err(|e| corrupt(&format!("seq {seq}: undecodable op: {e}")))?);
            }
            Some("e") => epoch = value.as_string(),
            Some("b") => {
                batch_end = value
                    .as_string()
                    .and_then(|b| b.parse().ok())
                    .filter(|b| *b >= seq)
                    .ok_or_else(|| corrupt(&format!("seq {seq}: bad batch end")))?;
            }
            _ => {}
        }
    }
    let op = op.ok_or_else(|| corrupt(&format!("seq {seq}: no payload")))?;
    Ok(Entry {
        record: Record { seq, op },
        epoch,
        batch_end,
    })
}
