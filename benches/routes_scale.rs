//! The routing table at scale (issue 3): a routes file of 1,000,000 numbers and 100,000 agents.
//!
//! Measures, in a release build, and prints one markdown table against the targets (load and
//! reload under 2 s, under 200 MiB resident in steady state, lookups O(1) and allocation-free,
//! admin writes well under a second each):
//!
//! 1. `RouteTable::parse` of the file (median of 3), the file size, and the heap the table holds
//!    (and peaks at while parsing), from a counting global allocator.
//! 2. The real `callgate` binary serving that file: spawn to `"callgate serving"`, VmRSS and
//!    VmHWM then and 2 s later; a reload (the file rewritten, by rename, with one number's agent
//!    changed): write to `"routes reloaded"`, the peak RSS during it (VmHWM reset just before,
//!    through `/proc/PID/clear_refs`) and VmRSS 2 s after.
//! 3. `RouteTable::resolve` for numbers present, absent and not E.164, in ns per lookup over
//!    100,000 shuffled keys, against a naive `HashMap<String, _>` (SipHash, string keys) built
//!    from the same file; the same present-number lookup at 10k and 100k numbers (O(1)); and
//!    the allocations counted during the resolves (must be 0).
//! 4. Admin writes against the same process (`--api-key kid:ksecret`): one `PUT /v1/numbers`
//!    (median of 5 sequential), then 50 concurrent PUTs of different numbers, against 50 times
//!    one write; saves are counted by watching the routes file's inode (each save is a rename).
//!    Beside it, one save done in-process the way the writer does it, step by step (the copy of
//!    the numbers map, serialising, write, fsync, rename), to show where a write's time goes.
//!
//! ```sh
//! cargo build --release && cargo bench --bench routes_scale
//! cargo bench --bench routes_scale -- --quick          # 100,000 numbers, 10,000 agents
//! cargo bench --bench routes_scale -- --numbers N --agents M
//! cargo bench --bench routes_scale -- --write-routes /tmp/routes.json  # the file only, to profile
//! cargo bench --bench routes_scale -- --save-cost-only   # parse and one in-process save, to profile
//! ```
//!
//! The binary is `$CARGO_TARGET_DIR/release/callgate` (else `target/release/callgate`), built
//! with `cargo build --release --bin callgate` if missing; a warning is printed if it is older
//! than the sources. The routes file lives in a temporary directory, removed at the end.

#[path = "common/child.rs"]
mod child;
#[path = "common/table.rs"]
mod table;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callgate::routes::{RouteTable, Source, ValidateOptions};
use table::{number, routes_file, splitmix, Shape};

// ----------------------------------------------------------------------------------------------
// A counting allocator: off (one relaxed load per call) except inside a counting window.

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

fn grew(bytes: isize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if COUNTING.load(Relaxed) && !p.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if COUNTING.load(Relaxed) && !p.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if COUNTING.load(Relaxed) && !q.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            grew(new_size as isize - layout.size() as isize);
        }
        q
    }
}

/// What a counting window saw: allocations (and reallocations), net bytes still allocated at
/// its end, and the highest net bytes allocated during it.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    allocs: u64,
    net: isize,
    peak: isize,
}

/// Runs `f` inside a counting window. Only this thread may allocate meanwhile (the bench runs
/// no other threads while it counts).
fn counted<T>(f: impl FnOnce() -> T) -> (T, Counted) {
    ALLOCS.store(0, Relaxed);
    LIVE.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let out = f();
    COUNTING.store(false, Relaxed);
    (out, Counted { allocs: ALLOCS.load(Relaxed), net: LIVE.load(Relaxed), peak: PEAK.load(Relaxed) })
}

// ----------------------------------------------------------------------------------------------
// The routes file.

/// Keys looked up per timed pass.
const LOOKUPS: usize = 100_000;
/// The number whose agent the reload changes.
const RELOADED_NUMBER: u64 = 5;
/// The number the sequential admin writes set, and the first of the 50 concurrent ones.
const PUT_NUMBER: u64 = 1;
const CONCURRENT_FROM: u64 = 100;
const CONCURRENT: u64 = 50;
const API_KEY: &str = "kid:ksecret";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OPTS: ValidateOptions = ValidateOptions { allow_insecure_gates: false };

