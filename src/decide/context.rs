//! Caller context pushed ahead of the call (SPEC §12): held per (agent id, caller number) for
//! `--context-ttl`, newest push wins, at most `--context-max-entries` (oldest evicted first),
//! taken once by the matching ringing call, which may wait for it (`context_wait_ms`), released
//! at once by the push it waits for. [`ContextStore`] is the interface; [`MemoryContexts`] is
//! this replica's own, and [`super::shared_context::RedisContexts`] the shared store's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// The pushed fields, less `agent_id`/`agentId` and `phone_number`/`phoneNumber`.
pub type Fields = Map<String, Value>;

/// A future a store answers with.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest `POST /v1/context` body.
pub const MAX_CONTEXT_BODY: usize = 8 * 1024;

/// How often expired contexts are swept, and how many go per lock.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_BATCH: usize = 1024;

/// What became of pushed context: `callgate_context_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextResult {
    Stored,
    Hit,
    Waited,
    Miss,
    Expired,
    Evicted,
    Refused,
}

impl ContextResult {
    pub const ALL: [ContextResult; 7] = [
        ContextResult::Stored,
        ContextResult::Hit,
        ContextResult::Waited,
        ContextResult::Miss,
        ContextResult::Expired,
        ContextResult::Evicted,
        ContextResult::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContextResult::Stored => "stored",
            ContextResult::Hit => "hit",
            ContextResult::Waited => "waited",
            ContextResult::Miss => "miss",
            ContextResult::Expired => "expired",
            ContextResult::Evicted => "evicted",
            ContextResult::Refused => "refused",
        }
    }
}

/// How a call came by its context, for the record and the decision line: `hit` (there at ring
/// time), `waited` (arrived during the wait), `miss` (a wait that ended empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextUse {
    Hit,
    Waited,
    Miss,
}

impl ContextUse {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextUse::Hit => "hit",
            ContextUse::Waited => "waited",
            ContextUse::Miss => "miss",
        }
    }

    pub fn result(self) -> ContextResult {
        match self {
            ContextUse::Hit => ContextResult::Hit,
            ContextUse::Waited => ContextResult::Waited,
            ContextUse::Miss => ContextResult::Miss,
        }
    }
}

/// What a call's lookup found.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// There at ring time.
    Hit(Fields),
    /// Pushed while the call waited.
    Waited(Fields),
    /// The call waited and nothing came.
    Miss,
    /// Nothing there and no wait (or no lookup at all): the record's `context` is null.
    Absent,
}

impl Lookup {
    pub fn context_use(&self) -> Option<ContextUse> {
        match self {
            Lookup::Hit(_) => Some(ContextUse::Hit),
            Lookup::Waited(_) => Some(ContextUse::Waited),
            Lookup::Miss => Some(ContextUse::Miss),
            Lookup::Absent => None,
        }
    }

    pub fn into_fields(self) -> Option<Fields> {
        match self {
            Lookup::Hit(f) | Lookup::Waited(f) => Some(f),
            Lookup::Miss | Lookup::Absent => None,
        }
    }
}

/// Where pushed context is held: [`MemoryContexts`], or the shared store
/// ([`super::shared_context::RedisContexts`]).
pub trait ContextStore: Send + Sync {
    /// How long a push is held.
    fn ttl(&self) -> Duration;

    /// Holds `fields` for (`agent_id`, `caller`), replacing an older push; a call already
    /// waiting on that key takes them at once. Both are validated by the caller.
    fn push<'a>(&'a self, agent_id: &'a str, caller: &'a str, fields: Fields) -> StoreFuture<'a, ()>;

    /// Takes the context for (`agent_id`, `caller`) (it is consumed), waiting up to `wait` for
    /// a push when there is none yet.
    fn take<'a>(&'a self, agent_id: &'a str, caller: &'a str, wait: Duration) -> StoreFuture<'a, Lookup>;

    /// `true` when no context is held for anyone, so that a call with no wait need not look
    /// (most calls have none pushed). `false` when that is not known at once.
    fn holds_none(&self) -> bool {
        false
    }
}

