//! The decision core end to end (SPEC §10, §13 deadline): gate answers that enrich the call,
//! what the engine receives, the decision record, and the Twilio deadline. Real callgate, real
//! stub gates and engines on loopback.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use callgate::settings::{Secret, SignatureMode};
use callgate::webhook::signature::sign_with_token;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "12345678901234567890123456789012";

/// A ringing inbound call to `to` with its own CallSid.
fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

fn sid(n: usize) -> String {
    format!("CA{n:032}")
}

/// A gate that answers by the dialled number: `answers` maps `to` to a JSON answer body.
async fn gate_by_number(answers: Vec<(&'static str, String)>) -> Stub {
    Stub::start_with(move |seen| {
        let asked: Value = serde_json::from_slice(&seen.body).unwrap();
        let to = asked["to"].as_str().unwrap();
        let body = answers.iter().find(|(n, _)| *n == to).map_or("{}", |(_, b)| b.as_str());
        Reply::json(body)
    })
    .await
}

/// Routes giving each number the agent `agent_num` and the gate at `url`.
fn routes(numbers: &[&str], url: &str) -> String {
    let numbers: serde_json::Map<String, Value> = numbers
        .iter()
        .map(|n| (n.to_string(), json!({ "agent_id": "agent_num", "gate": { "url": url } })))
        .collect();
    json!({ "numbers": numbers }).to_string()
}

/// The engine's view of the request for `sid`.
fn engine_saw(engine: &Stub, sid: &str) -> Seen {
    engine
        .seen()
        .into_iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains(sid))
        .unwrap_or_else(|| panic!("the engine never saw {sid}"))
}

fn decode_context(seen: &Seen) -> Option<Value> {
    let header = seen.headers.get("x-callgate-context")?.to_str().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("unpadded base64url");
    Some(serde_json::from_slice(&json).expect("compact JSON"))
}

#[tokio::test]
async fn each_accept_shape_hands_its_enrichment_to_the_engine_and_leaves_twilios_body_alone() {
    let cases: Vec<(&str, String, &str, Option<Value>)> = vec![
        (
            "+15550000001",
            json!({"action": "accept", "agent_id": "agent_vip",
                   "dynamic_variables": {"name": "Ada", "tier": 3, "vip": true},
                   "metadata": {"crm": {"id": 7}}})
            .to_string(),
            "agent_vip",
            Some(
                json!({"agent_id": "agent_vip", "dynamic_variables": {"name": "Ada", "tier": 3, "vip": true},
                        "metadata": {"crm": {"id": 7}}}),
            ),
        ),
        (
            "+15550000002",
            json!({"call_inbound": {"override_agent_id": "agent_es",
                   "dynamic_variables": {"lang": "es"}, "metadata": {"source": "ivr"}}})
            .to_string(),
            "agent_es",
            Some(json!({"agent_id": "agent_es", "dynamic_variables": {"lang": "es"},
                        "metadata": {"source": "ivr"}})),
        ),
        (
            "+15550000003",
            json!({"action": "accept", "dynamic_variables": {"balance": 12.5}}).to_string(),
            "agent_num",
            Some(json!({"agent_id": "agent_num", "dynamic_variables": {"balance": 12.5}})),
        ),
        (
            "+15550000004",
            json!({"call_inbound": {"metadata": {"ticket": "T-1"}}}).to_string(),
            "agent_num",
            Some(json!({"agent_id": "agent_num", "metadata": {"ticket": "T-1"}})),
        ),
        (
            "+15550000005",
            json!({"call_inbound": {"override_agent_id": "agent_b"}}).to_string(),
            "agent_b",
            None,
        ),
        ("+15550000006", json!({"action": "accept"}).to_string(), "agent_num", None),
    ];
    let gate = gate_by_number(cases.iter().map(|(n, a, _, _)| (*n, a.clone())).collect()).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let numbers: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let cg = Callgate::spawn(&routes(&numbers, &gate.url("/gate")), &engine.url("")).await;

    for (i, (number, _, agent, context)) in cases.iter().enumerate() {
        let form = ringing_sid(number, &sid(i));
        let answer = post_form(&cg.url("/twilio/voice"), &form).await;
        assert_eq!(answer.status, StatusCode::OK, "{number}");
        let seen = engine_saw(&engine, &sid(i));
        assert_eq!(seen.body, Bytes::from(form), "Twilio's body reaches the engine untouched");
        assert_eq!(seen.headers["x-callgate-decision"], "accept", "{number}");
        assert_eq!(seen.headers["x-callgate-agent-id"], *agent, "{number}");
        assert_eq!(decode_context(&seen), *context, "{number}");
    }
}

