//! Chaos: gates and engines that die, stall, flap and come back, while calls keep coming.
//! Every call must still get an answer in bounded time, and callgate must recover by itself.
//! Real callgate, real sockets; each test runs in a second or two.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const N1: &str = "+15550000001";

/// A server that can be killed (its listener and every open connection closed at once, as
/// when a process dies) and started again on the same address.
struct Killable {
    addr: SocketAddr,
    body: &'static str,
    status: StatusCode,
    requests: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Killable {
    async fn start(status: StatusCode, body: &'static str) -> Killable {
        let mut server =
            Killable { addr: ([127, 0, 0, 1], 0).into(), body, status, requests: Arc::default(), task: None };
        server.up().await;
        server
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("the address is free again");
        self.addr = listener.local_addr().unwrap();
        let (body, status, requests) = (self.body, self.status, Arc::clone(&self.requests));
        self.task = Some(tokio::spawn(async move {
            // Dropped with the accept loop, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let requests = Arc::clone(&requests);
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let requests = Arc::clone(&requests);
                        async move {
                            let _ = request.into_body().collect().await;
                            requests.fetch_add(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn sid(tag: &str, n: usize) -> String {
    format!("CA{tag:0>8}{n:024}")
}

fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

/// The `X-Callgate-Decision` the engine got for each call, by CallSid.
fn decisions(engine: &Stub) -> Vec<(String, String)> {
    engine
        .seen()
        .iter()
        .map(|s| {
            let body = String::from_utf8_lossy(&s.body);
            let sid = form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "CallSid")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let decision = s.headers.get("x-callgate-decision").map_or("", |v| v.to_str().unwrap());
            (sid, decision.to_owned())
        })
        .collect()
}

fn decision_of(engine: &Stub, sid: &str) -> String {
    decisions(engine).into_iter().rev().find(|(s, _)| s == sid).map(|(_, d)| d).unwrap_or_default()
}

async fn call(cg: &Callgate, sid: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(N1, sid)).await;
    (answer, started.elapsed())
}

async fn cause(cg: &Callgate, sid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = cg.admin("GET", &format!("/v1/calls/{sid}"), None).await;
        if status == StatusCode::OK {
            return body["cause"].clone();
        }
        assert!(Instant::now() < deadline, "no record for {sid}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn gate_routes(url: &str, timeout_ms: u32) -> String {
    json!({ "numbers": { N1: { "gate": { "url": url, "timeout_ms": timeout_ms } } } }).to_string()
}

fn resilient(failures: u32, cooldown: Duration) -> impl FnOnce(&mut callgate::settings::Settings) {
    move |s| {
        s.breaker_failures = failures;
        s.breaker_cooldown = cooldown;
        s.dedup_window = Duration::from_secs(60);
    }
}

#[tokio::test]
async fn a_gate_killed_mid_run_costs_callers_little_and_is_used_again_once_back() {
    let mut gate = Killable::start(StatusCode::OK, r#"{"action":"accept"}"#).await;
    let engine = Stub::start(Reply::json("{}")).await;
    let cooldown = Duration::from_millis(300);
    let cg = Callgate::spawn_with(
        &gate_routes(&gate.url("/gate"), 1000),
        &format!("http://{}", engine.addr),
        resilient(3, cooldown),
    )
    .await;
    for n in 0..5 {
        let (answer, _) = call(&cg, &sid("killed", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(decision_of(&engine, &sid("killed", n)), "accept");
    }
    gate.kill().await;
    for n in 5..15 {
        let (answer, took) = call(&cg, &sid("killed", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(decision_of(&engine, &sid("killed", n)), "fail_open");
        assert!(took < Duration::from_millis(900), "a dead gate is refused, not waited on: {took:?}");
    }
    assert_eq!(cause(&cg, &sid("killed", 14)).await, "circuit_open");
    let asked = gate.requests();
    gate.up().await;
    // Once the cooldown has passed, one call probes, and the circuit closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 15;
    loop {
        call(&cg, &sid("killed", n)).await;
        if decision_of(&engine, &sid("killed", n)) == "accept" {
            break;
        }
        assert!(Instant::now() < deadline, "the gate was never used again");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gate.requests(), asked + 1, "one probe brought it back");
    for m in n + 1..n + 4 {
        call(&cg, &sid("killed", m)).await;
        assert_eq!(decision_of(&engine, &sid("killed", m)), "accept");
    }
}

#[tokio::test]
async fn a_stalled_gate_costs_only_the_first_callers_their_timeout() {
    let silent = Silent::start().await;
    let engine = Stub::start(Reply::json("{}")).await;
    let cg = Callgate::spawn_with(
        &gate_routes(&format!("http://{}/gate", silent.addr), 600),
        &format!("http://{}", engine.addr),
        resilient(3, Duration::from_secs(60)),
    )
    .await;
    let started = Instant::now();
    for n in 0..3 {
        let (_, took) = call(&cg, &sid("stall", n)).await;
        assert!(took >= Duration::from_millis(590), "{took:?}");
        assert_eq!(cause(&cg, &sid("stall", n)).await, "timeout");
    }
    for n in 3..20 {
        let (answer, took) = call(&cg, &sid("stall", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        // Far inside the gate's 600 ms (loose: other chaos runs beside it).
        assert!(took < Duration::from_millis(200), "{took:?}");
        assert_eq!(decision_of(&engine, &sid("stall", n)), "fail_open");
    }
    assert_eq!(cause(&cg, &sid("stall", 19)).await, "circuit_open");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(silent.connections() <= 3, "the stalled gate was not asked again");
}

#[tokio::test]
async fn a_flapping_gate_never_leaves_a_caller_unanswered_and_is_used_whenever_it_is_up() {
    // Up for 150 ms, then answering 503 for 150 ms, and so on.
    let epoch = Instant::now();
    let gate = Stub::start_with(move |_| {
        if (epoch.elapsed().as_millis() / 150) % 2 == 0 {
            Reply::json(r#"{"action":"accept"}"#)
        } else {
            Reply::json("{}").status(503)
        }
    })
    .await;
    let engine = Stub::start(Reply::json("{}")).await;
    let cg = Callgate::spawn_with(
        &gate_routes(&gate.url("/gate"), 500),
        &format!("http://{}", engine.addr),
        resilient(2, Duration::from_millis(100)),
    )
    .await;
    let mut n = 0;
    while epoch.elapsed() < Duration::from_millis(1500) {
        let (answer, took) = call(&cg, &sid("flap", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(took < Duration::from_millis(400), "{took:?}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = decisions(&engine);
    assert_eq!(seen.len(), n, "every call was forwarded");
    assert!(seen.iter().all(|(_, d)| d == "accept" || d == "fail_open"), "{seen:?}");
    // Accepts come after the circuit first opened: it closed again when the gate came back.
    let mut first_open = None;
    for (i, (s, d)) in seen.iter().enumerate() {
        if d == "fail_open" && cause(&cg, s).await == "circuit_open" {
            first_open = Some(i);
            break;
        }
    }
    let first_open = first_open.expect("the circuit opened at least once");
    assert!(seen[first_open..].iter().any(|(_, d)| d == "accept"), "{seen:?}");
    assert!(gate.count() < n, "open circuits spared the gate some requests");
}

#[tokio::test]
async fn an_engine_killed_and_restarted_is_answered_502_then_served_again() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let mut engine = Killable::start(StatusCode::OK, "<Response/>").await;
    let cg = Callgate::spawn_with(
        &gate_routes(&gate.url("/gate"), 1000),
        &format!("http://{}", engine.addr),
        resilient(5, Duration::from_secs(30)),
    )
    .await;
    let (answer, _) = call(&cg, &sid("engine", 0)).await;
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "<Response/>"));
    engine.kill().await;
    for n in 1..4 {
        let (answer, took) = call(&cg, &sid("engine", n)).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    engine.up().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 4;
    loop {
        let (answer, _) = call(&cg, &sid("engine", n)).await;
        if answer.status == StatusCode::OK {
            assert_eq!(answer.text(), "<Response/>");
            break;
        }
        assert!(Instant::now() < deadline, "the engine was never used again");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gate.count(), n + 1, "every call was still decided by the gate");
}

#[tokio::test]
async fn five_hundred_concurrent_calls_to_a_dead_gate_are_all_answered() {
    let dead = dead_addr().await;
    let engine = Stub::start(Reply::json("{}")).await;
    let cg = Arc::new(
        Callgate::spawn_with(
            &gate_routes(&format!("http://{dead}/gate"), 2000),
            &format!("http://{}", engine.addr),
            resilient(5, Duration::from_secs(30)),
        )
        .await,
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..500)
        .map(|n| {
            let cg = Arc::clone(&cg);
            tokio::spawn(async move { call(&cg, &sid("five", n)).await.0.status })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let seen = decisions(&engine);
    assert_eq!(seen.len(), 500);
    assert!(seen.iter().all(|(_, d)| d == "fail_open"));
    // The circuit is open now: the next call is not even tried (the bound is loose: the
    // burst's connections are still being torn down around it).
    let (_, took) = call(&cg, &sid("five", 500)).await;
    assert!(took < Duration::from_millis(250), "{took:?}");
    assert_eq!(cause(&cg, &sid("five", 500)).await, "circuit_open");
}
