//! Pushed caller context and CallSid dedup across replicas of the shared store (SPEC §12, §13,
//! §15), and calls while Redis is killed and restarted under load, against a real
//! `redis-server` of each test's own and up to three real `callgate` binaries.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::redis::*;
use support::{eventually, post_form, Binary, Reply, Stub};

const CALLER: &str = "+14155550100";
/// The number's agent takes context at once; the waiting number's agent waits up to 3 s.
const CONTEXT_NUMBER: &str = "+447700900200";
const WAITING_NUMBER: &str = "+447700900201";
/// Gated by the number's own gate, no agent: for load.
const LOAD_NUMBER: &str = "+447700900202";

/// A table with an agent that takes context and one that waits for it, both gated by `gate`,
/// imported into `redis` before any replica starts.
fn import_context_table(redis: &RedisServer, gate: &Stub) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let table = json!({
        "agents": {
            "agent_now": { "gate": gate_body(gate) },
            "agent_wait": { "gate": gate_body(gate), "context_wait_ms": 3000 }
        },
        "numbers": {
            CONTEXT_NUMBER: { "agent_id": "agent_now" },
            WAITING_NUMBER: { "agent_id": "agent_wait" },
            LOAD_NUMBER: { "gate": gate_body(gate) }
        }
    });
    std::fs::write(&file, table.to_string()).unwrap();
    assert_eq!(import(&file, redis).0, 0);
}

/// What `gate` was asked for `sid`.
fn gate_saw(gate: &Stub, sid: &str) -> Value {
    gate.seen()
        .iter()
        .map(|s| serde_json::from_slice::<Value>(&s.body).unwrap())
        .find(|v| v["call_id"] == sid)
        .unwrap_or_else(|| panic!("the gate never saw {sid}"))
}

async fn record_of(replica: &Binary, sid: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = replica.admin("GET", &format!("/v1/calls/{sid}"), None).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "no record of {sid}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn push_context(replica: &Binary, agent_id: &str, fields: Value) -> StatusCode {
    let mut body = json!({ "agent_id": agent_id, "phone_number": CALLER });
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    replica.admin("POST", "/v1/context", Some(body)).await.0
}

#[tokio::test]
async fn context_pushed_to_one_replica_is_taken_once_by_a_call_on_another() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"accept"}"#)).await);
    import_context_table(&redis, &gate);
    let replicas: Vec<Binary> = (0..3).map(|_| replica(&redis, "{}", &engine)).collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    for r in &replicas {
        eventually(FOLLOW, || async { has_number(&table(r).await, CONTEXT_NUMBER) }).await;
    }

    assert_eq!(push_context(a, "agent_now", json!({"customer_name": "Jane"})).await, StatusCode::ACCEPTED);
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "3", "the table, its version and the context");
    let answer = post_form(
        &b.url("/twilio/voice"),
        &ringing_sid(CONTEXT_NUMBER, "CA0000000000000000000000000000000b"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        gate_saw(&gate, "CA0000000000000000000000000000000b")["context"],
        json!({"customer_name": "Jane"})
    );
    assert_eq!(record_of(b, "CA0000000000000000000000000000000b").await["context"], "hit");

    // Consumed: a call on the third replica (or the first) finds nothing.
    for (r, sid) in [(c, "CA0000000000000000000000000000000c"), (a, "CA0000000000000000000000000000000a")] {
        assert_eq!(
            post_form(&r.url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, sid)).await.status,
            StatusCode::OK
        );
        assert!(gate_saw(&gate, sid).get("context").is_none(), "taken once");
    }
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "2");
    assert_eq!(b.metric(r#"callgate_store_errors_total{op="read"}"#).await, 0.0);
    for r in &replicas {
        let logs = format!("{:?}", r.logs.lock().unwrap());
        assert!(!logs.contains("Jane"), "a pushed value in a log line");
    }
}

#[tokio::test]
async fn a_call_waiting_on_one_replica_is_released_by_a_push_to_another() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"accept"}"#)).await);
    import_context_table(&redis, &gate);
    // Dedup on: the call's claim on its CallSid, made just before it looks for context, is the
    // sign that it has reached its wait.
    let replicas: Vec<Binary> = (0..3).map(|_| dedup_replica(&redis, "{}", &engine)).collect();
    for r in &replicas {
        eventually(FOLLOW, || async { has_number(&table(r).await, WAITING_NUMBER) }).await;
    }
    let url = replicas[1].url("/twilio/voice");
    let sid = "CA000000000000000000000000000000w1";
    let ringing = tokio::spawn(async move {
        let answer = post_form(&url, &ringing_sid(WAITING_NUMBER, sid)).await;
        (answer.status, std::time::Instant::now())
    });
    eventually(Duration::from_secs(5), || async {
        redis.cli(&["GET", &format!("callgate:call:{sid}")]).starts_with("pending:")
    })
    .await;
    let pushed = std::time::Instant::now();
    assert_eq!(push_context(&replicas[2], "agent_wait", json!({"lang": "es"})).await, StatusCode::ACCEPTED);
    let (status, answered) = ringing.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let after_push = answered.duration_since(pushed);
    assert!(
        after_push < Duration::from_millis(500),
        "released {after_push:?} after the push, not at the wait's end"
    );
    assert_eq!(gate_saw(&gate, sid)["context"], json!({"lang": "es"}));
    assert_eq!(record_of(&replicas[1], sid).await["context"], "waited");
    assert!(
        redis.cli(&["KEYS", "callgate:context:*"]).trim().is_empty(),
        "handed over, not left in the store"
    );
}

