//! Per-connection time limits. A connection is cut off when a request head (or the TLS
//! handshake) takes longer than `--header-timeout` to arrive, and closed when it sits idle
//! between requests longer than `--idle-timeout`. hyper's own header timer also runs while a
//! keep-alive connection waits for its next request, which would make the idle limit the
//! header limit; this module keeps the two apart.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Metrics;

/// Timestamps are milliseconds since the connection opened, plus one (0 means "none").
pub struct Activity {
    opened: Instant,
    last: AtomicU64,
    head_since: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2 multiplexes: bytes between requests are frames (PING, WINDOW_UPDATE), not a head.
    h2: AtomicBool,
}

/// What the watchdog decides about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// A request head has been arriving for longer than the header timeout.
    SlowHead,
    /// No request in flight and no byte either way for longer than the idle timeout.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last: AtomicU64::new(1),
            // The first request head is awaited from the moment the connection opens.
            head_since: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        // On HTTP/2, bytes are frames (PING, SETTINGS, WINDOW_UPDATE) a client can send for
        // ever without asking anything: only requests count as activity.
        if self.h2.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            // Bytes with no request in flight start the next head, if not already started.
            let _ = self.head_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        if !self.h2.load(Ordering::Relaxed) {
            self.touch();
        }
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// The connection speaks HTTP/2 (ALPN said so, or a request came in on it): from now on
    /// only requests keep it from being idle.
    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// How long since the last byte either way (or since the connection opened).
    pub fn quiet(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    /// A complete request head reached the service; the request counts as in flight until the
    /// returned guard drops (its response head went out, or the stream was reset).
    pub fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        self.touch();
        if h2 {
            self.set_h2();
        }
        InFlight(Arc::clone(self))
    }

    pub fn verdict(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now();
        let head_since = self.head_since.load(Ordering::Relaxed);
        if head_since != 0 && now.saturating_sub(head_since) > header_timeout.as_millis() as u64 {
            return Verdict::SlowHead;
        }
        let quiet = now.saturating_sub(self.last.load(Ordering::Relaxed));
        if self.in_flight.load(Ordering::Relaxed) == 0 && quiet > idle_timeout.as_millis() as u64 {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// One request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An I/O stream that reports its reads and writes to an [`Activity`], and holds its
/// listener's connection permit for as long as the socket lives: through an upgrade, the
/// stream moves into the relay and the permit with it.
pub struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    _slot: Option<Slot>,
}

impl<I> Tracked<I> {
    pub fn new(inner: I, activity: Arc<Activity>, slot: Option<Slot>) -> Tracked<I> {
        Tracked { inner, activity, _slot: slot }
    }
}

/// An open connection's place under `--max-connections`, counted in
/// `callgate_open_connections` (public listener) until dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Option<&'static Metrics>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, metrics: Option<&'static Metrics>) -> Slot {
        if let Some(m) = metrics {
            m.record_open_connections(1.0);
        }
        Slot { _permit: permit, metrics }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = self.metrics {
            m.record_open_connections(-1.0);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_in_progress_past_the_header_timeout_is_slow() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.verdict(Duration::from_millis(10), Duration::from_secs(60)), Verdict::SlowHead);
        let _request = a.request_started(false);
        assert_eq!(a.verdict(Duration::from_millis(10), Duration::from_secs(60)), Verdict::Keep);
    }

    #[test]
    fn a_quiet_connection_with_nothing_in_flight_is_idle() {
        let a = Activity::new();
        drop(a.request_started(false));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.verdict(Duration::from_secs(10), Duration::from_millis(10)), Verdict::Idle);
        let _request = a.request_started(false);
        assert_eq!(
            a.verdict(Duration::from_secs(10), Duration::from_millis(10)),
            Verdict::Keep,
            "busy, not idle"
        );
    }
}
