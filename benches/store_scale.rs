//! The shared store at scale (issue 16): 1,000,000 numbers and 100,000 agents in a real
//! `redis-server`, against the same table served from a routes file.
//!
//! Measures, with the release binary, and prints one markdown table against the targets (a cold
//! replica loads in under 3 s; its resident memory within 10% of file mode's; one admin write
//! reaches another replica in under 1 s):
//!
//! 1. `callgate store import` of the routes file, and the document's size in Redis.
//! 2. File mode: spawn to `"callgate serving"`, then VmRSS 2 s later.
//! 3. Store mode, a cold replica (no routes file): spawn to `"callgate serving"` (the table read
//!    from Redis and parsed), then VmRSS 2 s later; the same for a second replica.
//! 4. One `PUT /v1/numbers` through the first replica: its answer (the table copied, written to
//!    Redis with the version check), and from the PUT to the second replica's log lines for the
//!    change taken from the notice and for the whole table read after it; both replicas' VmRSS
//!    2 s after.
//!
//! ```sh
//! cargo build --release && cargo bench --bench store_scale
//! cargo bench --bench store_scale -- --quick      # 100,000 numbers, 10,000 agents
//! ```
//!
//! Needs `redis-server` on PATH (skipped with a message otherwise); it runs on a free loopback
//! port in a temporary directory, without persistence, and is stopped at the end.

#[path = "common/child.rs"]
mod child;
#[path = "common/table.rs"]
mod table;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use table::{routes_file, Shape};

const API_KEY: &str = "kid:ksecret";

