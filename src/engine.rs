//! Forwarding to the voice engine: header hygiene (hop-by-hop headers, `X-Forwarded-*`,
//! `X-Callgate-*`), a connection pool per call worker, the response-head deadline, and
//! WebSocket upgrades relayed byte for byte in both directions.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either as FutureEither;
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::task::TaskTracker;

use crate::body::{ClientBody, ClientFault};
use crate::conn::{Activity, Tracked};
use crate::decide::Decision;
use crate::metrics::UpstreamCause;
use crate::settings::Upstream;
use crate::wire::{X_CALLGATE_AGENT_ID, X_CALLGATE_CONTEXT, X_CALLGATE_DECISION};
use crate::workers::PerWorker;

/// What callgate says to the engine about a request, in its own `X-Callgate-*` headers.
#[derive(Clone, Copy, Debug)]
pub enum Stamp<'a> {
    /// Not a voice path: nothing is added.
    None,
    /// A voice-path request that is not an inbound ringing call (`not_gated`).
    NotGated,
    /// A decided call that goes on to the engine.
    Decided {
        decision: Decision,
        /// The agent that handles the call (the gate's override first).
        agent_id: Option<&'a str>,
        /// `X-Callgate-Context`, already encoded.
        context: Option<&'a HeaderValue>,
    },
}

/// A request body on its way to the engine: buffered (voice and signed paths) or streamed with
/// a size cap (everything else).
pub type EngineBody = Either<Full<Bytes>, ClientBody>;

/// Largest body streamed through on paths that are not voice or signed paths.
pub const MAX_STREAMED_BODY: usize = 10 * 1024 * 1024;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_TWILIO_SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");
const X_TWILIO_SIGNATURE_SETTINGS: HeaderName =
    HeaderName::from_static("x-twilio-webhooks-signature-settings");

/// End-to-end headers a `Connection` header may not nominate for removal: what the request is
/// about, who signed it and where it was sent. Stripping them would let a client have the engine
/// see a request other than the one callgate checked.
const NEVER_HOP_BY_HOP: [HeaderName; 6] = [
    header::HOST,
    header::CONTENT_TYPE,
    X_TWILIO_SIGNATURE,
    X_TWILIO_SIGNATURE_SETTINGS,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
];
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The engine could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the voice engine")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("the voice engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the voice engine broke the exchange")]
    Protocol(#[source] hyper_util::client::legacy::Error),
    #[error("the voice engine switched protocols on a request that did not ask to")]
    UnaskedUpgrade,
    #[error("the request body is larger than {MAX_STREAMED_BODY} bytes")]
    BodyTooLarge,
    /// The client stalled or broke off its streamed body: its fault, not the engine's.
    #[error(transparent)]
    Client(ClientFault),
}

