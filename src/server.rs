//! Accept loops for the public and admin listeners, connection limits, timeouts, and the
//! graceful drain: stop accepting, let requests and upgraded streams in flight finish within
//! the grace period, then cut off what is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either as FutureEither;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::app::{App, PathKind};
use crate::conn::{Activity, Slot, Tracked, Verdict};
use crate::engine::Peer;
use crate::error::text_response;
use crate::metrics::Route;
use crate::webhook;
use crate::wire::ResBody;
use tokio_rustls::TlsAcceptor;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The two bound listeners. Bind them first (port 0 in tests), then hand them to
/// [`crate::run`].
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(public: SocketAddr, admin: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners { public: TcpListener::bind(public).await?, admin: TcpListener::bind(admin).await? })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }
}

/// The admin listener, served from start-up until the process is done draining.
pub struct AdminServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub fn start(app: Arc<App>, listener: TcpListener) -> AdminServer {
        let addr = listener.local_addr().expect("a bound listener has an address");
        let (stop, stopped) = watch::channel(false);
        let limits = Limits::from_settings(&app.settings, 1024, None);
        let task = tokio::spawn(accept_loop(listener, stopped, TaskTracker::new(), limits, move |_peer| {
            let app = Arc::clone(&app);
            move |request| admin::handle(Arc::clone(&app), request)
        }));
        AdminServer { addr, stop, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves the public listener on the call workers (see [`crate::workers`]) until `shutdown`
/// completes, then drains: readiness is withdrawn, accepting stops, requests and upgraded
/// streams in flight get `--shutdown-grace` to finish, and what is left is cut off.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_public, public_stopped) = watch::channel(false);
    let (cut_off, cut) = watch::channel(false);
    let connections = TaskTracker::new();
    let limits = Limits {
        metrics: Some(app.metrics),
        ..Limits::from_settings(&app.settings, app.settings.max_connections as usize, tls)
    };
    let listener = listener.into_std().expect("a listener leaves the runtime it was bound on");
    let workers: Vec<_> = (0..app.settings.workers)
        .map(|index| {
            // Each worker polls its own handle on the one listening socket; the kernel hands a
            // new connection to whichever accepts first, so an idle worker takes more.
            let listener = listener.try_clone().expect("a listening socket can be duplicated");
            let (stopped, mut cut) = (public_stopped.clone(), cut.clone());
            let (connections, limits) = (connections.clone(), limits.clone());
            let app = Arc::clone(&app);
            // Counted with the connections until the accept loop ends, so the drain cannot
            // finish before the last connection accepted has.
            let accepting = connections.token();
            crate::workers::spawn(index, move || async move {
                let listener = TcpListener::from_std(listener).expect("a worker registers the listener");
                accept_loop(listener, stopped, connections, limits, move |peer| {
                    let app = Arc::clone(&app);
                    move |request| handle_public(Arc::clone(&app), request, peer)
                })
                .await;
                drop(accepting);
                // The connections and streams on this worker's runtime live until cut off.
                stop_signal(&mut cut).await;
            })
        })
        .collect();
    drop(listener);

    app.set_ready(true);
    shutdown.await;
    app.set_ready(false);
    tracing::info!(grace = ?app.settings.shutdown_grace, "shutting down: no longer accepting calls");
    let _ = stop_public.send(true);
    connections.close();
    app.streams.close();
    let drained = tokio::time::timeout(app.settings.shutdown_grace, async {
        connections.wait().await;
        app.streams.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained; every call in flight finished"),
        Err(_) => tracing::warn!(
            connections = connections.len(),
            streams = app.streams.len(),
            "shutdown grace over; cutting off what is still in flight"
        ),
    }
    let _ = cut_off.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!("a call worker panicked");
            }
        }
    })
    .await;
}

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_H2_STREAMS: u32 = 100;
/// Streams a client may open and reset before they are served (the "rapid reset" flood).
const MAX_H2_PENDING_RESETS: usize = 20;
/// Interval of callgate's own HTTP/2 PINGs, which find a peer gone silent; an unanswered one
/// closes the connection after [`H2_PING_TIMEOUT`]. PINGs either way never count as activity.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener's connections are served.
#[derive(Clone)]
enum Protocols {
    /// HTTP/1.1 or HTTP/2, as the client's first bytes say.
    Both(auto::Builder<TokioExecutor>),
    /// HTTP/1.1 only (hyper-util's `http1_only` is ignored with upgrades, so a builder of its own).
    Http1(http1::Builder),
}

/// HTTP/1.1 always; HTTP/2 over TLS (by ALPN) or, with `--allow-h2c`, in cleartext with prior
/// knowledge: an h2c connection otherwise would open a multiplexed stream of requests on a
/// listener sized and timed for HTTP/1.1.
fn connection_builder(h2: bool) -> Protocols {
    if !h2 {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_header_size(MAX_HEADER_BYTES);
        return Protocols::Http1(builder);
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header and idle limits are kept by the connection watchdog (see `conn`), not hyper's
    // header timer, which would also end keep-alive connections waiting for their next request.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(MAX_H2_PENDING_RESETS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    Protocols::Both(builder)
}

/// What every connection on one listener is held to.
#[derive(Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// A permit per open connection, shared by every accept loop on the listener.
    pub max_connections: Arc<Semaphore>,
    pub tls: Option<TlsAcceptor>,
    /// HTTP/2 is served: over TLS, or in cleartext with `--allow-h2c`.
    pub h2: bool,
    /// Where open connections are counted (the public listener's).
    pub metrics: Option<&'static crate::metrics::Metrics>,
}

