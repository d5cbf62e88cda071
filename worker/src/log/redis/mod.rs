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

/// Appends a batch. KEYS: stream, counter, epoch, applied registry. ARGV: a fresh epoch id
/// (adopted when the knowledge base has none yet), the epoch the writer follows ('' when it
/// follows none yet), the writer's floor (the highest sequence it applied or saw logged),
/// then the payloads. Refuses, before writing anything, when Redis went behind what
/// replicas already applied (failover to a replica that missed writes, a lost volume,
/// `FLUSHALL`, an evicted counter) or when the stream was re-seeded under another epoch:
/// numbering from there would reuse sequences replicas already hold. Every entry carries
/// the epoch (`e`) and the sequence of its batch's last entry (`b`).
const APPEND_SCRIPT: &str = r"
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local top = 0
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then top = tonumber(string.match(newest[1][1], '^(%d+)')) end
local floor = tonumber(ARGV[3])
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  local applied = tonumber(string.match(v, '^(%d+)'))
  if applied and applied > floor then floor = applied end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  if counter == 0 and top == 0 and floor > 0 then
    return redis.error_reply('KBLOST ' .. floor)
  end
  epoch = ARGV[1] .. ':' .. counter .. ':'
  redis.call('SET', KEYS[3], epoch)
end
local id = string.match(epoch, '^([^:]*)')
if ARGV[2] ~= '' and id ~= ARGV[2] then
  return redis.error_reply('KBEPOCH ' .. epoch)
end
if counter < floor or counter < top then
  return redis.error_reply('KBBEHIND ' .. counter .. ' ' .. top .. ' ' .. floor)
end
local n = #ARGV - 3
local last = counter + n
redis.call('SET', KEYS[2], last)
for i = 1, n do
  redis.call('XADD', KEYS[1], (counter + i) .. '-1', 'r', ARGV[i + 3], 'e', id, 'b', last)
end
return {last, epoch}
";

/// Starts an empty stream (counter unset, no entries) at `ARGV[1]`: the next append gets
/// the sequence after it, in a new epoch (`ARGV[2]`) whose parent is unknown. Returns the
/// counter, unchanged when the stream was not empty.
const START_AT_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current == 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2] .. ':' .. ARGV[1] .. ':')
  return tonumber(ARGV[1])
end
return current
";

/// Re-seeds the stream at `ARGV[2]` in a new epoch `ARGV[1]` whose parent is `ARGV[3]`:
/// drops every entry (their numbering can no longer be trusted) and sets the counter.
/// Refuses when another replica re-seeded first (the epoch is no longer the parent) or
/// when the counter went past the base (writes numbered beyond what the re-seeder holds).
const RESEED_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[3])
if current then
  local id = string.match(current, '^([^:]*)')
  if id ~= ARGV[3] then return redis.error_reply('KBEPOCH ' .. current) end
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter > tonumber(ARGV[2]) then
  return redis.error_reply('KBAHEAD ' .. counter)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return 1
";

/// The history the stream belongs to: a random id, the sequence it started after and the
/// epoch it continues (empty when it started a knowledge base or its parent is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    pub base: Seq,
    pub parent: String,
}

