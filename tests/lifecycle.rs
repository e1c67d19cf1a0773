//! Probes, graceful drain and logs on the real binary (SPEC §7, §9).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const TO: &str = "+447700900123";

async fn status(url: &str) -> u16 {
    get(url).await.map(|a| a.status.as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn readiness_waits_for_the_table_and_is_withdrawn_on_sigterm() {
    let engine = Stub::start(Reply::json("<Response/>").delay(Duration::from_millis(800))).await;
    // A table big enough to take a moment to load in a debug build.
    let routes = json!({"numbers": many_numbers(300_000, "agent_a")}).to_string();
    let mut cg = Binary::start(&routes, &engine.url(""), &["--shutdown-grace", "5s"]);
    assert_eq!(status(&cg.admin_url("/readyz")).await, 503, "not ready while the table loads");
    assert_eq!(status(&cg.admin_url("/healthz")).await, 200, "alive all the same");
    // The admin API waits for the table rather than describe an empty one.
    let (_, table) = cg.admin("GET", "/v1/routes", None).await;
    assert_eq!(table["numbers"].as_object().unwrap().len(), 300_000);
    cg.wait_for_log("callgate serving");
    assert_eq!(status(&cg.admin_url("/readyz")).await, 200);

    // A call in flight when SIGTERM arrives.
    let url = cg.url("/twilio/status");
    let in_flight = tokio::spawn(async move { get(&url).await.map(|a| a.status.as_u16()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cg.signal("TERM");
    eventually(Duration::from_secs(2), || async { status(&cg.admin_url("/readyz")).await == 503 }).await;
    assert_eq!(status(&cg.admin_url("/healthz")).await, 200, "the admin listener stays up to say so");
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the call in flight completes");
    // The listening socket closes once every call worker's accept loop has seen the signal.
    let addr = cg.addr;
    eventually(Duration::from_secs(2), || async move { tokio::net::TcpStream::connect(addr).await.is_err() })
        .await;
    let exit = cg.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(0));
    cg.wait_for_log("drained; every call in flight finished");
}

#[tokio::test]
async fn calls_in_flight_over_four_workers_finish_before_the_exit() {
    let engine = Stub::start(Reply::json("<Response/>").delay(Duration::from_millis(600))).await;
    let mut cg = Binary::spawn("{}", &engine.url(""), &["--worker-threads", "4", "--shutdown-grace", "5s"]);
    // Each on a connection of its own, for whichever worker accepts it.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let url = cg.url("/twilio/status");
            tokio::spawn(async move { get(&url).await.map(|a| a.status.as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cg.signal("TERM");
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200, "a call in flight completes");
    }
    assert_eq!(cg.wait_exit(Duration::from_secs(5)).code(), Some(0));
    cg.wait_for_log("drained; every call in flight finished");
}

#[tokio::test]
async fn sigterm_during_the_first_load_is_a_clean_shutdown() {
    let engine = Stub::start(Reply::json("")).await;
    let routes = json!({"numbers": many_numbers(300_000, "agent_a")}).to_string();
    let mut cg = Binary::start(&routes, &engine.url(""), &[]);
    cg.signal("TERM");
    assert_eq!(cg.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test]
async fn a_slow_call_past_the_grace_is_cut_off_and_the_process_still_exits_0() {
    let engine = Stub::start(Reply::json("").delay(Duration::from_secs(10))).await;
    let mut cg =
        Binary::spawn("{}", &engine.url(""), &["--shutdown-grace", "500ms", "--upstream-timeout", "20s"]);
    let url = cg.url("/twilio/status");
    let in_flight = tokio::spawn(async move { get(&url).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    cg.signal("TERM");
    assert_eq!(cg.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3), "the grace bounds the drain");
    let cut = cg.wait_for_log("shutdown grace over; cutting off what is still in flight");
    assert_eq!(cut["connections"], 1);
    assert!(!in_flight.await.unwrap(), "the cut-off call sees its connection end");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let engine = Stub::start(Reply::json("").delay(Duration::from_secs(10))).await;
    let mut cg =
        Binary::spawn("{}", &engine.url(""), &["--shutdown-grace", "30s", "--upstream-timeout", "20s"]);
    let url = cg.url("/twilio/status");
    let _in_flight = tokio::spawn(async move { get(&url).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cg.signal("TERM");
    cg.wait_for_log("shutting down: no longer accepting calls");
    let started = Instant::now();
    cg.signal("INT");
    let exit = cg.wait_exit(Duration::from_secs(3));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_ne!(exit.code(), Some(0), "an interrupted drain is not a clean exit");
}

#[tokio::test]
async fn a_media_stream_in_flight_may_finish_within_the_grace() {
    let engine_addr = ws_echo("").await;
    let mut cg = Binary::spawn("{}", &format!("http://{engine_addr}"), &["--shutdown-grace", "10s"]);
    let stream = tokio::net::TcpStream::connect(cg.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/media", cg.addr), stream).await.unwrap();
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("before".into()));

    cg.signal("TERM");
    cg.wait_for_log("shutting down: no longer accepting calls");
    // The stream keeps flowing during the drain.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ws.send(Message::Text(format!("during {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text(format!("during {i}")));
    }
    assert!(cg.child.try_wait().unwrap().is_none(), "still draining while the stream is open");
    // Close as Twilio does: the close handshake, then the TCP connection.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    assert_eq!(cg.wait_exit(Duration::from_secs(5)).code(), Some(0));
    cg.wait_for_log("drained; every call in flight finished");
}

#[tokio::test]
async fn json_decision_lines_carry_the_specs_fields_and_no_secrets() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject","reason":"out of credit"}"#)).await;
    let routes = json!({
        "agents": {"agent_a": {"gate": {"url": gate.url("/precall?token=S3CRET")}}},
        "numbers": {TO: {"agent_id": "agent_a"}}
    });
    let secrets = [
        "--api-key",
        "kid2:APISECRET",
        "--twilio-auth-token",
        "TOKENSECRET",
        "--twilio-shared-key",
        "KS1=SHAREDSECRET",
        "--twilio-signature",
        "report",
        "--gate-signing-secret",
        "GATESIGNINGSECRET",
    ];
    let cg = Binary::spawn(&routes.to_string(), &engine.url(""), &secrets);
    post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    post_form(&cg.url("/twilio/voice"), &ringing("+15005550000")).await;
    let lines = cg.logs_with("call decided", 2);
    assert_eq!(lines.len(), 2, "one line per decided call");
    let line = &lines[0];
    assert_eq!(line["call_id"], "CA11111111111111111111111111111111");
    assert_eq!(line["to"], TO);
    assert_eq!(line["agent_id"], "agent_a");
    assert_eq!(line["source"], "agent");
    assert_eq!(line["decision"], "reject");
    assert_eq!(line["cause"], serde_json::Value::Null, "a field with nothing to say is left out");
    assert_eq!(line["reason"], "out of credit");
    assert!(line["gate_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(line["gate"], gate.url("/precall"), "scheme, host and path only");
    assert_eq!(line["level"], "INFO");
    assert_eq!(lines[1]["decision"], "no_gate");
    assert_eq!(lines[1]["source"], "none");

    let all = serde_json::to_string(&*cg.logs.lock().unwrap()).unwrap();
    assert!(!all.contains("unparsed"), "every line is JSON");
    assert!(all.contains("X-Twilio-Signature did not validate"), "report mode logged the unsigned calls");
    for secret in ["S3CRET", "APISECRET", "ksecret", "TOKENSECRET", "SHAREDSECRET", "GATESIGNINGSECRET"] {
        assert!(!all.contains(secret), "{secret} in the logs");
    }
    let bound = cg.wait_for_log("listeners bound");
    assert!(bound["settings"].as_str().unwrap().contains("kid2:***"), "the start-up line masks API keys");
}

#[tokio::test]
async fn worker_threads_sets_the_threads_serving_calls() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    for workers in [1, 3] {
        let cg = Binary::spawn("{}", &engine.url(""), &["--worker-threads", &workers.to_string()]);
        let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
        assert_eq!(answer.status, 200, "serves calls");
        assert_eq!(cg.wait_for_log("callgate serving")["workers"], workers);
        let named = std::fs::read_dir(format!("/proc/{}/task", cg.child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("callgate-w"))
            .count();
        assert_eq!(named, workers, "one thread per call worker");
    }
}
