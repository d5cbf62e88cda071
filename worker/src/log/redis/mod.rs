//! The replicated log: one Redis stream per knowledge base.
//!
//! Every record is a stream entry with the id `SEQ-1` and one field: `r` holding its
//! [`Op`] in [`crate::format`] (version byte + postcard), or, in entries written by format
//! version 1, `op` holding its bincode (still read). A Lua script assigns sequences (`INCR` of a counter key) and
//! appends a whole batch atomically, so replicas see either all of a write or none of it,
//! in one total order. Keys share a hash tag (`{prefix}`) so the script also runs on Redis
//! Cluster. Live replicas register `replica id -> (snapshot sequence, expiry)` in a hash;
//! the stream is trimmed only below the oldest snapshot sequence of live replicas.

mod connect;

use super::{LogError, Op, Record, Seq};
use fred::prelude::*;
use fred::types::streams::XCap;
use kb_config::RedisConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const APPEND_SCRIPT: &str = r"
local seq = 0
for i = 1, #ARGV do
  seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], seq .. '-1', 'r', ARGV[i])
end
return seq
";

/// Starts an empty stream (counter unset, no entries) at `ARGV[1]`: the next append gets
/// the sequence after it. Returns the counter, unchanged when the stream was not empty.
const START_AT_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current == 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  return tonumber(ARGV[1])
end
return current
";

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisLogError {
    #[error("redis configuration: {0}")]
    Config(String),
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] fred::error::Error),
    #[error("redis unavailable: {0}")]
    NoAnswer(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the stream no longer holds records after sequence {after} (trimmed to {first}); bootstrap from a peer snapshot")]
    Trimmed { after: Seq, first: Seq },
}

