//! Check chains (SPEC §3, §6, §11) end to end: the seed's DND pre-check against real stub APIs
//! on loopback, retries counted at the stub, placeholders, credentials and their reload, caller
//! lists, schedules with an injected clock, `/v1/precheck` and the check-set admin endpoints.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

/// The seed's DND check, exactly as the seed writes it, against `url`.
fn dnd_check(url: &str) -> Value {
    json!({
        "type": "external_api",
        "name": "DND Check",
        "enabled": true,
        "credential_id": "cred_dnd_provider",
        "http_request": {
            "url": format!("{url}?phone={{customer_mobile_number}}"),
            "method": "GET",
            "headers": { "Authorization": "Bearer {dnd_api_key}" },
            "timeout": 5,
            "max_retries": 2
        },
        "response_config": { "response_field": "blocked", "response_field_value": false },
        "default_on_failure": "proceed"
    })
}

/// An `external_api` check calling `url`, proceeding when `field` equals `value`.
fn api_check(name: &str, url: &str, field: &str, value: Value) -> Value {
    json!({
        "type": "external_api", "name": name,
        "http_request": { "url": url, "timeout": 1, "max_retries": 1 },
        "response_config": { "response_field": field, "response_field_value": value }
    })
}

/// Writes a credentials file the way a Kubernetes Secret volume holds one: `creds.json` a link
/// to `..data/creds.json`, `..data` a link to a timestamped directory.
fn secret_volume(dir: &Path, generation: &str, content: &Value) {
    let target = dir.join(format!("..{generation}"));
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("creds.json"), content.to_string()).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("creds.json");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/creds.json", &link).unwrap();
    }
}

/// A DND API: `{"blocked": ...}` by the `phone` query parameter (`+` arrives as `%2B`).
async fn dnd_api(key: &'static str) -> Stub {
    Stub::start_with(move |seen| {
        if seen.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(key) {
            return Reply::json(r#"{"error": "unauthorized"}"#).status(401);
        }
        let body = match seen.uri.split("phone=").nth(1).unwrap_or("") {
            "%2B447700900001" => r#"{"blocked": false}"#,
            "%2B447700900002" => r#"{"blocked": true}"#,
            "%2B447700900003" => r#"{"blocked": "false"}"#,
            _ => r#"{"unexpected": true}"#,
        };
        Reply::json(body)
    })
    .await
}

async fn precheck(cg: &Callgate, body: Value) -> (StatusCode, Value) {
    cg.admin("POST", "/v1/precheck", Some(body)).await
}

fn statuses(answer: &Value) -> Vec<(String, String, Option<String>)> {
    answer["pre_check_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["reason"].as_str().map(Into::into),
            )
        })
        .collect()
}

/// A ringing inbound call to `to` from `from` with CallSid `sid`.
fn ringing_from(to: &str, from: &str, sid: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("AccountSid", "AC00000000000000000000000000000000");
    s.append_pair("CallSid", sid);
    s.append_pair("From", from);
    s.append_pair("To", to);
    s.append_pair("Direction", "inbound");
    s.append_pair("CallStatus", "ringing");
    s.finish()
}

fn with_credentials(dir: &Path, creds: &Value) -> std::path::PathBuf {
    let path = dir.join("creds.json");
    std::fs::write(&path, creds.to_string()).unwrap();
    path
}