/// One pushed context: its fields as compact JSON (a third of the size of a parsed map),
/// parsed again only by the call that takes it.
struct Held {
    json: Box<str>,
    expires: Instant,
    seq: u64,
}

type Key = Arc<str>;

/// A call waiting on a key, and where to hand it the push.
struct Waiter {
    id: u64,
    deliver: oneshot::Sender<Box<str>>,
}

#[derive(Default)]
struct Inner {
    held: FxHashMap<Key, Held>,
    /// Keys in push order, with each push's sequence and expiry. One TTL for every push makes
    /// push order the expiry order, so the front is both the oldest (evicted first) and the
    /// first to expire (swept first). An entry whose sequence is no longer the key's (replaced
    /// or taken) is stale and skipped; stale entries leave with the sweep, as all expire.
    order: VecDeque<(Key, u64, Instant)>,
    waiting: FxHashMap<Key, VecDeque<Waiter>>,
    seq: u64,
}

impl Inner {
    fn is_current(&self, key: &str, seq: u64) -> bool {
        self.held.get(key).is_some_and(|h| h.seq == seq)
    }
}

/// This replica's contexts, in memory. Expiry is lazy on lookup and swept in small batches by
/// a background task, so no lock is ever held for the whole map.
pub struct MemoryContexts {
    ttl: Duration,
    max_entries: usize,
    metrics: &'static Metrics,
    inner: Mutex<Inner>,
    /// How many contexts are held, read without the lock: a call that may not wait, with none
    /// held, is answered without locking or allocating.
    held: AtomicUsize,
}

impl MemoryContexts {
    /// A store, and its sweeper on the current runtime (it ends when the store is dropped).
    pub fn start(ttl: Duration, max_entries: usize, metrics: &'static Metrics) -> Arc<MemoryContexts> {
        let store = Arc::new(MemoryContexts::new(ttl, max_entries, metrics));
        let weak = Arc::downgrade(&store);
        tokio::spawn(sweeper(weak));
        store
    }