impl Epoch {
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, ':');
        Some(Self {
            id: parts.next()?.to_string(),
            base: parts.next()?.parse().ok()?,
            parent: parts.next().unwrap_or("").to_string(),
        })
    }

    fn fresh_id() -> String {
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
    fn from_script(message: &str) -> Option<Self> {
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
    #[error(transparent)]
    Regressed(#[from] Regression),
    #[error("logged at sequence {seq}, but only {acked} of the {wanted} Redis replicas required by redis.min_replicas_to_ack confirmed it within {waited:?}: a Redis failover now could lose it")]
    NotReplicated {
        seq: Seq,
        acked: u32,
        wanted: u32,
        waited: Duration,
    },
}

/// Maps a script's refusal to [`Regression`]; other errors stay Redis errors.
fn script_error(error: fred::error::Error) -> RedisLogError {
    match Regression::from_script(error.details()) {
        Some(regression) => RedisLogError::Regressed(regression),
        None => RedisLogError::Unavailable(error),
    }
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
    epoch: String,
    replicas: String,
    applied: String,
    prefix: String,
    /// `redis.min_replicas_to_ack` and how long an append waits for them.
    min_replicas: u32,
    ack_timeout: Duration,
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
            epoch: format!("{{{prefix}}}:epoch"),
            replicas: format!("{{{prefix}}}:replicas"),
            applied: format!("{{{prefix}}}:applied"),
            prefix,
            min_replicas: cfg.min_replicas_to_ack,
            ack_timeout: Duration::from_millis(cfg.replica_ack_timeout_ms),
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

    /// Appends `ops` atomically, in order, unless Redis went behind `guard` (see
    /// [`Regression`]); returns their records and the epoch id they were logged in.
    pub async fn append(
        &self,
        ops: Vec<Op>,
        guard: &Guard,
    ) -> Result<(Vec<Record>, Epoch), RedisLogError> {
        if ops.is_empty() {
            return Ok((Vec::new(), self.epoch().await?.unwrap_or_default()));
        }
        let mut args = vec![
            Value::from(Epoch::fresh_id()),
            Value::from(guard.epoch.clone().unwrap_or_default()),
            Value::from(guard.floor.to_string()),
        ];
        for op in &ops {
            let bytes =
                crate::format::encode_op(op).map_err(|e| LogError::Encode(e.to_string()))?;
            args.push(Value::Bytes(bytes.into()));
        }
        let (last, epoch): (u64, String) = self
            .client
            .eval(APPEND_SCRIPT, self.script_keys(), args)
            .await
            .map_err(script_error)?;
        let epoch = Epoch::parse(&epoch)
            .ok_or_else(|| LogError::Corrupt(format!("epoch key holds {epoch:?}")))?;
        let first = last + 1 - ops.len() as u64;
        let records = ops
            .into_iter()
            .zip(first..)
            .map(|(op, seq)| Record { seq, op })
            .collect();
        Ok((records, epoch))
    }

    fn script_keys(&self) -> Vec<String> {
        vec![
            self.stream.clone(),
            self.counter.clone(),
            self.epoch.clone(),
            self.applied.clone(),
        ]
    }

    /// With `redis.min_replicas_to_ack`, waits (`WAIT`, on the connection that appended)
    /// until that many Redis replicas hold every append up to `seq`, at most
    /// `redis.replica_ack_timeout_ms`; fewer is [`RedisLogError::NotReplicated`].
    pub async fn await_replicas(&self, seq: Seq) -> Result<(), RedisLogError> {
        if self.min_replicas == 0 {
            return Ok(());
        }
        let acked: i64 = self
            .client
            .wait(
                i64::from(self.min_replicas),
                self.ack_timeout.as_millis() as i64,
            )
            .await?;
        let acked = acked.max(0) as u32;
        if acked < self.min_replicas {
            return Err(RedisLogError::NotReplicated {
                seq,
                acked,
                wanted: self.min_replicas,
                waited: self.ack_timeout,
            });
        }
        Ok(())
    }

    /// Continues an empty stream after `seq` (a knowledge base restored from a backup
    /// taken at `seq`, or a Redis that lost its data) in a new epoch: without this, new
    /// records would be numbered from 1 and every replica, already past them, would skip
    /// them. Returns the stream's last sequence afterwards; below `seq` means the stream
    /// holds another history.
    pub async fn start_at(&self, seq: Seq) -> Result<Seq, RedisLogError> {
        let last: u64 = self
            .client
            .eval(
                START_AT_SCRIPT,
                self.script_keys(),
                vec![seq.to_string(), Epoch::fresh_id()],
            )
            .await?;
        Ok(last)
    }

    /// Re-seeds the stream at `base` (the sequence the caller's data is at) in a new
    /// epoch continuing `parent`: drops every entry and continues numbering after `base`.
    /// Refused ([`Regression::EpochChanged`] or [`Regression::Ahead`]) when another
    /// replica re-seeded first or the counter went past `base`.
    pub async fn reseed(&self, base: Seq, parent: &str) -> Result<Epoch, RedisLogError> {
        let epoch = Epoch {
            id: Epoch::fresh_id(),
            base,
            parent: parent.to_string(),
        };
        let _: i64 = self
            .client
            .eval(
                RESEED_SCRIPT,
                self.script_keys(),
                vec![epoch.id.clone(), base.to_string(), parent.to_string()],
            )
            .await
            .map_err(script_error)?;
        Ok(epoch)
    }

    /// The stream's epoch; `None` before the first write (or after Redis lost it).
    pub async fn epoch(&self) -> Result<Option<Epoch>, RedisLogError> {
        let value: Option<String> = self.client.get(&self.epoch).await?;
        Ok(value.as_deref().and_then(Epoch::parse))
    }

    /// The sequence of the newest stream entry (0 when the stream is empty).
    pub async fn top_seq(&self) -> Result<Seq, RedisLogError> {
        let value: Value = self
            .client
            .xrevrange(self.stream.clone(), "+", "-", Some(1))
            .await?;
        Ok(decode_entries(value, false)?
            .first()
            .map_or(0, |e| e.record.seq))
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
        Ok(self
            .read_entries_after(after, count, block)
            .await?
            .into_iter()
            .map(|e| e.record)
            .collect())
    }

    /// [`RedisLog::read_after`] with each entry's epoch and batch end.
    pub async fn read_entries_after(
        &self,
        after: Seq,
        count: u64,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, RedisLogError> {
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
        let entries = decode_entries(value, block.is_some())?;
        if let Some(first) = entries.first() {
            if first.record.seq != after + 1 {
                return Err(RedisLogError::Trimmed {
                    after,
                    first: first.record.seq,
                });
            }
        } else if after > 0 && block.is_none() {
            // Nothing after `after`: fine unless the stream was trimmed past it.
            let last = self.last_seq().await?;
            if last > after {
                return Err(RedisLogError::Trimmed { after, first: last });
            }
        }
        Ok(entries)
    }

    /// Registers this replica as live with its oldest retained snapshot sequence (which
    /// holds back trimming) and the sequence it applied (a floor no append may number
    /// below, see [`Regression::Behind`]).
    pub async fn heartbeat(
        &self,
        id: &str,
        snapshot_seq: Seq,
        applied: Seq,
        ttl: Duration,
    ) -> Result<(), RedisLogError> {
        let expires = now_ms() + ttl.as_millis() as u64;
        let _: () = self
            .client
            .hset(&self.replicas, (id, format!("{snapshot_seq}:{expires}")))
            .await?;
        let _: () = self
            .client
            .hset(&self.applied, (id, format!("{applied}:{expires}")))
            .await?;
        Ok(())
    }

    /// The applied sequence of every live replica, by id.
    pub async fn applied_by_replica(
        &self,
    ) -> Result<std::collections::HashMap<String, Seq>, RedisLogError> {
        let all: std::collections::HashMap<String, String> =
            self.client.hgetall(&self.applied).await?;
        let now = now_ms();
        Ok(all
            .into_iter()
            .filter_map(|(id, value)| {
                let (applied, expires) = value.split_once(':')?;
                let expires: u64 = expires.parse().ok()?;
                (expires > now).then_some((id, applied.parse().ok()?))
            })
            .collect())
    }

    /// Removes this replica's registration (clean shutdown).
    pub async fn deregister(&self, id: &str) -> Result<(), RedisLogError> {
        let _: () = self.client.hdel(&self.replicas, id).await?;
        let _: () = self.client.hdel(&self.applied, id).await?;
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
                    let _: () = self.client.hdel(&self.replicas, &id).await?;
                    let _: () = self.client.hdel(&self.applied, &id).await?;
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
/// entries.
fn decode_entries(value: Value, xread: bool) -> Result<Vec<Entry>, RedisLogError> {
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

#[cfg(test)]
pub(crate) mod tests;
