//! Decision events (SPEC §14) against a real receiver on port 0: the fields and signature of each
//! kind, retries on the schedule, giving up, the outbox surviving kill -9 of the real binary, an
//! unwritable state dir, the outbox's bound, calls answered while the receiver hangs, and
//! `POST /v1/events/test`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

use callgate::settings::{EventsUrl, Secret, Settings};

const SECRET: &str = "whsec_events_test";
const REJECT_TO: &str = "+447700900001";
const CLOSED_TO: &str = "+447700900002";
const OPEN_TO: &str = "+447700900003";
const ACCEPT_TO: &str = "+447700900004";

/// A Twilio inbound ringing-call form body to `to` with CallSid `sid`.
fn ringing_sid(to: &str, sid: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("AccountSid", "AC00000000000000000000000000000000");
    s.append_pair("CallSid", sid);
    s.append_pair("From", "+14155550100");
    s.append_pair("To", to);
    s.append_pair("Direction", "inbound");
    s.append_pair("CallStatus", "ringing");
    s.finish()
}

/// Checks an event as a receiver would (the README's recipe): the signature over
/// `t + "." + body` with the secret, a fresh `t`, and the delivery id header equal to the body's.
/// Returns the body.
fn verify(seen: &Seen) -> Value {
    let header = seen.headers["x-callgate-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let (t, v1) = (t.strip_prefix("t=").unwrap(), v1.strip_prefix("v1=").unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&seen.body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "the signature verifies");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) < 60, "t is now");
    assert_eq!(seen.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(seen.headers["webhook-delivery-id"].to_str().unwrap(), body["webhook_delivery_id"]);
    body
}

fn delivery_id(seen: &Seen) -> String {
    seen.headers["webhook-delivery-id"].to_str().unwrap().to_owned()
}

fn call_id(seen: &Seen) -> String {
    serde_json::from_slice::<Value>(&seen.body).unwrap()["call_id"].as_str().unwrap().to_owned()
}

/// callgate in this process, sending events to `receiver` with the outbox in `state`.
async fn spawn(
    routes: &str,
    receiver: &str,
    state: &Path,
    tweak: impl FnOnce(&mut Settings),
) -> (Callgate, Stub) {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn_with(routes, &engine.url(""), |s| {
        s.events_url = Some(EventsUrl(receiver.parse().unwrap()));
        s.events_signing_secret = Some(Secret::new(SECRET));
        s.state_dir = state.to_owned();
        tweak(s);
    })
    .await;
    (cg, engine)
}

async fn until_seen(receiver: &Stub, n: usize) -> Vec<Seen> {
    eventually(Duration::from_secs(20), || async { receiver.count() >= n }).await;
    receiver.seen()
}

#[tokio::test]
async fn each_kind_of_event_carries_the_specs_fields_and_a_signature_the_receiver_verifies() {
    let receiver = Stub::start(Reply::json("{}")).await;
    let reject = Stub::start(Reply::json(r#"{"action":"reject","reason":"out of credit"}"#)).await;
    let accept = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let dead = format!("http://{}/gate", dead_addr().await);
    let routes = json!({
        "agents": {"agent_a": {"gate": {"url": reject.url("/precall")}}},
        "numbers": {
            REJECT_TO: {"agent_id": "agent_a"},
            CLOSED_TO: {"gate": {"url": dead, "on_failure": "reject"}},
            OPEN_TO: {"gate": {"url": dead}},
            ACCEPT_TO: {"gate": {"url": accept.url("/precall")}},
        }
    });
    let state = tempfile::tempdir().unwrap();
    let (cg, engine) =
        spawn(&routes.to_string(), &receiver.url("/hooks/callgate"), state.path(), |_| {}).await;

    for (to, sid) in
        [(ACCEPT_TO, "CAaccept"), (REJECT_TO, "CAreject"), (CLOSED_TO, "CAclosed"), (OPEN_TO, "CAopen")]
    {
        let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(to, sid)).await;
        assert_eq!(answer.status, 200, "{sid}");
    }
    assert_eq!(engine.count(), 2, "the accept and the fail_open reached the engine");
    let seen = until_seen(&receiver, 3).await;

    let mut bodies: Vec<Value> = seen.iter().map(verify).collect();
    bodies.sort_by_key(|b| b["call_id"].as_str().unwrap().to_owned());
    assert!(seen.iter().all(|s| s.method == "POST" && s.uri == "/hooks/callgate"));
    let expected = [
        json!({"event": "call.gate_failed", "call_id": "CAclosed", "agent_id": null,
               "from_number": "+14155550100", "to_number": CLOSED_TO, "decision": "fail_closed",
               "cause": "connect", "reason": null, "checks": null}),
        json!({"event": "call.gate_failed", "call_id": "CAopen", "agent_id": null,
               "from_number": "+14155550100", "to_number": OPEN_TO, "decision": "fail_open",
               "cause": "connect", "reason": null, "checks": null}),
        json!({"event": "call.rejected", "call_id": "CAreject", "agent_id": "agent_a",
               "from_number": "+14155550100", "to_number": REJECT_TO, "decision": "reject",
               "cause": null, "reason": "out of credit", "checks": null}),
    ];
    let mut ids = std::collections::HashSet::new();
    for (body, expected) in bodies.iter_mut().zip(expected) {
        let object = body.as_object_mut().unwrap();
        let id = object.remove("webhook_delivery_id").unwrap();
        let id = id.as_str().unwrap();
        assert!(id.starts_with("whd_") && id.len() == 36, "{id}");
        ids.insert(id.to_owned());
        let gate_ms = object.remove("gate_ms").unwrap();
        assert!(gate_ms.as_f64().is_some_and(|ms| ms > 0.0 && ms < 10_000.0), "{gate_ms}");
        let occurred_at = object.remove("occurred_at").unwrap();
        let occurred_at = humantime::parse_rfc3339(occurred_at.as_str().unwrap()).unwrap();
        let age = SystemTime::now().duration_since(occurred_at).unwrap();
        assert!(age < Duration::from_secs(60), "occurred_at is RFC 3339 UTC, and now");
        assert_eq!(*body, expected, "exactly these fields");
    }
    assert_eq!(ids.len(), 3, "each event its own delivery id");
    cg.stop().await;
}

#[tokio::test]
async fn a_500_then_a_200_delivers_on_the_second_try_with_the_same_delivery_id() {
    let answered = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let receiver = Stub::start_with({
        let answered = Arc::clone(&answered);
        move |_| {
            let mut answered = answered.lock().unwrap();
            answered.push(Instant::now());
            Reply::json("{}").status(if answered.len() == 1 { 500 } else { 200 })
        }
    })
    .await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let cg = Binary::spawn(
        &number_gate(REJECT_TO, &gate.url("/precall")),
        &engine.url(""),
        &["--events-url", &receiver.url("/e?token=QS3CRET"), "--events-signing-secret", SECRET]
            .into_iter()
            .chain(["--events-retry-schedule", "300ms,10s", "--state-dir", state_dir])
            .collect::<Vec<_>>(),
    );
    post_form(&cg.url("/twilio/voice"), &ringing_sid(REJECT_TO, "CAretry")).await;
    let seen = until_seen(&receiver, 2).await;
    assert_eq!(seen.len(), 2);
    let bodies: Vec<Value> = seen.iter().map(verify).collect();
    assert_eq!(delivery_id(&seen[0]), delivery_id(&seen[1]), "the same delivery id on the retry");
    assert_eq!(bodies[0], bodies[1], "the same event");
    let at = answered.lock().unwrap().clone();
    assert!(
        at[1] - at[0] >= Duration::from_millis(300),
        "retried after the first delay: {:?}",
        at[1] - at[0]
    );

    eventually(Duration::from_secs(10), || async {
        cg.metric(r#"callgate_events_total{result="delivered"}"#).await == 1.0
    })
    .await;
    assert_eq!(cg.metric(r#"callgate_events_total{result="retried"}"#).await, 1.0);
    assert_eq!(cg.metric(r#"callgate_events_total{result="given_up"}"#).await, 0.0);
    // The gauge follows once the delivered event is removed from the outbox on disk.
    eventually(Duration::from_secs(5), || async { cg.metric("callgate_events_pending").await == 0.0 }).await;
    assert_eq!(cg.metric("callgate_events_outbox_ok").await, 1.0);
    assert_eq!(receiver.count(), 2, "nothing more once delivered");
    assert_eq!(seen[0].uri, "/e?token=QS3CRET", "the URL as given");
    let bound = cg.wait_for_log("listeners bound");
    assert!(bound["settings"].as_str().unwrap().contains(&receiver.url("/e")), "{bound}");
    let all = serde_json::to_string(&*cg.logs.lock().unwrap()).unwrap();
    for secret in ["QS3CRET", SECRET] {
        assert!(!all.contains(secret), "{secret} in the logs");
    }
}

/// A receiver that accepts connections and never answers, noting when each was accepted.
struct Hanging {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Hanging {
    async fn start() -> Hanging {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.lock().unwrap().push(Instant::now());
                    held.push(stream);
                }
            }
        });
        Hanging { addr, accepted, _task: task }
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_retried_on_the_schedule_then_given_up() {
    let receiver = Hanging::start().await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let state = tempfile::tempdir().unwrap();
    let metrics = callgate::metrics::get();
    let given_up =
        || metric_value(&metrics.render(), r#"callgate_events_total{result="given_up"}"#).unwrap_or(0.0);
    let before = given_up();
    let routes = number_gate(REJECT_TO, &gate.url("/precall"));
    let (cg, _engine) = spawn(&routes, &format!("http://{}/e", receiver.addr), state.path(), |s| {
        s.events_retry_schedule = vec![Duration::from_millis(100), Duration::from_millis(300)];
        s.events_attempt_timeout = Duration::from_millis(200);
    })
    .await;
    post_form(&cg.url("/twilio/voice"), &ringing_sid(REJECT_TO, "CAhang")).await;

    // Three attempts: the first, then one after each delay of the schedule.
    eventually(Duration::from_secs(10), || async { given_up() - before >= 1.0 }).await;
    let at = receiver.accepted();
    assert_eq!(at.len(), 3, "one connection per attempt: {at:?}");
    // Each delay counts from the end of the attempt before it (200 ms without an answer).
    assert!(at[1] - at[0] >= Duration::from_millis(300), "{:?}", at[1] - at[0]);
    assert!(at[2] - at[1] >= Duration::from_millis(500), "{:?}", at[2] - at[1]);
    // Given up: no fourth attempt however long we wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.accepted().len(), 3, "no attempt after the schedule ran out");
    cg.stop().await;
}

#[tokio::test]
async fn kill_9_with_events_pending_loses_none_and_sends_none_twice() {
    // Before the kill: the event of call CAanswered is answered at once; those of CAhang* hang
    // (in flight at the kill); those of CAfail* get a 500 (waiting for their retry).
    let first = Stub::start_with(|seen| {
        let call = call_id(seen);
        if call == "CAanswered" {
            Reply::json("{}")
        } else if call.starts_with("CAfail") {
            Reply::json("{}").status(500)
        } else {
            Reply::json("{}").delay(Duration::from_secs(60))
        }
    })
    .await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let routes = number_gate(REJECT_TO, &gate.url("/precall"));
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let args = |receiver: &Stub| -> Vec<String> {
        [
            "--events-url",
            &receiver.url("/e"),
            "--events-signing-secret",
            SECRET,
            "--events-retry-schedule",
            "2s",
            "--state-dir",
            &state_dir,
        ]
        .map(String::from)
        .into()
    };
    let first_args = args(&first);
    let mut cg =
        Binary::spawn(&routes, &engine.url(""), &first_args.iter().map(String::as_str).collect::<Vec<_>>());
    let voice = cg.url("/twilio/voice");
    let call = |sid: &str| {
        let (url, body) = (voice.clone(), ringing_sid(REJECT_TO, sid));
        async move { post_form(&url, &body).await }
    };
    assert_eq!(call("CAanswered").await.status, 200);
    until_seen(&first, 1).await;
    let pending = ["CAhang1", "CAhang2", "CAhang3", "CAfail1", "CAfail2"];
    for sid in pending {
        assert_eq!(call(sid).await.status, 200);
    }
    // SPEC §14: a kill -9 more than 100 ms after the call was answered loses none. The last call
    // was answered, and the first event answered by the receiver, at least 200 ms before it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cg.child.kill().unwrap();
    cg.child.wait().unwrap();
    let before_kill = first.seen();
    assert_eq!(call_id(&before_kill[0]), "CAanswered");

    let second = Stub::start(Reply::json("{}")).await;
    let second_args = args(&second);
    let cg =
        Binary::spawn(&routes, &engine.url(""), &second_args.iter().map(String::as_str).collect::<Vec<_>>());
    cg.wait_for_log("decision events resumed from the outbox");
    eventually(Duration::from_secs(20), || async {
        second.count() >= pending.len() && cg.metric("callgate_events_pending").await == 0.0
    })
    .await;
    let after: Vec<Seen> = second.seen();
    let mut calls: Vec<String> = after.iter().map(call_id).collect();
    calls.sort();
    let mut expected: Vec<String> = pending.map(String::from).into();
    expected.sort();
    // The answered event may come again only if its removal had not reached the disk; at
    // 200 ms it had.
    assert_eq!(calls, expected, "every pending event once, the answered one not again");
    let mut resent = 0;
    for seen in &after {
        verify(seen);
        // An event attempted before the kill comes again with the same delivery id.
        if let Some(original) = before_kill.iter().find(|s| call_id(s) == call_id(seen)) {
            assert_eq!(delivery_id(seen), delivery_id(original), "the same delivery id across the restart");
            resent += 1;
        }
    }
    assert!(resent > 0, "some events were attempted before the kill: {}", before_kill.len());
    assert_eq!(cg.metric(r#"callgate_events_total{result="delivered"}"#).await, pending.len() as f64);
}

#[tokio::test]
async fn sigterm_with_attempts_hanging_exits_promptly_and_the_next_start_delivers_them() {
    let hanging = Hanging::start().await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let routes = number_gate(REJECT_TO, &gate.url("/precall"));
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let hanging_url = format!("http://{}/e", hanging.addr);
    let flags = |url: &str| {
        ["--events-url", url, "--events-signing-secret", SECRET, "--state-dir", state_dir]
            .map(String::from)
            .to_vec()
    };
    let args = flags(&hanging_url);
    let mut cg =
        Binary::spawn(&routes, &engine.url(""), &args.iter().map(String::as_str).collect::<Vec<_>>());
    for i in 0..3 {
        let answer =
            post_form(&cg.url("/twilio/voice"), &ringing_sid(REJECT_TO, &format!("CAterm{i}"))).await;
        assert_eq!(answer.status, 200);
    }
    eventually(Duration::from_secs(10), || async { hanging.accepted().len() == 3 }).await;
    cg.signal("TERM");
    assert_eq!(
        cg.wait_exit(Duration::from_secs(8)).code(),
        Some(0),
        "hanging attempts do not hold up the exit"
    );

    let receiver = Stub::start(Reply::json("{}")).await;
    let args = flags(&receiver.url("/e"));
    let cg = Binary::spawn(&routes, &engine.url(""), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let seen = until_seen(&receiver, 3).await;
    let mut calls: Vec<String> = seen.iter().map(call_id).collect();
    calls.sort();
    assert_eq!(calls, ["CAterm0", "CAterm1", "CAterm2"]);
    eventually(Duration::from_secs(10), || async { cg.metric("callgate_events_pending").await == 0.0 }).await;
}

#[tokio::test]
async fn an_unwritable_state_dir_is_counted_and_shown_and_calls_and_events_go_on() {
    let receiver = Stub::start(Reply::json("{}")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    // A directory under a regular file cannot be made, even by root.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("file"), "").unwrap();
    let state_dir = tmp.path().join("file/sub");
    let cg = Binary::spawn(
        &number_gate(REJECT_TO, &gate.url("/precall")),
        &engine.url(""),
        &[
            "--events-url",
            &receiver.url("/e"),
            "--events-signing-secret",
            SECRET,
            "--state-dir",
            state_dir.to_str().unwrap(),
        ],
    );
    let line = cg.wait_for_log(
        "events outbox cannot be opened; decision events are kept in memory only until callgate restarts with a writable --state-dir",
    );
    assert!(line["error"].as_str().unwrap().contains("file/sub"), "{line}");
    assert_eq!(cg.metric("callgate_events_outbox_ok").await, 0.0);
    assert_eq!(cg.metric("callgate_events_outbox_errors_total").await, 1.0);

    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(REJECT_TO, "CAnodisk")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end(), "the call is rejected as ever");
    let seen = until_seen(&receiver, 1).await;
    assert_eq!(verify(&seen[0])["call_id"], "CAnodisk", "delivered from memory");
    assert_eq!(cg.metric("callgate_events_outbox_ok").await, 0.0, "still shown");
}

#[tokio::test]
async fn past_max_pending_the_oldest_events_are_given_up_and_counted() {
    let receiver = Hanging::start().await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let state = tempfile::tempdir().unwrap();
    let cg = Binary::spawn(
        &number_gate(REJECT_TO, &gate.url("/precall")),
        &engine.url(""),
        &[
            "--events-url",
            &format!("http://{}/e", receiver.addr),
            "--events-signing-secret",
            SECRET,
            "--events-max-pending",
            "5",
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
    );
    for i in 0..8 {
        let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(REJECT_TO, &format!("CA{i}"))).await;
        assert_eq!(answer.status, 200);
    }
    eventually(Duration::from_secs(10), || async {
        cg.metric(r#"callgate_events_dropped_total{reason="outbox_full"}"#).await == 3.0
    })
    .await;
    assert_eq!(cg.metric(r#"callgate_events_total{result="given_up"}"#).await, 3.0);
    assert_eq!(cg.metric("callgate_events_pending").await, 5.0);
    assert_eq!(cg.metric(r#"callgate_events_dropped_total{reason="queue_full"}"#).await, 0.0);
    cg.wait_for_log("events outbox full (--events-max-pending): the oldest undelivered events were given up");
}

#[tokio::test]
async fn calls_are_answered_while_a_thousand_events_are_stuck_on_a_hanging_receiver() {
    let receiver = Hanging::start().await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let state = tempfile::tempdir().unwrap();
    let cg = Binary::spawn(
        &number_gate(REJECT_TO, &gate.url("/precall")),
        &engine.url(""),
        &[
            "--events-url",
            &format!("http://{}/e", receiver.addr),
            "--events-signing-secret",
            SECRET,
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
    );
    let url = cg.url("/twilio/voice");
    for chunk in 0..20 {
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let (url, body) = (url.clone(), ringing_sid(REJECT_TO, &format!("CA{chunk}x{i}")));
                tokio::spawn(async move { post_form(&url, &body).await })
            })
            .collect();
        for call in calls {
            let answer = call.await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
        }
    }
    eventually(Duration::from_secs(20), || async { cg.metric("callgate_events_pending").await == 1000.0 })
        .await;
    assert!(!receiver.accepted().is_empty(), "the receiver holds attempts open");
    // With all of that stuck, a call is still answered.
    let answer = post_form(&url, &ringing_sid(REJECT_TO, "CAafter")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(cg.metric(r#"callgate_events_total{result="delivered"}"#).await, 0.0);
    assert_eq!(cg.metric(r#"callgate_events_dropped_total{reason="queue_full"}"#).await, 0.0);
}

#[tokio::test]
async fn events_test_sends_a_signed_call_test_event_and_says_what_the_receiver_did() {
    let receiver =
        Stub::start_with(|seen| Reply::json("{}").status(if seen.uri == "/fail" { 503 } else { 200 })).await;
    let state = tempfile::tempdir().unwrap();
    let (cg, _engine) = spawn("{}", &receiver.url("/ok"), state.path(), |_| {}).await;
    let (status, answer) = cg.admin("POST", "/v1/events/test", None).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"delivered": true, "status": 200, "error": null}));
    let seen = until_seen(&receiver, 1).await;
    let body = verify(&seen[0]);
    assert_eq!(body["event"], "call.test");
    for null in ["agent_id", "decision", "cause", "reason", "gate_ms", "checks"] {
        assert_eq!(body[null], Value::Null, "{null}");
    }
    for field in ["call_id", "from_number", "to_number", "occurred_at", "webhook_delivery_id"] {
        assert!(body[field].is_string(), "{field}");
    }
    let (status, _) = cg.admin("GET", "/v1/events/test", None).await;
    assert_eq!(status, 405);
    cg.stop().await;

    let (cg, _engine) = spawn("{}", &receiver.url("/fail"), state.path(), |_| {}).await;
    let (_, answer) = cg.admin("POST", "/v1/events/test", None).await;
    assert_eq!(answer["delivered"], false);
    assert_eq!(answer["status"], 503);
    assert!(answer["error"].as_str().unwrap().contains("503"), "{answer}");
    cg.stop().await;

    let dead = format!("http://{}/e", dead_addr().await);
    let (cg, _engine) = spawn("{}", &dead, state.path(), |_| {}).await;
    let (_, answer) = cg.admin("POST", "/v1/events/test", None).await;
    assert_eq!(answer["delivered"], false);
    assert_eq!(answer["status"], Value::Null);
    assert!(answer["error"].is_string(), "{answer}");
    cg.stop().await;

    let engine = Stub::start(Reply::json("")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let (status, answer) = cg.admin("POST", "/v1/events/test", None).await;
    assert_eq!(status, 409);
    assert_eq!(answer["error"]["code"], "not_configured");
}

#[tokio::test]
async fn event_series_are_exported_from_start_up() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &[]);
    let text = get(&cg.admin_url("/metrics")).await.unwrap().text();
    for series in [
        r#"callgate_events_total{result="delivered"}"#,
        r#"callgate_events_total{result="retried"}"#,
        r#"callgate_events_total{result="given_up"}"#,
        r#"callgate_events_dropped_total{reason="queue_full"}"#,
        r#"callgate_events_dropped_total{reason="outbox_full"}"#,
        "callgate_events_pending",
        "callgate_events_outbox_errors_total",
    ] {
        assert_eq!(metric_value(&text, series), Some(0.0), "{series} at 0 in:\n{text}");
    }
    assert_eq!(metric_value(&text, "callgate_events_outbox_ok"), Some(1.0));
}

#[test]
fn bad_events_flags_stop_start_up_with_one_line_and_status_2() {
    for (args, says) in [
        (&["--events-url", "https://hooks.example/e"][..], "--events-signing-secret"),
        (&["--events-url", "http://hooks.example/e", "--events-signing-secret", "s"], "--events-url"),
        (
            &["--events-url", "ftp://hooks.example/e?token=T0KEN", "--events-signing-secret", "s"],
            "--events-url",
        ),
        (&["--events-retry-schedule", "1m,soon"], "--events-retry-schedule"),
        (&["--events-max-pending", "0"], "--events-max-pending"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["--upstream", "http://127.0.0.1:1"])
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("T0KEN"), "the URL's query is not repeated: {err}");
    }
}
