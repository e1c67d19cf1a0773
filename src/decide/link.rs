//! The call path's link to the shared store (SPEC §15): one connection, made in the background
//! and remade by the connection manager when it breaks, each operation capped at [`OP_LIMIT`];
//! and one subscription that wakes the calls waiting on a key (a pushed context, a CallSid
//! decided on another replica). A call never waits for a connection: with none, it goes on with
//! the replica's own memory at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::metrics::{Metrics, StoreOp};
use crate::settings::RedisUrl;

/// The longest one store operation on a call's path may take; past it the call uses the
/// replica's own memory.
pub const OP_LIMIT: Duration = Duration::from_millis(200);

/// While the subscription is down, a waiting call looks at the store this often instead of
/// being woken (with it up, a waiter only wakes on a notification).
pub const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// After an operation fails or runs out of time, calls skip the store for this long, so that a
/// store that is down costs calls nothing; then the next call tries it again.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_millis(500);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a notification is about: each has its own channel under the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `context:pushed`, with the context's key as payload.
    Context,
    /// `call:decided`, with the CallSid as payload.
    Call,
}

impl Topic {
    const ALL: [Topic; 2] = [Topic::Context, Topic::Call];

    fn suffix(self) -> &'static str {
        match self {
            Topic::Context => "context:pushed",
            Topic::Call => "call:decided",
        }
    }
}

type Waiters = FxHashMap<(Topic, Box<str>), Vec<(u64, Arc<Notify>)>>;

/// The shared store as the call path sees it. Cheap to share (`Arc`).
pub struct Link {
    conn: ArcSwapOption<ConnectionManager>,
    /// Until when calls skip the store (milliseconds after `epoch`), after a failure.
    skip_until: AtomicU64,
    epoch: Instant,
    /// The last operation failed (logged once per outage).
    failing: AtomicBool,
    subscribed: AtomicBool,
    waiters: Mutex<Waiters>,
    /// The contexts pushed through any replica, as announced: lets a call skip the store when
    /// no context can be there for it.
    pub pushed: Pushed,
    next: AtomicU64,
    prefix: String,
    metrics: &'static Metrics,
}

impl Link {
    /// A link to the store at `url`, and its connecting and subscribing tasks on the current
    /// runtime (they end when the link is dropped). Calls meanwhile use local memory.
    /// `context_ttl` is how long a pushed context is held (`--context-ttl`).
    pub fn start(
        url: &RedisUrl,
        prefix: &str,
        context_ttl: Duration,
        metrics: &'static Metrics,
    ) -> Result<Arc<Link>, redis::RedisError> {
        let client = redis::Client::open(url.expose())?;
        let link = Arc::new(Link {
            conn: ArcSwapOption::empty(),
            skip_until: AtomicU64::new(0),
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            waiters: Mutex::default(),
            pushed: Pushed::new(context_ttl),
            next: AtomicU64::new(0),
            prefix: prefix.to_owned(),
            metrics,
        });
        tokio::spawn(connect(client.clone(), Arc::downgrade(&link)));
        tokio::spawn(subscribe(client, Arc::downgrade(&link)));
        Ok(link)
    }

