//! Resilience (SPEC §13, §3 `mode`): the circuit breaker per gate origin, CallSid dedup with
//! single flight, and shadow gates. Real callgate, real stub gates and engines on loopback.

mod support;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

const N1: &str = "+15550000001";
const N2: &str = "+15550000002";
const N3: &str = "+15550000003";

fn sid(tag: &str, n: usize) -> String {
    // 34 characters, as Twilio's: "CA" and 32 more.
    format!("CA{tag:0>8}{n:024}")
}

fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

/// A ringing call to `to` with CallSid `sid`, and how long its answer took.
async fn call(cg: &Callgate, to: &str, sid: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(to, sid)).await;
    (answer, started.elapsed())
}

/// The decision record of `sid`, once kept.
async fn record(cg: &Callgate, sid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = cg.admin("GET", &format!("/v1/calls/{sid}"), None).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(Instant::now() < deadline, "no record for {sid}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `X-Callgate-Decision` on the engine's last request for `sid` (`None`: never forwarded).
fn forwarded(engine: &Stub, sid: &str) -> Option<String> {
    let seen = engine.seen();
    let last = seen.iter().rev().find(|s| String::from_utf8_lossy(&s.body).contains(sid))?;
    Some(last.headers.get("x-callgate-decision")?.to_str().unwrap().to_owned())
}

/// Whether `answer` is the busy reject.
fn busy(answer: &Answer) -> bool {
    answer.body == GOLDEN_REJECT.trim_ascii_end()
}

fn routes(entries: &[(&str, Value)]) -> String {
    let numbers: serde_json::Map<String, Value> =
        entries.iter().map(|(n, gate)| (n.to_string(), json!({ "gate": gate }))).collect();
    json!({ "numbers": numbers }).to_string()
}

async fn engine() -> Stub {
    Stub::start(Reply::json("{}").header("content-type", "text/xml")).await
}

fn breaker(failures: u32, cooldown: Duration) -> impl FnOnce(&mut callgate::settings::Settings) {
    move |s| {
        s.breaker_failures = failures;
        s.breaker_cooldown = cooldown;
    }
}

// ------------------------------------------------------------------------------ breaker

#[tokio::test]
async fn n_failures_open_the_circuit_and_the_next_calls_are_answered_at_once_with_circuit_open() {
    let gate = Stub::start(Reply::json("{}").status(503)).await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cg =
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(3, Duration::from_secs(60)))
            .await;
    for n in 0..3 {
        let (answer, _) = call(&cg, N1, &sid("open", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(forwarded(&engine, &sid("open", n)).as_deref(), Some("fail_open"));
        assert_eq!(record(&cg, &sid("open", n)).await["cause"], "status");
    }
    assert_eq!(gate.count(), 3);
    for n in 3..8 {
        let (answer, took) = call(&cg, N1, &sid("open", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(forwarded(&engine, &sid("open", n)).as_deref(), Some("fail_open"));
        assert!(took < Duration::from_millis(50), "a call to an open circuit took {took:?}");
        let kept = record(&cg, &sid("open", n)).await;
        assert_eq!((&kept["cause"], &kept["gate_ms"]), (&json!("circuit_open"), &Value::Null));
    }
    assert_eq!(gate.count(), 3, "an open circuit's gate is not asked");
}

#[tokio::test]
async fn a_fail_closed_gate_rejects_while_its_circuit_is_open() {
    let dead = dead_addr().await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": format!("http://{dead}/gate"), "on_failure": "reject" }))]);
    let cg =
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(2, Duration::from_secs(60)))
            .await;
    for n in 0..2 {
        let (answer, _) = call(&cg, N1, &sid("closed", n)).await;
        assert!(busy(&answer));
        assert_eq!(record(&cg, &sid("closed", n)).await["cause"], "connect");
    }
    let (answer, took) = call(&cg, N1, &sid("closed", 2)).await;
    assert!(busy(&answer));
    assert!(took < Duration::from_millis(50), "{took:?}");
    let kept = record(&cg, &sid("closed", 2)).await;
    assert_eq!((&kept["decision"], &kept["cause"]), (&json!("fail_closed"), &json!("circuit_open")));
    assert_eq!(engine.count(), 0, "the engine never hears of a rejected call");
}

/// 0: answer 503; 1: accept after 600 ms; 2: accept at once.
async fn switchable_gate() -> (Stub, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(0));
    let m = Arc::clone(&mode);
    let gate = Stub::start_with(move |_| match m.load(Ordering::SeqCst) {
        0 => Reply::json("{}").status(503),
        1 => Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_millis(600)),
        _ => Reply::json(r#"{"action":"accept"}"#),
    })
    .await;
    (gate, mode)
}

#[tokio::test]
async fn after_the_cooldown_exactly_one_call_probes_and_its_success_closes_the_circuit() {
    let (gate, mode) = switchable_gate().await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cooldown = Duration::from_millis(300);
    let cg = Arc::new(
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(2, cooldown)).await,
    );
    for n in 0..2 {
        call(&cg, N1, &sid("probe", n)).await;
    }
    let opened = Instant::now();
    let (_, took) = call(&cg, N1, &sid("probe", 2)).await;
    assert!(took < Duration::from_millis(50));
    assert_eq!(gate.count(), 2);

    // The gate recovers, slowly: the probe is out for 600 ms, and every other call meanwhile
    // is still decided at once.
    mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(cooldown.saturating_sub(opened.elapsed()) + Duration::from_millis(50)).await;
    let probe = {
        let cg = Arc::clone(&cg);
        tokio::spawn(async move { call(&cg, N1, &sid("probe", 3)).await })
    };
    eventually(Duration::from_secs(5), || async { gate.count() == 3 }).await;
    for n in 4..10 {
        let (answer, took) = call(&cg, N1, &sid("probe", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(forwarded(&engine, &sid("probe", n)).as_deref(), Some("fail_open"));
        assert!(took < Duration::from_millis(50), "{took:?}");
        assert_eq!(record(&cg, &sid("probe", n)).await["cause"], "circuit_open");
    }
    assert_eq!(gate.count(), 3, "exactly one request while half-open");
    probe.await.unwrap();
    assert_eq!(forwarded(&engine, &sid("probe", 3)).as_deref(), Some("accept"));

    // Closed: every call asks the gate again.
    mode.store(2, Ordering::SeqCst);
    for n in 10..13 {
        let (answer, _) = call(&cg, N1, &sid("probe", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(forwarded(&engine, &sid("probe", n)).as_deref(), Some("accept"));
    }
    assert_eq!(gate.count(), 6);
}

#[tokio::test]
async fn a_failed_probe_opens_the_circuit_again() {
    let (gate, _mode) = switchable_gate().await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cooldown = Duration::from_millis(200);
    let cg = Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(1, cooldown)).await;
    call(&cg, N1, &sid("reopen", 0)).await;
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    call(&cg, N1, &sid("reopen", 1)).await;
    assert_eq!(gate.count(), 2, "the probe asked the gate");
    assert_eq!(record(&cg, &sid("reopen", 1)).await["cause"], "status");
    let (_, took) = call(&cg, N1, &sid("reopen", 2)).await;
    assert!(took < Duration::from_millis(50));
    assert_eq!(record(&cg, &sid("reopen", 2)).await["cause"], "circuit_open");
    assert_eq!(gate.count(), 2);
}

#[tokio::test]
async fn gates_on_one_origin_share_a_circuit_and_gates_on_another_do_not() {
    let failing = Stub::start(Reply::json("{}").status(500)).await;
    let other = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = engine().await;
    let table = routes(&[
        (N1, json!({ "url": failing.url("/a?token=S3CRET") })),
        (N2, json!({ "url": failing.url("/b") })),
        (N3, json!({ "url": other.url("/a") })),
    ]);
    let cg =
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(2, Duration::from_secs(60)))
            .await;
    call(&cg, N1, &sid("share", 0)).await;
    call(&cg, N1, &sid("share", 1)).await;
    call(&cg, N2, &sid("share", 2)).await;
    assert_eq!(record(&cg, &sid("share", 2)).await["cause"], "circuit_open", "same origin, other path");
    assert_eq!(failing.count(), 2);
    for n in 3..6 {
        let (answer, _) = call(&cg, N3, &sid("share", n)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(forwarded(&engine, &sid("share", n)).as_deref(), Some("accept"));
    }
    assert_eq!(other.count(), 3);
}

#[tokio::test]
async fn answers_that_are_4xx_or_malformed_do_not_open_the_circuit() {
    let gate = Stub::start_with(|seen| {
        if seen.uri.starts_with("/missing") {
            Reply::json(r#"{"error":"not found"}"#).status(404)
        } else {
            Reply::json("this is not JSON")
        }
    })
    .await;
    let engine = engine().await;
    let table =
        routes(&[(N1, json!({ "url": gate.url("/missing") })), (N2, json!({ "url": gate.url("/garbled") }))]);
    let cg =
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), breaker(2, Duration::from_secs(60)))
            .await;
    for n in 0..5 {
        call(&cg, N1, &sid("fourxx", n)).await;
        assert_eq!(record(&cg, &sid("fourxx", n)).await["cause"], "status");
        call(&cg, N2, &sid("garble", n)).await;
        assert_eq!(record(&cg, &sid("garble", n)).await["cause"], "malformed");
    }
    assert_eq!(gate.count(), 10, "every call asked the gate");
}

/// The real binary, to count transitions exactly and read the log lines.
#[tokio::test]
async fn transitions_are_counted_and_logged_with_the_host_alone() {
    let dead = dead_addr().await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": format!("http://{dead}/secret-path?token=S3CRET") }))]);
    let bin = Binary::spawn(
        &table,
        &format!("http://{}", engine.addr),
        &["--breaker-failures", "2", "--breaker-cooldown", "200ms"],
    );
    assert_eq!(bin.metric("callgate_circuits_open").await, 0.0);
    for to in ["open", "half_open", "closed"] {
        assert_eq!(bin.metric(&format!("callgate_circuit_transitions_total{{to=\"{to}\"}}")).await, 0.0);
    }
    for n in 0..3 {
        post_form(&bin.url("/twilio/voice"), &ringing_sid(N1, &sid("bin", n))).await;
    }
    assert_eq!(bin.metric("callgate_circuit_transitions_total{to=\"open\"}").await, 1.0);
    assert_eq!(bin.metric("callgate_circuits_open").await, 1.0);
    assert_eq!(bin.metric("callgate_gate_failures_total{cause=\"circuit_open\"}").await, 1.0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    post_form(&bin.url("/twilio/voice"), &ringing_sid(N1, &sid("bin", 3))).await;
    assert_eq!(bin.metric("callgate_circuit_transitions_total{to=\"half_open\"}").await, 1.0);
    assert_eq!(bin.metric("callgate_circuit_transitions_total{to=\"open\"}").await, 2.0);
    assert_eq!(bin.metric("callgate_circuits_open").await, 1.0);
    let lines = bin.logs_with("gate circuit open: calls to this gate origin are decided at once (circuit_open) until a probe succeeds", 2);
    for line in &lines {
        assert_eq!(line["host"], "127.0.0.1");
        let text = line.to_string();
        assert!(
            !text.contains("S3CRET")
                && !text.contains("secret-path")
                && !text.contains(&dead.port().to_string())
        );
    }
}

// ------------------------------------------------------------------------------ dedup

fn dedup(window: Duration) -> impl FnOnce(&mut callgate::settings::Settings) {
    move |s| s.dedup_window = window
}

#[tokio::test]
async fn the_same_callsid_twice_gets_one_gate_request_and_the_same_answer() {
    let gate =
        Stub::start(Reply::json(r#"{"action":"accept","agent_id":"agent_vip","metadata":{"k":1}}"#)).await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cg = Callgate::spawn_with(&table, &format!("http://{}", engine.addr), dedup(Duration::from_secs(60)))
        .await;
    let (first, _) = call(&cg, N1, &sid("twice", 0)).await;
    let first_record = record(&cg, &sid("twice", 0)).await;
    let (again, _) = call(&cg, N1, &sid("twice", 0)).await;
    assert_eq!(gate.count(), 1);
    assert_eq!(engine.count(), 2, "an accept is forwarded again");
    assert_eq!((first.status, &first.body), (again.status, &again.body));
    let seen = engine.seen();
    for name in ["x-callgate-decision", "x-callgate-agent-id", "x-callgate-context"] {
        assert!(seen[0].headers.get(name).is_some(), "{name}");
        assert_eq!(seen[0].headers.get(name), seen[1].headers.get(name), "{name}");
    }
    assert_eq!(seen[1].headers.get("x-callgate-decision").unwrap(), "accept");
    // The first record stays.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(record(&cg, &sid("twice", 0)).await, first_record);
    assert_eq!(first_record["dedup"], Value::Null);
}

#[tokio::test]
async fn ten_concurrent_duplicates_make_one_gate_request() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_millis(400))).await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cg = Arc::new(
        Callgate::spawn_with(&table, &format!("http://{}", engine.addr), dedup(Duration::from_secs(60)))
            .await,
    );
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let cg = Arc::clone(&cg);
            tokio::spawn(async move { call(&cg, N1, &sid("ten", 0)).await.0 })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status, StatusCode::OK);
    }
    let seen = engine.seen();
    assert!(seen.iter().all(|s| s.headers.get("x-callgate-decision").unwrap() == "accept"));
    assert_eq!(gate.count(), 1);
    assert_eq!(engine.count(), 10);
}

#[tokio::test]
async fn after_the_window_the_gate_is_asked_again() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let window = Duration::from_millis(300);
    let cg = Callgate::spawn_with(&table, &format!("http://{}", engine.addr), dedup(window)).await;
    call(&cg, N1, &sid("window", 0)).await;
    call(&cg, N1, &sid("window", 0)).await;
    assert_eq!(gate.count(), 1);
    // The window is the behaviour under test: let it pass.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    call(&cg, N1, &sid("window", 0)).await;
    assert_eq!(gate.count(), 2);
    // Another CallSid is its own call; a call without one is never deduplicated.
    call(&cg, N1, &sid("window", 1)).await;
    assert_eq!(gate.count(), 3);
    let no_sid = ringing(N1).replace("CallSid=CA11111111111111111111111111111111&", "");
    assert!(!no_sid.contains("CallSid"));
    for _ in 0..2 {
        post_form(&cg.url("/twilio/voice"), &no_sid).await;
    }
    assert_eq!(gate.count(), 5);
}

#[tokio::test]
async fn a_reject_replayed_is_the_same_twiml() {
    let gate = Stub::start(Reply::json(r#"{"action":"reject","reason":"no credit"}"#)).await;
    let engine = engine().await;
    let table = routes(&[(N1, json!({ "url": gate.url("/gate") }))]);
    let cg = Callgate::spawn_with(&table, &format!("http://{}", engine.addr), dedup(Duration::from_secs(60)))
        .await;
    let metrics = || async { get(&format!("http://{}/metrics", cg.admin)).await.unwrap().text() };
    let replayed = "callgate_dedup_total{result=\"replayed\"}";
    let before = metric_value(&metrics().await, replayed).unwrap();
    let (first, _) = call(&cg, N1, &sid("reject", 0)).await;
    let (again, _) = call(&cg, N1, &sid("reject", 0)).await;
    assert!(busy(&first));
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("content-type"), Some("text/xml"));
    assert_eq!(gate.count(), 1);
    assert_eq!(engine.count(), 0);
    assert!(metric_value(&metrics().await, replayed).unwrap() >= before + 1.0);
    assert_eq!(record(&cg, &sid("reject", 0)).await["decision"], "reject");
}

// ------------------------------------------------------------------------------ shadow

#[tokio::test]
async fn a_rejecting_shadow_gate_forwards_with_shadow_reject_and_counts_it() {
    let gate = Stub::start_with(|seen| {
        if seen.uri.starts_with("/accept") {
            Reply::json(r#"{"action":"accept","agent_id":"agent_vip","dynamic_variables":{"name":"Ada"}}"#)
        } else {
            Reply::json(r#"{"action":"reject","reason":"no credit"}"#)
        }
    })
    .await;
    let engine = engine().await;
    let dead = dead_addr().await;
    let table = routes(&[
        (N1, json!({ "url": gate.url("/reject"), "mode": "shadow" })),
        (N2, json!({ "url": gate.url("/accept"), "mode": "shadow" })),
        (N3, json!({ "url": format!("http://{dead}/"), "mode": "shadow", "on_failure": "reject" })),
    ]);
    let cg = Callgate::spawn(&table, &format!("http://{}", engine.addr)).await;
    let metrics = || async { get(&format!("http://{}/metrics", cg.admin)).await.unwrap().text() };
    let shadow_reject = "callgate_inbound_calls_total{decision=\"shadow_reject\"}";
    let shadow_calls = "callgate_shadow_calls_total";
    let text = metrics().await;
    let (before, calls_before) =
        (metric_value(&text, shadow_reject).unwrap(), metric_value(&text, shadow_calls).unwrap());

    let (answer, _) = call(&cg, N1, &sid("shadow", 0)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!busy(&answer));
    let seen = engine.seen();
    assert_eq!(seen.len(), 1, "the call was forwarded");
    assert_eq!(seen[0].headers.get("x-callgate-decision").unwrap(), "shadow_reject");
    let kept = record(&cg, &sid("shadow", 0)).await;
    assert_eq!((&kept["decision"], &kept["reason"]), (&json!("shadow_reject"), &json!("no credit")));

    // A fail-closed shadow gate that fails is a shadow_reject too.
    call(&cg, N3, &sid("shadow", 2)).await;
    assert_eq!(engine.seen()[1].headers.get("x-callgate-decision").unwrap(), "shadow_reject");

    // An accepting shadow gate's enrichment is recorded, not forwarded.
    call(&cg, N2, &sid("shadow", 1)).await;
    let seen = &engine.seen()[2];
    assert_eq!(seen.headers.get("x-callgate-decision").unwrap(), "accept");
    assert!(seen.headers.get("x-callgate-context").is_none());
    assert!(seen.headers.get("x-callgate-agent-id").is_none());
    assert_eq!(record(&cg, &sid("shadow", 1)).await["override_agent_id"], "agent_vip");

    let text = metrics().await;
    assert_eq!(metric_value(&text, shadow_reject).unwrap(), before + 2.0);
    assert_eq!(metric_value(&text, shadow_calls).unwrap(), calls_before + 3.0);
}

#[tokio::test]
async fn the_admin_api_sets_a_gates_mode_and_refuses_an_unknown_one() {
    let engine = engine().await;
    let cg = Callgate::spawn("{}", &format!("http://{}", engine.addr)).await;
    let path = format!("/v1/integrations/precall/number/{N1}");
    let (status, answer) =
        cg.admin("PUT", &path, Some(json!({ "url": "http://gate.example/x", "mode": "shadow" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["mode"], "shadow");
    assert_eq!(cg.table().await["numbers"][N1]["gate"]["mode"], "shadow");
    let saved: Value = serde_json::from_slice(&std::fs::read(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved["numbers"][N1]["gate"]["mode"], "shadow");

    for bad in [json!("observe"), json!("SHADOW"), json!(true)] {
        let (status, answer) =
            cg.admin("PUT", &path, Some(json!({ "url": "http://gate.example/y", "mode": bad }))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer["error"]["code"], "invalid_field");
    }
    assert_eq!(cg.table().await["numbers"][N1]["gate"]["url"], "http://gate.example/x", "nothing changed");

    let (_, answer) = cg.admin("PUT", &path, Some(json!({ "url": "http://gate.example/x" }))).await;
    assert_eq!(answer["mode"], "enforce");
    assert!(cg.table().await["numbers"][N1]["gate"].get("mode").is_none());
}

// ------------------------------------------------------------------------------ configuration

#[test]
fn callgate_check_refuses_an_unknown_mode_and_accepts_the_two_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let check = |mode: &str| {
        let gate = format!(
            r#"{{"numbers": {{"{N1}": {{"gate": {{"url": "https://g.example/", "mode": "{mode}"}}}}}}}}"#
        );
        std::fs::write(&path, gate).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["check", "--routes", path.to_str().unwrap()])
            .env_clear()
            .output()
            .unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for mode in ["enforce", "shadow"] {
        assert_eq!(check(mode).0, 0, "{mode}");
    }
    let (code, out) = check("dry-run");
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.trim_end().ends_with(&format!("numbers.\"{N1}\".gate.mode: must be \"enforce\" or \"shadow\"")),
        "{out}"
    );
}

#[test]
fn bad_breaker_and_dedup_flags_stop_start_up_with_one_line() {
    for args in [
        &["--dedup-window", "soon"][..],
        &["--breaker-cooldown", "0"],
        &["--breaker-failures=-1"],
        &["--breaker-failures", "many"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["--upstream", "http://127.0.0.1:9", "--routes", "/nonexistent/routes.json"])
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        let flag = args[0].split('=').next().unwrap();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
