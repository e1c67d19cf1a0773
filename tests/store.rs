//! The shared store's table (SPEC §15) against a real `redis-server`, started by each test on a
//! free loopback port of its own and killed after it: writes through any replica followed by
//! every other, writes at once, a missed notification, Redis down and back, a store found
//! empty, `store import`, starting while Redis is down. Replicas are real `callgate` binaries
//! (up to three per test), so each has its own metrics. Context and dedup across replicas are
//! in tests/store_calls.rs.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::redis::*;
use support::{eventually, Reply, Stub};

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
    // The change came with its notice (the whole table was read behind it).
    for other in [&a, &c] {
        other.wait_for_log("routes change taken from the shared store's notice");
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