fn parse(bytes: &[u8]) -> RouteTable {
    RouteTable::parse(bytes, &OPTS).expect("the generated routes file is valid")
}

// ----------------------------------------------------------------------------------------------
// The naive baseline: string keys, SipHash, no validation.

struct NaiveNumber {
    agent_id: Option<String>,
    gate: Option<String>,
}

struct Naive {
    agents: HashMap<String, String>,
    numbers: HashMap<String, NaiveNumber>,
}

impl Naive {
    fn load(bytes: &[u8]) -> Naive {
        let v: serde_json::Value = serde_json::from_slice(bytes).expect("valid JSON");
        let url = |g: &serde_json::Value| g["url"].as_str().map(str::to_owned);
        let agents = v["agents"]
            .as_object()
            .expect("agents")
            .iter()
            .filter_map(|(id, a)| Some((id.clone(), url(&a["gate"])?)))
            .collect();
        let numbers = v["numbers"]
            .as_object()
            .expect("numbers")
            .iter()
            .map(|(n, e)| {
                let entry = NaiveNumber {
                    agent_id: e["agent_id"].as_str().map(str::to_owned),
                    gate: url(&e["gate"]),
                };
                (n.clone(), entry)
            })
            .collect();
        Naive { agents, numbers }
    }

    fn resolve(&self, to: &str) -> Option<&str> {
        let entry = self.numbers.get(to)?;
        if let Some(gate) = &entry.gate {
            return Some(gate);
        }
        self.agents.get(entry.agent_id.as_deref()?).map(String::as_str)
    }
}

// ----------------------------------------------------------------------------------------------
// Lookup keys and timing.

struct Keys {
    present: Vec<String>,
    absent: Vec<String>,
    non_e164: Vec<String>,
}

fn keys(shape: Shape, seed: u64) -> Keys {
    let mut rng = Rng(seed);
    let present = (0..LOOKUPS).map(|_| number(rng.below(shape.numbers))).collect();
    let absent = (0..LOOKUPS)
        .map(|i| match i % 3 {
            0 => format!("+1556{:07}", rng.below(10_000_000)),
            1 => format!("+447700{:06}", rng.below(1_000_000)),
            _ => format!("+1555{:07}", shape.numbers + rng.below(10_000_000 - shape.numbers.min(9_999_999))),
        })
        .collect();
    let non_e164 = (0..LOOKUPS)
        .map(|i| {
            let n = rng.below(shape.numbers);
            match i % 5 {
                0 => format!("client:agent_{n}"),
                1 => format!("sip:+1555{n:07}@pbx.example.com"),
                2 => format!("+1555-{n:07}"),
                3 => format!("1555{n:07}"),
                _ => format!("+1555{n:07}{n:07}"),
            }
        })
        .collect();
    Keys { present, absent, non_e164 }
}

/// Median ns per lookup over 5 passes of `keys` (each pass a full walk of the shuffled keys).
fn ns_per_lookup(keys: &[String], mut f: impl FnMut(&str) -> bool) -> f64 {
    let mut passes: Vec<f64> = (0..5).map(|_| ns_per_pass(keys, &mut f)).collect();
    median_f64(&mut passes)
}

/// Like [`ns_per_lookup`] for two implementations, their passes interleaved so that noise from
/// the shared machine falls on both alike.
fn ns_pair(keys: &[String], mut f: impl FnMut(&str) -> bool, mut g: impl FnMut(&str) -> bool) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.push(ns_per_pass(keys, &mut f));
        b.push(ns_per_pass(keys, &mut g));
    }
    (median_f64(&mut a), median_f64(&mut b))
}

fn ns_per_pass(keys: &[String], f: &mut impl FnMut(&str) -> bool) -> f64 {
    let start = Instant::now();
    let mut hits = 0usize;
    for k in keys {
        hits += usize::from(f(black_box(k.as_str())));
    }
    black_box(hits);
    start.elapsed().as_nanos() as f64 / keys.len() as f64
}

fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn median_dur(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

// ----------------------------------------------------------------------------------------------
// What one admin save costs, step by step, done in-process the way the writer does it.

struct SaveCost {
    copy: Duration,
    copy_heap: isize,
    serialise: Duration,
    saved_bytes: usize,
    write: Duration,
    fsync: Duration,
    rename: Duration,
    reread: Duration,
    free_copy: Duration,
}

fn save_cost(table: &RouteTable, dir: &Path) -> SaveCost {
    // The batch's copy: a clone shares both maps; the first number edit copies the numbers map.
    let start = Instant::now();
    let (copy, heap) = counted(|| {
        let mut copy = table.clone();
        copy.set_number_agent(&number(PUT_NUMBER), Some("agent_2")).expect("a valid edit");
        copy
    });
    let copy_time = start.elapsed();
    let start = Instant::now();
    let mut bytes = serde_json::to_vec_pretty(&copy).expect("the table serialises");
    bytes.push(b'\n');
    let serialise = start.elapsed();
    let temp = dir.join(".save_cost.tmp");
    let start = Instant::now();
    let mut file = std::fs::File::create(&temp).expect("temp file");
    file.write_all(&bytes).expect("written");
    let write = start.elapsed();
    let start = Instant::now();
    file.sync_all().expect("fsync");
    let fsync = start.elapsed();
    let start = Instant::now();
    let saved = dir.join("save_cost.json");
    std::fs::rename(&temp, &saved).expect("renamed");
    std::fs::File::open(dir).and_then(|d| d.sync_all()).expect("directory fsync");
    let rename = start.elapsed();
    // The watcher sees the save and the writer re-reads and fingerprints it (then skips it).
    let start = Instant::now();
    let again = std::fs::read(&saved).expect("read back");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&again[..], &mut h);
    black_box(std::hash::Hasher::finish(&h));
    let reread = start.elapsed();
    let saved_bytes = bytes.len();
    drop((bytes, again));
    let _ = std::fs::remove_file(&saved);
    let start = Instant::now();
    drop(copy);
    let free_copy = start.elapsed();
    SaveCost {
        copy: copy_time,
        copy_heap: heap.net,
        serialise,
        saved_bytes,
        write,
        fsync,
        rename,
        reread,
        free_copy,
    }
}