async fn dedup_metric(replica: &Binary, result: &str) -> f64 {
    replica.metric(&format!(r#"callgate_dedup_total{{result="{result}"}}"#)).await
}

#[tokio::test]
async fn the_same_callsid_on_two_replicas_asks_the_gate_once() {
    let Some(redis) = RedisServer::start() else { return };
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#).delay(Duration::from_millis(600))).await;
    let routes = json!({ "numbers": { "+447700900123": { "gate": gate_body(&gate) } } }).to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.json"), &routes).unwrap();
    assert_eq!(import(&dir.path().join("routes.json"), &redis).0, 0);
    let replicas: Vec<Binary> = (0..3).map(|_| dedup_replica(&redis, "{}", &engine)).collect();
    for r in &replicas {
        eventually(FOLLOW, || async { has_number(&table(r).await, "+447700900123") }).await;
    }
    let sid = "CA0000000000000000000000000000dd01";
    let body = ringing_sid("+447700900123", sid);

    // The first replica claims the CallSid while its gate thinks; the second waits for it.
    let first = tokio::spawn(post_form_owned(replicas[0].url("/twilio/voice"), body.clone()));
    eventually(Duration::from_secs(5), || async {
        redis.cli(&["GET", &format!("callgate:call:{sid}")]).starts_with("pending:")
    })
    .await;
    let second = tokio::spawn(post_form_owned(replicas[1].url("/twilio/voice"), body.clone()));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((second.status, &second.body), (first.status, &first.body), "the same answer");
    assert_eq!(&first.body[..], support::GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(gate.count(), 1, "the gate asked once");
    assert_eq!(dedup_metric(&replicas[1], "joined").await, 1.0);

    // Later, on the third: the stored decision, replayed.
    let stored = redis.cli(&["GET", &format!("callgate:call:{sid}")]);
    assert!(stored.starts_with('{'), "the decision is stored: {stored}");
    let third = post_form(&replicas[2].url("/twilio/voice"), &body).await;
    assert_eq!((third.status, &third.body), (first.status, &first.body));
    assert_eq!(gate.count(), 1);
    assert_eq!(dedup_metric(&replicas[2], "replayed").await, 1.0);
    assert_eq!(replicas[2].metric(r#"callgate_inbound_calls_total{decision="reject"}"#).await, 0.0);

    // Sent to all three at once: still one gate request.
    let sid = "CA0000000000000000000000000000dd02";
    let body = ringing_sid("+447700900123", sid);
    let all: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(post_form_owned(r.url("/twilio/voice"), body.clone())))
        .collect();
    for answer in all {
        assert_eq!(&answer.await.unwrap().body[..], support::GOLDEN_REJECT.trim_ascii_end());
    }
    assert_eq!(gate.count(), 2, "one more gate request for the second CallSid");
    let logs = format!("{:?}", replicas.iter().map(|r| r.logs.lock().unwrap().clone()).collect::<Vec<_>>());
    assert!(!logs.contains("store operation"), "no store operation failed: {logs}");
}

#[tokio::test]
async fn a_replica_that_dies_holding_a_claim_leaves_the_duplicate_to_decide() {
    let Some(redis) = RedisServer::start() else { return };
    let engine = Stub::start(Reply::json("<Response/>")).await;
    // The first gate request never comes back in time; the ones after answer at once.
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = {
        let asked = Arc::clone(&asked);
        Stub::start_with(move |_| {
            let reply = Reply::json(r#"{"action":"reject"}"#);
            match asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => reply.delay(Duration::from_secs(30)),
                _ => reply,
            }
        })
        .await
    };
    let routes = json!({ "numbers": { "+447700900123": { "gate": gate_body(&gate) } } }).to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.json"), &routes).unwrap();
    assert_eq!(import(&dir.path().join("routes.json"), &redis).0, 0);
    let mut a = dedup_replica(&redis, "{}", &engine);
    let b = dedup_replica(&redis, "{}", &engine);
    eventually(FOLLOW, || async { has_number(&table(&b).await, "+447700900123") }).await;
    eventually(FOLLOW, || async { has_number(&table(&a).await, "+447700900123") }).await;
    let sid = "CA0000000000000000000000000000dd03";
    let body = ringing_sid("+447700900123", sid);
    // Broken off when A dies: its answer never comes.
    let url = a.url("/twilio/voice");
    let stuck = body.clone();
    let _stuck = tokio::spawn(async move { support::send(form(&url, &stuck)).await.is_ok() });
    eventually(Duration::from_secs(5), || async { gate.count() == 1 }).await;
    let waiting = tokio::spawn(post_form_owned(b.url("/twilio/voice"), body.clone()));
    // B found the claim held (its claim script read the claim's time left): it waits.
    eventually(Duration::from_secs(5), || async { command_calls(&redis, "pttl") >= 1 }).await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    let killed = std::time::Instant::now();
    let answer = waiting.await.unwrap();
    assert_eq!(&answer.body[..], support::GOLDEN_REJECT.trim_ascii_end(), "decided by its own gate request");
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "within the claim's hold, not the deadline: {:?}",
        killed.elapsed()
    );
    assert_eq!(gate.count(), 2);
    assert_eq!(dedup_metric(&b, "joined").await, 0.0);
}

fn form(url: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap()
}

async fn post_form_owned(url: String, body: String) -> support::Answer {
    post_form(&url, &body).await
}

#[tokio::test]
async fn redis_killed_mid_load_calls_go_on_and_after_restart_writes_work_and_replicas_converge() {
    let Some(mut redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"accept"}"#)).await);
    import_context_table(&redis, &gate);
    let replicas: Arc<Vec<Binary>> = Arc::new((0..3).map(|_| dedup_replica(&redis, "{}", &engine)).collect());
    for r in replicas.iter() {
        eventually(FOLLOW, || async { has_number(&table(r).await, LOAD_NUMBER) }).await;
    }

    // Load: one caller per replica, each call with a CallSid of its own, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|i| {
            let (replicas, stop, answered) =
                (Arc::clone(&replicas), Arc::clone(&stop), Arc::clone(&answered));
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let sid = format!("CA{i:02}{n:030}");
                    let started = std::time::Instant::now();
                    let answer =
                        post_form(&replicas[i].url("/twilio/voice"), &ringing_sid(LOAD_NUMBER, &sid)).await;
                    assert_eq!(answer.status, StatusCode::OK, "call {sid} on replica {i}");
                    slowest = slowest.max(started.elapsed());
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                slowest
            })
        })
        .collect();
    let count = || answered.load(std::sync::atomic::Ordering::Relaxed);
    eventually(Duration::from_secs(5), || async { count() >= 30 }).await;

    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    redis.kill();
    let at_kill = count();
    for r in replicas.iter() {
        eventually(Duration::from_secs(5), || async { r.metric("callgate_store_up").await == 0.0 }).await;
    }
    eventually(Duration::from_secs(5), || async { count() >= at_kill + 60 }).await;
    for r in replicas.iter() {
        let (status, body) = put_gate(r, "+447700900300", &gate).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
        );
    }
    // Context pushed meanwhile is held by the replica that took it, for its own calls.
    assert_eq!(push_context(&replicas[0], "agent_now", json!({"tier": "gold"})).await, StatusCode::ACCEPTED);
    let sid = "CA0000000000000000000000000000ff01";
    assert_eq!(
        post_form(&replicas[0].url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, sid)).await.status,
        StatusCode::OK
    );
    assert_eq!(gate_saw(&gate, sid)["context"], json!({"tier": "gold"}));
    assert!(replicas[0].metric(r#"callgate_store_errors_total{op="read"}"#).await >= 1.0);

    redis.restart();
    for r in replicas.iter() {
        eventually(Duration::from_secs(5), || async { r.metric("callgate_store_up").await == 1.0 }).await;
    }
    let at_restart = count();
    eventually(Duration::from_secs(5), || async { count() >= at_restart + 30 }).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let slowest = task.await.expect("every call answered 200");
        assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    }

    assert_eq!(put_gate(&replicas[1], "+447700900300", &gate).await.0, StatusCode::OK);
    for r in replicas.iter() {
        eventually(FOLLOW, || asks(r, &gate, "+447700900300")).await;
    }
    let first = table(&replicas[0]).await;
    for r in replicas.iter() {
        assert_eq!(table(r).await, first, "every replica on the one table");
    }
    assert!(has_number(&first, LOAD_NUMBER), "the table from before the outage is kept");
}

