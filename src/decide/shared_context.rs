//! Caller context in the shared store (SPEC §12, §15): a push is held in Redis for
//! `--context-ttl` (newest wins) and announced, so a call on any replica takes it (once: the
//! take is an atomic GETDEL), and a call waiting on another replica is woken at once. Each
//! store operation gets at most [`OP_LIMIT`](super::link::OP_LIMIT); past it, on an error, or
//! with no connection, the push or the call uses this replica's [`MemoryContexts`] instead.
//!
//! Keys, under `--store-prefix`: `context:{agent_id} {caller}` (the fields as compact JSON,
//! with a TTL) and the channel `context:pushed` (the `{agent_id} {caller}` pushed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{ContextResult, ContextStore, Fields, Lookup, MemoryContexts, StoreFuture};
use super::link::{Link, Topic, OP_LIMIT};
use crate::metrics::{Metrics, StoreOp};

/// Holds the push for its TTL and tells every replica, in one step.
const PUSH: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
";

/// Contexts shared by every replica of the store, with this replica's memory behind them.
pub struct RedisContexts {
    link: Arc<Link>,
    memory: Arc<MemoryContexts>,
    metrics: &'static Metrics,
    push: redis::Script,
}

impl RedisContexts {
    pub fn new(link: Arc<Link>, memory: Arc<MemoryContexts>, metrics: &'static Metrics) -> RedisContexts {
        RedisContexts { link, memory, metrics, push: redis::Script::new(PUSH) }
    }

    async fn store(&self, agent_id: &str, caller: &str, fields: Fields) {
        let name = name(agent_id, caller);
        let json = serde_json::to_string(&fields).expect("a JSON map serialises");
        let ttl_ms = self.memory.ttl().as_millis().max(1) as u64;
        let mut invocation = self.push.key(self.link.key(&format!("context:{name}")));
        invocation.key(self.link.channel(Topic::Context)).arg(json).arg(ttl_ms).arg(&name);
        let stored: Option<i64> = self
            .link
            .run(StoreOp::Write, OP_LIMIT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        match stored {
            Some(_) => {
                self.metrics.record_context(ContextResult::Stored);
                self.link.pushed.note(&name);
                // An older push held here during an outage would be found first: the newest wins.
                let _ = self.memory.take(agent_id, caller, Duration::ZERO).await;
            }
            // Still answered 202: the push is held here, for calls on this replica.
            None => {
                self.memory.push(agent_id, caller, fields).await;
            }
        }
        // A call waiting here is woken without the round trip through the channel.
        self.link.wake(Topic::Context, &name);
    }

    /// The context in this replica's memory, then in the store; `Err` when the store did not
    /// answer (the call then keeps to memory).
    async fn look(
        &self,
        agent_id: &str,
        caller: &str,
        key: &str,
        store: bool,
        limit: Duration,
    ) -> Result<Option<Fields>, ()> {
        if let Lookup::Hit(fields) = self.memory.take(agent_id, caller, Duration::ZERO).await {
            return Ok(Some(fields));
        }
        let name = name(agent_id, caller);
        // No round trip for a context no replica announced (the many calls that have none).
        if !store || !self.link.pushed.may_hold(&name) {
            return Ok(None);
        }
        // Forgotten before the take, so that a push announced after it is remembered.
        self.link.pushed.forget(&name);
        let key = key.to_owned();
        let taken: Option<Option<String>> = self
            .link
            .run(StoreOp::Read, limit, |mut conn| async move {
                redis::cmd("GETDEL").arg(key).query_async(&mut conn).await
            })
            .await;
        match taken {
            Some(json) => Ok(json.and_then(|j| serde_json::from_str(&j).ok())),
            None => {
                // Not taken: it may still be there for a later call.
                self.link.pushed.note(&name);
                Err(())
            }
        }
    }

    async fn take_or_wait(&self, agent_id: &str, caller: &str, wait: Duration) -> Lookup {
        let started = Instant::now();
        let name = name(agent_id, caller);
        let key = self.link.key(&format!("context:{name}"));
        // Registered before the first look, so a push landing between the two still wakes it.
        let listener = (!wait.is_zero()).then(|| self.link.listen(Topic::Context, &name));
        let mut store = true;
        match self.look(agent_id, caller, &key, store, OP_LIMIT).await {
            Ok(Some(fields)) => return Lookup::Hit(fields),
            Ok(None) => {}
            Err(()) => store = false,
        }
        let Some(listener) = listener else { return Lookup::Absent };
        loop {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Lookup::Miss;
            }
            let woken = listener.woken(left).await;
            let left = wait.saturating_sub(started.elapsed());
            if !woken && left.is_zero() {
                return Lookup::Miss;
            }
            // Woken, or looking again while notifications are down. A woken look may run a
            // little past the wait rather than miss a push that is there.
            match self.look(agent_id, caller, &key, store, left.max(Duration::from_millis(50))).await {
                Ok(Some(fields)) => return Lookup::Waited(fields),
                Ok(None) => {}
                Err(()) => store = false,
            }
        }
    }
}

impl ContextStore for RedisContexts {
    fn ttl(&self) -> Duration {
        self.memory.ttl()
    }

    fn push<'a>(&'a self, agent_id: &'a str, caller: &'a str, fields: Fields) -> StoreFuture<'a, ()> {
        Box::pin(self.store(agent_id, caller, fields))
    }

    fn take<'a>(&'a self, agent_id: &'a str, caller: &'a str, wait: Duration) -> StoreFuture<'a, Lookup> {
        Box::pin(self.take_or_wait(agent_id, caller, wait))
    }
}

/// Agent ids hold no whitespace, so a space separates the two parts unambiguously.
fn name(agent_id: &str, caller: &str) -> String {
    format!("{agent_id} {caller}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A store whose Redis never answers (nothing listens on the port): everything goes to
    /// this replica's memory, at once.
    fn unreachable() -> RedisContexts {
        let metrics = crate::metrics::get();
        let crate::settings::Store::Redis(url) = crate::settings::parse_store("redis://127.0.0.1:1").unwrap()
        else {
            unreachable!()
        };
        let link = Link::start(&url, "t:", Duration::from_secs(60), metrics).unwrap();
        let memory = Arc::new(MemoryContexts::new(Duration::from_secs(60), 10, metrics));
        RedisContexts::new(link, memory, metrics)
    }

    #[tokio::test]
    async fn without_redis_a_push_is_held_here_and_releases_a_waiting_call() {
        let store = Arc::new(unreachable());
        let fields = json!({"n": 1}).as_object().unwrap().clone();
        let started = Instant::now();
        store.push("a", "+15550001111", fields.clone()).await;
        assert_eq!(store.take("a", "+15550001111", Duration::ZERO).await, Lookup::Hit(fields.clone()));
        assert_eq!(store.take("a", "+15550001111", Duration::ZERO).await, Lookup::Absent, "taken once");
        assert!(started.elapsed() < Duration::from_millis(100), "no wait on a store that is not there");

        let waiting = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.take("a", "+15550002222", Duration::from_secs(5)).await })
        };
        while store.link.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let pushed = Instant::now();
        store.push("a", "+15550002222", fields.clone()).await;
        assert_eq!(waiting.await.unwrap(), Lookup::Waited(fields));
        assert!(pushed.elapsed() < Duration::from_secs(1), "released by the push, not the wait's end");
        assert!(store.link.lock().is_empty(), "the waiter left");
        let started = Instant::now();
        assert_eq!(store.take("a", "+15550003333", Duration::from_millis(50)).await, Lookup::Miss);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