    pub fn new(ttl: Duration, max_entries: usize, metrics: &'static Metrics) -> MemoryContexts {
        metrics.set_context_entries(0);
        MemoryContexts {
            ttl,
            max_entries: max_entries.max(1),
            metrics,
            inner: Mutex::default(),
            held: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves the maps consistent (every change is one insert or
        // remove): go on with them.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Contexts held now.
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn store(&self, agent_id: &str, caller: &str, fields: &Fields) {
        let mut json: Box<str> = serde_json::to_string(fields).expect("a JSON map serialises").into();
        let key = key(agent_id, caller);
        let now = Instant::now();
        let mut inner = self.lock();
        self.metrics.record_context(ContextResult::Stored);
        // A call already waiting takes it at once; one that gave up (its receiver gone) is
        // passed over.
        if let Some((waiting_key, mut waiters)) = inner.waiting.remove_entry(&*key) {
            while let Some(waiter) = waiters.pop_front() {
                match waiter.deliver.send(json) {
                    Ok(()) => {
                        if !waiters.is_empty() {
                            inner.waiting.insert(waiting_key, waiters);
                        }
                        return;
                    }
                    Err(back) => json = back,
                }
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        let expires = now + self.ttl;
        let key: Key = inner.held.get_key_value(&*key).map_or(key, |(k, _)| Arc::clone(k));
        inner.held.insert(Arc::clone(&key), Held { json, expires, seq });
        inner.order.push_back((key, seq, expires));
        while inner.held.len() > self.max_entries {
            let Some((old, old_seq, _)) = inner.order.pop_front() else { break };
            if inner.is_current(&old, old_seq) {
                inner.held.remove(&old);
                self.metrics.record_context(ContextResult::Evicted);
            }
        }
        // Keep the front meaningful: stale entries there go now, cheaply.
        while let Some((front, front_seq, _)) = inner.order.front() {
            if inner.is_current(front, *front_seq) {
                break;
            }
            inner.order.pop_front();
        }
        self.count(&inner);
    }

    /// Takes a live context at once; an expired one is dropped (counted).
    /// Publishes how many contexts are held (the gauge, and the lock-free count).
    fn count(&self, inner: &Inner) {
        self.held.store(inner.held.len(), Ordering::Relaxed);
        self.metrics.set_context_entries(inner.held.len());
    }

    fn take_now(&self, inner: &mut Inner, key: &str) -> Option<Box<str>> {
        let held = inner.held.remove(key)?;
        self.count(inner);
        if held.expires <= Instant::now() {
            self.metrics.record_context(ContextResult::Expired);
            return None;
        }
        Some(held.json)
    }

    /// Drops up to `batch` expired (or stale) entries from the front; returns how many entries
    /// it looked at, so the sweeper knows whether to go on.
    pub fn sweep(&self, batch: usize) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut seen = 0;
        while seen < batch {
            let Some((key, seq, expires)) = inner.order.front() else { break };
            let current = inner.is_current(key, *seq);
            if current && *expires > now {
                break;
            }
            let (key, _, _) = inner.order.pop_front().expect("there is a front");
            if current {
                inner.held.remove(&key);
                self.metrics.record_context(ContextResult::Expired);
            }
            seen += 1;
        }
        self.count(&inner);
        seen
    }

    async fn take_or_wait(&self, agent_id: &str, caller: &str, wait: Duration) -> Lookup {
        if wait.is_zero() && self.holds_none() {
            return Lookup::Absent;
        }
        let key = key(agent_id, caller);
        let (id, mut delivered) = {
            let mut inner = self.lock();
            if let Some(json) = self.take_now(&mut inner, &key) {
                return Lookup::Hit(parse(&json));
            }
            if wait.is_zero() {
                return Lookup::Absent;
            }
            inner.seq += 1;
            let id = inner.seq;
            let (deliver, delivered) = oneshot::channel();
            inner.waiting.entry(Arc::clone(&key)).or_default().push_back(Waiter { id, deliver });
            (id, delivered)
        };
        // Leaves the waiting list however the wait ends, the call's future dropped included.
        let registration = Registration { store: self, key, id };
        let arrived = tokio::time::timeout(wait, &mut delivered).await;
        drop(registration);
        let json = match arrived {
            Ok(Ok(json)) => Some(json),
            // Off the list now, so nothing more can come: a push that raced the timeout is
            // already in the channel.
            _ => delivered.try_recv().ok(),
        };
        match json {
            Some(json) => Lookup::Waited(parse(&json)),
            None => Lookup::Miss,
        }
    }
}

/// A waiter's place in the waiting list, left when dropped.
struct Registration<'s> {
    store: &'s MemoryContexts,
    key: Key,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.store.lock();
        if let Some(waiters) = inner.waiting.get_mut(&*self.key) {
            waiters.retain(|w| w.id != self.id);
            if waiters.is_empty() {
                inner.waiting.remove(&*self.key);
            }
        }
    }
}

impl ContextStore for MemoryContexts {
    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn push<'a>(&'a self, agent_id: &'a str, caller: &'a str, fields: Fields) -> StoreFuture<'a, ()> {
        self.store(agent_id, caller, &fields);
        Box::pin(std::future::ready(()))
    }

    fn take<'a>(&'a self, agent_id: &'a str, caller: &'a str, wait: Duration) -> StoreFuture<'a, Lookup> {
        Box::pin(self.take_or_wait(agent_id, caller, wait))
    }

    fn holds_none(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0
    }
}

/// Sweeps expired contexts every [`SWEEP_EVERY`], [`SWEEP_BATCH`] at a time with the runtime
/// given back between batches; ends when the store is gone.
async fn sweeper(store: Weak<MemoryContexts>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        loop {
            let Some(store) = store.upgrade() else { return };
            if store.sweep(SWEEP_BATCH) < SWEEP_BATCH {
                break;
            }
            drop(store);
            tokio::task::yield_now().await;
        }
    }
}