/// The Redis Streams log of one knowledge base.
#[derive(Clone)]
pub struct RedisLog {
    /// Commands that must not be retried blindly (appends) and short reads.
    client: Client,
    /// `XREAD BLOCK` holds a connection; it gets its own.
    tail: Client,
    stream: String,
    counter: String,
    replicas: String,
    prefix: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisLog {
    /// Connects (keeps reconnecting in the background after the first success).
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, RedisLogError> {
        let config = connect::fred_config(cfg)?;
        // Appends fail fast (503 while Redis is unreachable) and are never sent twice: an
        // append that was sent but not answered may have run.
        let client = connect::client(config.clone(), Duration::from_secs(2), 1)?;
        // `XREAD BLOCK` holds its connection longer than a command's usual timeout.
        let tail = connect::client(config, Duration::from_secs(10), 3)?;
        client.init().await?;
        tail.init().await?;
        let prefix = if cfg.key_prefix.is_empty() {
            "kb".to_string()
        } else {
            cfg.key_prefix.clone()
        };
        Ok(Self {
            stream: format!("{{{prefix}}}:log"),
            counter: format!("{{{prefix}}}:seq"),
            replicas: format!("{{{prefix}}}:replicas"),
            prefix,
            client,
            tail,
        })
    }

    /// [`RedisLog::connect`], retried with backoff (1 s doubling to 30 s, each attempt
    /// bounded to 10 s) for up to `redis.start_wait_ms`: Redis may start after the worker
    /// (a first deploy, a node drain) or refuse this worker's password until the rotation
    /// that gave it reaches Redis. The last error is returned when the time is up.
    pub async fn connect_patiently(cfg: &RedisConfig) -> Result<Self, RedisLogError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.start_wait_ms);
        let mut delay = Duration::from_secs(1);
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(10), Self::connect(cfg)).await;
            let error = match attempt {
                Ok(Ok(log)) => return Ok(log),
                Ok(Err(error)) => error,
                Err(_) => RedisLogError::NoAnswer("no answer within 10 s".into()),
            };
            if tokio::time::Instant::now() + delay > deadline {
                return Err(error);
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Redis refused or did not answer; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// The key prefix (hash tag) of this knowledge base.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The command client (for the cache).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Appends `ops` atomically, in order; returns their records.
    pub async fn append(&self, ops: Vec<Op>) -> Result<Vec<Record>, RedisLogError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let payloads = ops
            .iter()
            .map(|op| crate::format::encode_op(op).map(|b| Value::Bytes(b.into())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LogError::Encode(e.to_string()))?;
        let last: u64 = self
            .client
            .eval(
                APPEND_SCRIPT,
                vec![self.stream.clone(), self.counter.clone()],
                payloads,
            )
            .await?;
        let first = last + 1 - ops.len() as u64;
        Ok(ops
            .into_iter()
            .zip(first..)
            .map(|(op, seq)| Record { seq, op })
            .collect())
    }

    /// Continues an empty stream after `seq` (a knowledge base restored from a backup
    /// taken at `seq`, or a Redis that lost its data): without this, new records would be
    /// numbered from 1 and every replica, already past them, would skip them. Returns the
    /// stream's last sequence afterwards; below `seq` means the stream holds another
    /// history.
    pub async fn start_at(&self, seq: Seq) -> Result<Seq, RedisLogError> {
        let last: u64 = self
            .client
            .eval(
                START_AT_SCRIPT,
                vec![self.stream.clone(), self.counter.clone()],
                vec![seq.to_string()],
            )
            .await?;
        Ok(last)
    }

    /// The last assigned sequence.
    pub async fn last_seq(&self) -> Result<Seq, RedisLogError> {
        let seq: Option<u64> = self.client.get(&self.counter).await?;
        Ok(seq.unwrap_or(0))
    }

    /// Records with `seq > after`, at most `count`, waiting up to `block` for the first.
    /// Fails with [`RedisLogError::Trimmed`] when records after `after` were trimmed away.
    pub async fn read_after(
        &self,
        after: Seq,
        count: u64,
        block: Option<Duration>,
    ) -> Result<Vec<Record>, RedisLogError> {
        let value: Value = match block {
            Some(wait) => {
                self.tail
                    .xread(
                        Some(count),
                        Some(wait.as_millis() as u64),
                        self.stream.clone(),
                        format!("{after}-1"),
                    )
                    .await?
            }
            None => {
                self.client
                    .xrange(
                        self.stream.clone(),
                        format!("{}-0", after + 1),
                        "+",
                        Some(count),
                    )
                    .await?
            }
        };
        let records = decode_entries(value, block.is_some())?;
        if let Some(first) = records.first() {
            if first.seq != after + 1 {
                return Err(RedisLogError::Trimmed {
                    after,
                    first: first.seq,
                });
            }
        } else if after > 0 && block.is_none() {
            // Nothing after `after`: fine unless the stream was trimmed past it.
            let last = self.last_seq().await?;
            if last > after {
                return Err(RedisLogError::Trimmed { after, first: last });
            }
        }
        Ok(records)
    }

    /// Registers this replica as live with its oldest retained snapshot sequence.
    pub async fn heartbeat(
        &self,
        id: &str,
        snapshot_seq: Seq,
        ttl: Duration,
    ) -> Result<(), RedisLogError> {
        let value = format!("{snapshot_seq}:{}", now_ms() + ttl.as_millis() as u64);
        let _: () = self.client.hset(&self.replicas, (id, value)).await?;
        Ok(())
    }

    /// Removes this replica's registration (clean shutdown).
    pub async fn deregister(&self, id: &str) -> Result<(), RedisLogError> {
        let _: () = self.client.hdel(&self.replicas, id).await?;
        Ok(())
    }

    /// Trims the stream below the oldest snapshot sequence of live replicas; returns the
    /// sequence below which records were removed (0 when nothing could be trimmed).
    pub async fn trim(&self) -> Result<Seq, RedisLogError> {
        let all: std::collections::HashMap<String, String> =
            self.client.hgetall(&self.replicas).await?;
        let now = now_ms();
        let mut oldest: Option<Seq> = None;
        for (id, value) in all {
            let parsed = value
                .split_once(':')
                .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)));
            match parsed {
                Some((seq, expires)) if expires > now => {
                    oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
                }
                _ => {
                    let _: () = self.client.hdel(&self.replicas, id).await?;
                }
            }
        }
        let Some(minimum) = oldest.filter(|s| *s > 0) else {
            return Ok(0);
        };
        // Keep the record at `minimum` too: a replica at that snapshot reads after it.
        let cap = XCap::try_from(("MINID", "=", format!("{minimum}-1")))?;
        let _: u64 = self.client.xtrim(self.stream.clone(), cap).await?;
        Ok(minimum)
    }

    /// Closes both connections.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
        let _ = self.tail.quit().await;
    }
}

/// Decodes XRANGE (`xread == false`) or XREAD replies, RESP2 arrays or RESP3 maps, into
/// records.
fn decode_entries(value: Value, xread: bool) -> Result<Vec<Record>, RedisLogError> {
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

fn decode_entry(entry: Value) -> Result<Record, RedisLogError> {
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
    let (field, payload) = match fields {
        Value::Array(mut kv) if kv.len() == 2 => {
            let payload = kv.pop().unwrap();
            (kv.pop().unwrap().as_string(), payload)
        }
        Value::Map(map) => map
            .inner()
            .into_iter()
            .next()
            .map(|(k, v)| (k.as_str().map(str::to_string), v))
            .ok_or_else(|| corrupt("no fields"))?,
        _ => return Err(corrupt("fields are not [name, payload]")),
    };
    let bytes = match payload {
        Value::Bytes(b) => b.to_vec(),
        Value::String(s) => s.as_bytes().to_vec(),
        _ => return Err(corrupt("payload is not bytes")),
    };
    let op = match field.as_deref() {
        Some("op") => crate::format::legacy::op(&bytes),
        _ => crate::format::decode::<Op>(&bytes),
    }
    .map_err(|e| corrupt(&format!("seq {seq}: undecodable op: {e}")))?;
    Ok(Record { seq, op })
}

#[cfg(test)]
mod tests;