impl Limits {
    fn from_settings(
        settings: &crate::settings::Settings,
        max_connections: usize,
        tls: Option<TlsAcceptor>,
    ) -> Limits {
        Limits {
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: Arc::new(Semaphore::new(max_connections)),
            h2: tls.is_some() || settings.allow_h2c,
            metrics: None,
            tls,
        }
    }
}

/// Accepts until `stopped` turns true, serving each connection with the service `make(peer)`
/// while `limits.max_connections` has a permit for it.
async fn accept_loop<M, S, F>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    connections: TaskTracker,
    limits: Limits,
    make: M,
) where
    M: Fn(Peer) -> S,
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let builder = connection_builder(limits.h2);
    loop {
        // At the limit, stop accepting until a connection closes (the kernel queues the rest).
        let permit = tokio::select! {
            biased;
            _ = stop_signal(&mut stopped) => return,
            permit = Arc::clone(&limits.max_connections).acquire_owned() => permit.expect("never closed"),
        };
        let (stream, addr) = tokio::select! {
            biased;
            _ = stop_signal(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = make(Peer { addr, tls: limits.tls.is_some() });
        let (builder, stopped, limits) = (builder.clone(), stopped.clone(), limits.clone());
        connections.spawn(async move {
            let activity = Activity::new();
            // The permit lives with the socket: an upgraded connection keeps it until its
            // relay ends.
            let stream = Tracked::new(stream, Arc::clone(&activity), Some(Slot::new(permit, limits.metrics)));
            match &limits.tls {
                None => {
                    serve_connection(TokioIo::new(stream), activity, &limits, builder, service, stopped).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                activity.set_h2();
                            }
                            serve_connection(TokioIo::new(tls), activity, &limits, builder, service, stopped)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            tracing::debug!(peer = %addr, "TLS handshake not done within the header timeout")
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<I, S, F>(
    io: TokioIo<I>,
    activity: Arc<Activity>,
    limits: &Limits,
    protocols: Protocols,
    service: S,
    stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |request: Request<Incoming>| {
            let in_flight = activity.request_started(request.version() == http::Version::HTTP_2);
            // A combinator, not an `async move` block: a block would hold the service's
            // future twice (as its capture and as the awaited value), and hyper moves this
            // future into place on every request.
            service(request).map(move |response| {
                drop(in_flight);
                Ok::<_, Infallible>(response)
            })
        })
    };
    match protocols {
        Protocols::Both(builder) => {
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            watch_connection(connection, |c| c.graceful_shutdown(), &activity, limits, stopped).await
        }
        Protocols::Http1(builder) => {
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            watch_connection(connection, |c| c.graceful_shutdown(), &activity, limits, stopped).await
        }
    }
}

/// Drives `connection` until it ends, the drain asks it to finish (`shutdown`), or the
/// watchdog finds it too slow or idle (dropped: the socket closes).
async fn watch_connection<C, E>(
    mut connection: Pin<&mut C>,
    shutdown: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    limits: &Limits,
    mut stopped: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = stop_signal(&mut stopped) => {
                shutdown(connection.as_mut());
                break connection.await;
            }
            _ = watchdog.tick() => match activity.verdict(limits.header_timeout, limits.idle_timeout) {
                Verdict::Keep => {}
                // Dropping the connection closes the socket; nothing is in flight on it.
                Verdict::SlowHead => {
                    tracing::debug!("request head not received within the header timeout; closing");
                    return;
                }
                Verdict::Idle => return,
            },
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Completes once `stopped` turns true (or its sender is gone).
async fn stop_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// One request on the public listener: voice paths to the webhook, the rest to the engine.
/// Not an `async fn`, which would hold the request twice in the future hyper moves into place
/// on every request.
fn handle_public(
    app: Arc<App>,
    mut request: Request<Incoming>,
    peer: Peer,
) -> impl Future<Output = Response<ResBody>> + Send {
    if let Some(refusal) = refuse_framing(&request) {
        return FutureEither::Left(std::future::ready(refusal));
    }
    // An HTTP/2 request names its host in `:authority`; the signed URL and the engine (which
    // speaks HTTP/1.1) both read `Host`.
    if !request.headers().contains_key(http::header::HOST) {
        if let Some(host) =
            request.uri().authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
    FutureEither::Right(async move {
        // From the first poll, as when this was an `async fn`: an HTTP/2 stream's task may
        // wait in the run queue between the service call and its first poll.
        let started = Instant::now();
        let (route, served) = match app.path_kind(request.uri().path()) {
            PathKind::Voice => (Route::Voice, webhook::handle(&app, request, peer, true, started).await),
            PathKind::Signed => (Route::Proxy, webhook::handle(&app, request, peer, false, started).await),
            PathKind::Other => (Route::Proxy, app.forward_stream(request, peer).await),
        };
        let elapsed = started.elapsed();
        app.metrics.record_request(route, elapsed);
        app.metrics.record_overhead(elapsed.saturating_sub(served.waited));
        served.response
    })
}

/// Framing hyper lets through that an intermediary must not pass on: an HTTP/1.1 request
/// without exactly one `Host` (RFC 9112 §3.2), and a `Transfer-Encoding` other than `chunked`
/// alone (a coding the engine would not be told about, or a list two parsers may read two ways).
/// The body is left unread, so the connection is closed after the answer.
fn refuse_framing<B>(request: &Request<B>) -> Option<Response<ResBody>> {
    let headers = request.headers();
    if request.version() == http::Version::HTTP_11 && headers.get_all(http::header::HOST).iter().count() != 1
    {
        let text = "an HTTP/1.1 request carries exactly one Host header\n";
        return Some(text_response(http::StatusCode::BAD_REQUEST, text.into(), true));
    }
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            let text = "only Transfer-Encoding: chunked is supported\n";
            return Some(text_response(http::StatusCode::NOT_IMPLEMENTED, text.into(), true));
        }
    }
    None
}