    /// `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn channel(&self, topic: Topic) -> String {
        self.key(topic.suffix())
    }

    /// Runs `op` on the connection within `limit` (at most [`OP_LIMIT`]); `None` when there is
    /// no connection, the store is being skipped after a failure, or `op` fails or takes too
    /// long (those two counted as store errors of kind `kind`).
    pub async fn run<T, F, Fut>(&self, kind: StoreOp, limit: Duration, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn.load_full()?;
        if self.millis() < self.skip_until.load(Ordering::Relaxed) {
            return None;
        }
        // The error's kind only: a message may quote what the store holds.
        let failed =
            match tokio::time::timeout(limit.min(OP_LIMIT), op(ConnectionManager::clone(&conn))).await {
                Ok(Ok(value)) => {
                    if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("the shared store answers calls' operations again");
                    }
                    return Some(value);
                }
                Ok(Err(e)) => format!("{:?}", e.kind()),
                Err(_) => "no answer in time".to_owned(),
            };
        self.metrics.record_store_error(kind);
        let until = self.millis() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until.store(until, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %failed,
                skip_ms = SKIP_AFTER_FAILURE.as_millis() as u64,
                "a shared store operation on a call's path failed; calls use this replica's memory for context and dedup meanwhile"
            );
        }
        None
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether notifications arrive now: without them a waiter looks again every [`LOOK_AGAIN`].
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a waiter on `(topic, payload)`, woken by [`Link::wake`] or a notification;
    /// left when the returned [`Listener`] is dropped. A wake between this and the wait is
    /// kept, so register before looking at the store.
    pub fn listen(self: &Arc<Link>, topic: Topic, payload: &str) -> Listener {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock().entry((topic, payload.into())).or_default().push((id, Arc::clone(&notify)));
        Listener { link: Arc::clone(self), topic, payload: payload.into(), id, notify }
    }

    /// Wakes every waiter on `(topic, payload)`.
    pub fn wake(&self, topic: Topic, payload: &str) {
        if let Some(waiters) = self.lock().get(&(topic, Box::from(payload))) {
            for (_, notify) in waiters {
                notify.notify_one();
            }
        }
    }

    /// Wakes every waiter: notifications may have been lost while the subscription was down.
    fn wake_all(&self) {
        for waiters in self.lock().values() {
            for (_, notify) in waiters {
                notify.notify_one();
            }
        }
    }
}

/// A call's place among the waiters on one key.
pub struct Listener {
    link: Arc<Link>,
    topic: Topic,
    payload: Box<str>,
    id: u64,
    notify: Arc<Notify>,
}

impl Listener {
    /// Waits for a wake-up, at most `within`, and at most [`LOOK_AGAIN`] while the
    /// subscription is down; `true` if woken.
    pub async fn woken(&self, within: Duration) -> bool {
        let within = if self.link.subscribed() { within } else { within.min(LOOK_AGAIN) };
        tokio::time::timeout(within, self.notify.notified()).await.is_ok()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut waiters = self.link.lock();
        let key = (self.topic, std::mem::take(&mut self.payload));
        if let Some(list) = waiters.get_mut(&key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.remove(&key);
            }
        }
    }
}

