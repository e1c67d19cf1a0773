//! The voice webhook end to end: real callgate, real stub gates and engines, real sockets.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const TO: &str = "+447700900123";

fn engine_reply() -> Reply {
    Reply::json("")
        .status(200)
        .header("content-type", "text/xml")
        .header("x-engine", "yes")
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
}

fn twiml_engine() -> Reply {
    let mut r = engine_reply();
    r.headers.retain(|(n, _)| *n != "content-type");
    r.body = Bytes::from_static(b"<Response><Say>hello</Say></Response>");
    r
}

/// callgate in front of a recording engine, with one gate answering `gate_reply` on `TO`.
async fn with_gate(gate_reply: Reply) -> (Callgate, Stub, Stub) {
    let engine = Stub::start(twiml_engine()).await;
    let gate = Stub::start(gate_reply).await;
    let cg = Callgate::spawn(&number_gate(TO, &gate.url("/precall")), &engine.url("")).await;
    (cg, gate, engine)
}

#[tokio::test]
async fn reject_answers_busy_twiml_and_never_reaches_the_engine() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"reject","reason":"no credit"}"#)).await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/xml"));
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(engine.count(), 0, "the engine must never hear of a rejected call");

    let asked = gate.seen();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].uri, "/precall");
    assert_eq!(asked[0].headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&asked[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"event":"call.inbound","from":"+14155550100","to":TO,"call_id":"CA11111111111111111111111111111111"})
    );
}

