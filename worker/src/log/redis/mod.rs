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
mod entries;
mod scripts;

use entries::decode_entries;
pub use entries::{Entry, Epoch, Guard, Regression};
use scripts::{APPEND_SCRIPT, RESEED_SCRIPT, START_AT_SCRIPT};

use super::{LogError, Op, Record, Seq};
use fred::prelude::*;
use fred::types::streams::XCap;
use kb_config::RedisConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
pub(crate) mod tests;
