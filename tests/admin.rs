//! The admin API (SPEC §6) on real sockets: round trips, every error code, authentication,
//! persistence, read-only files and concurrent writes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const TO: &str = "+447700900123";

async fn callgate() -> (Callgate, Stub) {
    let engine = Stub::start(Reply::json("<Response/>").header("content-type", "text/xml")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    (cg, engine)
}

#[tokio::test]
async fn an_agent_gate_round_trips_and_takes_effect_for_the_next_call() {
    let (cg, engine) = callgate().await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let url = gate.url("/precall?token=S3CRET");

    let (status, body) =
        cg.admin("PUT", "/v1/integrations/precall/agent/agent_a", Some(json!({"url": url}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"agent_id": "agent_a", "precall_webhook_url": url, "is_set": true, "on_failure": "accept", "mode": "enforce"})
    );
    let (status, body) =
        cg.admin("PUT", "/v1/numbers/%2B447700900123", Some(json!({"agent_id": "agent_a"}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"phone_number": TO, "agent_id": "agent_a"})));

    // Read-your-writes: the very next call is gated.
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end());
    assert_eq!(gate.count(), 1);
    assert_eq!(engine.count(), 0);

    let (_, body) = cg.admin("GET", "/v1/integrations/precall/agent/agent_a", None).await;
    assert_eq!(body["precall_webhook_url"], url);
    assert_eq!(body["is_set"], true);
    let (_, body) = cg.admin("GET", "/v1/numbers/+447700900123", None).await;
    assert_eq!(body, json!({"phone_number": TO, "agent_id": "agent_a"}));

    let (_, body) = cg.admin("DELETE", "/v1/integrations/precall/agent/agent_a", None).await;
    assert_eq!(body, json!({"ok": true, "deleted": true, "agent_id": "agent_a"}));
    let (_, body) = cg.admin("DELETE", "/v1/integrations/precall/agent/agent_a", None).await;
    assert_eq!(body, json!({"ok": true, "deleted": false, "agent_id": "agent_a"}));
    let (status, body) = cg.admin("GET", "/v1/integrations/precall/agent/agent_a", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"agent_id": "agent_a", "precall_webhook_url": null, "is_set": false}));

    post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(gate.count(), 1, "no gate after the delete");
    assert_eq!(engine.seen()[0].headers["x-callgate-decision"], "no_gate");

    let (_, body) = cg.admin("DELETE", "/v1/numbers/%2B447700900123", None).await;
    assert_eq!(body, json!({"ok": true, "deleted": true, "phone_number": TO}));
    let (_, body) = cg.admin("DELETE", "/v1/numbers/+447700900123", None).await;
    assert_eq!(body["deleted"], false);
    let (_, body) = cg.admin("GET", "/v1/numbers/+447700900123", None).await;
    assert_eq!(body, json!({"phone_number": TO, "agent_id": null}));
}

#[tokio::test]
async fn a_number_gate_round_trips_with_plus_and_percent_2b() {
    let (cg, _engine) = callgate().await;
    let body = json!({"url": "https://gate.example/special", "timeout_ms": 2000, "on_failure": "reject"});
    let (status, answer) = cg.admin("PUT", "/v1/integrations/precall/number/+447700900124", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"phone_number": "+447700900124", "precall_webhook_url": "https://gate.example/special",
               "is_set": true, "timeout_ms": 2000, "on_failure": "reject", "mode": "enforce"})
    );
    let (_, got) = cg.admin("GET", "/v1/integrations/precall/number/%2B447700900124", None).await;
    assert_eq!(got["precall_webhook_url"], "https://gate.example/special");
    assert_eq!(
        cg.table().await,
        json!({"agents": {}, "numbers": {"+447700900124": {"gate": {"url": "https://gate.example/special", "timeout_ms": 2000, "on_failure": "reject"}}}})
    );
    let (_, deleted) = cg.admin("DELETE", "/v1/integrations/precall/number/%2B447700900124", None).await;
    assert_eq!(deleted, json!({"ok": true, "deleted": true, "phone_number": "+447700900124"}));
    let (_, deleted) = cg.admin("DELETE", "/v1/integrations/precall/number/+447700900124", None).await;
    assert_eq!(deleted["deleted"], false);
    assert_eq!(cg.table().await, json!({"agents": {}, "numbers": {}}), "an entry left empty is removed");
}

