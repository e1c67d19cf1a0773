//! The gate client: pooled HTTP(S) connections to every customer gate (a busy gate's on each
//! call worker, a quiet gate's shared), one deadline over the whole exchange, a cap on requests
//! waiting per gate, optional request signing, and the strict reading of the answer into a
//! [`GateDecision`] (read by [`crate::decide::answer`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::body;
pub use crate::decide::answer::{parse_answer, GateDecision};
use crate::decide::Cause;
use crate::routes::Gate;
use crate::workers::{self, PerWorker};

/// Largest gate answer read; a longer one is `malformed`.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Pooled gate connections idle longer than this are retired, so that a gate's own keep-alive
/// timeout (5 s in Node.js, the shortest common one) never closes a connection under a request.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Gate URLs tracked for `--gate-max-pending` before idle ones are forgotten.
const MAX_TRACKED_GATES: usize = 10_000;

/// A call worker starts using a pool of its own for a gate once its calls to the gate come on
/// average this close together (4 a second or more): often enough that its own connection never
/// sits idle long enough to be retired (see [`POOL_IDLE_TIMEOUT`]).
const ENTER_GAP_MS: u64 = 250;

/// A worker using its own pool for a gate keeps on while its calls come on average this close
/// together, and its pool's connection was used within [`STAY_MS`].
const LEAVE_GAP_MS: u64 = 1_000;

/// Comfortably inside [`POOL_IDLE_TIMEOUT`]: the worker's own connection is still open.
const STAY_MS: u64 = 3_500;

/// The gap assumed before a first call, and the longest gap counted.
const MAX_GAP_MS: u64 = 10_000;

/// The call facts sent to the gate.
#[derive(Debug, Serialize)]
pub struct GateRequest<'a> {
    pub event: &'static str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<&'a str>,
    /// A test call (`POST /v1/test-call`): the gate may answer it without acting on it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// Caller context pushed for this call (SPEC §12); a check chain reads its placeholders here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// A gate's answer and the HTTP status it came with (`None` when no answer head arrived).
#[derive(Debug)]
pub struct Asked {
    pub decision: GateDecision,
    pub status: Option<StatusCode>,
}

/// Signs gate requests: `t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "UNIX_SECONDS." + body))`.
pub struct Signer {
    key: Hmac<Sha256>,
    header: HeaderName,
}

impl Signer {
    pub fn new(secret: &[u8], header: HeaderName) -> Signer {
        let key = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        Signer { key, header }
    }

    /// The header value for `body` signed at `unix_seconds`.
    pub fn sign(&self, unix_seconds: u64, body: &[u8]) -> String {
        let mut value = format!("t={unix_seconds},v1=");
        let mut mac = self.key.clone();
        mac.update(&value.as_bytes()[2..value.len() - 4]);
        mac.update(b".");
        mac.update(body);
        let mut hex = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex).expect("64 hex digits for 32 bytes");
        value.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
        value
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("header", &self.header).field("secret", &"***").finish()
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector<crate::dns::Resolver>>, Full<Bytes>>;

/// Every gate's connections, in two kinds of pool. A call worker that calls a gate several
/// times a second uses a pool of its own for it (see [`Cadence`]): the gate's connections then
/// live on the thread that uses them. Every other call uses the shared pool, so a quiet gate's
/// few connections stay warm for whichever worker gets its next call, rather than each
/// worker's pool going cold in turn (a new TLS connection to a gate is post-dial delay).
/// Cheap to share behind an `Arc`.
pub struct GateClient {
    local: PerWorker<HttpsClient>,
    shared: HttpsClient,
    default_timeout: Duration,
    max_pending: usize,
    gates: DashMap<Box<str>, GateState, FxBuildHasher>,
    /// Where [`Cadence`] times are counted from.
    epoch: Instant,
    signer: Option<Signer>,
}

/// What the client keeps per gate URL.
struct GateState {
    /// `--gate-max-pending` permits.
    pending: Arc<Semaphore>,
    /// One per call worker.
    cadence: Box<[Cadence]>,
}

/// How often one call worker calls one gate, and whether it uses its own pool for it: an
/// average of the gaps between its calls (each new gap weighs 1/8), with a lower bar to start
/// using its own pool ([`ENTER_GAP_MS`]) than to keep on ([`LEAVE_GAP_MS`]), so that a gate
/// calling rate near the bar does not flip between pools, and each flip into the worker's pool
/// (one new connection) is rare. Times are ms since the client's epoch; 0 is never. Only its
/// worker's thread writes it, so relaxed atomics suffice.
#[derive(Default)]
struct Cadence {
    last_call: AtomicU64,
    average_gap: AtomicU64,
    last_local: AtomicU64,
}

impl Cadence {
    /// Records a call at `now` and says whether it goes through the worker's own pool.
    fn call_is_local(&self, now: u64) -> bool {
        let last = self.last_call.swap(now, Ordering::Relaxed);
        let gap = if last == 0 { MAX_GAP_MS } else { now.saturating_sub(last).min(MAX_GAP_MS) };
        let average = match self.average_gap.load(Ordering::Relaxed) {
            0 => MAX_GAP_MS,
            a => a,
        };
        let average = (average - average / 8 + gap / 8).max(1);
        self.average_gap.store(average, Ordering::Relaxed);
        let last_local = self.last_local.load(Ordering::Relaxed);
        let in_use = last_local != 0 && now.saturating_sub(last_local) < STAY_MS;
        let local = average < if in_use { LEAVE_GAP_MS } else { ENTER_GAP_MS };
        if local {
            self.last_local.store(now, Ordering::Relaxed);
        }
        local
    }
}

impl GateClient {
    pub fn new(
        tls: rustls::ClientConfig,
        default_timeout: Duration,
        max_pending: usize,
        signer: Option<Signer>,
        workers: usize,
    ) -> GateClient {
        // One resolver for every pool: a blackholed DNS server holds a bounded number of threads.
        let resolver = crate::dns::Resolver::new();
        let pool = || {
            let mut http = HttpConnector::new_with_resolver(resolver.clone());
            http.enforce_http(false);
            http.set_nodelay(true);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(256)
                .build(connector)
        };
        GateClient {
            local: PerWorker::new(workers, pool),
            shared: pool(),
            default_timeout,
            max_pending,
            gates: DashMap::default(),
            epoch: Instant::now(),
            signer,
        }
    }

