//! `/metrics` on the real binary (one process per test, since the recorder is global): every
//! series exported at 0 from start-up, counters and histograms moving exactly as calls are
//! decided, and nothing identifying ever in a label.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const TO: &str = "+447700900123";

fn calls(decision: &str) -> String {
    format!("callgate_inbound_calls_total{{decision=\"{decision}\"}}")
}

fn failures(cause: &str) -> String {
    format!("callgate_gate_failures_total{{cause=\"{cause}\"}}")
}

#[tokio::test]
async fn every_series_is_exported_at_zero_from_start_up() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &[]);
    let text = get(&cg.admin_url("/metrics")).await.unwrap().text();
    let mut series: Vec<String> =
        ["accept", "reject", "fail_open", "fail_closed", "no_gate"].map(calls).into();
    series.extend(["timeout", "connect", "status", "malformed", "overload"].map(failures));
    series.extend(
        ["connect", "timeout", "protocol"]
            .map(|c| format!("callgate_upstream_errors_total{{cause=\"{c}\"}}")),
    );
    series.extend(["ok", "error"].map(|r| format!("callgate_admin_writes_total{{result=\"{r}\"}}")));
    series.extend(["ok", "error"].map(|r| format!("callgate_tls_reloads_total{{result=\"{r}\"}}")));
    series.push("callgate_twilio_signature_failures_total".into());
    series.push("callgate_routes_reloads_total{result=\"error\"}".into());
    for s in &series {
        assert_eq!(metric_value(&text, s), Some(0.0), "{s} at 0 in:\n{text}");
    }
    for r in ["accept", "reject", "failure"] {
        let s = format!("callgate_gate_duration_seconds_count{{result=\"{r}\"}}");
        assert_eq!(metric_value(&text, &s), Some(0.0), "{s}");
    }
    for r in ["voice", "proxy"] {
        let s = format!("callgate_request_duration_seconds_count{{route=\"{r}\"}}");
        assert_eq!(metric_value(&text, &s), Some(0.0), "{s}");
    }
    assert_eq!(metric_value(&text, "callgate_overhead_seconds_count"), Some(0.0));
    assert_eq!(
        metric_value(&text, "callgate_routes_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "the first load"
    );
    assert_eq!(metric_value(&text, "callgate_routes_last_reload_success"), Some(1.0));
    assert!(text.contains(&format!("callgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    for name in
        ["callgate_inbound_calls_total", "callgate_gate_duration_seconds", "callgate_overhead_seconds"]
    {
        assert!(text.contains(&format!("# HELP {name} ")), "help text for {name}");
    }
    assert!(text.contains("# TYPE callgate_gate_duration_seconds histogram"));
    assert!(text.contains("callgate_overhead_seconds_bucket{le=\"0.00005\"}"), "buckets start at 50 µs");
    assert!(text.contains("callgate_overhead_seconds_bucket{le=\"30\"}"), "buckets end at 30 s");
}

/// Sends one ringing call to `to` and waits for its answer.
async fn call(cg: &Binary, to: &str) -> Answer {
    post_form(&cg.url("/twilio/voice"), &ringing(to)).await
}

#[tokio::test]
async fn counters_move_exactly_as_calls_are_decided() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let accept = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let reject = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let status = Stub::start(Reply::json(r#"{"action":"reject"}"#).status(500)).await;
    let malformed = Stub::start(Reply::json(r#"{"action":"REJECT"}"#)).await;
    let slow = Stub::start(Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_secs(3))).await;
    let dead = dead_addr().await;
    let gate = |url: String| json!({"gate": {"url": url}});
    let routes = json!({"numbers": {
        "+15005550001": gate(accept.url("/g?token=S3CRET")),
        "+15005550002": gate(reject.url("/g")),
        "+15005550003": gate(status.url("/g")),
        "+15005550004": gate(malformed.url("/g")),
        "+15005550005": {"gate": {"url": slow.url("/g"), "timeout_ms": 200}},
        "+15005550006": gate(format!("http://{dead}/g")),
        "+15005550007": {"gate": {"url": format!("http://{dead}/g"), "on_failure": "reject"}},
    }});
    let cg = Binary::spawn(&routes.to_string(), &engine.url(""), &[]);

    let steps: [(&str, &str, Option<&str>); 8] = [
        ("+15005550001", "accept", None),
        ("+15005550002", "reject", None),
        ("+15005550003", "fail_open", Some("status")),
        ("+15005550004", "fail_open", Some("malformed")),
        ("+15005550005", "fail_open", Some("timeout")),
        ("+15005550006", "fail_open", Some("connect")),
        ("+15005550007", "fail_closed", Some("connect")),
        ("+15005550099", "no_gate", None),
    ];
    let mut expected_calls = std::collections::HashMap::new();
    let mut expected_failures = std::collections::HashMap::new();
    for (to, decision, cause) in steps {
        call(&cg, to).await;
        *expected_calls.entry(decision).or_insert(0.0) += 1.0;
        if let Some(cause) = cause {
            *expected_failures.entry(cause).or_insert(0.0) += 1.0;
        }
        for d in ["accept", "reject", "fail_open", "fail_closed", "no_gate"] {
            let want = expected_calls.get(d).copied().unwrap_or(0.0);
            assert_eq!(cg.metric(&calls(d)).await, want, "after {to}: {d}");
        }
        for c in ["timeout", "connect", "status", "malformed", "overload"] {
            let want = expected_failures.get(c).copied().unwrap_or(0.0);
            assert_eq!(cg.metric(&failures(c)).await, want, "after {to}: cause {c}");
        }
    }
    let count = |r: &str| format!("callgate_gate_duration_seconds_count{{result=\"{r}\"}}");
    assert_eq!(cg.metric(&count("accept")).await, 1.0);
    assert_eq!(cg.metric(&count("reject")).await, 1.0);
    assert_eq!(cg.metric(&count("failure")).await, 5.0);
    assert_eq!(cg.metric("callgate_request_duration_seconds_count{route=\"voice\"}").await, 8.0);
    assert_eq!(cg.metric("callgate_overhead_seconds_count").await, 8.0);
    let timeout_sum = cg.metric("callgate_gate_duration_seconds_sum{result=\"failure\"}").await;
    assert!(timeout_sum >= 0.2, "the timed-out exchange is in the histogram: {timeout_sum}");
    let overhead = cg.metric("callgate_overhead_seconds_sum").await;
    assert!(overhead < 0.2, "the 200 ms gate wait is not counted as overhead: {overhead}");

    get(&cg.url("/twilio/status")).await.unwrap();
    assert_eq!(cg.metric("callgate_request_duration_seconds_count{route=\"proxy\"}").await, 1.0);

    // Nothing identifying is ever a label or a value.
    let text = get(&cg.admin_url("/metrics")).await.unwrap().text();
    for secret in ["S3CRET", "+1500555", "1500555", "CA1111", "127.0.0.1", "token"] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test]
async fn overload_counts_the_calls_beyond_the_cap() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let silent = Silent::start().await;
    let silent_url = format!("http://{}/g", silent.addr);
    let routes = json!({"numbers": {TO: {"gate": {"url": silent_url, "timeout_ms": 2000}}}});
    let cg = std::sync::Arc::new(Binary::spawn(
        &routes.to_string(),
        &engine.url(""),
        &["--gate-max-pending", "2"],
    ));
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let cg = cg.clone();
            tokio::spawn(async move { call(&cg, TO).await })
        })
        .collect();
    for c in pending {
        assert_eq!(c.await.unwrap().status, 200);
    }
    assert_eq!(cg.metric(&failures("overload")).await, 3.0);
    assert_eq!(cg.metric(&failures("timeout")).await, 2.0);
    assert_eq!(cg.metric(&calls("fail_open")).await, 5.0);
}

#[tokio::test]
async fn engine_errors_are_counted_by_cause() {
    let dead = dead_addr().await;
    let cg = Binary::spawn("{}", &format!("http://{dead}"), &[]);
    call(&cg, TO).await;
    get(&cg.url("/twilio/status")).await.unwrap();
    assert_eq!(cg.metric("callgate_upstream_errors_total{cause=\"connect\"}").await, 2.0);

    let slow = Stub::start(Reply::json("").delay(Duration::from_secs(3))).await;
    let cg = Binary::spawn("{}", &slow.url(""), &["--upstream-timeout", "200ms"]);
    assert_eq!(call(&cg, TO).await.status, 504);
    assert_eq!(cg.metric("callgate_upstream_errors_total{cause=\"timeout\"}").await, 1.0);
}

#[tokio::test]
async fn reloads_and_admin_writes_are_counted() {
    let engine = Stub::start(Reply::json("")).await;
    let original = json!({"numbers": {TO: {"agent_id": "a"}}}).to_string();
    let cg = Binary::spawn(&original, &engine.url(""), &[]);
    assert_eq!(cg.metric("callgate_routes_entries{kind=\"number\"}").await, 1.0);
    let routes = cg.dir.path().join("routes.json");

    std::fs::write(&routes, "{ not json").unwrap();
    eventually(Duration::from_secs(5), || async {
        cg.metric("callgate_routes_reloads_total{result=\"error\"}").await == 1.0
    })
    .await;
    assert_eq!(cg.metric("callgate_routes_last_reload_success").await, 0.0);
    let failed = cg.logs_with("routes reload failed; the last good table keeps serving", 1);
    assert!(failed[0]["reason"].as_str().unwrap().contains("line 1"), "{failed:?}");

    // Rolling back to the very content in force counts as a good reload again.
    std::fs::write(&routes, &original).unwrap();
    eventually(Duration::from_secs(5), || async {
        cg.metric("callgate_routes_last_reload_success").await == 1.0
    })
    .await;
    std::fs::write(&routes, "{ not json either").unwrap();
    eventually(Duration::from_secs(5), || async {
        cg.metric("callgate_routes_reloads_total{result=\"error\"}").await == 2.0
    })
    .await;

    std::fs::write(
        &routes,
        json!({"agents": {"a": {}}, "numbers": {TO: {}, "+447700900124": {}}}).to_string(),
    )
    .unwrap();
    eventually(Duration::from_secs(5), || async {
        cg.metric("callgate_routes_last_reload_success").await == 1.0
    })
    .await;
    assert_eq!(cg.metric("callgate_routes_reloads_total{result=\"ok\"}").await, 3.0);
    assert_eq!(cg.metric("callgate_routes_entries{kind=\"number\"}").await, 2.0);
    assert_eq!(cg.metric("callgate_routes_entries{kind=\"agent\"}").await, 1.0);

    let put = |agent: &str| cg.admin("PUT", "/v1/numbers/+447700900125", Some(json!({ "agent_id": agent })));
    assert_eq!(put("a").await.0, 200);
    assert_eq!(put("bad id").await.0, 400);
    assert_eq!(cg.metric("callgate_admin_writes_total{result=\"ok\"}").await, 1.0);
    assert_eq!(cg.metric("callgate_admin_writes_total{result=\"error\"}").await, 1.0);
    assert_eq!(cg.metric("callgate_routes_entries{kind=\"number\"}").await, 3.0);
}

fn modes(text: &str) -> [Option<f64>; 3] {
    ["enforce", "report", "off"]
        .map(|m| metric_value(text, &format!("callgate_twilio_signature_mode{{mode=\"{m}\"}}")))
}

fn warnings(cg: &Binary) -> Vec<String> {
    // Start-up lines are written before "callgate serving", which `spawn` waited for.
    std::thread::sleep(callgate::logging::FLUSH_INTERVAL * 4);
    let logs = cg.logs.lock().unwrap();
    logs.iter()
        .filter(|l| l["level"] == "WARN")
        .map(|l| l["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Issue 18 item 4: a signature check that is off, or only reported, is said at start-up and
/// exported, so that it is never silently off in production.
#[tokio::test]
async fn the_signature_mode_is_exported_and_warned_about_unless_enforced() {
    let engine = Stub::start(Reply::json("")).await;
    let cases: [(&[&str], [f64; 3], Option<&str>); 4] = [
        (&[], [0.0, 0.0, 1.0], Some("--twilio-signature off")),
        (
            &["--twilio-auth-token", "t0k", "--twilio-signature", "report"],
            [0.0, 1.0, 0.0],
            Some("--twilio-signature report"),
        ),
        (&["--twilio-auth-token", "t0k"], [1.0, 0.0, 0.0], Some("--public-url")),
        (&["--twilio-auth-token", "t0k", "--public-url", "https://voice.example.com"], [1.0, 0.0, 0.0], None),
    ];
    for (args, want, warning) in cases {
        let cg = Binary::spawn("{}", &engine.url(""), args);
        let text = get(&cg.admin_url("/metrics")).await.unwrap().text();
        assert_eq!(modes(&text), want.map(Some), "{args:?}");
        let warned = warnings(&cg);
        match warning {
            Some(w) => {
                let lines: Vec<_> = warned.iter().filter(|l| l.contains("signature")).collect();
                assert_eq!(lines.len(), 1, "{args:?}: one line: {warned:?}");
                assert!(lines[0].contains(w), "{args:?}: {warned:?}");
            }
            None => assert!(warned.iter().all(|l| !l.contains("signature")), "{args:?}: {warned:?}"),
        }
    }
}

/// Issue 18 item 4: a forwarded header that is not a host or a scheme is refused and counted.
#[tokio::test]
async fn a_bad_forwarded_header_is_counted_as_a_signature_failure() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &["--twilio-auth-token", "t0k"]);
    // Signed for the URL the header makes: without the check it validates.
    let form = ringing(TO);
    let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let url = "http://voice.example.com/other/path?/twilio/voice";
    let signature = callgate::webhook::signature::sign_with_token("t0k", url, &pairs);
    let request = http::Request::post(cg.url("/twilio/voice"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .header("x-forwarded-host", "voice.example.com/other/path?")
        .body(http_body_util::Full::new(bytes::Bytes::from(form)))
        .unwrap();
    assert_eq!(send(request).await.unwrap().status, http::StatusCode::FORBIDDEN);
    assert_eq!(cg.metric("callgate_twilio_signature_failures_total").await, 1.0);
    assert_eq!(engine.count(), 0);
}