#[tokio::test]
async fn bad_enrichment_is_dropped_and_counted_and_the_call_still_connects() {
    let big = "x".repeat(9 * 1024);
    let cases = vec![
        ("+15550000011", json!({"action": "accept", "agent_id": "no spaces/allowed"}).to_string()),
        (
            "+15550000012",
            json!({"action": "accept", "dynamic_variables": ["not", "an", "object"]}).to_string(),
        ),
        (
            "+15550000013",
            json!({"action": "accept", "dynamic_variables": {"ok": "yes", "nested": {"a": 1}}}).to_string(),
        ),
        ("+15550000014", json!({"action": "accept", "metadata": {"blob": big}}).to_string()),
    ];
    let gate = gate_by_number(cases.clone()).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let numbers: Vec<&str> = cases.iter().map(|c| c.0).collect();
    // The real binary: its counters are its own.
    let cg = Binary::spawn(&routes(&numbers, &gate.url("/gate")), &engine.url(""), &[]);
    let invalid = r#"callgate_enrichment_dropped_total{reason="invalid"}"#;
    let too_large = r#"callgate_enrichment_dropped_total{reason="too_large"}"#;
    let accepted = r#"callgate_inbound_calls_total{decision="accept"}"#;
    assert_eq!((cg.metric(invalid).await, cg.metric(too_large).await), (0.0, 0.0));

    let expected = [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (3.0, 1.0)];
    for (i, (number, _)) in cases.iter().enumerate() {
        let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(number, &sid(100 + i))).await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = engine_saw(&engine, &sid(100 + i));
        assert_eq!(seen.headers["x-callgate-decision"], "accept", "bad enrichment never fails a call open");
        assert_eq!((cg.metric(invalid).await, cg.metric(too_large).await), expected[i], "{number}");
        match i {
            0 => {
                assert_eq!(
                    seen.headers["x-callgate-agent-id"], "agent_num",
                    "an invalid override is dropped"
                );
                assert_eq!(decode_context(&seen), None);
            }
            1 => assert_eq!(decode_context(&seen), None),
            2 => assert_eq!(
                decode_context(&seen),
                Some(json!({"agent_id": "agent_num", "dynamic_variables": {"ok": "yes"}})),
                "only the bad variable goes"
            ),
            _ => assert!(!seen.headers.contains_key("x-callgate-context"), "a header over 8 KiB is left out"),
        }
    }
    assert_eq!(cg.metric(accepted).await, 4.0);
    // Logging is asynchronous: wait for the lines, then look at all of them. The dropped values
    // are data about people: never in a log line.
    cg.logs_with("call decided", 4);
    cg.wait_for_log("gate enrichment dropped; the call goes on without it");
    let logs = cg.logs.lock().unwrap().iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    assert!(!logs.contains("xxxxxxxx") && !logs.contains("\"nested\""), "{logs}");
}