    /// The deadline that applies to `gate`.
    pub fn timeout_for(&self, gate: &Gate) -> Duration {
        gate.timeout_ms().map_or(self.default_timeout, |ms| Duration::from_millis(u64::from(ms)))
    }

    /// Asks `gate` about a call within the gate's own deadline. Never fails: every problem is
    /// a [`GateDecision::Failure`].
    pub async fn check(&self, gate: &Gate, call: &GateRequest<'_>) -> GateDecision {
        self.check_within(gate, call, self.timeout_for(gate)).await
    }

    /// As [`GateClient::check`], with the deadline `limit` (the caller has already cut the
    /// gate's own to what the call has left).
    pub async fn check_within(&self, gate: &Gate, call: &GateRequest<'_>, limit: Duration) -> GateDecision {
        self.ask(gate, call, limit).await.decision
    }

    /// As [`GateClient::check_within`], with the status the gate answered (for the circuit
    /// breaker, which counts a 5xx but not a 4xx).
    ///
    /// Not an `async fn`: the permit is taken and the request built, signed and wrapped in the
    /// pool's boxed exchange (which connects and sends once polled) at once, so the future
    /// borrows nothing and keeps no copy of the request, only that box and a timer (it is part
    /// of every gated call's future).
    pub fn ask(
        &self,
        gate: &Gate,
        call: &GateRequest<'_>,
        limit: Duration,
    ) -> impl Future<Output = Asked> + Send {
        let sent = self.admit(gate).map(|(permit, pool)| {
            let body = Bytes::from(serde_json::to_vec(call).expect("plain strings serialise"));
            (permit, pool.request(self.request(gate, body)))
        });
        async move {
            let Some((_permit, sent)) = sent else {
                return Asked { decision: GateDecision::Failure(Cause::Overload), status: None };
            };
            match tokio::time::timeout(limit, exchange(sent)).await {
                Ok(asked) => asked,
                Err(_) => Asked { decision: GateDecision::Failure(Cause::Timeout), status: None },
            }
        }
    }

