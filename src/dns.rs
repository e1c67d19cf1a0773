//! Gate host names, resolved on a bounded pool with a short cache. getaddrinfo blocks its
//! thread for as long as the system resolver takes (30 s and more against a blackholed
//! server), so lookups run on at most [`MAX_THREADS`] threads of their own, callers of one name
//! share one lookup, and answers are kept for [`TTL`]. A caller waits no longer than its gate's
//! deadline, which bounds the whole exchange; a lookup it leaves behind ends on its thread.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::dns::Name;
use tokio::sync::watch;

/// Most lookups under way at once, so most threads a blackholed resolver can hold.
pub const MAX_THREADS: usize = 16;
/// How long an answer is used before the name is looked up again.
pub const TTL: Duration = Duration::from_secs(30);
/// How long a failed lookup is remembered: calls in the next second fail at once rather than
/// queue behind another lookup of a name that does not resolve.
const FAILURE_TTL: Duration = Duration::from_secs(1);
/// A lookup thread with nothing to do for this long exits.
const IDLE: Duration = Duration::from_secs(30);
/// Beyond this many names, expired answers are dropped from the cache.
const PRUNE_AT: usize = 4096;

/// A lookup: blocking, by name, as getaddrinfo is.
type Lookup = dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync;
/// A lookup's outcome, shared by every caller of the name (`io::Error` is not `Clone`).
type Answer = Result<Arc<[IpAddr]>, Arc<str>>;

/// The gate client's resolver (a `tower` service of [`Name`], for hyper-util's
/// `HttpConnector`); cheap to clone, all clones share one cache and one pool.
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

struct Inner {
    lookup: Box<Lookup>,
    max_threads: usize,
    ttl: Duration,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    cache: HashMap<Box<str>, Entry>,
    queue: VecDeque<(Box<str>, watch::Sender<Option<Answer>>)>,
    threads: usize,
    idle: usize,
}

enum Entry {
    Ready { answer: Answer, until: Instant },
    Pending(watch::Receiver<Option<Answer>>),
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::with_lookup(MAX_THREADS, TTL, |name| {
            Ok((name, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
        })
    }
}

impl Resolver {
    /// The system resolver (getaddrinfo) on at most [`MAX_THREADS`] threads, answers kept [`TTL`].
    pub fn new() -> Resolver {
        Resolver::default()
    }

    /// A resolver over any blocking `lookup`, on at most `max_threads` threads.
    pub fn with_lookup(
        max_threads: usize,
        ttl: Duration,
        lookup: impl Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Arc::new(Inner {
            lookup: Box::new(lookup),
            max_threads: max_threads.max(1),
            ttl,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
        }))
    }

    /// The addresses of `name`: from the cache, from a lookup under way, or from a new one.
    pub async fn resolve(&self, name: &str) -> io::Result<Arc<[IpAddr]>> {
        let mut pending = {
            let mut state = self.0.lock();
            match state.cache.get(name) {
                Some(Entry::Ready { answer, until }) if *until > Instant::now() => {
                    return to_io(answer.clone())
                }
                Some(Entry::Pending(pending)) => pending.clone(),
                _ => self.0.enqueue(&mut state, name),
            }
        };
        let answer = match pending.wait_for(Option::is_some).await {
            Ok(answer) => answer.clone().expect("waited for an answer"),
            Err(_) => return Err(io::Error::other("the lookup was abandoned")),
        };
        to_io(answer)
    }

    /// Lookup threads running now (for tests).
    pub fn threads(&self) -> usize {
        self.0.lock().threads
    }
}