#[tokio::test]
async fn answers_that_are_not_accepts_fail_open_and_a_reject_with_enrichment_still_rejects() {
    let cases = vec![
        ("+15550000021", r#"{"call_inbound": 5}"#.to_owned()),
        ("+15550000022", "{}".to_owned()),
        ("+15550000023", r#"{"action":"reject","agent_id":"agent_vip","metadata":{"a":1}}"#.to_owned()),
    ];
    let gate = gate_by_number(cases.clone()).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let numbers: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let cg = Callgate::spawn(&routes(&numbers, &gate.url("/gate")), &engine.url("")).await;

    for (i, number) in numbers[..2].iter().enumerate() {
        post_form(&cg.url("/twilio/voice"), &ringing_sid(number, &sid(200 + i))).await;
        let seen = engine_saw(&engine, &sid(200 + i));
        assert_eq!(seen.headers["x-callgate-decision"], "fail_open", "{number}");
        assert!(!seen.headers.contains_key("x-callgate-context"));
        let record = record_of(&cg, &sid(200 + i)).await;
        assert_eq!(
            (record["decision"].as_str(), record["cause"].as_str()),
            (Some("fail_open"), Some("malformed"))
        );
    }
    let before = engine.count();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(numbers[2], &sid(202))).await;
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(engine.count(), before, "a reject never reaches the engine");
    let record = record_of(&cg, &sid(202)).await;
    assert_eq!(record["decision"], "reject");
    assert_eq!(record["override_agent_id"], Value::Null, "a reject's enrichment is not taken");
    assert_eq!(record["agent_id"], "agent_num");
}

#[tokio::test]
async fn an_engine_that_checks_twilios_signature_still_can() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept","dynamic_variables":{"name":"Ada"}}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let to = "+15550000031";
    let cg = Callgate::spawn_with(&routes(&[to], &gate.url("/gate")), &engine.url(""), |s| {
        s.twilio_auth_tokens = vec![Secret::new(TOKEN)];
        s.twilio_signature = SignatureMode::Enforce;
        s.public_url = Some("https://voice.example.com".into());
    })
    .await;
    let form = ringing_sid(to, &sid(300));
    let url = "https://voice.example.com/twilio/voice";
    let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let signature = sign_with_token(TOKEN, url, &refs);
    let request = Request::post(cg.url("/twilio/voice"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", &signature)
        .body(Full::new(Bytes::from(form.clone())))
        .unwrap();
    assert_eq!(send(request).await.unwrap().status, StatusCode::OK);

    // The engine validates as Twilio's helper libraries do: the public URL and the form it got.
    let seen = engine_saw(&engine, &sid(300));
    assert!(seen.headers.contains_key("x-callgate-context"), "the call was enriched");
    let got: Vec<(String, String)> = form_urlencoded::parse(&seen.body).into_owned().collect();
    let got: Vec<(&str, &str)> = got.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(seen.headers["x-twilio-signature"], sign_with_token(TOKEN, url, &got).as_str());
}

/// The decision record of `sid`, once it is kept (the keeper runs beside the call).
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

#[tokio::test]
async fn the_decision_record_says_why_for_each_kind_of_call() {
    let cases = vec![
        (
            "+15550000041",
            r#"{"action":"accept","agent_id":"agent_vip","metadata":{"secret_note":"VIP"}}"#.to_owned(),
        ),
        ("+15550000042", r#"{"action":"reject","reason":"no credit"}"#.to_owned()),
        ("+15550000043", "nope".to_owned()),
    ];
    let gate = gate_by_number(cases.clone()).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let mut table: Value = serde_json::from_str(&routes(
        &["+15550000041", "+15550000042", "+15550000043"],
        &gate.url("/gate?token=S3CRET"),
    ))
    .unwrap();
    table["numbers"]["+15550000044"] = json!({ "agent_id": "agent_free" });
    let cg = Callgate::spawn_with(&table.to_string(), &engine.url(""), |s| s.decision_log_size = 4).await;

    let started = std::time::SystemTime::now();
    for (i, number) in ["+15550000041", "+15550000042", "+15550000043", "+15550000044"].iter().enumerate() {
        post_form(&cg.url("/twilio/voice"), &ringing_sid(number, &sid(400 + i))).await;
    }
    let accept = record_of(&cg, &sid(400)).await;
    assert_eq!(accept["call_id"], sid(400));
    assert_eq!(accept["to"], "+15550000041");
    assert_eq!(accept["from"], "+14155550100");
    assert_eq!(accept["agent_id"], "agent_vip");
    assert_eq!(accept["override_agent_id"], "agent_vip");
    assert_eq!(accept["source"], "number");
    assert_eq!(accept["decision"], "accept");
    assert_eq!(accept["cause"], Value::Null);
    assert!(accept["gate_ms"].as_f64().unwrap() > 0.0);
    let at = humantime::parse_rfc3339(accept["at"].as_str().unwrap()).expect("RFC 3339, UTC");
    assert!(at + Duration::from_secs(1) >= started);
    assert!(!accept.to_string().contains("VIP"), "records hold no metadata");

    let reject = record_of(&cg, &sid(401)).await;
    assert_eq!((reject["decision"].as_str(), reject["reason"].as_str()), (Some("reject"), Some("no credit")));
    assert_eq!(reject["agent_id"], "agent_num");
    let failed = record_of(&cg, &sid(402)).await;
    assert_eq!(
        (failed["decision"].as_str(), failed["cause"].as_str()),
        (Some("fail_open"), Some("malformed"))
    );
    let free = record_of(&cg, &sid(403)).await;
    assert_eq!((free["decision"].as_str(), free["source"].as_str()), (Some("no_gate"), Some("none")));
    assert_eq!(free["agent_id"], "agent_free");
    assert_eq!(free["gate_ms"], Value::Null);

    // Unknown: 404. Evicted past --decision-log-size (4 here): 404.
    let (status, body) = cg.admin("GET", &format!("/v1/calls/{}", sid(999)), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    post_form(&cg.url("/twilio/voice"), &ringing_sid("+15550000044", &sid(404))).await;
    record_of(&cg, &sid(404)).await;
    let (status, _) = cg.admin("GET", &format!("/v1/calls/{}", sid(400)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the oldest record is evicted");
    // Without a key: 401, whatever the sid.
    let answer = get(&format!("http://{}/v1/calls/{}", cg.admin, sid(401))).await.unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_slow_gate_and_a_silent_engine_are_answered_within_the_twilio_deadline() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_secs(4))).await;
    let engine = Silent::start().await;
    let to = "+15550000051";
    let cg = Binary::spawn(
        &routes(&[to], &gate.url("/gate")),
        &format!("http://{}", engine.addr),
        &["--twilio-deadline", "6s"],
    );
    let cut = "callgate_deadline_cut_total";
    assert_eq!(cg.metric(cut).await, 0.0);
    let started = Instant::now();
    let answer = post_form(&cg.url("/twilio/voice"), &ringing_sid(to, &sid(500))).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_millis(6_300), "answered after {took:?}, deadline 6 s");
    assert!(took >= Duration::from_millis(5_900), "the engine had what the gate left ({took:?})");
    assert_eq!(cg.metric(cut).await, 1.0);
}
