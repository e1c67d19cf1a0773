//! A `redis-server` of a test's own on a free loopback port, and helpers for the shared-store
//! tests (tests/store.rs, tests/store_calls.rs): replicas of it as real binaries, table edits
//! and the calls that show which table a replica serves.
//!
//! Without `redis-server` on PATH the tests using it say they were skipped and pass, unless
//! `CALLGATE_REQUIRE_REDIS=1` (CI sets it), which makes a missing Redis a failure.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use super::{post_form, ringing, Binary, Stub};

/// Within this of a write, every replica's calls see it (SPEC §15).
pub const FOLLOW: Duration = Duration::from_secs(1);

/// A `redis-server` of this test's own, killed on drop. Its data directory outlives restarts.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server on a free port, or `None` (the test is skipped) if `redis-server` is not
    /// installed and `CALLGATE_REQUIRE_REDIS` is not `1`.
    pub fn start() -> Option<RedisServer> {
        let port = free_port();
        let mut server = RedisServer { child: None, port, dir: tempfile::tempdir().unwrap() };
        if !installed() {
            return None;
        }
        server.restart();
        Some(server)
    }

    /// A server not started yet, on a free port, for a replica that starts while Redis is down.
    pub fn later() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        Some(RedisServer { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() })
    }

    /// Starts (again) on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One `redis-cli` command; its raw output.
    pub fn cli(&self, args: &[&str]) -> String {
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

pub fn installed() -> bool {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A replica of the store at `redis`, its routes file holding `routes`, waited for until it
/// serves.
pub fn replica(redis: &RedisServer, routes: &str, engine: &Stub) -> Binary {
    Binary::spawn(routes, &engine.url(""), &["--store", &redis.url()])
}

pub fn gate_body(gate: &Stub) -> Value {
    json!({ "url": gate.url("/gate") })
}

/// Whether a call to `to` on `replica` asks `gate` (the number is in its table, with that gate).
/// Each call has a CallSid of its own (`CAaa...`, unlike any other test call's), so that dedup
/// never answers it.
pub async fn asks(replica: &Binary, gate: &Stub, to: &str) -> bool {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let before = gate.count();
    let answer = post_form(&replica.url("/twilio/voice"), &ringing_sid(to, &format!("CAaa{n:030}"))).await;
    answer.status == StatusCode::OK && gate.count() > before
}

pub async fn put_gate(replica: &Binary, number: &str, gate: &Stub) -> (StatusCode, Value) {
    replica.admin("PUT", &format!("/v1/integrations/precall/number/{number}"), Some(gate_body(gate))).await
}

pub async fn table(replica: &Binary) -> Value {
    let (status, table) = replica.admin("GET", "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK);
    table
}

pub fn has_number(table: &Value, number: &str) -> bool {
    table["numbers"].get(number).is_some()
}

/// `callgate store import`: exit status and stdout.
pub fn import(routes: &Path, redis: &RedisServer) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["store", "import", "--allow-insecure-gates", "--routes"])
        .arg(routes)
        .args(["--store", &redis.url()])
        .env_clear()
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ringing_sid(to: &str, sid: &str) -> String {
    ringing(to).replace("CA11111111111111111111111111111111", sid)
}

/// A replica that deduplicates CallSids for 60 s.
pub fn dedup_replica(redis: &RedisServer, routes: &str, engine: &Stub) -> Binary {
    Binary::spawn(routes, &engine.url(""), &["--store", &redis.url(), "--dedup-window", "60s"])
}

/// How many times Redis ran `command` (from `INFO commandstats`).
pub fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats.lines().find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
}