fn to_io(answer: Answer) -> io::Result<Arc<[IpAddr]>> {
    answer.map_err(|e| io::Error::other(e.to_string()))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a lookup of `name` and returns where its answer will appear; starts a thread if
    /// every running one is busy and the pool is not full.
    fn enqueue(self: &Arc<Self>, state: &mut State, name: &str) -> watch::Receiver<Option<Answer>> {
        if state.cache.len() >= PRUNE_AT {
            let now = Instant::now();
            state.cache.retain(|_, e| !matches!(e, Entry::Ready { until, .. } if *until <= now));
        }
        let (done, pending) = watch::channel(None);
        state.cache.insert(name.into(), Entry::Pending(pending.clone()));
        state.queue.push_back((name.into(), done));
        if state.queue.len() > state.idle && state.threads < self.max_threads {
            let inner = Arc::clone(self);
            let started = std::thread::Builder::new().name("callgate-dns".into()).spawn(move || inner.work());
            if started.is_ok() {
                state.threads += 1;
            }
        }
        self.work.notify_one();
        pending
    }

    /// A lookup thread: takes names off the queue until none has come for [`IDLE`].
    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some((name, done)) = state.queue.pop_front() {
                drop(state);
                let answer: Answer =
                    (self.lookup)(&name).map(Arc::from).map_err(|e| Arc::from(e.to_string()));
                let ttl = if answer.is_ok() { self.ttl } else { FAILURE_TTL };
                state = self.lock();
                state
                    .cache
                    .insert(name, Entry::Ready { answer: answer.clone(), until: Instant::now() + ttl });
                let _ = done.send(Some(answer));
                continue;
            }
            state.idle += 1;
            let (next, waited) = self.work.wait_timeout(state, IDLE).unwrap_or_else(|p| p.into_inner());
            state = next;
            state.idle -= 1;
            if waited.timed_out() && state.queue.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            let ips = resolver.resolve(name.as_str()).await?;
            // The connector sets the port.
            Ok(ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect::<Vec<_>>().into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A lookup that blocks until `open` is set, counting lookups and the most at once.
    struct Blocking {
        open: Mutex<bool>,
        opened: Condvar,
        calls: AtomicUsize,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Blocking {
        fn new() -> Arc<Blocking> {
            Arc::new(Blocking {
                open: Mutex::new(false),
                opened: Condvar::new(),
                calls: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            })
        }

        fn resolver(self: &Arc<Self>, ttl: Duration) -> Resolver {
            let this = Arc::clone(self);
            Resolver::with_lookup(MAX_THREADS, ttl, move |_| {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.most.fetch_max(now, Ordering::SeqCst);
                let open = this.open.lock().unwrap();
                drop(this.opened.wait_while(open, |open| !*open).unwrap());
                this.running.fetch_sub(1, Ordering::SeqCst);
                Ok(vec![LOCAL])
            })
        }

        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[tokio::test]
    async fn a_hung_resolver_holds_at_most_16_threads_however_many_callers_wait() {
        let dns = Blocking::new();
        let resolver = dns.resolver(TTL);
        // 200 callers of 100 names, each giving up after 200 ms, as a gate's deadline does.
        let waits: Vec<_> = (0..200)
            .map(|i| {
                let r = resolver.clone();
                tokio::spawn(async move {
                    let name = format!("gate-{}.example", i % 100);
                    tokio::time::timeout(Duration::from_millis(200), r.resolve(&name)).await.is_err()
                })
            })
            .collect();
        for wait in waits {
            assert!(wait.await.unwrap(), "a caller waits no longer than its deadline");
        }
        assert_eq!(resolver.threads(), MAX_THREADS);
        assert_eq!(dns.most.load(Ordering::SeqCst), MAX_THREADS);
        assert_eq!(dns.calls.load(Ordering::SeqCst), MAX_THREADS, "the rest wait in the queue");
        // Once the resolver answers, the queued names are looked up, each once.
        dns.release();
        for i in 0..100 {
            let ips = resolver.resolve(&format!("gate-{i}.example")).await.unwrap();
            assert_eq!(&*ips, [LOCAL]);
        }
        assert_eq!(dns.calls.load(Ordering::SeqCst), 100);
        assert!(resolver.threads() <= MAX_THREADS);
    }

    #[tokio::test]
    async fn callers_of_one_name_share_a_lookup_and_answers_are_cached_for_the_ttl() {
        let dns = Blocking::new();
        let resolver = dns.resolver(Duration::from_millis(100));
        let waits: Vec<_> = (0..50)
            .map(|_| {
                let r = resolver.clone();
                tokio::spawn(async move { r.resolve("gate.example").await })
            })
            .collect();
        dns.release();
        for wait in waits {
            assert_eq!(&*wait.await.unwrap().unwrap(), [LOCAL]);
        }
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1, "one lookup for 50 callers");
        resolver.resolve("gate.example").await.unwrap();
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1, "cached");
        // The TTL is what is tested here: wait it out.
        tokio::time::sleep(Duration::from_millis(150)).await;
        resolver.resolve("gate.example").await.unwrap();
        assert_eq!(dns.calls.load(Ordering::SeqCst), 2, "looked up again after the TTL");
    }

    #[tokio::test]
    async fn a_failed_lookup_is_an_error_remembered_briefly() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let resolver = Resolver::with_lookup(2, TTL, move |name| {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::new(io::ErrorKind::NotFound, format!("no such host {name}")))
        });
        let e = resolver.resolve("nowhere.example").await.unwrap_err();
        assert!(e.to_string().contains("nowhere.example"));
        assert!(resolver.resolve("nowhere.example").await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let ips = Resolver::new().resolve("localhost").await.unwrap();
        assert!(ips.iter().all(IpAddr::is_loopback) && !ips.is_empty(), "{ips:?}");
    }
}
