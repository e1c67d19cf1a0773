//! Caller context pushed ahead of the call (SPEC §12): `POST /v1/context`, the matching call
//! taking it (gate request, `X-Callgate-Context`, the record), `context_wait_ms` and its wait,
//! expiry, eviction, bad pushes, and no pushed value in any log line. Real callgate, real stub
//! gates and engines on loopback.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const CALLER: &str = "+14155550100";
const NUMBER: &str = "+15550000001";
/// The number's agent has no gate: the engine still gets the context.
const NO_GATE: &str = "+15550000002";
/// The number's agent waits 1500 ms for context.
const WAITING: &str = "+15550000003";

fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

fn ringing_from(to: &str, sid: &str, from: &str) -> String {
    ringing_sid(to, sid).replace("%2B14155550100", &from.replace('+', "%2B"))
}

fn sid(n: usize) -> String {
    format!("CA{n:032}")
}

fn routes(gate: &str) -> String {
    json!({
        "agents": {
            "support-agent": { "gate": { "url": gate } },
            "agent_plain": {},
            "agent_wait": { "gate": { "url": gate }, "context_wait_ms": 1500 }
        },
        "numbers": {
            NUMBER: { "agent_id": "support-agent" },
            NO_GATE: { "agent_id": "agent_plain" },
            WAITING: { "agent_id": "agent_wait" }
        }
    })
    .to_string()
}

struct World {
    gate: Stub,
    engine: Stub,
    cg: Callgate,
}

async fn world(tweak: impl FnOnce(&mut callgate::settings::Settings)) -> World {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn_with(&routes(&gate.url("/gate")), &engine.url(""), tweak).await;
    World { gate, engine, cg }
}

/// Pushes `body` as the seed's curl does; answers the status and JSON body.
async fn push(cg: &Callgate, body: Value) -> (StatusCode, Value) {
    cg.admin("POST", "/v1/context", Some(body)).await
}

/// What the gate was asked for `sid`.
fn gate_saw(gate: &Stub, sid: &str) -> Value {
    gate.seen()
        .iter()
        .map(|s| serde_json::from_slice::<Value>(&s.body).unwrap())
        .find(|v| v["call_id"] == sid)
        .unwrap_or_else(|| panic!("the gate never saw {sid}"))
}

/// The engine's `X-Callgate-Context` for `sid`, decoded.
fn engine_context(engine: &Stub, sid: &str) -> Option<Value> {
    let seen = engine
        .seen()
        .into_iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains(sid))
        .unwrap_or_else(|| panic!("the engine never saw {sid}"));
    let header = seen.headers.get("x-callgate-context")?.to_str().unwrap().to_owned();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    Some(serde_json::from_slice(&json).unwrap())
}

async fn record_of(cg: &Callgate, sid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = cg.admin("GET", &format!("/v1/calls/{sid}"), None).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(Instant::now() < deadline, "no record of {sid}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn call(cg: &Callgate, to: &str, sid: &str) {
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(to, sid)).await;
    assert_eq!(answer.status, StatusCode::OK);
}

fn seed_push() -> Value {
    json!({
        "agentId": "support-agent",
        "phoneNumber": CALLER,
        "customer_name": "Jane",
        "issue": "billing_error",
        "priority": "high"
    })
}

#[tokio::test]
async fn a_push_reaches_the_gate_the_engine_and_the_record_once() {
    let w = world(|_| {}).await;
    let (status, body) = push(
        &w.cg,
        json!({"agent_id": "support-agent", "phone_number": CALLER, "customer_name": "Jane", "tier": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"ok": true, "expires_in_s": 300}));

    call(&w.cg, NUMBER, &sid(1)).await;
    let fields = json!({"customer_name": "Jane", "tier": 3});
    assert_eq!(gate_saw(&w.gate, &sid(1))["context"], fields, "agent_id and phone_number are not context");
    assert_eq!(
        engine_context(&w.engine, &sid(1)),
        Some(json!({"agent_id": "support-agent", "context": fields}))
    );
    let record = record_of(&w.cg, &sid(1)).await;
    assert_eq!(record["context"], "hit");
    assert!(!record.to_string().contains("Jane"), "the record holds no context: {record}");

    // Consumed: the next call from the same caller gets none.
    call(&w.cg, NUMBER, &sid(2)).await;
    assert!(gate_saw(&w.gate, &sid(2)).get("context").is_none());
    assert_eq!(engine_context(&w.engine, &sid(2)), None);
    assert_eq!(record_of(&w.cg, &sid(2)).await["context"], Value::Null);
}