async fn raw_admin(
    cg: &Callgate,
    method: &str,
    path: &str,
    auth: Option<&str>,
    ctype: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(format!("http://{}{}", cg.admin, path));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    if let Some(ctype) = ctype {
        request = request.header("content-type", ctype);
    }
    let answer = send(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    (answer.status, serde_json::from_slice(&answer.body).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn authentication_needs_the_whole_key_and_comes_before_404() {
    let (cg, _engine) = callgate().await;
    let path = "/v1/routes";
    for auth in [
        None,
        Some("Bearer ksecret"),
        Some("Bearer kid:wrong"),
        Some("Bearer other:ksecret"),
        Some("Bearer :ksecret"),
        Some("Basic kid:ksecret"),
        Some("Bearer kid:ksecretX"),
    ] {
        let (status, body) = raw_admin(&cg, "GET", path, auth, None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(code(&body), "unauthorized");
    }
    let (status, _) = raw_admin(&cg, "GET", "/v1/nothing-here", None, None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "401 before 404");
    let (status, body) = raw_admin(&cg, "GET", "/v1/nothing-here", Some(ADMIN_AUTH), None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _) = raw_admin(&cg, "GET", path, Some("bearer kid:ksecret"), None, "").await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
    // Probes and metrics need no key.
    assert_eq!(get(&format!("http://{}/healthz", cg.admin)).await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&format!("http://{}/metrics", cg.admin)).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn with_no_keys_configured_the_api_answers_401() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| s.api_keys.clear()).await;
    let (status, body) = cg.admin("GET", "/v1/routes", None).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test]
async fn every_error_code_is_answered_and_nothing_changes() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| s.allow_insecure_gates = false).await;
    let agent = "/v1/integrations/precall/agent/agent_a";
    let json = Some("application/json");
    let auth = Some(ADMIN_AUTH);
    // method, path, content type, body, status, error code
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            agent,
            json,
            r#"{"url":"https://g.example"}"#.into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        ("PUT", "/v1/routes", json, "{}".into(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (
            "PUT",
            agent,
            Some("text/plain"),
            r#"{"url":"https://g.example"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "PUT",
            agent,
            None,
            r#"{"url":"https://g.example"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "PUT",
            agent,
            json,
            format!(r#"{{"url":"https://g.example/{}"}}"#, "x".repeat(70 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        ("PUT", agent, json, "{not json".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("PUT", agent, json, "[]".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("PUT", agent, json, "{}".into(), StatusCode::BAD_REQUEST, "invalid_url"),
        ("PUT", agent, json, r#"{"url":42}"#.into(), StatusCode::BAD_REQUEST, "invalid_url"),
        (
            "PUT",
            agent,
            json,
            r#"{"url":"http://g.example/p"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_url",
        ),
        ("PUT", agent, json, r#"{"url":"not a url"}"#.into(), StatusCode::BAD_REQUEST, "invalid_url"),
        (
            "PUT",
            agent,
            json,
            r#"{"url":"https://g.example","timeout_ms":5}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "PUT",
            agent,
            json,
            r#"{"url":"https://g.example","on_failure":"maybe"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "PUT",
            agent,
            json,
            r#"{"url":"https://g.example","colour":"red"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "PUT",
            "/v1/integrations/precall/agent/bad%20id",
            json,
            r#"{"url":"https://g.example"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "PUT",
            "/v1/integrations/precall/number/447700900123",
            json,
            r#"{"url":"https://g.example"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_phone_number",
        ),
        ("GET", "/v1/numbers/+44abc", None, String::new(), StatusCode::BAD_REQUEST, "invalid_phone_number"),
        (
            "PUT",
            "/v1/numbers/+447700900123",
            json,
            r#"{"agent_id":"has space"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "PUT",
            "/v1/numbers/+447700900123",
            json,
            r#"{"agent":"a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        ("PUT", "/v1/numbers/+447700900123", json, r#"{}"#.into(), StatusCode::BAD_REQUEST, "invalid_field"),
    ];
    for (method, path, ctype, body, status, expected) in cases {
        let (got, answer) = raw_admin(&cg, method, path, auth, ctype, &body).await;
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{method} {path} {}",
            &body[..body.len().min(80)]
        );
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(cg.table().await, json!({"agents": {}, "numbers": {}}), "no bad write changed anything");
    assert_eq!(std::fs::read_to_string(&cg.routes).unwrap(), "{}", "nor the file");
}

#[tokio::test]
async fn writes_persist_across_a_restart() {
    let (cg, engine) = callgate().await;
    cg.admin("PUT", "/v1/integrations/precall/agent/agent_a", Some(json!({"url": "https://g.example/a"})))
        .await;
    cg.admin("PUT", "/v1/numbers/+447700900123", Some(json!({"agent_id": "agent_a"}))).await;
    let before = cg.table().await;
    let routes = std::fs::read_to_string(&cg.routes).unwrap();
    let saved: Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(saved, before, "the file says what is in memory");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(&path, routes).unwrap();
    cg.stop().await;
    let again = Callgate::spawn(&std::fs::read_to_string(&path).unwrap(), &engine.url("")).await;
    assert_eq!(again.table().await, before);
}

#[tokio::test]
async fn the_first_write_creates_a_missing_routes_file() {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    std::fs::remove_file(&cg.routes).unwrap();
    let (status, _) =
        cg.admin("PUT", "/v1/numbers/+447700900123", Some(json!({"agent_id": "agent_a"}))).await;
    assert_eq!(status, StatusCode::OK);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved, json!({"agents": {}, "numbers": {TO: {"agent_id": "agent_a"}}}));
}

/// Makes `path` immutable for the life of the guard (tests run as root, who can write
/// anything that is merely `chmod`ed read-only).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: &std::path::Path) -> Immutable {
        let status = std::process::Command::new("chattr").arg("+i").arg(path).status().expect("chattr runs");
        assert!(status.success(), "chattr +i failed");
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_routes_file_that_cannot_be_written_answers_503_read_only_and_changes_nothing() {
    let engine = Stub::start(Reply::json("")).await;
    let original = json!({"numbers": {TO: {"agent_id": "agent_a"}}}).to_string();
    let cg = Callgate::spawn(&original, &engine.url("")).await;
    let _immutable = Immutable::new(&cg.routes);
    assert!(std::fs::write(&cg.routes, "x").is_err(), "the file really cannot be written");
    let renamed = cg.dir.path().join("other");
    std::fs::write(&renamed, "{}").unwrap();
    assert!(std::fs::rename(&renamed, &cg.routes).is_err(), "nor replaced");

    let before = cg.table().await;
    let (status, body) = cg
        .admin("PUT", "/v1/integrations/precall/agent/agent_a", Some(json!({"url": "https://g.example"})))
        .await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "read_only"));
    let (status, body) = cg.admin("DELETE", "/v1/numbers/+447700900123", None).await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "read_only"));
    assert_eq!(cg.table().await, before, "nothing changed in memory");
    assert_eq!(std::fs::read_to_string(&cg.routes).unwrap(), original, "nor on disk");
    let leftovers: Vec<_> = std::fs::read_dir(cg.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind: {leftovers:?}");
}