impl EngineError {
    /// The metrics cause, or `None` when the fault was the client's.
    pub fn cause(&self) -> Option<UpstreamCause> {
        match self {
            EngineError::Connect(_) => Some(UpstreamCause::Connect),
            EngineError::Timeout(_) => Some(UpstreamCause::Timeout),
            EngineError::Protocol(_) | EngineError::UnaskedUpgrade => Some(UpstreamCause::Protocol),
            EngineError::BodyTooLarge | EngineError::Client(_) => None,
        }
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// The voice engine, behind a connection pool per call worker: the engine is one busy local
/// upstream, so each worker keeps connections of its own, used only from its thread.
pub struct Engine {
    /// A pool per call worker (see [`crate::workers`]).
    client: PerWorker<Client<HttpConnector, EngineBody>>,
    upstream: Upstream,
    /// A relay with no byte either way for this long is closed (`--idle-timeout`).
    idle_timeout: Duration,
    /// Upgraded streams (WebSockets) in flight, for the graceful drain.
    streams: TaskTracker,
}

impl Engine {
    pub fn new(upstream: Upstream, idle_timeout: Duration, streams: TaskTracker, workers: usize) -> Engine {
        let client = PerWorker::new(workers, || {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1024)
                .build(http)
        });
        Engine { client, upstream, idle_timeout, streams }
    }

    /// Sends `request` (already cleaned by [`Engine::prepare`]) and returns the engine's
    /// response head within `timeout`, with its body still streaming. A `101 Switching
    /// Protocols` is wired to the client's upgraded connection here.
    ///
    /// Not an `async fn`: the request goes into the pool's boxed exchange (which connects and
    /// sends once polled) before anything waits, so the future every call's future holds
    /// carries that box and a timer, not the request (an `async fn` would keep it, twice, in
    /// every state).
    pub fn forward(
        &self,
        mut request: Request<EngineBody>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<Incoming>, EngineError>> + Send + '_ {
        // `prepare` kept `Upgrade` only on an upgrade request.
        let client_upgrade =
            request.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut request));
        // A streamed body is the client's to deliver (within its own deadline); the engine's
        // time starts once it has the whole request. An engine that stops reading the body
        // still gets no more than the client's allowance plus its own timeout.
        let body_finished = match request.body() {
            Either::Right(body) => Some((body.finished(), body.within())),
            Either::Left(_) => None,
        };
        let sent = self.client.get().request(request);
        let answered = match body_finished {
            None => FutureEither::Left(tokio::time::timeout(timeout, sent).map(|r| r.map_err(drop))),
            // Boxed: the rarer path, and its select is the larger future.
            Some((body_finished, within)) => FutureEither::Right(Box::pin(async move {
                tokio::pin!(sent);
                tokio::select! {
                    sent = sent.as_mut() => Ok(sent),
                    _ = body_finished => tokio::time::timeout(timeout, sent).await.map_err(drop),
                    _ = tokio::time::sleep(within + timeout) => Err(()),
                }
            })),
        };
        answered.map(move |sent| self.answered(sent, client_upgrade, timeout))
    }

    /// What became of a forwarded request: the engine's response, or why there is none.
    fn answered(
        &self,
        sent: Result<Result<Response<Incoming>, hyper_util::client::legacy::Error>, ()>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, EngineError> {
        let mut response = match sent {
            Err(()) => return Err(EngineError::Timeout(timeout)),
            Ok(Err(e)) if e.is_connect() => return Err(EngineError::Connect(e)),
            Ok(Err(e)) if is_body_limit(&e) => return Err(EngineError::BodyTooLarge),
            Ok(Err(e)) if client_fault(&e).is_some() => {
                return Err(EngineError::Client(client_fault(&e).expect("just found")))
            }
            Ok(Err(e)) => return Err(EngineError::Protocol(e)),
            Ok(Ok(r)) => r,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A 101 is passed on only as the answer to the WebSocket upgrade the client asked
            // for; any other would hand the client's connection to a protocol nobody checked.
            let Some(client_upgrade) = client_upgrade else { return Err(EngineError::UnaskedUpgrade) };
            let engine_upgrade = hyper::upgrade::on(&mut response);
            self.streams.spawn(relay(client_upgrade, engine_upgrade, self.idle_timeout));
        } else {
            strip_hop_by_hop(response.headers_mut(), false);
        }
        Ok(response)
    }

    /// Rewrites an incoming request for the engine: the upstream's scheme, authority and prefix
    /// with the original path and query; hop-by-hop and framing headers removed (the body sets
    /// the framing); `X-Forwarded-*` appended or kept; every client-sent `X-Callgate-*` dropped,
    /// then callgate's own set as `stamp` says. Twilio's body is never touched.
    pub fn prepare<B>(&self, request: &mut Request<B>, peer: Peer, stamp: &Stamp<'_>) {
        // The engine speaks HTTP/1.1 whatever the client spoke.
        *request.version_mut() = http::Version::HTTP_11;
        let uri = self.upstream_uri(request.uri());
        *request.uri_mut() = uri;
        let upgrade = is_upgrade(request);
        let headers = request.headers_mut();
        strip_hop_by_hop(headers, upgrade);
        // The body we send sets the framing; a received length is never passed on as it came.
        headers.remove(header::CONTENT_LENGTH);
        strip_callgate_headers(headers);
        append_forwarded(headers, peer);
        stamp_headers(headers, stamp);
    }

    fn upstream_uri(&self, original: &Uri) -> Uri {
        let path_and_query = if self.upstream.prefix.is_empty() {
            original.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
            let joined = format!("{}{}", self.upstream.prefix, pq);
            PathAndQuery::try_from(joined).expect("a valid prefix joined to a valid path")
        };
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("scheme, authority and path are valid")
    }
}