#[tokio::test]
async fn the_seeds_dnd_example_proceeds_on_false_and_skips_on_true_or_the_string_false() {
    let api = dnd_api("Bearer DND-KEY-1").await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let creds_dir = tempfile::tempdir().unwrap();
    let creds =
        with_credentials(creds_dir.path(), &json!({"cred_dnd_provider": {"dnd_api_key": "DND-KEY-1"}}));
    let routes = json!({
        "agents": { "agent_support": { "gate": { "check_set": "dnd" } } },
        "numbers": { "+15005550006": { "agent_id": "agent_support" } },
        "check_sets": { "dnd": [dnd_check(&api.url("/check"))] }
    });
    let cg =
        Callgate::spawn_with(&routes.to_string(), &engine.url(""), |s| s.credentials = Some(creds)).await;

    // The operator's outbound dialer: the lead's number is the placeholder.
    let cases = [
        ("+447700900001", "proceed", "proceed"),
        ("+447700900002", "skip", "skip"),
        ("+447700900003", "skip", "skip"),
    ];
    for (number, decision, status) in cases {
        let (code, answer) =
            precheck(&cg, json!({"check_set": "dnd", "payload": {"customer_mobile_number": number}})).await;
        assert_eq!(code, StatusCode::OK, "{answer}");
        assert_eq!(answer["decision"], decision, "{number}");
        assert_eq!(statuses(&answer), [("DND Check".to_owned(), status.to_owned(), None)]);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, http::Method::GET);
    assert_eq!(seen[0].uri, "/check?phone=%2B447700900001");

    // An inbound call: the caller is the placeholder; a skip is a reject named by the check.
    for (i, (from, decision)) in
        [("+447700900001", "accept"), ("+447700900002", "reject")].into_iter().enumerate()
    {
        let sid = format!("CA{i:032}");
        post_form(&cg.url("/twilio/voice"), &ringing_from("+15005550006", from, &sid)).await;
        let record = cg.record_of(&sid).await;
        assert_eq!(record["decision"], decision);
        let status = if decision == "accept" { "proceed" } else { "skip" };
        assert_eq!(record["checks"], json!([{"name": "DND Check", "status": status}]));
        if decision == "reject" {
            assert_eq!(record["reason"], "DND Check");
        }
    }
    let forwarded = engine.seen();
    assert_eq!(forwarded.len(), 1, "the rejected call never reached the engine");
    assert_eq!(forwarded[0].headers["x-callgate-decision"], "accept");
    // The engine is told what each check did.
    use base64::Engine as _;
    let header = forwarded[0].headers["x-callgate-context"].to_str().unwrap();
    let context: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
            .unwrap();
    assert_eq!(
        context,
        json!({"agent_id": "agent_support", "checks": [{"name": "DND Check", "status": "proceed"}]})
    );
}

#[tokio::test]
async fn a_nested_path_with_an_index_is_compared_as_json_and_a_missing_field_skips() {
    let api = Stub::start_with(|seen| {
        Reply::json(if seen.uri.contains("missing") {
            r#"{"data": {"items": []}}"#
        } else {
            r#"{"data": {"items": [{"is_dnd": true}, {"is_dnd": false, "tier": 2}]}}"#
        })
    })
    .await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let cases = [
        ("/ok", "data.items.1.is_dnd", json!(false), "proceed"),
        ("/ok", "data.items.0.is_dnd", json!(false), "skip"),
        ("/ok", "data.items.1.tier", json!(2), "proceed"),
        ("/ok", "data.items.1.tier", json!("2"), "skip"),
        ("/missing", "data.items.1.is_dnd", json!(false), "skip"),
        ("/ok", "data.nothing", json!(null), "skip"),
    ];
    for (path, field, value, decision) in cases {
        let check = api_check("Nested", &api.url(path), field, value.clone());
        let (_, answer) = precheck(&cg, json!({"checks": [check], "payload": {}})).await;
        assert_eq!(answer["decision"], decision, "{field} = {value}");
    }
}