    /// Sends any request (a check's call to an external API) through the shared pool within
    /// `limit`: never a redirect followed, an answer over [`MAX_ANSWER_BYTES`] is `malformed`.
    /// The status and body, or the cause of the failure.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), Cause> {
        let exchange = async {
            let response = self.shared.request(request).await.map_err(|_| Cause::Connect)?;
            let status = response.status();
            if body::declared_length(response.headers()).is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
                return Err(Cause::Malformed);
            }
            match Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(_) => Err(Cause::Malformed),
            }
        };
        tokio::time::timeout(limit, exchange).await.unwrap_or(Err(Cause::Timeout))
    }

    /// A `--gate-max-pending` permit for `gate` and the pool to call it through, or `None` when
    /// the gate already has its fill of requests waiting.
    fn admit(&self, gate: &Gate) -> Option<(tokio::sync::OwnedSemaphorePermit, &HttpsClient)> {
        if let Some(state) = self.gates.get(gate.url()) {
            return self.admit_to(&state);
        }
        if self.gates.len() >= MAX_TRACKED_GATES {
            // Forget gates with nothing waiting on them: their cap starts afresh if they are
            // called again. Bounds the map when gate URLs churn.
            self.gates.retain(|_, s| s.pending.available_permits() < self.max_pending);
        }
        let state = self.gates.entry(gate.url().into()).or_insert_with(|| self.new_state());
        self.admit_to(&state)
    }

    fn admit_to(&self, state: &GateState) -> Option<(tokio::sync::OwnedSemaphorePermit, &HttpsClient)> {
        let permit = Arc::clone(&state.pending).try_acquire_owned().ok()?;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let local = state.cadence[workers::index() % state.cadence.len()].call_is_local(now);
        Some((permit, if local { self.local.get() } else { &self.shared }))
    }

    fn new_state(&self) -> GateState {
        GateState {
            pending: Arc::new(Semaphore::new(self.max_pending)),
            cadence: (0..self.local.count()).map(|_| Cadence::default()).collect(),
        }
    }

    fn request(&self, gate: &Gate, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = gate.uri().clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(signer) = &self.signer {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let value = HeaderValue::try_from(signer.sign(now, &body)).expect("ASCII header value");
            headers.insert(signer.header.clone(), value);
        }
        *request.body_mut() = Full::new(body);
        request
    }
}

/// The gate's answer to a request in the pool's boxed exchange.
async fn exchange(sent: ResponseFuture) -> Asked {
    // Only the body is held while it is read: the response is let go within the match.
    let (status, body) = match sent.await {
        Ok(response) => (response.status(), answer_body(response)),
        Err(_) => return Asked { decision: GateDecision::Failure(Cause::Connect), status: None },
    };
    let body = match body {
        Ok(body) => Limited::new(body, MAX_ANSWER_BYTES),
        Err(cause) => return Asked { decision: GateDecision::Failure(cause), status: Some(status) },
    };
    let decision = match body.collect().await {
        Ok(body) => parse_answer(&body.to_bytes()),
        Err(_) => GateDecision::Failure(Cause::Malformed),
    };
    Asked { decision, status: Some(status) }
}

/// The body of an answer worth reading: a 200 declaring no more than [`MAX_ANSWER_BYTES`].
fn answer_body(response: http::Response<hyper::body::Incoming>) -> Result<hyper::body::Incoming, Cause> {
    if response.status() != StatusCode::OK {
        Err(Cause::Status)
    } else if body::declared_length(response.headers()).is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        Err(Cause::Malformed)
    } else {
        Ok(response.into_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_uses_its_own_pool_only_for_a_gate_it_calls_several_times_a_second() {
        let cadence = Cadence::default();
        // A call every 2 s, then every 500 ms: shared, however long it goes on.
        let mut now = 1;
        for _ in 0..50 {
            now += 2_000;
            assert!(!cadence.call_is_local(now));
        }
        for _ in 0..50 {
            now += 500;
            assert!(!cadence.call_is_local(now));
        }
        // Every 10 ms: its own pool once the average gap is under 250 ms, and from then on.
        let first_local = (1..=100).find(|_| {
            now += 10;
            cadence.call_is_local(now)
        });
        assert!(matches!(first_local, Some(5..=30)), "{first_local:?}");
        for _ in 0..100 {
            now += 10;
            assert!(cadence.call_is_local(now));
        }
        // Slowing to every 400 ms stays on it (the connection is in use) ...
        for _ in 0..20 {
            now += 400;
            assert!(cadence.call_is_local(now));
        }
        // ... but after 4 s without a call, back to the shared pool.
        now += 4_000;
        assert!(!cadence.call_is_local(now));
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        let signer = Signer::new(b"whsec_test", HeaderName::from_static("x-callgate-signature"));
        let sig = signer.sign(1715900000, br#"{"event":"call.inbound"}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(br#"1715900000.{"event":"call.inbound"}"#);
        assert_eq!(sig, format!("t=1715900000,v1={}", hex::encode(mac.finalize().into_bytes())));
        assert!(!format!("{signer:?}").contains("whsec_test"));
    }
}
