//! The shared store (SPEC §15): the whole routing table as one JSON document in Redis (the
//! routes-file format, so the store does not care what the table holds) beside a version
//! counter. Writes are one script: compare the version, set the document, bump the version,
//! publish it. Every replica keeps the whole table in memory and follows the store through the
//! change channel, with a version check every [`POLL`] behind it, so a replica that missed a
//! message catches up. Only the routes writer talks to the store; calls never wait on it.
//!
//! Keys, under `--store-prefix` (default `callgate:`): `routes` (the document),
//! `routes:version` (the counter) and the channel `routes:changed`.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::writer::Writer;
use super::RouteTable;
use crate::metrics::{Metrics, StoreOp};
use crate::settings::RedisUrl;

/// How often each replica compares the store's version with its own, in case a change
/// notification was missed.
pub const POLL: Duration = Duration::from_millis(500);

/// The longest one store operation may take before the store counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to subscribe to the change channel.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Sets the document and bumps the version if the version is still `ARGV[1]` (`""`: the store
/// is empty; `"*"`: whatever it is, for `store import`), and publishes the new version, with the
/// write's change (`ARGV[3]`, [`super::delta`]) when there is one. A store starting anew (no version key)
/// starts its counter from the server's clock, so a version seen before the store was emptied
/// is never seen again for other content. Answers the new version, or -1 on a conflict.
const WRITE: &str = r"
local v = redis.call('GET', KEYS[2])
if ARGV[1] ~= '*' and (v or '') ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
if not v then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
end
local n = redis.call('INCR', KEYS[2])
if ARGV[3] ~= '' then
  -- The counter as Redis writes it: Lua would write a number this large as a float.
  redis.call('PUBLISH', KEYS[3], redis.call('GET', KEYS[2]) .. '\n' .. ARGV[1] .. '\n' .. ARGV[3])
else
  redis.call('PUBLISH', KEYS[3], n)
end
return n
";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// The key names under a prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    pub doc: String,
    pub version: String,
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            doc: format!("{prefix}routes"),
            version: format!("{prefix}routes:version"),
            channel: format!("{prefix}routes:changed"),
        }
    }
}

/// Which version a write expects to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (`store import`).
    Any,
    /// An empty store.
    Empty,
    /// This version.
    Version(i64),
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the store's new version.
    Done(i64),
    /// The store had moved on; nothing written.
    Conflict,
}

/// A connection to the shared store, made on first use and remade by the connection manager
/// when it breaks. A replica may start while Redis is down, so nothing connects up front.
pub struct Redis {
    client: redis::Client,
    conn: Option<ConnectionManager>,
    keys: Keys,
    shown: String,
    write: redis::Script,
}

impl Redis {
    /// Reads the URL; connects later.
    pub fn open(url: &RedisUrl, prefix: &str) -> Result<Redis, StoreError> {
        Ok(Redis {
            client: redis::Client::open(url.expose())?,
            conn: None,
            keys: Keys::new(prefix),
            shown: url.shown().to_owned(),
            write: redis::Script::new(WRITE),
        })
    }

    /// The URL without its password, for log lines.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// What the follower needs: its own connection for the change channel, and the channel.
    pub fn follower(&self) -> (redis::Client, String) {
        (self.client.clone(), self.keys.channel.clone())
    }

    async fn conn(&mut self) -> Result<ConnectionManager, StoreError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let conn = bounded(ConnectionManager::new_with_config(self.client.clone(), config)).await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// The store's version; `None` when the store is empty.
    pub async fn version(&mut self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn().await?;
        let key = self.keys.version.clone();
        bounded(async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }).await
    }

    /// A connection of its own for moving the whole document, closed after it: a connection's
    /// buffers keep the size of the largest reply or request they carried, and at a million
    /// numbers that is 60 MiB a replica would hold for nothing.
    async fn bulk(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT);
        bounded(self.client.get_multiplexed_async_connection_with_config(&config)).await
    }

    /// The version and the document, read together; `None` when the store holds no table.
    pub async fn fetch(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let mut conn = self.bulk().await?;
        let keys = [self.keys.version.clone(), self.keys.doc.clone()];
        let (version, doc): (Option<i64>, Option<Vec<u8>>) =
            bounded(async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await }).await?;
        Ok(doc.map(|doc| (version.unwrap_or(0), doc)))
    }

    /// Writes `doc` if the store is still at `expect`, bumps the version and tells every
    /// replica; answered once Redis has it.
    /// `change` is sent with the notice when the write replaces a known version.
    pub async fn write(
        &mut self,
        expect: Expect,
        doc: Vec<u8>,
        change: Vec<u8>,
    ) -> Result<Written, StoreError> {
        let mut conn = self.bulk().await?;
        let (expected, change) = match expect {
            Expect::Any => ("*".to_owned(), Vec::new()),
            Expect::Empty => (String::new(), Vec::new()),
            Expect::Version(v) => (v.to_string(), change),
        };
        let mut invocation = self.write.key(&self.keys.doc);
        invocation.key(&self.keys.version).key(&self.keys.channel).arg(expected).arg(doc).arg(change);
        let version: i64 = bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(if version < 0 { Written::Conflict } else { Written::Done(version) })
    }
}

/// `op`, or a timeout after [`OP_TIMEOUT`].
async fn bounded<T>(op: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(OP_TIMEOUT)),
    }
}

/// `callgate store import`: writes `table` whole, whatever the store held; answers the new
/// version.
pub async fn import(url: &RedisUrl, prefix: &str, table: &RouteTable) -> Result<i64, StoreError> {
    let doc = serde_json::to_vec(table).expect("a table serialises");
    match Redis::open(url, prefix)?.write(Expect::Any, doc, Vec::new()).await? {
        Written::Done(version) => Ok(version),
        Written::Conflict => unreachable!("an unconditional write has no conflict"),
    }
}

/// Follows the store for as long as it runs: a sync on every change notification and every
/// [`POLL`], and a sync after every (re)subscription, since messages sent meanwhile are lost.
/// The subscription is remade with backoff when it breaks.
pub async fn follow(client: redis::Client, channel: String, writer: Writer, metrics: &'static Metrics) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages: Option<redis::aio::PubSubStream> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = tokio::time::Instant::now();
    loop {
        if messages.is_none() && tokio::time::Instant::now() >= retry_at {
            match subscribe(&client, &channel).await {
                Ok(stream) => {
                    messages = Some(stream);
                    backoff = Duration::from_millis(100);
                    writer.sync().await;
                }
                Err(e) => {
                    metrics.record_store_error(StoreOp::Subscribe);
                    tracing::debug!(error = %e, "cannot subscribe to the shared store's changes");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let next = async {
            match messages.as_mut() {
                Some(stream) => stream.next().await.map(|m| m.get_payload_bytes().to_vec()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = next => match message {
                Some(notice) => {
                    // The change at once, then the whole table behind it.
                    writer.notice(notice).await;
                    writer.sync().await;
                }
                None => {
                    messages = None;
                    metrics.record_store_error(StoreOp::Subscribe);
                    tracing::warn!("the shared store's change channel closed; resubscribing (the version check goes on)");
                    retry_at = tokio::time::Instant::now() + backoff;
                }
            },
            _ = poll.tick() => writer.sync().await,
        }
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSubStream, StoreError> {
    let mut pubsub = bounded(client.get_async_pubsub()).await?;
    bounded(pubsub.subscribe(channel)).await?;
    Ok(pubsub.into_on_message())
}