#[tokio::test]
async fn each_failure_kind_fails_the_check_and_default_on_failure_decides() {
    let api = Stub::start_with(|seen| match seen.uri.as_str() {
        "/503" => Reply::json("{}").status(503),
        "/429" => Reply::json("{}").status(429),
        "/404" => Reply::json("{}").status(404),
        "/302" => Reply::json("{}").status(302).header("location", "/ok"),
        "/html" => Reply::json("<html>").header("content-type", "text/html"),
        "/slow" => Reply::json(r#"{"ok": true}"#).delay(Duration::from_millis(1500)),
        _ => Reply::json(r#"{"ok": true}"#),
    })
    .await;
    let dead = dead_addr().await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let cases = [
        (api.url("/503"), "status"),
        (api.url("/429"), "status"),
        (api.url("/404"), "status"),
        (api.url("/302"), "status"),
        (api.url("/html"), "malformed"),
        (api.url("/slow"), "timeout"),
        (format!("http://{dead}/x"), "connect"),
    ];
    for (url, cause) in cases {
        for (policy, decision) in [("proceed", "proceed"), ("skip", "skip")] {
            let mut check = api_check("Flaky", &url, "ok", json!(true));
            check["default_on_failure"] = json!(policy);
            check["http_request"]["max_retries"] = json!(1);
            let (_, answer) = precheck(&cg, json!({"checks": [check], "payload": {}})).await;
            assert_eq!(answer["decision"], decision, "{url} {policy}");
            assert_eq!(
                statuses(&answer),
                [("Flaky".to_owned(), "failed".to_owned(), Some(cause.to_owned()))],
                "{url}"
            );
        }
    }
}

#[tokio::test]
async fn retries_only_on_timeout_connect_5xx_and_429_and_never_past_the_deadline() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg =
        Callgate::spawn_with("{}", &engine.url(""), |s| s.gate_timeout = Duration::from_millis(700)).await;
    for (status, retries, calls) in [(503, 3, 4), (500, 1, 2), (429, 2, 3), (404, 3, 1), (400, 5, 1)] {
        let api = Stub::start(Reply::json("{}").status(status)).await;
        let mut check = api_check("Retry", &api.url("/x"), "ok", json!(true));
        check["http_request"]["max_retries"] = json!(retries);
        let (_, answer) = precheck(&cg, json!({"checks": [check], "payload": {}})).await;
        assert_eq!(answer["pre_check_results"][0]["status"], "failed");
        assert_eq!(api.count(), calls, "{status} with max_retries {retries}");
    }
    // Each attempt takes 300 ms; the 700 ms deadline leaves room for two at most, and the
    // answer comes by the deadline whatever max_retries says.
    let api = Stub::start(Reply::json("{}").status(503).delay(Duration::from_millis(300))).await;
    let mut check = api_check("Slow", &api.url("/x"), "ok", json!(true));
    check["http_request"]["max_retries"] = json!(5);
    let started = Instant::now();
    let (_, answer) = precheck(&cg, json!({"checks": [check], "payload": {}})).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "{took:?}");
    // Two 503s; a third attempt would end past the deadline, so the failure stands.
    assert_eq!(api.count(), 2);
    assert_eq!(answer["pre_check_results"][0]["reason"], "status");
    // An answer slower than what is left of the deadline is cut at the deadline: timeout.
    let api = Stub::start(Reply::json("{}").delay(Duration::from_millis(2000))).await;
    let check = api_check("Slower", &api.url("/x"), "ok", json!(true));
    let started = Instant::now();
    let (_, answer) = precheck(&cg, json!({"checks": [check], "payload": {}})).await;
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!((api.count(), &answer["pre_check_results"][0]["reason"]), (1, &json!("timeout")));
}