#[tokio::test]
async fn a_replica_started_after_a_push_finds_it_and_calls_with_no_context_skip_the_store() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"accept"}"#)).await);
    import_context_table(&redis, &gate);
    let a = replica(&redis, "{}", &engine);
    assert_eq!(push_context(&a, "agent_now", json!({"plan": "pro"})).await, StatusCode::ACCEPTED);

    // B learns of the push made before it started from the store itself.
    let b = replica(&redis, "{}", &engine);
    let sid = "CA0000000000000000000000000000ee01";
    assert_eq!(
        post_form(&b.url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, sid)).await.status,
        StatusCode::OK
    );
    assert_eq!(gate_saw(&gate, sid)["context"], json!({"plan": "pro"}));

    // Once B knows every context pushed, a call with none costs no store operation.
    let mut n = 0;
    eventually(Duration::from_secs(5), || {
        n += 1;
        let (b, redis) = (&b, &redis);
        let sid = format!("CA{n:032}");
        async move {
            let before = command_calls(redis, "getdel");
            post_form(&b.url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, &sid)).await;
            command_calls(redis, "getdel") == before
        }
    })
    .await;
    // And a push through A is still found by B, as soon as its announcement reaches B (a call
    // in between goes without it, as README says: this agent has no context_wait_ms).
    assert_eq!(push_context(&a, "agent_now", json!({"plan": "max"})).await, StatusCode::ACCEPTED);
    let mut n = 0;
    eventually(Duration::from_secs(5), || {
        n += 1;
        let (b, gate) = (&b, &gate);
        let sid = format!("CA{:032}", 1000 + n);
        async move {
            let status = post_form(&b.url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, &sid)).await.status;
            assert_eq!(status, StatusCode::OK);
            gate_saw(gate, &sid)["context"] == json!({"plan": "max"})
        }
    })
    .await;
}