/// A WebSocket upgrade: a GET with `Connection: upgrade` and `Upgrade: websocket` alone. Any
/// other upgrade (`h2c` above all, which would open an HTTP/2 connection past every limit
/// callgate keeps) or an upgrade on another method is forwarded as a plain request, its
/// `Upgrade` removed.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let websocket =
        upgrades.next().is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
            && upgrades.next().is_none();
    request.method() == Method::GET
        && websocket
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1; those `Connection` names, less
/// [`NEVER_HOP_BY_HOP`]) and `Transfer-Encoding`; with `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive for the engine to answer the handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .filter(|n| !NEVER_HOP_BY_HOP.contains(n))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Drops every `X-Callgate-*` header: only callgate may say what it decided.
pub fn strip_callgate_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> =
        headers.keys().filter(|n| n.as_str().starts_with("x-callgate-")).cloned().collect();
    for name in forged {
        headers.remove(name);
    }
}

fn stamp_headers(headers: &mut HeaderMap, stamp: &Stamp<'_>) {
    match *stamp {
        Stamp::None => {}
        Stamp::NotGated => {
            headers.insert(X_CALLGATE_DECISION, HeaderValue::from_static("not_gated"));
        }
        Stamp::Decided { decision, agent_id, context } => {
            headers.insert(X_CALLGATE_DECISION, HeaderValue::from_static(decision.as_str()));
            // An agent id is printable ASCII (validated wherever it comes from).
            if let Some(v) = agent_id.and_then(|a| HeaderValue::try_from(a).ok()) {
                headers.insert(X_CALLGATE_AGENT_ID, v);
            }
            if let Some(context) = context {
                headers.insert(X_CALLGATE_CONTEXT, context.clone());
            }
        }
    }
}

fn append_forwarded(headers: &mut HeaderMap, peer: Peer) {
    // Every X-Forwarded-For line received folds into one list, the client's address last.
    let mut xff = String::new();
    for line in headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        let line = line.trim();
        if !line.is_empty() {
            xff.push_str(line);
            xff.push_str(", ");
        }
    }
    let _ = write!(xff, "{}", peer.addr.ip());
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if peer.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// The client's fault behind a failed exchange, if it was the client's streamed body that
/// failed (taken out of the error chain).
fn client_fault(e: &hyper_util::client::legacy::Error) -> Option<ClientFault> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        match s.downcast_ref::<ClientFault>() {
            Some(ClientFault::Timeout(within)) => return Some(ClientFault::Timeout(*within)),
            // hyper::Error is not Clone; the kind is all the answer needs.
            Some(ClientFault::Read(_) | ClientFault::Broken) => return Some(ClientFault::Broken),
            None => source = s.source(),
        }
    }
    None
}

fn is_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Copies bytes both ways between the client's and the engine's upgraded connections until
/// either side closes, or no byte has gone either way for `idle_timeout` (Twilio Media Streams
/// send media every 20 ms: a silent stream is dead).
async fn relay(client: hyper::upgrade::OnUpgrade, engine: hyper::upgrade::OnUpgrade, idle_timeout: Duration) {
    let (client, engine) = match tokio::try_join!(client, engine) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    // Every byte relayed is read from or written to the client's side.
    let activity = Activity::new();
    let mut client = Tracked::new(TokioIo::new(client), Arc::clone(&activity), None);
    let mut engine = TokioIo::new(engine);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut engine);
    tokio::pin!(copy);
    let mut watchdog =
        tokio::time::interval((idle_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)));
    loop {
        tokio::select! {
            copied = copy.as_mut() => {
                if let Err(e) = copied {
                    tracing::debug!(error = %e, "upgraded stream ended with an error");
                }
                return;
            }
            _ = watchdog.tick() => if activity.quiet() > idle_timeout {
                // Dropping both ends closes both sockets (and frees the client's permit).
                tracing::debug!(?idle_timeout, "upgraded stream silent for the idle timeout; closing");
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_x_forwarded_for_line_is_kept_with_the_client_last() {
        let peer = Peer { addr: "192.0.2.7:5000".parse().unwrap(), tls: false };
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9, 198.51.100.2"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static(" "));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.3"));
        append_forwarded(&mut headers, peer);
        let all: Vec<_> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["203.0.113.9, 198.51.100.2, 198.51.100.3, 192.0.2.7"]);

        let mut headers = HeaderMap::new();
        append_forwarded(&mut headers, peer);
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.7");
    }
}