#[tokio::test]
async fn the_seeds_camel_case_push_works_and_a_call_without_a_gate_still_hands_it_to_the_engine() {
    let w = world(|_| {}).await;
    let (status, _) = push(&w.cg, seed_push()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    call(&w.cg, NUMBER, &sid(10)).await;
    let fields = json!({"customer_name": "Jane", "issue": "billing_error", "priority": "high"});
    assert_eq!(gate_saw(&w.gate, &sid(10))["context"], fields);
    assert_eq!(engine_context(&w.engine, &sid(10)).unwrap()["context"], fields);

    push(&w.cg, json!({"agentId": "agent_plain", "phoneNumber": CALLER, "plan": "enterprise"})).await;
    call(&w.cg, NO_GATE, &sid(11)).await;
    assert_eq!(
        engine_context(&w.engine, &sid(11)),
        Some(json!({"agent_id": "agent_plain", "context": {"plan": "enterprise"}}))
    );
    assert_eq!(record_of(&w.cg, &sid(11)).await["decision"], "no_gate");
}

#[tokio::test]
async fn a_second_push_replaces_the_first() {
    let w = world(|_| {}).await;
    push(&w.cg, json!({"agent_id": "support-agent", "phone_number": CALLER, "v": 1, "old": true})).await;
    push(&w.cg, json!({"agent_id": "support-agent", "phone_number": CALLER, "v": 2})).await;
    call(&w.cg, NUMBER, &sid(20)).await;
    assert_eq!(gate_saw(&w.gate, &sid(20))["context"], json!({"v": 2}));
}

#[tokio::test]
async fn a_push_for_another_agent_or_another_caller_does_not_match() {
    let w = world(|_| {}).await;
    push(&w.cg, json!({"agent_id": "agent_other", "phone_number": CALLER, "x": 1})).await;
    push(&w.cg, json!({"agent_id": "support-agent", "phone_number": "+14155550199", "x": 2})).await;
    call(&w.cg, NUMBER, &sid(30)).await;
    assert!(gate_saw(&w.gate, &sid(30)).get("context").is_none());
    assert_eq!(engine_context(&w.engine, &sid(30)), None);
    // The other caller's push is still there for that caller's call.
    let answer = post_form(&w.cg.url("/twilio/voice"), &ringing_from(NUMBER, &sid(31), "+14155550199")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(gate_saw(&w.gate, &sid(31))["context"], json!({"x": 2}));
}

#[tokio::test]
async fn a_push_expires_after_the_ttl() {
    let w = world(|s| s.context_ttl = Duration::from_millis(300)).await;
    let (_, body) = push(&w.cg, seed_push()).await;
    assert_eq!(body["expires_in_s"], 0, "whole seconds, rounded down");
    let pushed = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(pushed.elapsed() > Duration::from_millis(300));
    call(&w.cg, NUMBER, &sid(40)).await;
    assert!(gate_saw(&w.gate, &sid(40)).get("context").is_none(), "expired");
    assert_eq!(record_of(&w.cg, &sid(40)).await["context"], Value::Null);
}

#[tokio::test]
async fn a_waiting_call_is_released_by_the_push_at_once() {
    let w = world(|_| {}).await;
    let url = w.cg.url("/twilio/voice");
    let started = Instant::now();
    let ringing = tokio::spawn(async move {
        let answer = post_form(&url, &ringing_sid(WAITING, &sid(50))).await;
        (answer.status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) =
        push(&w.cg, json!({"agentId": "agent_wait", "phoneNumber": CALLER, "lang": "es"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, took) = ringing.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(took > Duration::from_millis(250) && took < Duration::from_millis(1200), "{took:?}");
    assert_eq!(gate_saw(&w.gate, &sid(50))["context"], json!({"lang": "es"}));
    assert_eq!(engine_context(&w.engine, &sid(50)).unwrap()["context"], json!({"lang": "es"}));
    assert_eq!(record_of(&w.cg, &sid(50)).await["context"], "waited");
}

#[tokio::test]
async fn a_wait_that_ends_empty_goes_on_without_context() {
    let w = world(|_| {}).await;
    let started = Instant::now();
    call(&w.cg, WAITING, &sid(60)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(3000), "{took:?}");
    assert!(gate_saw(&w.gate, &sid(60)).get("context").is_none());
    assert_eq!(engine_context(&w.engine, &sid(60)), None);
    let record = record_of(&w.cg, &sid(60)).await;
    assert_eq!((record["context"].as_str(), record["decision"].as_str()), (Some("miss"), Some("accept")));
}

#[tokio::test]
async fn the_wait_is_bounded_by_the_twilio_deadline() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let routes = json!({
        "agents": { "agent_long": { "context_wait_ms": 5000 } },
        "numbers": { NUMBER: { "agent_id": "agent_long" } }
    });
    let cg = Callgate::spawn_with(&routes.to_string(), &engine.url(""), |s| {
        s.twilio_deadline = Duration::from_millis(800)
    })
    .await;
    let started = Instant::now();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(NUMBER, &sid(70))).await;
    let took = started.elapsed();
    // The engine's timeout is what is left: nearly nothing. Either way Twilio is answered.
    assert!(answer.status == StatusCode::OK || answer.status == StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_millis(2000), "{took:?}");
    assert_eq!(record_of(&cg, &sid(70)).await["context"], "miss");
    drop(gate);
}

#[tokio::test]
async fn the_oldest_push_is_evicted_at_the_cap() {
    let w = world(|s| s.context_max_entries = 2).await;
    for caller in ["+14155550101", "+14155550102", "+14155550103"] {
        let (status, _) =
            push(&w.cg, json!({"agent_id": "support-agent", "phone_number": caller, "who": caller})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for (i, caller) in ["+14155550101", "+14155550102", "+14155550103"].iter().enumerate() {
        let answer = post_form(&w.cg.url("/twilio/voice"), &ringing_from(NUMBER, &sid(80 + i), caller)).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(gate_saw(&w.gate, &sid(80)).get("context").is_none(), "the oldest went");
    assert_eq!(gate_saw(&w.gate, &sid(81))["context"]["who"], "+14155550102");
    assert_eq!(gate_saw(&w.gate, &sid(82))["context"]["who"], "+14155550103");
}

#[tokio::test]
async fn bad_pushes_are_refused_with_a_clear_answer_and_nothing_held() {
    let w = world(|_| {}).await;
    let cases = [
        (json!({"phone_number": CALLER, "x": 1}), "invalid_field"),
        (json!({"agent_id": "support-agent", "x": 1}), "invalid_field"),
        (json!({"agent_id": "support-agent", "phone_number": "4155550100"}), "invalid_field"),
        (json!({"agent_id": "support-agent", "phone_number": 14155550100u64}), "invalid_field"),
        (json!({"agent_id": "has space", "phone_number": CALLER}), "invalid_field"),
        (json!({"agent_id": "a", "agentId": "b", "phone_number": CALLER}), "invalid_field"),
        (json!([1, 2]), "invalid_json"),
        (json!("support-agent"), "invalid_json"),
    ];
    for (body, code) in cases {
        let (status, answer) = push(&w.cg, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }
    let raw = |body: &'static str, auth: Option<&'static str>| {
        let mut request = Request::post(format!("http://{}/v1/context", w.cg.admin))
            .header("content-type", "application/json");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        send(request.body(Full::new(Bytes::from(body))).unwrap())
    };
    let answer = raw("{\"agent_id\": ", Some(ADMIN_AUTH)).await.unwrap();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("invalid_json"));
    let big: &'static str = Box::leak(
        json!({"agent_id": "support-agent", "phone_number": CALLER, "blob": "x".repeat(8 * 1024)})
            .to_string()
            .into_boxed_str(),
    );
    let answer = raw(big, Some(ADMIN_AUTH)).await.unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.text().contains("payload_too_large"));
    let good = r#"{"agent_id": "support-agent", "phone_number": "+14155550100", "x": 1}"#;
    assert_eq!(raw(good, None).await.unwrap().status, StatusCode::UNAUTHORIZED);
    assert_eq!(raw(good, Some("Bearer kid:wrong")).await.unwrap().status, StatusCode::UNAUTHORIZED);
    let (status, _) = w.cg.admin("GET", "/v1/context", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing was held by any of them.
    call(&w.cg, NUMBER, &sid(90)).await;
    assert!(gate_saw(&w.gate, &sid(90)).get("context").is_none());
}

#[tokio::test]
async fn an_agents_context_wait_is_set_through_the_api_saved_and_validated() {
    let w = world(|_| {}).await;
    let (status, body) =
        w.cg.admin("PUT", "/v1/agents/support-agent", Some(json!({"context_wait_ms": 1200}))).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"agent_id": "support-agent", "context_wait_ms": 1200}))
    );
    let table = w.cg.table().await;
    assert_eq!(table["agents"]["support-agent"]["context_wait_ms"], 1200);
    assert_eq!(table["agents"]["support-agent"]["gate"]["url"], w.gate.url("/gate"), "the gate stays");
    let saved: Value = serde_json::from_slice(&std::fs::read(&w.cg.routes).unwrap()).unwrap();
    assert_eq!(saved["agents"]["support-agent"]["context_wait_ms"], 1200);
    let (_, body) = w.cg.admin("GET", "/v1/agents/support-agent", None).await;
    assert_eq!(body["context_wait_ms"], 1200);
    let (_, body) = w.cg.admin("GET", "/v1/agents/nobody", None).await;
    assert_eq!(body, json!({"agent_id": "nobody", "context_wait_ms": 0}));

    for bad in [
        json!({"context_wait_ms": 5001}),
        json!({"context_wait_ms": -1}),
        json!({"context_wait_ms": "1"}),
        json!({"context_wait_ms": 10, "extra": 1}),
        json!({}),
        json!([1]),
    ] {
        let (status, body) = w.cg.admin("PUT", "/v1/agents/support-agent", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(matches!(body["error"]["code"].as_str(), Some("invalid_field" | "invalid_json")), "{bad}");
    }
    let (status, _) = w.cg.admin("PUT", "/v1/agents/a%2Fb", Some(json!({"context_wait_ms": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(w.cg.table().await["agents"]["support-agent"]["context_wait_ms"], 1200, "nothing changed");

    // The wait set through the API is the one calls use.
    let started = Instant::now();
    call(&w.cg, NUMBER, &sid(100)).await;
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(record_of(&w.cg, &sid(100)).await["context"], "miss");
}

#[tokio::test]
async fn counts_and_logs_never_carry_a_pushed_value() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Binary::spawn(&routes(&gate.url("/gate")), &engine.url(""), &["--context-max-entries", "1"]);
    let series = |r: &str| format!("callgate_context_total{{result=\"{r}\"}}");
    for r in ["stored", "hit", "waited", "miss", "expired", "evicted", "refused"] {
        assert_eq!(cg.metric(&series(r)).await, 0.0, "{r} exported at 0");
    }
    assert_eq!(cg.metric("callgate_context_entries").await, 0.0);

    let secret = "Jane-Doe-7f3a9c";
    let (status, _) = cg
        .admin(
            "POST",
            "/v1/context",
            Some(json!({"agentId": "support-agent", "phoneNumber": "+14155550199", "name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = cg
        .admin(
            "POST",
            "/v1/context",
            Some(json!({"agentId": "support-agent", "phoneNumber": CALLER, "name": secret})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) =
        cg.admin("POST", "/v1/context", Some(json!({"agentId": "support-agent", "note": secret}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(cg.metric("callgate_context_entries").await, 1.0);

    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(NUMBER, &sid(110))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(WAITING, &sid(111))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let expected =
        [("stored", 2.0), ("hit", 1.0), ("miss", 1.0), ("evicted", 1.0), ("refused", 1.0), ("waited", 0.0)];
    for (r, n) in expected {
        assert_eq!(cg.metric(&series(r)).await, n, "{r}");
    }
    assert_eq!(cg.metric("callgate_context_entries").await, 0.0);
    // The 1.5 s wait was a wait on others, not callgate's own overhead.
    let overhead = cg.metric("callgate_overhead_seconds_sum").await;
    assert!(overhead < 0.5, "{overhead} s of overhead");

    let lines = cg.logs_with("call decided", 2);
    let contexts: Vec<&str> = lines.iter().map(|l| l["context"].as_str().unwrap_or("")).collect();
    assert_eq!(contexts, ["hit", "miss"]);
    let logs = cg.logs.lock().unwrap().iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    assert!(!logs.contains(secret), "a pushed value reached a log line");
    let seen = gate.seen();
    assert!(String::from_utf8_lossy(&seen[0].body).contains(secret), "the gate did get it");
}

#[test]
fn check_names_a_bad_context_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(
        &path,
        r#"{"agents": {"a": {"context_wait_ms": 6000}, "b": {"context_wait_ms": "soon"}, "c": {"context_wait_ms": 1500}}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["check", "--routes", path.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("agents.a.context_wait_ms: must be 0 to 5000 (got 6000)"), "{text}");
    assert!(text.contains("agents.b.context_wait_ms: invalid type: string"), "{text}");
    assert!(!text.contains("agents.c"), "{text}");
}

#[test]
fn check_warns_when_an_agents_wait_gate_and_engine_reach_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(&path, r#"{"agents": {"c": {"context_wait_ms": 1500}}}"#).unwrap();
    let check = |deadline: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["check", "--routes", path.to_str().unwrap(), "--twilio-deadline", deadline])
            .env_clear()
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = check("10s");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning: agents.c: context_wait_ms 1.5s"), "{text}");
    let (code, text) = check("14s");
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("warning"), "{text}");
}