/// Agent ids hold no whitespace, so a space separates the two parts unambiguously.
fn key(agent_id: &str, caller: &str) -> Key {
    let mut key = String::with_capacity(agent_id.len() + 1 + caller.len());
    key.push_str(agent_id);
    key.push(' ');
    key.push_str(caller);
    key.into()
}

fn parse(json: &str) -> Fields {
    serde_json::from_str(json).expect("stored as a JSON object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    fn store(ttl: Duration, max: usize) -> Arc<MemoryContexts> {
        Arc::new(MemoryContexts::new(ttl, max, crate::metrics::get()))
    }

    #[tokio::test]
    async fn a_push_is_taken_once_and_the_newest_wins() {
        let s = store(Duration::from_secs(60), 10);
        s.push("a", "+15550001111", fields(json!({"n": 1}))).await;
        s.push("a", "+15550001111", fields(json!({"n": 2}))).await;
        assert_eq!(s.len(), 1);
        assert_eq!(s.take("b", "+15550001111", Duration::ZERO).await, Lookup::Absent, "another agent");
        assert_eq!(s.take("a", "+15550002222", Duration::ZERO).await, Lookup::Absent, "another caller");
        assert_eq!(s.take("a", "+15550001111", Duration::ZERO).await, Lookup::Hit(fields(json!({"n": 2}))));
        assert_eq!(s.take("a", "+15550001111", Duration::ZERO).await, Lookup::Absent, "consumed");
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn the_oldest_is_evicted_at_the_cap() {
        let s = store(Duration::from_secs(60), 2);
        for caller in ["+15550000001", "+15550000002", "+15550000003"] {
            s.push("a", caller, Fields::new()).await;
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.take("a", "+15550000001", Duration::ZERO).await, Lookup::Absent);
        assert!(matches!(s.take("a", "+15550000003", Duration::ZERO).await, Lookup::Hit(_)));
        // A replaced push is not counted twice toward the cap, nor evicted for its old place.
        s.push("a", "+15550000002", fields(json!({"v": 2}))).await;
        s.push("a", "+15550000004", Fields::new()).await;
        assert!(matches!(s.take("a", "+15550000002", Duration::ZERO).await, Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn expired_contexts_are_dropped_on_lookup_and_by_the_sweep() {
        let s = store(Duration::from_millis(30), 10);
        s.push("a", "+15550000001", Fields::new()).await;
        s.push("a", "+15550000002", Fields::new()).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.take("a", "+15550000001", Duration::ZERO).await, Lookup::Absent);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(SWEEP_BATCH), 2, "the taken one's stale entry and the expired one");
        assert!(s.is_empty());
        assert_eq!(s.sweep(SWEEP_BATCH), 0);
    }

    #[tokio::test]
    async fn a_waiting_call_is_released_by_the_push() {
        let s = store(Duration::from_secs(60), 10);
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let started = Instant::now();
                (s.take("a", "+15550000001", Duration::from_secs(5)).await, started.elapsed())
            })
        };
        while s.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        s.push("a", "+15550000001", fields(json!({"x": true}))).await;
        let (lookup, waited) = waiter.await.unwrap();
        assert_eq!(lookup, Lookup::Waited(fields(json!({"x": true}))));
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert!(s.is_empty(), "handed over, not held");
        assert!(s.lock().waiting.is_empty());

        let started = Instant::now();
        assert_eq!(s.take("a", "+15550000001", Duration::from_millis(50)).await, Lookup::Miss);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(s.lock().waiting.is_empty(), "a wait that ends leaves the list");
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_list_and_the_push_is_held() {
        let s = store(Duration::from_secs(60), 10);
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.take("a", "+15550000001", Duration::from_secs(60)).await })
        };
        while s.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert!(s.lock().waiting.is_empty());
        s.push("a", "+15550000001", Fields::new()).await;
        assert_eq!(s.len(), 1);
    }
}
