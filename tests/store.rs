//! The shared store (SPEC §15) against a real `redis-server`, started by each test on a free
//! loopback port of its own and killed after it: the table followed by every replica, pushed
//! context and CallSid dedup across replicas, Redis going away and coming back. Replicas are real
//! `callgate` binaries (up to three per test), so each has its own metrics.
//!
//! Without `redis-server` on PATH these tests say they were skipped and pass, unless
//! `CALLGATE_REQUIRE_REDIS=1` (CI sets it), which makes a missing Redis a failure.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::{eventually, post_form, ringing, Binary, Reply, Stub};

/// Within this of a write, every replica's calls see it (SPEC §15).
const FOLLOW: Duration = Duration::from_secs(1);

/// A `redis-server` of this test's own, killed on drop. Its data directory outlives restarts.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server on a free port, or `None` (the test is skipped) if `redis-server` is not
    /// installed and `CALLGATE_REQUIRE_REDIS` is not `1`.
    fn start() -> Option<RedisServer> {
        let port = free_port();
        let mut server = RedisServer { child: None, port, dir: tempfile::tempdir().unwrap() };
        if !installed() {
            return None;
        }
        server.restart();
        Some(server)
    }

    /// A server not started yet, on a free port, for a replica that starts while Redis is down.
    fn later() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        Some(RedisServer { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() })
    }

    /// Starts (again) on the same port and directory, and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL); `SAVE` first to have it come back with its data.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One `redis-cli` command; its raw output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CALLGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-server not found, and CALLGATE_REQUIRE_REDIS=1"
        );
        println!("skipped: redis-server not found");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A replica of the store at `redis`, its routes file holding `routes`, waited for until it
/// serves.
fn replica(redis: &RedisServer, routes: &str, engine: &Stub) -> Binary {
    Binary::spawn(routes, &engine.url(""), &["--store", &redis.url()])
}

fn gate_body(gate: &Stub) -> Value {
    json!({ "url": gate.url("/gate") })
}

/// Whether a call to `to` on `replica` asks `gate` (the number is in its table, with that gate).
/// Each call has a CallSid of its own (`CAaa...`, unlike any other test call's), so that dedup
/// never answers it.
async fn asks(replica: &Binary, gate: &Stub, to: &str) -> bool {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let before = gate.count();
    let answer = post_form(&replica.url("/twilio/voice"), &ringing_sid(to, &format!("CAaa{n:030}"))).await;
    answer.status == StatusCode::OK && gate.count() > before
}

async fn put_gate(replica: &Binary, number: &str, gate: &Stub) -> (StatusCode, Value) {
    replica.admin("PUT", &format!("/v1/integrations/precall/number/{number}"), Some(gate_body(gate))).await
}

async fn table(replica: &Binary) -> Value {
    let (status, table) = replica.admin("GET", "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK);
    table
}

fn has_number(table: &Value, number: &str) -> bool {
    table["numbers"].get(number).is_some()
}

/// `callgate store import`: exit status and stdout.
fn import(routes: &Path, redis: &RedisServer) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["store", "import", "--allow-insecure-gates", "--routes"])
        .arg(routes)
        .args(["--store", &redis.url()])
        .env_clear()
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_write_through_one_of_three_replicas_reaches_the_other_two_within_a_second() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let a = replica(&redis, "{}", &engine);
    let b = replica(&redis, "{}", &engine);
    let c = replica(&redis, "{}", &engine);
    assert_eq!(a.metric("callgate_store_up").await, 1.0);

    let (status, _) = put_gate(&a, "+447700900123", &gate).await;
    assert_eq!(status, StatusCode::OK);
    assert!(asks(&a, &gate, "+447700900123").await, "visible on the replica written through at once");
    let written = std::time::Instant::now();
    for other in [&b, &c] {
        eventually(FOLLOW.saturating_sub(written.elapsed()), || asks(other, &gate, "+447700900123")).await;
    }

    let (status, _) = put_gate(&b, "+447700900124", &gate).await;
    assert_eq!(status, StatusCode::OK);
    let written = std::time::Instant::now();
    for other in [&a, &c] {
        eventually(FOLLOW.saturating_sub(written.elapsed()), || asks(other, &gate, "+447700900124")).await;
    }
    // Both edits are in the one shared table: B's write did not drop A's.
    assert_eq!(table(&a).await, table(&b).await);
    assert_eq!(table(&c).await, table(&b).await);
    assert!(has_number(&table(&b).await, "+447700900123"));
    let stored: Value = serde_json::from_str(&redis.cli(&["GET", "callgate:routes"])).unwrap();
    assert_eq!(stored, table(&a).await, "GET /v1/routes answers the shared table");
    assert!(redis.cli(&["GET", "callgate:routes:version"]).trim().parse::<i64>().is_ok());
}

