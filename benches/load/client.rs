//! The load generator: keep-alive HTTP/1.1 connections (hyper's client conn), an open-loop mode
//! on a fixed timetable and a closed-loop mode, both recording latency in an HDR histogram.
//!
//! Open loop: a dispatcher thread releases each request at its scheduled instant (std's sleep,
//! precise to tens of µs, unlike tokio's 1 ms timer wheel) into a queue the connections take
//! from. Latency is measured from the scheduled instant, so time spent waiting for a free
//! connection while the target is slow counts (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// A request that takes longer than this is an error (and its connection is replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An open-loop run stops sending this long after its timetable ends, counting the rest unsent.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Where requests go: an address, and the `Host` header that names it.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Target {
        Target { addr, host: HeaderValue::try_from(addr.to_string()).expect("an address is a valid header") }
    }
}

/// One fixed request (a Twilio webhook), signed, and the exact answer body it must get.
pub struct Call {
    path: &'static str,
    body: Bytes,
    signature: HeaderValue,
    pub expect: Bytes,
}

impl Call {
    /// `body` is a form; it is signed as Twilio signs: base64(HMAC-SHA1(token, url + the
    /// decoded parameters, name then value, sorted)), with url = `public_url` + `path`.
    pub fn new(path: &'static str, body: Bytes, token: &str, public_url: &str, expect: Bytes) -> Call {
        let params = callgate::webhook::twilio::parse_form(&body).expect("the bench's forms are valid");
        let mut pairs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        pairs.sort_unstable();
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
        mac.update(public_url.as_bytes());
        mac.update(path.as_bytes());
        for (name, value) in pairs {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let signature = HeaderValue::try_from(signature).expect("base64 is a valid header");
        Call { path, body, signature, expect }
    }

    fn request(&self, target: &Target) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::from_static(self.path);
        let headers = request.headers_mut();
        headers.insert(HOST, target.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers.insert("x-twilio-signature", self.signature.clone());
        request
    }
}

/// What one run measured. Latencies are in nanoseconds, successful calls only.
pub struct RunResult {
    pub hist: Histogram<u64>,
    pub ok: u64,
    /// Wrong status or body, a broken connection, or over [`REQUEST_TIMEOUT`].
    pub errors: u64,
    /// Still queued when the open-loop drain limit passed.
    pub unsent: u64,
    pub elapsed: Duration,
    /// The first unexpected answer, to say what went wrong.
    pub first_error: Option<String>,
}

impl RunResult {
    fn empty() -> RunResult {
        RunResult {
            hist: new_hist(),
            ok: 0,
            errors: 0,
            unsent: 0,
            elapsed: Duration::ZERO,
            first_error: None,
        }
    }

    fn merge(&mut self, other: RunResult) {
        self.hist.add(&other.hist).expect("same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.elapsed = self.elapsed.max(other.elapsed);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Adds a later run of the same measurement (a slice): counts and time add up.
    pub fn then(&mut self, later: RunResult) {
        let elapsed = self.elapsed + later.elapsed;
        self.merge(later);
        self.elapsed = elapsed;
    }

    pub fn calls_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds")
}

struct Conn {
    target: Target,
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(target: &Target) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Conn { target: target.clone(), send })
    }

    /// Sends `call` and checks the answer; on any failure the connection is replaced.
    async fn call(&mut self, call: &Call) -> Result<(), String> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(call)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        if outcome.is_err() || self.send.is_closed() {
            if let Ok(fresh) = Conn::open(&self.target).await {
                *self = fresh;
            }
        }
        outcome
    }

    async fn exchange(&mut self, call: &Call) -> Result<(), String> {
        self.send.ready().await.map_err(|e| format!("connection: {e}"))?;
        let response =
            self.send.send_request(call.request(&self.target)).await.map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        if status != StatusCode::OK || body != call.expect {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
        }
        Ok(())
    }
}

/// Keep-alive connections to one target, kept across the slices of a measurement.
pub struct Pool(Vec<Conn>);

impl Pool {
    pub async fn open(target: &Target, connections: usize) -> Pool {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(Conn::open(target).await.expect("the target accepts connections"));
        }
        Pool(conns)
    }
}

/// Sends `rate` calls per second for `duration` on a fixed timetable over a new pool of
/// `connections` keep-alive connections; latency is measured from each call's scheduled instant.
pub async fn open_loop(
    target: &Target,
    call: Arc<Call>,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> RunResult {
    open_loop_on(&mut Pool::open(target, connections).await, call, rate, duration).await
}

/// [`open_loop`] on the connections of `pool`.
pub async fn open_loop_on(pool: &mut Pool, call: Arc<Call>, rate: f64, duration: Duration) -> RunResult {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(5);
    let give_up = start + duration + DRAIN_LIMIT;

    let workers: Vec<_> = std::mem::take(&mut pool.0)
        .into_iter()
        .map(|mut conn| {
            let (rx, call) = (Arc::clone(&rx), Arc::clone(&call));
            tokio::spawn(async move {
                let mut result = RunResult::empty();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(scheduled) = next else { break };
                    if Instant::now() > give_up {
                        result.unsent += 1;
                        continue;
                    }
                    let outcome = conn.call(&call).await;
                    let done = Instant::now();
                    record(&mut result, outcome, done - scheduled);
                    result.elapsed = done - start;
                }
                (conn, result)
            })
        })
        .collect();

    let dispatcher = std::thread::spawn(move || {
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    let result = collect(pool, workers).await;
    dispatcher.join().expect("the dispatcher does not panic");
    // The rate achieved over the timetable (not over the drain of a backlog).
    RunResult { elapsed: result.elapsed.max(duration), ..result }
}

/// Sends calls back to back on each of `connections` new connections for `duration`.
pub async fn closed_loop(
    target: &Target,
    call: Arc<Call>,
    duration: Duration,
    connections: usize,
) -> RunResult {
    closed_loop_on(&mut Pool::open(target, connections).await, call, duration).await
}

/// [`closed_loop`] on the connections of `pool`.
pub async fn closed_loop_on(pool: &mut Pool, call: Arc<Call>, duration: Duration) -> RunResult {
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = std::mem::take(&mut pool.0)
        .into_iter()
        .map(|mut conn| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut result = RunResult::empty();
                let mut sent_at = Instant::now();
                while sent_at < end {
                    let outcome = conn.call(&call).await;
                    let done = Instant::now();
                    record(&mut result, outcome, done - sent_at);
                    sent_at = done;
                }
                result.elapsed = sent_at - start;
                (conn, result)
            })
        })
        .collect();
    collect(pool, workers).await
}

/// Waits for the workers, puts their connections back in `pool` and merges their results.
async fn collect(pool: &mut Pool, workers: Vec<tokio::task::JoinHandle<(Conn, RunResult)>>) -> RunResult {
    let mut result = RunResult::empty();
    for worker in workers {
        let (conn, r) = worker.await.expect("a worker does not panic");
        pool.0.push(conn);
        result.merge(r);
    }
    result
}

fn record(result: &mut RunResult, outcome: Result<(), String>, latency: Duration) {
    match outcome {
        Ok(()) => {
            result.ok += 1;
            result.hist.saturating_record(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
        }
        Err(e) => {
            result.errors += 1;
            result.first_error.get_or_insert(e);
        }
    }
}