#[tokio::test]
async fn fifty_concurrent_writes_are_all_kept_in_memory_and_on_disk() {
    let (cg, _engine) = callgate().await;
    let cg = std::sync::Arc::new(cg);
    let writes: Vec<_> = (0..50)
        .map(|i| {
            let cg = cg.clone();
            tokio::spawn(async move {
                let (status, _) = if i % 2 == 0 {
                    let path = format!("/v1/integrations/precall/number/%2B4477009{i:05}");
                    cg.admin("PUT", &path, Some(json!({"url": format!("https://g.example/{i}")}))).await
                } else {
                    let path = format!("/v1/integrations/precall/agent/agent_{i}");
                    cg.admin("PUT", &path, Some(json!({"url": format!("https://g.example/{i}")}))).await
                };
                assert_eq!(status, StatusCode::OK);
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let table = cg.table().await;
    assert_eq!(table["numbers"].as_object().unwrap().len(), 25);
    assert_eq!(table["agents"].as_object().unwrap().len(), 25);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved, table, "every write is on disk too");

    // The watcher must not take the API's own saves for a foreign edit and lose a write.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(cg.table().await, table);
}

#[tokio::test]
async fn saves_keep_the_files_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let (cg, _engine) = callgate().await;
    std::fs::set_permissions(&cg.routes, std::fs::Permissions::from_mode(0o600)).unwrap();
    cg.admin("PUT", "/v1/numbers/+447700900123", Some(json!({"agent_id": "agent_a"}))).await;
    let mode = std::fs::metadata(&cg.routes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "gate tokens stay private");

    std::fs::remove_file(&cg.routes).unwrap();
    cg.admin("PUT", "/v1/numbers/+447700900124", Some(json!({"agent_id": "agent_a"}))).await;
    let mode = std::fs::metadata(&cg.routes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a new file is private too");
}

#[tokio::test]
async fn a_hand_edit_just_before_an_api_write_is_not_written_over() {
    let (cg, _engine) = callgate().await;
    std::fs::write(&cg.routes, json!({"numbers": {"+447700900199": {"agent_id": "by_hand"}}}).to_string())
        .unwrap();
    // No waiting for the watcher: the write itself takes the edit in first.
    let (status, _) = cg.admin("PUT", "/v1/numbers/+447700900123", Some(json!({"agent_id": "by_api"}))).await;
    assert_eq!(status, StatusCode::OK);
    let table = cg.table().await;
    assert_eq!(table["numbers"]["+447700900199"]["agent_id"], "by_hand");
    assert_eq!(table["numbers"][TO]["agent_id"], "by_api");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved, table);
}

/// Issue 18 item 13: a key given twice in a body is refused as the routes file refuses it,
/// wherever it is (the last one silently winning could move a billing gate), and nothing changes.
#[tokio::test]
async fn a_body_with_a_duplicate_key_is_invalid_json_and_changes_nothing() {
    let (cg, _engine) = callgate().await;
    let json = Some("application/json");
    let auth = Some(ADMIN_AUTH);
    let cases = [
        (
            "/v1/integrations/precall/agent/agent_a",
            r#"{"url": "https://a.example/", "url": "https://b.example/"}"#,
        ),
        (
            "/v1/integrations/precall/number/+447700900123",
            r#"{"url": "https://a.example/", "on_failure": "accept", "on_failure": "reject"}"#,
        ),
        ("/v1/numbers/+447700900123", r#"{"agent_id": "agent_a", "agent_id": "agent_b"}"#),
        ("/v1/numbers/+447700900123", r#"{"agent_id": "agent_a", "x": {"k": 1, "k": 2}}"#),
    ];
    for (path, body) in cases {
        let (status, answer) = raw_admin(&cg, "PUT", path, auth, json, body).await;
        assert_eq!((status, code(&answer)), (StatusCode::BAD_REQUEST, "invalid_json"), "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("duplicate key"), "{message}");
        assert!(!message.contains("example"), "no value is echoed: {message}");
    }
    assert_eq!(cg.table().await, json!({"agents": {}, "numbers": {}}));
}

/// Issue 18 item 11: a routes file with no write permission (0444: file-managed by intent) is
/// not replaced by a save, even by root, whose rename over it would succeed.
#[tokio::test]
async fn a_0444_routes_file_answers_read_only_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let engine = Stub::start(Reply::json("")).await;
    let original = json!({"numbers": {TO: {"agent_id": "agent_a"}}}).to_string();
    let cg = Callgate::spawn(&original, &engine.url("")).await;
    std::fs::set_permissions(&cg.routes, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = cg.table().await;
    let (status, body) =
        cg.admin("PUT", "/v1/numbers/+447700900124", Some(json!({"agent_id": "agent_b"}))).await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "read_only"), "{body}");
    assert_eq!(cg.table().await, before, "nothing changed in memory");
    assert_eq!(std::fs::read_to_string(&cg.routes).unwrap(), original, "nor on disk");
    let mode = std::fs::metadata(&cg.routes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
}

/// Issue 18 item 11: in a container callgate is pid 1, and two replicas sharing a volume had
/// the same temporary file name: one's save failed on the other's file, and removed it.
#[tokio::test]
async fn another_writers_temporary_file_neither_blocks_a_save_nor_is_removed() {
    let (cg, _engine) = callgate().await;
    let name = cg.routes.file_name().unwrap().to_str().unwrap().to_owned();
    let theirs = cg.dir.path().join(format!(".{name}.callgate-{}.tmp", std::process::id()));
    std::fs::write(&theirs, "another writer's save in progress").unwrap();
    let (status, body) =
        cg.admin("PUT", "/v1/numbers/+447700900123", Some(json!({"agent_id": "agent_a"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "another writer's save in progress");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&cg.routes).unwrap()).unwrap();
    assert_eq!(saved["numbers"][TO]["agent_id"], "agent_a");
    let ours: Vec<_> = std::fs::read_dir(cg.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tmp") && *p != theirs)
        .collect();
    assert!(ours.is_empty(), "our own temporary file is gone: {ours:?}");
}