// ----------------------------------------------------------------------------------------------
// The real binary.

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let field = child::proc_status(pid);
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false if not allowed.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Samples VmRSS every 5 ms until stopped; returns the highest seen (a cross-check of VmHWM).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Relaxed) {
                max = max.max(rss(pid).0);
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// Counts saves by the routes file's inode changing (each save renames a new file over it).
struct SaveCounter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl SaveCounter {
    fn start(path: &Path) -> SaveCounter {
        let path = path.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let ino = || std::fs::metadata(&path).map(|m| m.ino()).ok();
            let mut seen = ino();
            let mut changes = 0;
            while !flag.load(Relaxed) {
                let now = ino();
                if now.is_some() && now != seen {
                    changes += 1;
                    seen = now;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            changes
        });
        SaveCounter { stop, thread }
    }

    fn stop(self) -> u64 {
        // One last look after the final save.
        std::thread::sleep(Duration::from_millis(20));
        self.stop.store(true, Relaxed);
        self.thread.join().expect("save counter")
    }
}

struct Callgate {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    log: Vec<String>,
}

impl Callgate {
    fn spawn(bin: &Path, routes: &Path) -> (Callgate, Instant) {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["--routes"])
            .arg(routes)
            .args([
                "--upstream",
                "http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--api-key", API_KEY])
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
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        (Callgate { child, lines, log: Vec::new() }, started)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the JSON log line whose message is `message`; panics (with the log) on a line
    /// whose message is in `failures`, on exit, or after `timeout`.
    fn wait_for(
        &mut self,
        message: &str,
        failures: &[&str],
        timeout: Duration,
    ) -> (Instant, serde_json::Value) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.log.push(line.clone());
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
                    let m = v["message"].as_str().unwrap_or("");
                    if m == message {
                        return (at, v);
                    }
                    if failures.contains(&m) {
                        self.die(&format!("callgate logged {m:?} while waiting for {message:?}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.die(&format!("no {message:?} within {timeout:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.die(&format!("callgate exited before {message:?}"))
                }
            }
        }
    }

    fn die(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("routes_scale: {why}; callgate's log:\n{}", self.log.join("\n"));
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(mut self) {
        child::terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// A connected admin request, sent by [`Pending::send`] (so the connect can happen before a
/// start barrier).
struct Pending {
    stream: TcpStream,
    request: Vec<u8>,
}

impl Pending {
    fn new(addr: SocketAddr, method: &str, path: &str, body: &str) -> Pending {
        let stream = TcpStream::connect(addr).expect("admin listener accepts");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n"
        );
        if !body.is_empty() {
            let _ = write!(request, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        }
        request.push_str("\r\n");
        request.push_str(body);
        Pending { stream, request: request.into_bytes() }
    }

    /// Sends the request and reads the whole answer: status and body.
    fn send(mut self) -> (u16, String) {
        self.stream.write_all(&self.request).expect("request sent");
        let mut answer = String::new();
        self.stream.read_to_string(&mut answer).expect("answer read");
        let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    Pending::new(addr, method, path, body).send()
}

fn put_number(addr: SocketAddr, i: u64, agent: &str) -> Pending {
    let path = format!("/v1/numbers/%2B{}", &number(i)[1..]);
    Pending::new(addr, "PUT", &path, &format!("{{\"agent_id\":\"{agent}\"}}"))
}

// ----------------------------------------------------------------------------------------------
// Reporting.

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn kib_mib(kib: u64) -> String {
    mib(kib as f64 * 1024.0)
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**MISSED**"
    }
}

fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}, shared), {:.0} GiB RAM, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

struct Row {
    step: &'static str,
    figure: String,
    value: String,
    target: String,
}

fn row(
    rows: &mut Vec<Row>,
    step: &'static str,
    figure: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
) {
    rows.push(Row { step, figure: figure.into(), value: value.into(), target: target.into() });
}

fn progress(what: &str) {
    eprintln!("routes_scale: {what}");
}

// ----------------------------------------------------------------------------------------------

fn main() {
    let mut shape = Shape { numbers: 1_000_000, agents: 100_000 };
    let mut write_only = None;
    let mut save_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => shape = Shape { numbers: 100_000, agents: 10_000 },
            "--numbers" => shape.numbers = args.next().and_then(|v| v.parse().ok()).expect("--numbers N"),
            "--agents" => shape.agents = args.next().and_then(|v| v.parse().ok()).expect("--agents N"),
            "--save-cost-only" => save_only = true,
            "--write-routes" => write_only = Some(PathBuf::from(args.next().expect("--write-routes FILE"))),
            _ => {} // cargo passes --bench
        }
    }
    assert!(
        (CONCURRENT_FROM + CONCURRENT..=10_000_000).contains(&shape.numbers) && shape.agents >= 7,
        "150 to 10,000,000 numbers, 7 agents or more"
    );
    if let Some(file) = write_only {
        // For profiling the binary by hand (massif, heaptrack): the file, and nothing else.
        std::fs::write(&file, routes_file(shape, None)).expect("routes file written");
        let changed = file.with_extension("changed.json");
        std::fs::write(&changed, routes_file(shape, Some(RELOADED_NUMBER))).expect("routes file written");
        println!(
            "{} and {} (number {} moved to the next agent)",
            file.display(),
            changed.display(),
            number(RELOADED_NUMBER)
        );
        return;
    }
    let bin = child::release_binary("routes_scale");
    let dir = tempfile::Builder::new().prefix("routes_scale").tempdir().expect("temp dir");
    let path = dir.path().join("routes.json");
    let mut rows = Vec::new();

    // ---- 1. Parse.
    progress(&format!("generating {} numbers, {} agents", shape.numbers, shape.agents));
    let bytes = routes_file(shape, None);
    std::fs::write(&path, &bytes).expect("routes file written");
    row(
        &mut rows,
        "1",
        "routes file size",
        format!("{} ({} bytes)", mib(bytes.len() as f64), bytes.len()),
        "",
    );
    progress("parsing (3 timed runs, 1 counted)");
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let table = parse(&bytes);
        runs.push(start.elapsed());
        assert_eq!(table.number_count() as u64, shape.numbers);
        assert_eq!(table.agent_count() as u64, shape.agents);
        drop(table);
    }
    let parse_median = median_dur(&runs);
    row(
        &mut rows,
        "1",
        "`RouteTable::parse`, median of 3",
        format!("{} (runs {})", ms(parse_median), runs.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")),
        format!("< 2 s: {}", verdict(parse_median < Duration::from_secs(2))),
    );
    let (table, heap) = counted(|| parse(&bytes));
    row(
        &mut rows,
        "1",
        "heap held by the table / peak while parsing",
        format!("{} / {} ({} allocations)", mib(heap.net as f64), mib(heap.peak as f64), heap.allocs),
        "",
    );

    progress("save cost, in-process");
    let cost = save_cost(&table, dir.path());
    if save_only {
        // For profiling the save path (e.g. under perf): steps 1 and the in-process save only.
        println!(
            "copy {} / serialise {} / write {} / fsync {} / rename {} / re-read {} / free {}",
            ms(cost.copy),
            ms(cost.serialise),
            ms(cost.write),
            ms(cost.fsync),
            ms(cost.rename),
            ms(cost.reread),
            ms(cost.free_copy)
        );
        return;
    }

    // ---- 3. Lookups (in-process; before the binary runs, so nothing else allocates).
    progress("naive baseline");
    let naive_start = Instant::now();
    let (naive, naive_heap) = counted(|| Naive::load(&bytes));
    let naive_load = naive_start.elapsed();
    progress("lookups");
    let k = keys(shape, 42);
    for key in k.present.iter().take(1000) {
        let r = table.resolve(key);
        assert!(r.gate.is_some() && r.source != Source::None, "{key} has a gate");
        assert_eq!(r.gate.map(|g| g.url()), naive.resolve(key), "{key}: the same gate");
    }
    for key in k.absent.iter().chain(&k.non_e164) {
        assert_eq!(table.resolve(key).source, Source::None, "{key} has no gate");
    }
    let (present, naive_present) =
        ns_pair(&k.present, |key| table.resolve(key).gate.is_some(), |key| naive.resolve(key).is_some());
    let (absent, naive_absent) =
        ns_pair(&k.absent, |key| table.resolve(key).gate.is_some(), |key| naive.resolve(key).is_some());
    let (non_e164, naive_non) =
        ns_pair(&k.non_e164, |key| table.resolve(key).gate.is_some(), |key| naive.resolve(key).is_some());
    let ((), allocs) = counted(|| {
        for key in k.present.iter().chain(&k.absent).chain(&k.non_e164) {
            black_box(table.resolve(black_box(key)));
        }
    });
    drop(naive);
    drop(table);
    drop(k);

    progress("lookups at smaller sizes");
    let mut scaling = Vec::new();
    for small in [Shape { numbers: 10_000, agents: 1_000 }, Shape { numbers: 100_000, agents: 10_000 }] {
        if small.numbers >= shape.numbers {
            continue;
        }
        let t = parse(&routes_file(small, None));
        let keys = keys(small, 7).present;
        scaling.push((small.numbers, ns_per_lookup(&keys, |key| t.resolve(key).gate.is_some())));
    }
    scaling.push((shape.numbers, present));

    row(
        &mut rows,
        "3",
        format!("`resolve` ns/lookup, {LOOKUPS} shuffled keys: present / absent / not E.164"),
        format!("{present:.0} / {absent:.0} / {non_e164:.0} ns"),
        "O(1)",
    );
    row(
        &mut rows,
        "3",
        "naive `HashMap<String, _>` (SipHash): present / absent / not E.164",
        format!("{naive_present:.0} / {naive_absent:.0} / {naive_non:.0} ns"),
        "",
    );
    row(
        &mut rows,
        "3",
        "naive table: load (serde_json `Value`, then maps) / heap",
        format!("{} / {}", ms(naive_load), mib(naive_heap.net as f64)),
        "",
    );
    row(
        &mut rows,
        "3",
        "`resolve` present, by table size",
        scaling.iter().map(|(n, ns)| format!("{n} numbers: {ns:.0} ns")).collect::<Vec<_>>().join("; "),
        "O(1): hashed, no growth but cache misses",
    );
    row(
        &mut rows,
        "3",
        format!("allocations during {} resolves", 3 * LOOKUPS),
        allocs.allocs.to_string(),
        format!("0: {}", verdict(allocs.allocs == 0)),
    );

    row(
        &mut rows,
        "4, in-process",
        "one save in-process (as the writer does it): copy-on-write of the numbers map",
        format!("{} ({} copied)", ms(cost.copy), mib(cost.copy_heap as f64)),
        "",
    );
    row(
        &mut rows,
        "4, in-process",
        "… serialise (sorted, pretty) / write / fsync / rename + dir fsync",
        format!(
            "{} ({}) / {} / {} / {}",
            ms(cost.serialise),
            mib(cost.saved_bytes as f64),
            ms(cost.write),
            ms(cost.fsync),
            ms(cost.rename)
        ),
        "",
    );
    row(
        &mut rows,
        "4, in-process",
        "… re-read + fingerprint of the file (before each batch, and when the watcher sees the save) / freeing the replaced map",
        format!("{} / {}", ms(cost.reread), ms(cost.free_copy)),
        "",
    );

    // ---- 2. The real binary: load, steady RSS, reload.
    progress(&format!("starting {}", bin.display()));
    let (mut cg, spawned) = Callgate::spawn(&bin, &path);
    let pid = cg.pid();
    let (bound_at, bound) = cg.wait_for("listeners bound", &[], Duration::from_secs(60));
    let admin: SocketAddr = bound["admin_listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin_listen in \"listeners bound\"");
    let (loaded_at, _) = cg.wait_for("routes loaded", &[], Duration::from_secs(120));
    let (serving_at, _) = cg.wait_for("callgate serving", &[], Duration::from_secs(120));
    let (rss_serving, hwm_load) = rss(pid);
    let load = serving_at - spawned;
    row(
        &mut rows,
        "2",
        "load: spawn → `callgate serving`",
        format!(
            "{} (spawn → listeners bound {}, → routes loaded {})",
            ms(load),
            ms(bound_at - spawned),
            ms(loaded_at - spawned)
        ),
        format!("< 2 s: {}", verdict(load < Duration::from_secs(2))),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (rss_steady, _) = rss(pid);
    row(
        &mut rows,
        "2",
        "RSS at `callgate serving` (VmRSS) / peak during load (VmHWM)",
        format!("{} / {}", kib_mib(rss_serving), kib_mib(hwm_load)),
        "",
    );
    row(
        &mut rows,
        "2",
        "RSS steady, 2 s after serving",
        kib_mib(rss_steady),
        format!("< 200 MiB: {}", verdict(rss_steady < 200 * 1024)),
    );

    progress("reload");
    let changed = routes_file(shape, Some(RELOADED_NUMBER));
    let temp = dir.path().join(".routes.json.bench");
    let hwm_reset = reset_hwm(pid);
    let sampler = RssSampler::start(pid);
    let write_start = Instant::now();
    std::fs::write(&temp, &changed).expect("new routes written");
    std::fs::rename(&temp, &path).expect("new routes renamed over");
    let written = write_start.elapsed();
    drop(changed);
    let (reloaded_at, _) = cg.wait_for("routes reloaded", &["routes reload failed"], Duration::from_secs(60));
    let reload = reloaded_at - write_start;
    // Let the old table be dropped before reading the peak.
    std::thread::sleep(Duration::from_millis(300));
    let sampled_peak = sampler.stop();
    let (_, hwm_reload) = rss(pid);
    let reload_peak = if hwm_reset { hwm_reload } else { sampled_peak };
    std::thread::sleep(Duration::from_millis(1700));
    let (rss_after_reload, _) = rss(pid);
    let (status, body) =
        request(admin, "GET", &format!("/v1/numbers/%2B{}", &number(RELOADED_NUMBER)[1..]), "");
    let expected = format!("agent_{}", (RELOADED_NUMBER + 1) % shape.agents);
    assert!(status == 200 && body.contains(&expected), "the reload is in force: {status} {body}");
    row(
        &mut rows,
        "2",
        "reload: write (rename over) → `routes reloaded`",
        format!("{} (write {}, then the 100 ms debounce, read, parse)", ms(reload), ms(written)),
        format!("< 2 s: {}", verdict(reload < Duration::from_secs(2))),
    );
    row(
        &mut rows,
        "2",
        "peak RSS during reload (VmHWM reset before it)",
        format!(
            "{}{}",
            kib_mib(reload_peak),
            if hwm_reset {
                format!(" (5 ms samples: {})", kib_mib(sampled_peak))
            } else {
                " (5 ms samples)".into()
            }
        ),
        "reported",
    );
    row(
        &mut rows,
        "2",
        "RSS steady, 2 s after the reload",
        kib_mib(rss_after_reload),
        format!("< 200 MiB: {}", verdict(rss_after_reload < 200 * 1024)),
    );

    // ---- 4. Admin writes.
    progress("admin writes");
    reset_hwm(pid);
    let saves = SaveCounter::start(&path);
    let mut singles = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let (status, body) = put_number(admin, PUT_NUMBER, "agent_1").send();
        singles.push(start.elapsed());
        assert_eq!(status, 200, "PUT answered 200: {body}");
    }
    let sequential_saves = saves.stop();
    let single = median_dur(&singles);
    row(
        &mut rows,
        "4",
        format!("one `PUT /v1/numbers/%2B{}`, median of 5 sequential", &number(PUT_NUMBER)[1..]),
        format!(
            "{} (runs {}; saves: {})",
            ms(single),
            singles.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
            sequential_saves
        ),
        format!("< 1 s: {}", verdict(single < Duration::from_secs(1))),
    );

    // Let the watcher's look at the last save pass, so the burst starts on an idle writer.
    std::thread::sleep(Duration::from_millis(500));
    let saves = SaveCounter::start(&path);
    let barrier = Arc::new(Barrier::new(CONCURRENT as usize + 1));
    let threads: Vec<_> = (CONCURRENT_FROM..CONCURRENT_FROM + CONCURRENT)
        .map(|i| {
            let pending = put_number(admin, i, "agent_2");
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let (status, body) = pending.send();
                (Instant::now(), status, body)
            })
        })
        .collect();
    barrier.wait();
    let burst_start = Instant::now();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().expect("writer thread")).collect();
    let burst = answers.iter().map(|(at, _, _)| *at).max().expect("50 answers") - burst_start;
    let burst_saves = saves.stop();
    for (_, status, body) in &answers {
        assert_eq!(*status, 200, "concurrent PUT answered 200: {body}");
    }
    let fastest = answers.iter().map(|(at, _, _)| *at - burst_start).min().expect("answers");
    row(
        &mut rows,
        "4",
        format!("{CONCURRENT} concurrent PUTs (different numbers): wall time"),
        format!(
            "{} (first answer {}, saves: {}) vs {CONCURRENT} × one write = {}: {:.1}× faster",
            ms(burst),
            ms(fastest),
            burst_saves,
            ms(single * CONCURRENT as u32),
            (single * CONCURRENT as u32).as_secs_f64() / burst.as_secs_f64()
        ),
        "group commit",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, hwm_writes) = rss(pid);
    std::thread::sleep(Duration::from_millis(1700));
    let (rss_after_writes, _) = rss(pid);
    row(
        &mut rows,
        "4",
        "peak RSS during the writes / steady 2 s after",
        format!("{} / {}", kib_mib(hwm_writes), kib_mib(rss_after_writes)),
        format!("steady < 200 MiB: {}", verdict(rss_after_writes < 200 * 1024)),
    );

    // Every write is in memory and on disk.
    for i in CONCURRENT_FROM..CONCURRENT_FROM + CONCURRENT {
        let (status, body) = request(admin, "GET", &format!("/v1/numbers/%2B{}", &number(i)[1..]), "");
        assert!(status == 200 && body.contains("\"agent_2\""), "{} in memory: {status} {body}", number(i));
    }
    cg.stop();
    let saved = parse(&std::fs::read(&path).expect("routes file read"));
    for i in CONCURRENT_FROM..CONCURRENT_FROM + CONCURRENT {
        assert_eq!(saved.number_agent(&number(i)).map(|a| &**a), Some("agent_2"), "{} on disk", number(i));
    }
    assert_eq!(saved.number_count() as u64, shape.numbers);
    drop(saved);

    // ---- The report.
    println!();
    println!("## Routing table at scale: {} numbers, {} agents", shape.numbers, shape.agents);
    println!();
    println!(
        "Machine: {}. Date: {}. Release build (`cargo bench`; binary {}).",
        machine(),
        utc_now(),
        bin.display()
    );
    println!();
    println!("| step | figure | value | target |");
    println!("|---|---|---|---|");
    rows.sort_by_key(|r| r.step);
    for r in &rows {
        println!("| {} | {} | {} | {} |", r.step, r.figure, r.value, r.target);
    }
    println!();
    println!("All 50 concurrent writes were found afterwards in memory (GET) and in the saved file.");
}
