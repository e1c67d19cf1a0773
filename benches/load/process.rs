//! The release `callgate` binary as a child process: start it on 127.0.0.1:0 and learn its
//! addresses from its JSON start-up line, read its resident memory and threads from /proc, and
//! scrape its `/metrics` to compute quantiles from histogram bucket deltas.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::child;

/// The public URL callgate is told Twilio uses; the load generator signs against it.
pub const PUBLIC_URL: &str = "https://callgate.example.com";
/// The bench's Twilio auth token.
pub const AUTH_TOKEN: &str = "bench0auth0token0000000000000000";

/// The binary to run: `--callgate`, else the release build (built if missing).
pub fn locate_binary(explicit: Option<&Path>) -> PathBuf {
    explicit.map_or_else(|| child::release_binary("load"), Path::to_owned)
}

/// What the binary's `--help` says it supports, so the bench runs callgate as deployed as soon
/// as the flags exist.
pub struct Features {
    pub signatures: bool,
    pub signed_paths: bool,
    /// `--dedup-window` and `--breaker-failures` exist (both are turned off for the bench).
    pub resilience: bool,
    /// Check chains exist (`--credentials` came with them): the chain path is measured.
    pub chains: bool,
}

impl Features {
    pub fn probe(bin: &Path) -> Features {
        let help = Command::new(bin).arg("--help").output().expect("callgate --help runs");
        let help = String::from_utf8_lossy(&help.stdout);
        Features {
            signatures: help.contains("--twilio-auth-token") && help.contains("--public-url"),
            signed_paths: help.contains("--signed-path"),
            resilience: help.contains("--dedup-window") && help.contains("--breaker-failures"),
            chains: help.contains("--credentials"),
        }
    }
}

/// A running callgate; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Callgate {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Callgate {
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        engine: SocketAddr,
        routes: &Path,
        features: &Features,
        store: Option<&str>,
    ) -> Callgate {
        Callgate::spawn_with(bin, dir, engine, routes, features, "callgate.log", &[], store)
    }

    /// As [`Callgate::spawn`], logging to `log_name` in `dir`, with `extra` flags added
    /// (a resilience flag among them replaces the bench's `0`), against `store` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with(
        bin: &Path,
        dir: &Path,
        engine: SocketAddr,
        routes: &Path,
        features: &Features,
        log_name: &str,
        extra: &[&str],
        store: Option<&str>,
    ) -> Callgate {
        let log = dir.join(log_name);
        let stderr = File::options().create(true).append(true).open(&log).expect("log file opens");
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(format!("http://{engine}"))
            .arg("--routes")
            .arg(routes)
            .args(["--allow-insecure-gates", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if features.signatures {
            command.args(["--twilio-auth-token", AUTH_TOKEN, "--public-url", PUBLIC_URL]);
        }
        if features.signed_paths {
            command.args(["--signed-path", "/twilio/status"]);
        }
        if features.resilience {
            // Every bench call carries the fixture's one CallSid: with dedup on, all but the
            // first would be replays; and the dead-gate run measures the gate's timeout path,
            // which an open circuit would skip. Both off keeps runs comparable with earlier ones,
            // unless `extra` sets the flag itself (clap takes a flag once).
            for flag in ["--dedup-window", "--breaker-failures"] {
                if !extra.contains(&flag) {
                    command.args([flag, "0"]);
                }
            }
        }
        command.args(extra);
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        let mut child = command.spawn().expect("callgate starts");
        let Some((public, admin)) = wait_for_addresses(&log) else {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("callgate did not log its addresses; its log:\n{text}");
        };
        Callgate { child, public, admin, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) = get(self.admin, "/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("callgate did not become ready; see {}", self.log.display());
    }

    pub async fn scrape(&self) -> Scrape {
        let (status, body) = get(self.admin, "/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "/metrics status");
        Scrape::parse(&body)
    }

    /// Decision lines (`"call decided"`) in the log so far.
    pub fn decision_lines(&self) -> usize {
        let text = std::fs::read(&self.log).unwrap_or_default();
        text.split(|&b| b == b'\n').filter(|l| l.windows(13).any(|w| w == b"call decided\"")).count()
    }

    /// Empties the log (it is opened for appending, so callgate keeps writing at the new end).
    pub fn truncate_log(&self) {
        let _ = File::options().write(true).open(&self.log).and_then(|f| f.set_len(0));
    }
}

impl Drop for Callgate {
    fn drop(&mut self) {
        child::terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// Reads the `listen` and `admin_listen` fields of callgate's JSON start-up lines (whichever
/// lines carry them), or `None` if they do not appear within 30 s.
fn wait_for_addresses(log: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let find = |key: &str| lines.iter().find_map(|v| v[key].as_str().and_then(|s| s.parse().ok()));
        if let (Some(public), Some(admin)) = (find("listen"), find("admin_listen")) {
            return Some((public, admin));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Resident memory and threads of a process, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStatus {
    pub rss_kib: u64,
    pub threads: u64,
}

impl ProcStatus {
    pub fn read(pid: u32) -> ProcStatus {
        let field = child::proc_status(pid);
        ProcStatus { rss_kib: field("VmRSS:"), threads: field("Threads:") }
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// CPU time (user + system, every thread, live or exited) of the processes `pids`, in seconds,
/// from /proc/PID/stat. Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): state is [0], utime [11].
            let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// A process and its children (nginx's master and workers), read from /proc.
pub fn with_children(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
}

/// One GET on a fresh connection; the status and body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let response = send.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A Prometheus text scrape: every sample by its series (`name{labels}`).
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    /// A sample's value (0 if absent).
    pub fn value(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The change of `series` since `before`.
    pub fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.value(series) - before.value(series)
    }

    /// Quantile `q` of histogram `name` (no labels but `le`) over the observations made since
    /// `before`: the bucket's upper bound, and a linear interpolation inside the bucket (as
    /// Prometheus' `histogram_quantile`). `None` with no observations.
    pub fn quantile_since(&self, before: &Scrape, name: &str, q: f64) -> Option<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .keys()
            .filter_map(|k| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, self.delta(before, k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some((le, lower));
                }
                let within = if count > below { (rank - below) / (count - below) } else { 1.0 };
                return Some((le, lower + (le - lower) * within));
            }
            (lower, below) = (le, count);
        }
        None
    }
}