/// A `redis-server` of the bench's own, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let installed =
            Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Redis { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, its admin address once bound, and its JSON log lines as they come.
struct Callgate {
    child: Child,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    admin: Option<SocketAddr>,
}

impl Callgate {
    fn spawn(bin: &Path, args: &[&str]) -> (Callgate, Instant) {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args([
                "--upstream",
                "http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--api-key", API_KEY])
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("callgate starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        (Callgate { child, lines, admin: None }, started)
    }

    /// Waits (up to 60 s) for the log line with `message`; when it is.
    fn wait_for(&mut self, message: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {message:?} line"));
            if line["message"] == "listeners bound" {
                self.admin = line["admin_listen"].as_str().and_then(|a| a.parse().ok());
            }
            if line["message"] == message {
                return at;
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        child::proc_status(self.child.id())("VmRSS:")
    }

    /// One admin request; the status.
    fn admin(&self, method: &str, path: &str, body: &str) -> u16 {
        let addr = self.admin.expect("admin listener bound");
        let mut stream = TcpStream::connect(addr).expect("admin listener accepts");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("request sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer read");
        answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Callgate {
    fn drop(&mut self) {
        child::terminate(&mut self.child, Duration::from_secs(10));
    }
}

fn mib_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn progress(what: &str) {
    eprintln!("store_scale: {what}");
}

fn main() {
    let mut shape = Shape { numbers: 1_000_000, agents: 100_000 };
    if std::env::args().any(|a| a == "--quick") {
        shape = Shape { numbers: 100_000, agents: 10_000 };
    }
    let Some(redis) = Redis::start() else {
        println!("store_scale: skipped: redis-server not found");
        return;
    };
    let bin = child::release_binary("store_scale");
    let dir = tempfile::Builder::new().prefix("store_scale").tempdir().expect("temp dir");
    let path = dir.path().join("routes.json");
    progress(&format!("generating {} numbers, {} agents", shape.numbers, shape.agents));
    let bytes = routes_file(shape, None);
    std::fs::write(&path, &bytes).expect("routes file written");
    drop(bytes);
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // ---- 1. Import.
    progress("store import");
    let started = Instant::now();
    let out = Command::new(&bin)
        .args(["store", "import", "--routes"])
        .arg(&path)
        .args(["--store", &redis.url()])
        .env_clear()
        .output()
        .expect("store import runs");
    assert!(out.status.success(), "store import failed: {}", String::from_utf8_lossy(&out.stdout));
    let import = started.elapsed();
    let doc = redis.cli(&["STRLEN", "callgate:routes"]).trim().parse::<u64>().unwrap_or(0);
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    rows.push(("`callgate store import`".into(), ms(import), String::new()));
    rows.push((
        "routes file / document in Redis".into(),
        format!("{:.1} MiB / {:.1} MiB", file as f64 / 1048576.0, doc as f64 / 1048576.0),
        String::new(),
    ));

    // ---- 2. File mode.
    progress("file mode: start-up and resident memory");
    let (mut file_mode, started) = Callgate::spawn(&bin, &["--routes", path.to_str().unwrap()]);
    let file_start = file_mode.wait_for("callgate serving").duration_since(started);
    std::thread::sleep(Duration::from_secs(2));
    let file_rss = file_mode.rss_kib();
    drop(file_mode);
    rows.push(("file mode: spawn to serving".into(), ms(file_start), String::new()));
    rows.push(("file mode: resident memory 2 s after".into(), mib_kib(file_rss), String::new()));

    // ---- 3. Cold replicas of the store.
    progress("store mode: two cold replicas");
    let missing = dir.path().join("missing.json");
    let store_args = ["--store", &redis.url(), "--routes", missing.to_str().unwrap()];
    let (mut a, started) = Callgate::spawn(&bin, &store_args);
    let a_start = a.wait_for("callgate serving").duration_since(started);
    std::thread::sleep(Duration::from_secs(2));
    let a_rss = a.rss_kib();
    let (mut b, started) = Callgate::spawn(&bin, &store_args);
    let b_start = b.wait_for("callgate serving").duration_since(started);
    std::thread::sleep(Duration::from_secs(2));
    let b_rss = b.rss_kib();
    let cold = a_start.max(b_start);
    rows.push((
        "store mode: cold replica, spawn to serving (two replicas)".into(),
        format!("{} / {}", ms(a_start), ms(b_start)),
        format!("< 3 s: {}", if cold < Duration::from_secs(3) { "met" } else { "MISSED" }),
    ));
    let ratio = a_rss.max(b_rss) as f64 / file_rss as f64;
    rows.push((
        "store mode: resident memory 2 s after (two replicas)".into(),
        format!("{} / {} ({:+.1}% against file mode)", mib_kib(a_rss), mib_kib(b_rss), (ratio - 1.0) * 100.0),
        format!("within 10%: {}", if ratio <= 1.10 { "met" } else { "MISSED" }),
    ));

    // ---- 4. One write, followed by the other replica.
    progress("one admin write through one replica, followed by the other");
    let started = Instant::now();
    let status = a.admin("PUT", "/v1/numbers/+15559999999", r#"{"agent_id": "agent_1"}"#);
    let answered = started.elapsed();
    assert_eq!(status, 200, "the write is answered 200");
    let followed = b.wait_for("routes change taken from the shared store's notice").duration_since(started);
    let whole = b.wait_for("routes changed in the shared store").duration_since(started);
    rows.push(("one `PUT /v1/numbers` through replica A: answered".into(), ms(answered), String::new()));
    rows.push((
        "the same write in force on replica B, from its notice (from the PUT)".into(),
        ms(followed),
        format!("< 1 s: {}", if followed < Duration::from_secs(1) { "met" } else { "MISSED" }),
    ));
    rows.push((
        "replica B holding the store's whole table again (from the PUT)".into(),
        ms(whole),
        String::new(),
    ));
    std::thread::sleep(Duration::from_secs(2));
    rows.push((
        "resident memory 2 s after the write, A / B".into(),
        format!("{} / {}", mib_kib(a.rss_kib()), mib_kib(b.rss_kib())),
        String::new(),
    ));
    drop((a, b));

    println!(
        "\n{} numbers, {} agents; {} cores; redis-server {}\n",
        shape.numbers,
        shape.agents,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        redis
            .cli(&["INFO", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
    );
    println!("| what | figure | target |\n|---|---|---|");
    for (what, figure, target) in rows {
        println!("| {what} | {figure} | {target} |");
    }
}