#[tokio::test]
async fn accept_forwards_the_original_request_and_relays_the_engine_answer() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"accept"}"#)).await;
    let body = ringing(TO) + "&Custom=a%20b+c&Custom=z";
    let request = Request::post(cg.url("/twilio/voice?tenant=acme&x=%2F"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "sig")
        .header("host", "voice.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let answer = send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "<Response><Say>hello</Say></Response>");
    assert_eq!(answer.header("x-engine"), Some("yes"));
    let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(gate.count(), 1);

    let seen = engine.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/twilio/voice?tenant=acme&x=%2F");
    assert_eq!(&r.body[..], body.as_bytes(), "body bytes untouched");
    assert_eq!(r.headers["host"], "voice.example.com");
    assert_eq!(r.headers["x-twilio-signature"], "sig");
    assert_eq!(r.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(r.headers["x-forwarded-proto"], "http");
    assert_eq!(r.headers["x-forwarded-host"], "voice.example.com");
    assert_eq!(r.headers["x-callgate-decision"], "accept");
    assert!(r.headers.get("x-hop").is_none(), "headers named in Connection are hop-by-hop");
    assert_eq!(r.headers["content-length"], body.len().to_string());
}

async fn assert_fails_open(gate_reply: Reply, cause: &str) {
    let (cg, gate, engine) = with_gate(gate_reply).await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(answer.status, StatusCode::OK, "cause {cause}");
    assert_eq!(answer.text(), "<Response><Say>hello</Say></Response>", "cause {cause}");
    assert!(gate.count() <= 1, "one gate request at most");
    let seen = engine.seen();
    assert_eq!(seen.len(), 1, "cause {cause}: the call is forwarded");
    assert_eq!(seen[0].headers["x-callgate-decision"], "fail_open", "cause {cause}");
}

#[tokio::test]
async fn a_reject_with_status_201_fails_open() {
    assert_fails_open(Reply::json(r#"{"action":"reject"}"#).status(201), "status").await;
}

#[tokio::test]
async fn a_500_fails_open() {
    assert_fails_open(Reply::json(r#"{"action":"reject"}"#).status(500), "status").await;
}

#[tokio::test]
async fn an_uppercase_reject_fails_open() {
    assert_fails_open(Reply::json(r#"{"action":"REJECT"}"#), "malformed").await;
}

#[tokio::test]
async fn a_json_array_fails_open() {
    assert_fails_open(Reply::json(r#"[{"action":"reject"}]"#), "malformed").await;
}

#[tokio::test]
async fn an_empty_body_fails_open() {
    assert_fails_open(Reply::json(""), "malformed").await;
}

#[tokio::test]
async fn truncated_json_fails_open() {
    assert_fails_open(Reply::json(r#"{"action":"rej"#), "malformed").await;
}

#[tokio::test]
async fn an_unknown_action_fails_open() {
    assert_fails_open(Reply::json(r#"{"action":"maybe"}"#), "malformed").await;
}

#[tokio::test]
async fn an_answer_over_64_kib_fails_open() {
    let padding = "x".repeat(70 * 1024);
    let body = format!(r#"{{"action":"reject","pad":"{padding}"}}"#);
    assert_fails_open(Reply::json(&body), "malformed").await;
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let rejecting = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let redirect = Reply::json("").status(307).header("location", &rejecting.url("/precall"));
    assert_fails_open(redirect, "status").await;
    assert_eq!(rejecting.count(), 0, "the redirect target is never asked");
}

#[tokio::test]
async fn a_refused_connection_fails_open() {
    let engine = Stub::start(twiml_engine()).await;
    let dead = dead_addr().await;
    let cg = Callgate::spawn(&number_gate(TO, &format!("http://{dead}/precall")), &engine.url("")).await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(engine.seen()[0].headers["x-callgate-decision"], "fail_open");
}

#[tokio::test]
async fn a_gate_slower_than_its_timeout_fails_open_at_the_timeout() {
    let engine = Stub::start(twiml_engine()).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#).delay(Duration::from_secs(5))).await;
    let routes = serde_json::json!({"numbers": {TO: {"gate": {"url": gate.url("/p"), "timeout_ms": 300}}}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let started = Instant::now();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(engine.seen()[0].headers["x-callgate-decision"], "fail_open");
    assert!(took >= Duration::from_millis(300), "waited for the timeout: {took:?}");
    assert!(took < Duration::from_secs(4), "did not wait for the slow gate: {took:?}");
}

#[tokio::test]
async fn on_failure_reject_turns_a_failure_into_busy() {
    let engine = Stub::start(twiml_engine()).await;
    let dead = dead_addr().await;
    let routes = serde_json::json!({"numbers": {TO: {"gate": {"url": format!("http://{dead}/p"), "on_failure": "reject"}}}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(engine.count(), 0);
}

#[tokio::test]
async fn a_dead_gate_under_200_concurrent_calls_decides_every_call() {
    let engine = Stub::start(twiml_engine()).await;
    let silent = Silent::start().await;
    let silent_addr = silent.addr;
    // The cap bounds requests waiting at once: a timeout longer than it takes to send all 200
    // calls makes them all wait together, so exactly the cap reaches the gate.
    let routes = serde_json::json!({"numbers": {TO: {"gate": {"url": format!("http://{silent_addr}/p"), "timeout_ms": 4000}}}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let url = cg.url("/twilio/voice");
            tokio::spawn(async move { post_form(&url, &ringing(TO)).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(9), "all decided by the gate timeout");
    let seen = engine.seen();
    assert_eq!(seen.len(), 200, "every call fails open and is forwarded");
    let gate_connections = silent.connections();
    assert_eq!(gate_connections, 100, "the cap reaches the gate, the rest fail open at once");
}

#[tokio::test]
async fn a_numbers_own_gate_beats_its_agents_and_only_one_is_asked() {
    let engine = Stub::start(twiml_engine()).await;
    let agent_gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let number_gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let routes = serde_json::json!({
        "agents": {"agent_a": {"gate": {"url": agent_gate.url("/agent")}}},
        "numbers": {
            TO: {"agent_id": "agent_a", "gate": {"url": number_gate.url("/number")}},
            "+447700900124": {"agent_id": "agent_a"}
        }
    });
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;

    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(number_gate.count(), 1);
    assert_eq!(agent_gate.count(), 0, "only one URL is ever called");
    let sent: serde_json::Value = serde_json::from_slice(&number_gate.seen()[0].body).unwrap();
    assert_eq!(sent["agent_id"], "agent_a");
    assert_eq!(engine.seen()[0].headers["x-callgate-agent-id"], "agent_a");

    let answer = post_form(&cg.url("/twilio/voice"), &ringing("+447700900124")).await;
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end(), "the agent's gate applies");
    assert_eq!(agent_gate.count(), 1);
    assert_eq!(number_gate.count(), 1);
}

#[tokio::test]
async fn no_gate_and_not_gated_are_forwarded_with_their_labels() {
    let engine = Stub::start(twiml_engine()).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let cg = Callgate::spawn(&number_gate(TO, &gate.url("/p")), &engine.url("")).await;

    post_form(&cg.url("/twilio/voice"), &ringing("+15005550000")).await;
    post_form(&cg.url("/twilio/voice"), &ringing("sip:agent@example.com")).await;
    let in_progress = ringing(TO).replace("CallStatus=ringing", "CallStatus=in-progress");
    post_form(&cg.url("/twilio/voice"), &in_progress).await;
    let outbound = ringing(TO).replace("Direction=inbound", "Direction=outbound-api");
    post_form(&cg.url("/twilio/voice"), &outbound).await;

    let labels: Vec<_> = engine.seen().iter().map(|s| s.headers["x-callgate-decision"].clone()).collect();
    assert_eq!(labels, ["no_gate", "no_gate", "not_gated", "not_gated"]);
    assert_eq!(gate.count(), 0);
}

#[tokio::test]
async fn get_webhooks_are_gated_from_the_query() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"reject"}"#)).await;
    let answer = get(&cg.url(&format!("/twilio/voice?{}", ringing(TO)))).await.unwrap();
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(gate.count(), 1);
    assert_eq!(engine.count(), 0);

    let in_progress = ringing(TO).replace("CallStatus=ringing", "CallStatus=in-progress");
    get(&cg.url(&format!("/twilio/voice?{in_progress}"))).await.unwrap();
    let seen = engine.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].headers["x-callgate-decision"], "not_gated");
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_reaches_nobody() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"accept"}"#)).await;
    let url = cg.url("/twilio/voice");

    let too_big = format!("{}&Pad={}", ringing(TO), "x".repeat(65 * 1024));
    assert_eq!(post_form(&url, &too_big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(post_form(&url, &format!("{}&Bad=%G1", ringing(TO))).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(post_form(&url, &format!("{}&Bad=%FF", ringing(TO))).await.status, StatusCode::BAD_REQUEST);
    let no_to = ringing(TO).replace("To=%2B447700900123&", "");
    assert!(!no_to.contains("To="));
    let answer = post_form(&url, &no_to).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("To"), "{}", answer.text());

    assert_eq!(gate.count(), 0);
    assert_eq!(engine.count(), 0);
}

#[tokio::test]
async fn a_chunked_body_over_64_kib_is_refused() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"accept"}"#)).await;
    let request = raw_post_chunked(&ringing(TO), 70 * 1024);
    let answer = raw_exchange(cg.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(gate.count() + engine.count(), 0);
}

fn raw_post_chunked(form: &str, pad: usize) -> Vec<u8> {
    let body = format!("{form}&Pad={}", "x".repeat(pad));
    let mut out = b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.as_bytes().chunks(8192) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Writes raw bytes and reads until the server closes or goes quiet for a second.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything; a write error is fine.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let (cg, gate, engine) = with_gate(Reply::json(r#"{"action":"accept"}"#)).await;
    let body = ringing(TO);
    let raw = format!(
        "POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        body.len() + 1
    )
    .into_bytes();
    let answer = raw_exchange(cg.addr, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(gate.count() + engine.count(), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    let (cg, _gate, engine) = with_gate(Reply::json(r#"{"action":"accept"}"#)).await;
    let body = ringing(TO);
    // A smuggling attempt: the length covers a second request hidden after the chunked body.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let raw = format!(
        "POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}{smuggled}",
        chunked.len() + smuggled.len()
    )
    .into_bytes();
    let answer = raw_exchange(cg.addr, &raw).await;
    let responses = answer.matches("HTTP/1.1 ").count();
    assert!(responses <= 1, "nothing after the chunked body is read as a request: {answer}");
    let seen = engine.seen();
    assert!(seen.iter().all(|s| s.uri != "/smuggled"), "the smuggled request never reaches the engine");
    for s in &seen {
        assert!(s.headers.get("transfer-encoding").is_none() || s.headers.get("content-length").is_none());
        assert_eq!(&s.body[..], body.as_bytes());
    }
    if responses == 1 {
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
}

#[tokio::test]
async fn an_unreachable_engine_is_502_and_a_slow_one_504() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let dead = dead_addr().await;
    let cg = Callgate::spawn(&number_gate(TO, &gate.url("/p")), &format!("http://{dead}")).await;
    assert_eq!(post_form(&cg.url("/twilio/voice"), &ringing(TO)).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&cg.url("/status")).await.unwrap().status, StatusCode::BAD_GATEWAY);

    let slow = Stub::start(twiml_engine().delay(Duration::from_secs(5))).await;
    let cg = Callgate::spawn_with(&number_gate(TO, &gate.url("/p")), &slow.url(""), |s| {
        s.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    assert_eq!(post_form(&cg.url("/twilio/voice"), &ringing(TO)).await.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_upstream_prefix_is_prepended() {
    let engine = Stub::start(twiml_engine()).await;
    let cg = Callgate::spawn("{}", &engine.url("/engine/v1/")).await;
    post_form(&cg.url("/twilio/voice?x=1"), &ringing(TO)).await;
    get(&cg.url("/twilio/status?CallSid=CA1")).await.unwrap();
    let uris: Vec<_> = engine.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/engine/v1/twilio/voice?x=1", "/engine/v1/twilio/status?CallSid=CA1"]);
}

#[tokio::test]
async fn forged_callgate_headers_are_stripped() {
    let engine = Stub::start(twiml_engine()).await;
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let cg = Callgate::spawn(&number_gate(TO, &gate.url("/p")), &engine.url("")).await;
    for (path, body) in
        [("/twilio/voice", ringing("+15005550000")), ("/twilio/status", "CallStatus=completed".into())]
    {
        let request = Request::post(cg.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-callgate-decision", "accept")
            .header("x-callgate-agent-id", "agent_forged")
            .header("X-Callgate-Anything", "forged")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(request).await.unwrap();
    }
    let seen = engine.seen();
    assert_eq!(seen[0].headers["x-callgate-decision"], "no_gate");
    assert!(seen[0].headers.get("x-callgate-agent-id").is_none());
    assert!(seen[1].headers.keys().all(|k| !k.as_str().starts_with("x-callgate-")), "{:?}", seen[1].headers);
}

#[tokio::test]
async fn other_paths_pass_through_with_their_bodies() {
    let engine = Stub::start(twiml_engine().status(202)).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let body = "CallSid=CA1&CallStatus=completed&".repeat(10_000);
    let answer = post_form(&cg.url("/twilio/status"), &body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let seen = engine.seen();
    assert_eq!(seen[0].uri, "/twilio/status");
    assert_eq!(&seen[0].body[..], body.as_bytes());
    assert!(seen[0].headers.get("x-callgate-decision").is_none());
}

fn twilio_fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/twilio/{name}.form", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn realistic_twilio_requests_are_decided_as_twilio_means_them() {
    let engine = Stub::start(twiml_engine()).await;
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let cg = Callgate::spawn(&number_gate("+447700900123", &gate.url("/p")), &engine.url("")).await;
    for name in ["inbound-ringing", "inbound-in-progress-redirect", "outbound-api", "inbound-ringing-sip"] {
        let answer = post_form(&cg.url("/twilio/voice"), &twilio_fixture(name)).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}");
    }
    post_form(&cg.url("/twilio/status"), &twilio_fixture("status-callback")).await;
    let seen = engine.seen();
    let labels: Vec<_> =
        seen.iter().map(|s| s.headers.get("x-callgate-decision").map(|v| v.to_str().unwrap())).collect();
    assert_eq!(labels, [Some("accept"), Some("not_gated"), Some("not_gated"), Some("no_gate"), None]);
    assert_eq!(gate.count(), 1, "only the ringing inbound call to a gated number asks the gate");
    let asked: serde_json::Value = serde_json::from_slice(&gate.seen()[0].body).unwrap();
    assert_eq!(asked["from"], "+447386172392");
    assert_eq!(asked["call_id"], "CA5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e");
}

#[tokio::test]
async fn a_quiet_gate_shares_its_connection_across_workers_and_a_busy_one_gets_one_per_worker() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let engine = Stub::start(twiml_engine()).await;
    let routes = number_gate(TO, &gate.url("/precall"));
    let cg = Callgate::spawn_with(&routes, &engine.url(""), |s| s.workers = 2).await;
    let call = || {
        Request::post(cg.url("/twilio/voice"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(ringing(TO))))
            .unwrap()
    };

    // Calls over a second apart, each on a new connection that either worker may accept: one
    // warm gate connection serves them all.
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        assert_eq!(send(call()).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(gate.count(), 4);
    assert_eq!(gate.connections(), 1, "a quiet gate's calls share one connection");

    // Back-to-back calls on one connection (so on one worker): once they come several a
    // second on average, the worker calls the gate through its own pool, on a connection of
    // its own.
    let twilio = client();
    for _ in 0..60 {
        assert_eq!(send_with(&twilio, call()).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(gate.count(), 64);
    assert_eq!(gate.connections(), 2, "a busy gate gets a connection on the worker calling it");
    cg.stop().await;
}
