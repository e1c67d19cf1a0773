//! `POST /v1/test-call` (SPEC §16) against the real binary: each decision kind, the gate told
//! it is a test, the engine never contacted, nothing kept or counted as a call.

mod support;

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn a_test_call_is_decided_like_a_call_and_leaves_no_trace() {
    let gate = Stub::start_with(|seen| {
        let asked: Value = serde_json::from_slice(&seen.body).unwrap();
        match asked["to"].as_str().unwrap() {
            "+15550000001" => Reply::json(r#"{"action":"accept","agent_id":"agent_vip"}"#),
            "+15550000002" => Reply::json(r#"{"action":"reject","reason":"no credit"}"#),
            _ => Reply::json("oops").status(500),
        }
    })
    .await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let url = gate.url("/gate");
    let routes = json!({
        "agents": { "agent_a": { "gate": { "url": url } } },
        "numbers": {
            "+15550000001": { "agent_id": "agent_a" },
            "+15550000002": { "gate": { "url": url } },
            "+15550000003": { "gate": { "url": url } },
            "+15550000004": { "gate": { "url": url, "on_failure": "reject" } },
            "+15550000005": { "agent_id": "agent_free" }
        }
    });
    let cg = Binary::spawn(&routes.to_string(), &engine.url(""), &[]);

    let cases = [
        ("+15550000001", "accept", None, "agent"),
        ("+15550000002", "reject", None, "number"),
        ("+15550000003", "fail_open", Some("status"), "number"),
        ("+15550000004", "fail_closed", Some("status"), "number"),
        ("+15550000005", "no_gate", None, "none"),
    ];
    let mut sids = Vec::new();
    for (to, decision, cause, source) in cases {
        let (status, record) =
            cg.admin("POST", "/v1/test-call", Some(json!({ "to": to, "from": "+447386172392" }))).await;
        assert_eq!(status, StatusCode::OK, "{to}: {record}");
        assert_eq!(record["decision"], decision, "{to}");
        assert_eq!(record["cause"].as_str(), cause, "{to}");
        assert_eq!(record["source"], source, "{to}");
        assert_eq!(record["to"], to);
        assert_eq!(record["from"], "+447386172392");
        let sid = record["call_id"].as_str().unwrap().to_owned();
        assert!(sid.len() == 34 && sid.starts_with("CA"), "{sid}");
        assert!(humantime::parse_rfc3339(record["at"].as_str().unwrap()).is_ok());
        sids.push(sid);
    }
    let (_, first) = cg.admin("POST", "/v1/test-call", Some(json!({ "to": "+15550000001" }))).await;
    assert_eq!(first["agent_id"], "agent_vip");
    assert_eq!(first["from"], "");
    assert_ne!(first["call_id"], sids[0], "each test call has its own CallSid");

    // The gate was told each time; the engine never heard of any of it.
    let asked = gate.seen();
    assert_eq!(asked.len(), 5);
    for request in &asked {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["test"], true, "{body}");
        assert_eq!(body["event"], "call.inbound");
    }
    assert_eq!(engine.count(), 0);
    // Not counted as calls, not kept.
    for decision in ["accept", "reject", "fail_open", "fail_closed", "no_gate"] {
        let series = format!("callgate_inbound_calls_total{{decision=\"{decision}\"}}");
        assert_eq!(cg.metric(&series).await, 0.0, "{series}");
    }
    assert_eq!(cg.metric(r#"callgate_gate_failures_total{cause="status"}"#).await, 0.0);
    assert_eq!(cg.metric(r#"callgate_gate_duration_seconds_count{result="accept"}"#).await, 0.0);
    for sid in &sids {
        let (status, _) = cg.admin("GET", &format!("/v1/calls/{sid}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a test call keeps no record");
    }
    // A real call afterwards does reach the gate without the flag.
    post_form(&cg.url("/twilio/voice"), &ringing("+15550000005")).await;
    assert_eq!(engine.count(), 1);
}

#[tokio::test]
async fn a_test_call_needs_a_to_and_a_key() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &[]);
    for body in
        [json!({}), json!({ "from": "+15550000001" }), json!({ "to": 5 }), json!({ "to": "+1555", "x": 1 })]
    {
        let (status, answer) = cg.admin("POST", "/v1/test-call", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_field", "{body}");
    }
    let answer = get(&cg.admin_url("/v1/test-call")).await.unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let (status, _) = cg.admin("GET", "/v1/test-call", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