/// Connects once; the connection manager remakes the connection on its own after that.
async fn connect(client: redis::Client, link: Weak<Link>) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(OP_LIMIT)
        .set_number_of_retries(1)
        .set_max_delay(500);
    let mut backoff = Duration::from_millis(100);
    loop {
        let made = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await;
        let Some(link) = link.upgrade() else { return };
        match made {
            Ok(Ok(conn)) => {
                link.conn.store(Some(Arc::new(conn)));
                return;
            }
            _ => link.metrics.record_store_error(StoreOp::Read),
        }
        drop(link);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps one subscription to both channels, remade with backoff, and wakes the waiters named
/// by each message; after every (re)subscription every waiter looks again.
async fn subscribe(client: redis::Client, link: Weak<Link>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(channels) = link.upgrade().map(|l| Topic::ALL.map(|t| (t, l.channel(t)))) else { return };
        let stream = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for (_, channel) in &channels {
                pubsub.subscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, stream).await {
            Ok(Ok(mut messages)) => {
                backoff = Duration::from_millis(100);
                match link.upgrade() {
                    Some(l) => {
                        l.subscribed.store(true, Ordering::Release);
                        l.wake_all();
                        // Announcements from now on arrive; what was pushed before is listed.
                        tokio::spawn(seed(client.clone(), Arc::downgrade(&l)));
                    }
                    None => return,
                }
                while let Some(message) = messages.next().await {
                    let Some(l) = link.upgrade() else { return };
                    let name = message.get_channel_name();
                    let Some((topic, _)) = channels.iter().find(|(_, c)| c == name) else { continue };
                    if let Ok(payload) = message.get_payload::<String>() {
                        if *topic == Topic::Context {
                            l.pushed.note(&payload);
                        }
                        l.wake(*topic, &payload);
                    }
                }
                let Some(l) = link.upgrade() else { return };
                l.pushed.distrust();
                l.subscribed.store(false, Ordering::Release);
                l.metrics.record_store_error(StoreOp::Subscribe);
            }
            _ => match link.upgrade() {
                Some(l) => l.metrics.record_store_error(StoreOp::Subscribe),
                None => return,
            },
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The contexts pushed through any replica within the TTL, by name (`{agent_id} {caller}`), as
/// this replica heard of them: every push is announced on the channel, and the store's contexts
/// are listed (SCAN) each time the subscription is made. While the list is complete a call whose
/// context was never announced skips the store (no round trip for the many calls with none);
/// while it is not (no subscription, or the listing not done), every call looks in the store.
pub struct Pushed {
    ttl: Duration,
    names: Mutex<FxHashMap<Box<str>, Instant>>,
    /// Bumped on every loss of the subscription, so a listing that started before one cannot
    /// make the list complete.
    epoch: AtomicU64,
    complete: AtomicBool,
    /// When the list was last swept of expired names, by its size then.
    swept_at: AtomicU64,
}

impl Pushed {
    fn new(ttl: Duration) -> Pushed {
        Pushed {
            ttl,
            names: Mutex::default(),
            epoch: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            swept_at: AtomicU64::new(1024),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<Box<str>, Instant>> {
        self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A context pushed under `name` (held at most the TTL from now).
    pub fn note(&self, name: &str) {
        let mut names = self.lock();
        names.insert(name.into(), Instant::now() + self.ttl);
        // Expired names go when the list has doubled since the last sweep.
        if names.len() as u64 >= 2 * self.swept_at.load(Ordering::Relaxed) {
            let now = Instant::now();
            names.retain(|_, expires| *expires > now);
            self.swept_at.store((names.len() as u64).max(1024), Ordering::Relaxed);
        }
    }

    /// The context under `name` was taken here.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Whether the store may hold a context under `name`: `false` only when the list is
    /// complete and `name` is not on it.
    pub fn may_hold(&self, name: &str) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return true;
        }
        self.lock().get(name).is_some_and(|expires| *expires > Instant::now())
    }

    fn distrust(&self) {
        self.complete.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Lists the contexts the store holds into [`Link::pushed`], then marks the list complete,
/// unless the subscription was lost meanwhile. Keys are `{prefix}context:{name}`.
async fn seed(client: redis::Client, link: Weak<Link>) {
    let Some((epoch, pattern, strip)) = link.upgrade().map(|l| {
        // The prefix is an operator's string: escape what SCAN's pattern would read as a glob.
        let mut pattern = String::new();
        for c in l.key("context:").chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        (l.pushed.epoch.load(Ordering::Acquire), pattern, l.key("context:").len())
    }) else {
        return;
    };
    let listed = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cursor = 0u64;
        let mut names = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            names.extend(keys.into_iter().filter_map(|k| k.get(strip..).map(str::to_owned)));
            if next == 0 {
                return Ok::<_, redis::RedisError>(names);
            }
            cursor = next;
        }
    };
    let listed = tokio::time::timeout(Duration::from_secs(30), listed).await;
    let Some(l) = link.upgrade() else { return };
    match listed {
        Ok(Ok(names)) => {
            for name in &names {
                l.pushed.note(name);
            }
            if l.pushed.epoch.load(Ordering::Acquire) == epoch {
                l.pushed.complete.store(true, Ordering::Release);
            }
        }
        // The list stays incomplete: calls look in the store, as without it.
        _ => l.metrics.record_store_error(StoreOp::Read),
    }
}