#[tokio::test]
async fn writes_through_two_replicas_at_once_all_land() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let a = Arc::new(replica(&redis, "{}", &engine));
    let b = Arc::new(replica(&redis, "{}", &engine));
    let gate_url = gate.url("/gate");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let target = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let body = json!({ "url": gate_url });
        tasks.push(tokio::spawn(async move {
            target
                .admin("PUT", &format!("/v1/integrations/precall/number/+4477009001{i:02}"), Some(body))
                .await
                .0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    eventually(FOLLOW, || async { table(&a).await == table(&b).await }).await;
    assert_eq!(table(&a).await["numbers"].as_object().unwrap().len(), 20, "no write lost to another");
}

#[tokio::test]
async fn a_replica_that_missed_the_change_message_catches_up_by_the_version_check() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let a = replica(&redis, "{}", &engine);
    let b = replica(&redis, "{}", &engine);
    assert_eq!(put_gate(&a, "+447700900123", &gate).await.0, StatusCode::OK);
    eventually(FOLLOW, || asks(&b, &gate, "+447700900123")).await;

    // A change that was never announced: the document and the version, no PUBLISH.
    let mut changed = table(&a).await;
    changed["numbers"]["+447700900125"] = json!({ "gate": gate_body(&gate) });
    redis.cli(&["SET", "callgate:routes", &changed.to_string()]);
    redis.cli(&["INCR", "callgate:routes:version"]);
    eventually(FOLLOW, || asks(&b, &gate, "+447700900125")).await;
    eventually(FOLLOW, || asks(&a, &gate, "+447700900125")).await;

    // Subscribers cut off: the write through A is still seen on B.
    assert!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim().parse::<u32>().unwrap() >= 2);
    assert_eq!(put_gate(&a, "+447700900126", &gate).await.0, StatusCode::OK);
    eventually(FOLLOW, || asks(&b, &gate, "+447700900126")).await;
    assert!(b.metric(r#"callgate_store_errors_total{op="subscribe"}"#).await >= 1.0);
}

#[tokio::test]
async fn redis_down_calls_go_on_writes_503_and_after_it_returns_writes_work_again() {
    let Some(mut redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let a = replica(&redis, "{}", &engine);
    assert_eq!(put_gate(&a, "+447700900123", &gate).await.0, StatusCode::OK);
    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    redis.kill();

    eventually(Duration::from_secs(5), || async { a.metric("callgate_store_up").await == 0.0 }).await;
    assert!(asks(&a, &gate, "+447700900123").await, "calls are decided on the last table");
    let (status, body) = put_gate(&a, "+447700900124", &gate).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(!has_number(&table(&a).await, "+447700900124"), "a refused write changes nothing");
    assert!(a.metric(r#"callgate_store_errors_total{op="read"}"#).await >= 1.0);
    assert_eq!(support::get(&a.admin_url("/readyz")).await.unwrap().status, StatusCode::OK);

    redis.restart();
    eventually(Duration::from_secs(5), || async { a.metric("callgate_store_up").await == 1.0 }).await;
    let (status, _) = put_gate(&a, "+447700900124", &gate).await;
    assert_eq!(status, StatusCode::OK);
    assert!(asks(&a, &gate, "+447700900124").await);
    assert!(asks(&a, &gate, "+447700900123").await, "the table from before the outage is kept");
}

#[tokio::test]
async fn a_store_found_empty_keeps_every_replica_on_its_table_until_import() {
    let Some(redis) = RedisServer::start() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let a = replica(&redis, "{}", &engine);
    let b = replica(&redis, "{}", &engine);
    assert_eq!(put_gate(&a, "+447700900123", &gate).await.0, StatusCode::OK);
    eventually(FOLLOW, || asks(&b, &gate, "+447700900123")).await;
    let errors_before = b.metric(r#"callgate_routes_reloads_total{result="error"}"#).await;

    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    for replica in [&a, &b] {
        let (status, body) = put_gate(replica, "+447700900124", &gate).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("store_empty"))
        );
        assert!(asks(replica, &gate, "+447700900123").await, "the last table keeps serving");
    }
    assert!(b.metric(r#"callgate_routes_reloads_total{result="error"}"#).await > errors_before, "counted");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing written to the empty store");
    b.wait_for_log("the shared store is empty while this replica holds a table (a Redis restarted without its data?); keeping the last table; table writes answer 503 store_empty until `callgate store import`");

    let file = a.dir.path().join("import.json");
    std::fs::write(
        &file,
        json!({ "numbers": { "+447700900130": { "gate": gate_body(&gate) } } }).to_string(),
    )
    .unwrap();
    let (code, out) = import(&file, &redis);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 agents, 1 numbers"), "{out}");
    for replica in [&a, &b] {
        eventually(FOLLOW, || asks(replica, &gate, "+447700900130")).await;
        assert!(!has_number(&table(replica).await, "+447700900123"), "the imported table, whole");
    }
    assert_eq!(put_gate(&b, "+447700900131", &gate).await.0, StatusCode::OK);
    eventually(FOLLOW, || asks(&a, &gate, "+447700900131")).await;
}

#[tokio::test]
async fn store_import_of_an_invalid_file_writes_nothing() {
    let Some(redis) = RedisServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"numbers": {"+447700900123": {"agent_id": "a1"}}}"#).unwrap();
    assert_eq!(import(&good, &redis).0, 0);
    let before = (redis.cli(&["GET", "callgate:routes"]), redis.cli(&["GET", "callgate:routes:version"]));

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"numbers": {"447700900123": {"agent_id": "a1"}, "+447700900124": {"gate": {"url": "ftp://x"}}}}"#,
    )
    .unwrap();
    let (code, out) = import(&bad, &redis);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per problem: {out}");
    assert!(lines.iter().all(|l| l.starts_with(&bad.display().to_string())), "{out}");
    let after = (redis.cli(&["GET", "callgate:routes"]), redis.cli(&["GET", "callgate:routes:version"]));
    assert_eq!(before, after, "nothing written");

    // A store that does not answer: exit 1, one line, no password shown.
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["store", "import", "--routes"])
        .arg(&good)
        .args(["--store", &format!("redis://:S3CRET@127.0.0.1:{}", free_port())])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stdout.contains("S3CRET"), "{stdout}");
}

#[tokio::test]
async fn a_replica_starting_while_redis_is_down_serves_its_routes_file_then_joins() {
    let Some(mut redis) = RedisServer::later() else { return };
    let (engine, gate) =
        (Stub::start(Reply::json("")).await, Stub::start(Reply::json(r#"{"action":"reject"}"#)).await);
    let routes = json!({ "numbers": { "+447700900123": { "gate": gate_body(&gate) } } }).to_string();
    let a = replica(&redis, &routes, &engine);
    assert_eq!(support::get(&a.admin_url("/readyz")).await.unwrap().status, StatusCode::OK);
    assert!(asks(&a, &gate, "+447700900123").await, "served from the routes file");
    assert_eq!(a.metric("callgate_store_up").await, 0.0);
    let (status, body) = put_gate(&a, "+447700900124", &gate).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );

    redis.restart();
    let file = a.dir.path().join("shared.json");
    std::fs::write(
        &file,
        json!({ "numbers": { "+447700900130": { "gate": gate_body(&gate) } } }).to_string(),
    )
    .unwrap();
    assert_eq!(import(&file, &redis).0, 0);
    eventually(Duration::from_secs(5), || asks(&a, &gate, "+447700900130")).await;
    assert_eq!(a.metric("callgate_store_up").await, 1.0);
    assert_eq!(put_gate(&a, "+447700900124", &gate).await.0, StatusCode::OK);
    let routes_file: Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.path().join("routes.json")).unwrap()).unwrap();
    assert!(!has_number(&routes_file, "+447700900124"), "the routes file is never written");
}

#[tokio::test]
async fn a_replica_with_no_routes_file_is_not_ready_until_redis_answers() {
    let Some(mut redis) = RedisServer::later() else { return };
    let engine = Stub::start(Reply::json("")).await;
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--upstream", &engine.url(""), "--api-key", "kid:ksecret", "--store", &redis.url()])
        .arg("--routes")
        .arg(dir.path().join("missing.json"))
        .env_clear()
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proc = Logged::new(child);
    let admin = proc.admin_addr();
    let readyz =
        || async move { support::get(&format!("http://{admin}/readyz")).await.map(|a| a.status).ok() };
    assert_eq!(readyz().await, Some(StatusCode::SERVICE_UNAVAILABLE));
    // Still not ready a while later: it waits for the store, not for a timer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(readyz().await, Some(StatusCode::SERVICE_UNAVAILABLE));
    redis.restart();
    eventually(Duration::from_secs(5), || async { readyz().await == Some(StatusCode::OK) }).await;
}

/// A child process whose JSON log lines are collected.
struct Logged {
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Logged {
    fn new(mut child: Child) -> Logged {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap_or(Value::Null));
            }
        });
        Logged { child, logs }
    }

    fn admin_addr(&self) -> SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| l["message"] == "listeners bound") {
                return line["admin_listen"].as_str().unwrap().parse().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "callgate did not bind");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CALLER: &str = "+14155550100";
/// The number's agent takes context at once; the waiting number's agent waits up to 3 s.
const CONTEXT_NUMBER: &str = "+447700900200";
const WAITING_NUMBER: &str = "+447700900201";
/// Gated by the number's own gate, no agent: for load.
const LOAD_NUMBER: &str = "+447700900202";

fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

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

/// How many times Redis ran `command` (from `INFO commandstats`).
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats.lines().find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
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

/// A replica that deduplicates CallSids for 60 s.
fn dedup_replica(redis: &RedisServer, routes: &str, engine: &Stub) -> Binary {
    Binary::spawn(routes, &engine.url(""), &["--store", &redis.url(), "--dedup-window", "60s"])
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
    // And a push through A is still found by B at once.
    assert_eq!(push_context(&a, "agent_now", json!({"plan": "max"})).await, StatusCode::ACCEPTED);
    let sid = "CA0000000000000000000000000000ee02";
    assert_eq!(
        post_form(&b.url("/twilio/voice"), &ringing_sid(CONTEXT_NUMBER, sid)).await.status,
        StatusCode::OK
    );
    assert_eq!(gate_saw(&gate, sid)["context"], json!({"plan": "max"}));
}