#[tokio::test]
async fn the_first_skip_ends_the_chain_and_later_checks_are_never_called_and_disabled_ones_never_run() {
    let first = Stub::start(Reply::json(r#"{"ok": true}"#)).await;
    let second = Stub::start(Reply::json(r#"{"ok": false}"#)).await;
    let third = Stub::start(Reply::json(r#"{"ok": true}"#)).await;
    let disabled = Stub::start(Reply::json(r#"{"ok": true}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let mut off = api_check("Off", &disabled.url("/x"), "ok", json!(true));
    off["enabled"] = json!(false);
    let checks = json!([
        off,
        api_check("First", &first.url("/x"), "ok", json!(true)),
        api_check("Second", &second.url("/x"), "ok", json!(true)),
        api_check("Third", &third.url("/x"), "ok", json!(true)),
    ]);
    let routes = json!({"numbers": {"+15005550006": {"gate": {"checks": checks}}}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let answer =
        post_form(&cg.url("/twilio/voice"), &ringing_from("+15005550006", "+447700900001", "CA1")).await;
    assert!(answer.text().contains("<Reject"), "{}", answer.text());
    let record = cg.record_of("CA1").await;
    assert_eq!((record["decision"].as_str(), record["reason"].as_str()), (Some("reject"), Some("Second")));
    assert_eq!(
        record["checks"],
        json!([{"name": "Off", "status": "disabled"}, {"name": "First", "status": "proceed"}, {"name": "Second", "status": "skip"}])
    );
    assert_eq!((first.count(), second.count(), third.count(), disabled.count()), (1, 1, 0, 0));
}

#[tokio::test]
async fn placeholders_fill_url_headers_query_and_body_and_a_missing_one_fails_with_config() {
    let api = Stub::start(Reply::json(r#"{"ok": true}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let creds_dir = tempfile::tempdir().unwrap();
    let creds =
        with_credentials(creds_dir.path(), &json!({"cred": {"token": "T0K3N", "user": "u", "pass": "p w"}}));
    let check = json!({
        "type": "external_api", "name": "Lookup", "credential_id": "cred",
        "http_request": {
            "url": format!("{}/lead/{{customer_mobile_number}}", api.url("")),
            "method": "POST",
            "headers": { "X-Caller": "{customer_mobile_number}", "X-Token": "{token}", "X-Tier": "{tier}" },
            "query_params": { "to": "{to}", "note": "a b&c" },
            "body": { "phone": "{customer_mobile_number}", "nested": ["{tier}", 5], "static": true },
            "auth": { "type": "basic", "username": "{user}", "password": "{pass}" }
        },
        "response_config": { "response_field": "ok", "response_field_value": true }
    });
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| s.credentials = Some(creds)).await;
    let payload = json!({"customer_mobile_number": "+447700900123", "to": "+15005550006", "tier": 3});
    let (_, answer) = precheck(&cg, json!({"checks": [check.clone()], "payload": payload})).await;
    assert_eq!(answer["decision"], "proceed", "{answer}");
    let seen = &api.seen()[0];
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.uri, "/lead/%2B447700900123?note=a%20b%26c&to=%2B15005550006");
    assert_eq!(seen.headers["x-caller"], "+447700900123");
    assert_eq!(seen.headers["x-token"], "T0K3N");
    assert_eq!(seen.headers["x-tier"], "3");
    assert_eq!(seen.headers["content-type"], "application/json");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("u:p w");
    assert_eq!(seen.headers["authorization"], format!("Basic {basic}").as_str());
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body, json!({"phone": "+447700900123", "nested": ["3", 5], "static": true}));

    // Without `tier` in the payload, the check cannot be built: config, never sent.
    let (_, answer) = precheck(
        &cg,
        json!({"checks": [check], "payload": {"customer_mobile_number": "+447700900123", "to": "+1"}}),
    )
    .await;
    assert_eq!(statuses(&answer), [("Lookup".to_owned(), "failed".to_owned(), Some("config".to_owned()))]);
    assert_eq!(answer["decision"], "proceed", "default_on_failure is proceed");
    assert_eq!(api.count(), 1);
}

#[tokio::test]
async fn credentials_swapped_by_a_data_link_are_used_while_calls_flow() {
    let api = dnd_api("Bearer KEY-TWO").await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let dir = tempfile::tempdir().unwrap();
    secret_volume(dir.path(), "2026_12_04_a", &json!({"cred_dnd_provider": {"dnd_api_key": "KEY-ONE"}}));
    let creds = dir.path().join("creds.json");
    let routes = json!({"check_sets": {"dnd": [dnd_check(&api.url("/check"))]}});
    let cg =
        Callgate::spawn_with(&routes.to_string(), &engine.url(""), |s| s.credentials = Some(creds)).await;
    let ask =
        || precheck(&cg, json!({"check_set": "dnd", "payload": {"customer_mobile_number": "+447700900001"}}));
    let (_, answer) = ask().await;
    assert_eq!(answer["pre_check_results"][0]["reason"], "status", "KEY-ONE is refused");

    secret_volume(dir.path(), "2026_12_04_b", &json!({"cred_dnd_provider": {"dnd_api_key": "KEY-TWO"}}));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (code, answer) = ask().await;
        assert_eq!(code, StatusCode::OK);
        let result = &answer["pre_check_results"][0];
        if result["status"] == "proceed" {
            break;
        }
        assert_eq!(
            result["reason"], "status",
            "a call during the swap sees the old key or the new, nothing else"
        );
        assert!(Instant::now() < deadline, "the new key was never used");
    }
    // An invalid file changing nothing: the_credentials_file_reloads_on_new_content_only.
}

/// The credentials file is reloaded when its content changes, and only then: the same bytes
/// written again reload nothing, an invalid file is counted and changes nothing.
#[tokio::test]
async fn the_credentials_file_reloads_on_new_content_only() {
    let api = dnd_api("Bearer KEY-TWO").await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let dir = tempfile::tempdir().unwrap();
    let one = json!({"cred_dnd_provider": {"dnd_api_key": "KEY-ONE"}});
    let creds = with_credentials(dir.path(), &one);
    let routes = json!({"check_sets": {"dnd": [dnd_check(&api.url("/check"))]}});
    let cg = Binary::spawn(&routes.to_string(), &engine.url(""), &["--credentials", creds.to_str().unwrap()]);
    let status = || async {
        let body = json!({"check_set": "dnd", "payload": {"customer_mobile_number": "+447700900001"}});
        let (_, answer) = cg.admin("POST", "/v1/precheck", Some(body)).await;
        answer["pre_check_results"][0]["status"].as_str().unwrap().to_owned()
    };
    let ok = r#"callgate_credentials_reloads_total{result="ok"}"#;
    let error = r#"callgate_credentials_reloads_total{result="error"}"#;
    assert_eq!(status().await, "failed", "KEY-ONE is refused");

    // The same bytes, written again: events and a new mtime, no reload. Nothing signals that
    // the watcher looked, so the window covers its longest debounce (300 ms) and a poll (500 ms).
    std::fs::write(&creds, one.to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(cg.metric(ok).await, 0.0, "rewriting the same content reloaded");

    std::fs::write(&creds, r#"{"cred_dnd_provider": "not an object"}"#).unwrap();
    eventually(Duration::from_secs(5), || async { cg.metric(error).await == 1.0 }).await;
    assert_eq!(cg.metric(ok).await, 0.0);
    assert_eq!(status().await, "failed", "the invalid file changed the keys in force");

    with_credentials(dir.path(), &json!({"cred_dnd_provider": {"dnd_api_key": "KEY-TWO"}}));
    eventually(Duration::from_secs(5), || async { cg.metric(ok).await == 1.0 }).await;
    assert_eq!(status().await, "proceed");
    assert_eq!(cg.metric(error).await, 1.0);
}

#[tokio::test]
async fn a_credential_never_appears_in_a_log_line_an_answer_or_a_metric() {
    const SECRET: &str = "S3CRET-DND-KEY";
    let api = Stub::start_with(|seen| {
        let ok = seen.headers.get("authorization").is_some_and(|v| v == "Bearer S3CRET-DND-KEY");
        Reply::json(if ok { r#"{"blocked": false}"# } else { r#"{"blocked": true}"# })
    })
    .await;
    let failing = Stub::start(Reply::json("{}").status(500)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = with_credentials(dir.path(), &json!({"cred_dnd_provider": {"dnd_api_key": SECRET}}));
    let mut failing_check = dnd_check(&failing.url("/check"));
    failing_check["name"] = json!("Failing");
    let routes = json!({
        "numbers": {"+15005550006": {"gate": {"check_set": "dnd"}}},
        "check_sets": {"dnd": [dnd_check(&api.url("/check")), failing_check]}
    });
    let cg = Binary::spawn(&routes.to_string(), &engine.url(""), &["--credentials", creds.to_str().unwrap()]);
    post_form(&cg.url("/twilio/voice"), &ringing_from("+15005550006", "+447700900001", "CA7")).await;
    let (_, pre) = cg.admin("POST", "/v1/precheck", Some(json!({"check_set": "dnd", "payload": {}}))).await;
    let (_, routes_now) = cg.admin("GET", "/v1/routes", None).await;
    let (_, set) = cg.admin("GET", "/v1/check-sets/dnd", None).await;
    let (_, record) = cg.admin("GET", "/v1/calls/CA7", None).await;
    std::fs::write(&creds, format!("{{\"cred_dnd_provider\": {{\"dnd_api_key\": \"{SECRET}\"")).unwrap();
    let metrics = get(&cg.admin_url("/metrics")).await.unwrap().text();
    let lines = cg.logs_with("call decided", 1);
    assert_eq!(lines[0]["decision"], "fail_open", "{lines:?}");
    assert_eq!(lines[0]["checks"], "DND Check=proceed,Failing=failed");
    assert_eq!(record["checks"][1], json!({"name": "Failing", "status": "failed", "reason": "status"}));
    cg.wait_for_log("credentials reload failed; the last good ones stay in force");
    // The call's failing check, and the precheck's two (no number to fill the DND URL: config).
    assert_eq!(
        metric_value(&metrics, r#"callgate_checks_total{type="external_api",result="failure"}"#),
        Some(3.0)
    );
    assert_eq!(metric_value(&metrics, r#"callgate_checks_total{type="schedule",result="skip"}"#), Some(0.0));
    let logs = cg.logs.lock().unwrap().iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    for shown in [logs, pre.to_string(), routes_now.to_string(), set.to_string(), record.to_string(), metrics]
    {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert!(api.count() >= 1);
}

#[tokio::test]
async fn caller_lists_deny_numbers_and_prefixes_allow_only_some_and_decide_for_anonymous_callers() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let deny = json!({"type": "caller_list", "name": "Blocklist", "deny": ["+447386172392", "+4487*"]});
    let allow = json!({"type": "caller_list", "name": "Allow", "allow": ["+1415*", "+447700900123"], "anonymous": "skip"});
    let cases = [
        (&deny, "+447386172392", "skip"),
        (&deny, "+447386172393", "proceed"),
        (&deny, "+448712345678", "skip"),
        (&deny, "+44871", "skip"),
        (&deny, "+4488", "proceed"),
        (&deny, "anonymous", "proceed"),
        (&allow, "+14155550100", "proceed"),
        (&allow, "+447700900123", "proceed"),
        (&allow, "+447700900124", "skip"),
        (&allow, "Restricted", "skip"),
        (&allow, "", "skip"),
        (&allow, "UNKNOWN", "skip"),
        (&allow, "+266696687", "skip"),
        (&allow, "+86282452253", "skip"),
        (&allow, "client:alice", "skip"),
        (&allow, "sip:bob@example.com", "skip"),
    ];
    for (check, caller, decision) in cases {
        let (_, answer) =
            precheck(&cg, json!({"checks": [check], "payload": {"customer_mobile_number": caller}})).await;
        assert_eq!(answer["decision"], decision, "{} for {caller:?}", check["name"]);
    }
    // Anonymous callers skipped whatever the lists say; on an inbound call the caller is From.
    let routes = json!({"numbers": {"+15005550006": {"gate": {"checks": [
        {"type": "caller_list", "name": "No anonymous", "allow": ["+1*"], "anonymous": "skip"}]}}}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    for (sid, from, body_is_reject) in
        [("CA1", "anonymous", true), ("CA2", "+14155550100", false), ("CA3", "+7378742833", true)]
    {
        let answer = post_form(&cg.url("/twilio/voice"), &ringing_from("+15005550006", from, sid)).await;
        assert_eq!(answer.text().contains("<Reject"), body_is_reject, "{from}");
    }
}

fn spring_forward_morning() -> jiff::Timestamp {
    // Sunday 29 March 2026, 08:30 UTC: 09:30 in London, an hour after the clocks went forward.
    "2026-03-29T08:30:00Z".parse().unwrap()
}

fn week_before_same_utc() -> jiff::Timestamp {
    // Sunday 22 March 2026, 08:30 UTC: 08:30 in London (GMT).
    "2026-03-22T08:30:00Z".parse().unwrap()
}

fn friday_night() -> jiff::Timestamp {
    // Saturday 3 January 2026, 01:30 in London: inside Friday's 22:00 to 02:00.
    "2026-01-03T01:30:00Z".parse().unwrap()
}

fn saturday_late() -> jiff::Timestamp {
    "2026-01-03T02:30:00Z".parse().unwrap()
}

#[tokio::test]
async fn schedules_follow_daylight_saving_and_run_past_midnight_with_an_injected_clock() {
    use callgate::decide::chain::{run, End, Facts};
    let routes = json!({"check_sets": {"hours": [{"type": "schedule", "name": "Opening hours", "timezone": "Europe/London",
        "open": [{"days": ["sun"], "from": "09:00", "to": "17:00"}, {"days": ["fri"], "from": "22:00", "to": "02:00"}],
        "closed_dates": ["2026-12-25"]}]}});
    let table =
        callgate::routes::RouteTable::parse(routes.to_string().as_bytes(), &Default::default()).unwrap();
    let checks = table.check_set("hours").unwrap().clone();
    let store = callgate::routes::store::RouteStore::new(table);
    let gate = callgate::gate::GateClient::new(
        callgate::tls::gate_client_config(None).unwrap(),
        Duration::from_secs(1),
        10,
        None,
        1,
    );
    let credentials = callgate::credentials::Credentials::default();
    let metrics = callgate::metrics::get();
    let breaker = callgate::decide::breaker::Breaker::new(0, Duration::from_secs(1), metrics);
    let dedup = callgate::decide::dedup::Dedup::new(Duration::ZERO);
    let contexts = callgate::decide::context::MemoryContexts::new(Duration::from_secs(1), 1, metrics);
    let facts = Facts::Call { from: "+447700900123", to: "+15005550006", call_id: "CA1", agent_id: None };
    let cases: [(fn() -> jiff::Timestamp, bool); 4] = [
        (spring_forward_morning, true),
        (week_before_same_utc, false),
        (friday_night, true),
        (saturday_late, false),
    ];
    for (clock, open) in cases {
        let stages = callgate::decide::Stages {
            routes: &store,
            gate: &gate,
            breaker: &breaker,
            dedup: &dedup,
            contexts: &contexts,
            credentials: &credentials,
            clock,
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let outcome = run(
            &stages,
            &checks,
            &facts,
            None,
            callgate::routes::OnFailure::Accept,
            deadline,
            (stages.clock)(),
        )
        .await;
        let want = if open { End::Accept } else { End::Reject("Opening hours".into()) };
        assert_eq!(outcome.end, want, "{}", clock());
    }
}

#[tokio::test]
async fn precheck_answers_proceed_and_skip_and_refuses_a_bad_request_naming_the_field() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let routes = json!({"check_sets": {"screening": [
        {"type": "caller_list", "name": "Blocklist", "deny": ["+447386172392"]}]}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let (code, answer) = precheck(
        &cg,
        json!({"check_set": "screening", "payload": {"customer_mobile_number": "+447700900123"}}),
    )
    .await;
    assert_eq!(
        (code, answer),
        (
            StatusCode::OK,
            json!({"decision": "proceed", "pre_check_results": [{"name": "Blocklist", "status": "proceed"}]})
        )
    );
    let (_, answer) = precheck(
        &cg,
        json!({"check_set": "screening", "payload": {"customer_mobile_number": "+447386172392"}}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"decision": "skip", "pre_check_results": [{"name": "Blocklist", "status": "skip"}]})
    );

    let bad = [
        (json!({"check_set": "nope", "payload": {}}), "check_set"),
        (json!({"payload": {}}), "check_set"),
        (json!({"check_set": 5}), "check_set"),
        (json!({"check_set": "screening", "checks": []}), "checks"),
        (json!({"checks": [{"type": "caller_list"}]}), "checks[0]"),
        (json!({"check_set": "screening", "payload": []}), "payload"),
        (
            json!({"check_set": "screening", "payload": {"customer_mobile_number": 7}}),
            "payload.customer_mobile_number",
        ),
        (json!({"check_set": "screening", "lead": {}}), "lead"),
        (json!([1]), "body"),
    ];
    for (body, field) in bad {
        let (code, answer) = precheck(&cg, body.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_field", "{body}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body}: {message}");
    }
}

#[tokio::test]
async fn check_sets_are_managed_by_the_admin_api_and_one_in_use_cannot_be_deleted() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let checks = json!([{"type": "caller_list", "name": "Blocklist", "deny": ["+4487*"]}]);
    let (code, body) = cg.admin("GET", "/v1/check-sets/screening", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    // A gate naming a set that does not exist is refused.
    let (code, body) = cg
        .admin("PUT", "/v1/integrations/precall/agent/agent_a", Some(json!({"check_set": "screening"})))
        .await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_field")));

    let (code, body) = cg.admin("PUT", "/v1/check-sets/screening", Some(checks.clone())).await;
    assert_eq!((code, body), (StatusCode::OK, json!({"name": "screening", "checks": checks})));
    let (code, body) = cg.admin("GET", "/v1/check-sets/screening", None).await;
    assert_eq!((code, body), (StatusCode::OK, json!({"name": "screening", "checks": checks})));
    let bad = json!([{"type": "caller_list", "name": "B", "deny": ["+44 87"]}]);
    let (code, body) = cg.admin("PUT", "/v1/check-sets/screening", Some(bad)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "checks[0].deny[0]: not an E.164 number or a prefix such as \"+4487*\""
    );

    let (code, body) = cg
        .admin(
            "PUT",
            "/v1/integrations/precall/agent/agent_a",
            Some(json!({"check_set": "screening", "timeout_ms": 3000})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["precall_webhook_url"], Value::Null);
    assert_eq!((body["check_set"].as_str(), body["timeout_ms"].as_u64()), (Some("screening"), Some(3000)));
    let (code, body) = cg
        .admin("PUT", "/v1/integrations/precall/number/+15005550006", Some(json!({"checks": checks})))
        .await;
    assert_eq!((code, &body["checks"]), (StatusCode::OK, &checks));
    let kinds = [
        (json!({"url": "http://x/", "checks": []}), "invalid_field"),
        (json!({"check_set": "screening", "checks": []}), "invalid_field"),
        (json!({"timeout_ms": 3000}), "invalid_url"),
    ];
    for (body, want) in kinds {
        let (code, answer) =
            cg.admin("PUT", "/v1/integrations/precall/agent/agent_b", Some(body.clone())).await;
        assert_eq!((code, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some(want)), "{body}");
        assert_eq!(answer["error"]["message"], "needs exactly one of `url`, `checks` or `check_set`");
    }
    let bad = json!({"checks": [{"type": "schedule", "name": "h"}]});
    let (code, answer) = cg.admin("PUT", "/v1/integrations/precall/agent/agent_b", Some(bad)).await;
    assert_eq!((code, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_field")));
    assert_eq!(
        answer["error"]["message"],
        "checks[0]: missing field `timezone`; checks[0]: missing field `open`"
    );
    assert_eq!(cg.admin("GET", "/v1/integrations/precall/agent/agent_b", None).await.1["is_set"], false);

    let (code, body) = cg.admin("DELETE", "/v1/check-sets/screening", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("in_use")));
    let table = cg.table().await;
    assert_eq!(table["check_sets"]["screening"], checks);
    assert_eq!(table["agents"]["agent_a"]["gate"], json!({"check_set": "screening", "timeout_ms": 3000}));
    assert_eq!(table["numbers"]["+15005550006"]["gate"], json!({"checks": checks}));
    // The file written is the same table, and parses back.
    let saved: Value = serde_json::from_slice(&std::fs::read(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved, table);

    cg.admin("DELETE", "/v1/integrations/precall/agent/agent_a", None).await;
    let (code, body) = cg.admin("DELETE", "/v1/check-sets/screening", None).await;
    assert_eq!((code, body), (StatusCode::OK, json!({"ok": true, "deleted": true, "name": "screening"})));
    assert_eq!(cg.admin("GET", "/v1/check-sets/screening", None).await.0, StatusCode::NOT_FOUND);
}

#[test]
fn check_names_each_credential_id_the_credentials_file_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    let mut check = dnd_check("https://dnd-api.example.com/check");
    std::fs::write(&routes, json!({"check_sets": {"dnd": [check.clone()]}}).to_string()).unwrap();
    let creds = with_credentials(dir.path(), &json!({"other": {"k": "S3CRET"}}));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["check", "--routes"])
        .arg(&routes)
        .arg("--credentials")
        .arg(&creds)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("check_sets.dnd[0]: credential_id \"cred_dnd_provider\" is not in"), "{text}");
    assert!(!text.contains("S3CRET"));

    check["http_request"]["timeout"] = json!(31);
    std::fs::write(&routes, json!({"check_sets": {"dnd": [check]}}).to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["check", "--routes"])
        .arg(&routes)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("check_sets.dnd[0].http_request.timeout: must be 1 to 30 seconds (got 31)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_gates_on_failure_decides_for_checks_that_set_none_and_when_its_deadline_runs_out() {
    let dead = dead_addr().await;
    let slow = Stub::start(Reply::json(r#"{"ok": true}"#).delay(Duration::from_secs(3))).await;
    let never = Stub::start(Reply::json(r#"{"ok": true}"#)).await;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let down = api_check("Down", &format!("http://{dead}/x"), "ok", json!(true));
    let mut down_but_proceeds = down.clone();
    down_but_proceeds["default_on_failure"] = json!("proceed");
    let slow_check = api_check("Slow", &slow.url("/x"), "ok", json!(true));
    let after = api_check("After", &never.url("/x"), "ok", json!(true));
    let routes = json!({"numbers": {
        "+15005550001": {"gate": {"checks": [down.clone()], "on_failure": "reject"}},
        "+15005550002": {"gate": {"checks": [down], "on_failure": "accept"}},
        "+15005550003": {"gate": {"checks": [down_but_proceeds], "on_failure": "reject"}},
        "+15005550004": {"gate": {"checks": [slow_check.clone(), after.clone()], "timeout_ms": 300, "on_failure": "reject"}},
        "+15005550005": {"gate": {"checks": [slow_check, after], "timeout_ms": 300}}
    }});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let cases = [
        ("+15005550001", "fail_closed", "connect", "Down"),
        ("+15005550002", "fail_open", "connect", "Down"),
        ("+15005550003", "fail_open", "connect", "Down"),
        ("+15005550004", "fail_closed", "timeout", "Slow"),
        ("+15005550005", "fail_open", "timeout", "Slow"),
    ];
    for (i, (to, decision, cause, reason)) in cases.into_iter().enumerate() {
        let sid = format!("CA{:032}", 900 + i);
        let started = Instant::now();
        post_form(&cg.url("/twilio/voice"), &ringing_from(to, "+447700900001", &sid)).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{to}: the gate's deadline bounds the chain");
        let record = cg.record_of(&sid).await;
        assert_eq!(
            (record["decision"].as_str(), record["cause"].as_str(), record["reason"].as_str()),
            (Some(decision), Some(cause), Some(reason)),
            "{to}"
        );
    }
    assert_eq!(never.count(), 0, "a chain out of time runs nothing more");
}

#[test]
fn an_invalid_credentials_file_stops_start_up_without_echoing_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    std::fs::write(&routes, "{}").unwrap();
    let creds = dir.path().join("creds.json");
    std::fs::write(&creds, r#"{"cred": {"key": ["S3CRET"]}}"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .arg("--routes")
        .arg(&routes)
        .arg("--credentials")
        .arg(&creds)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid credentials file") && err.contains("\"cred\".\"key\": expected a string"),
        "{err}"
    );
    assert!(!err.contains("S3CRET"), "{err}");
}
