//! The bench's modes: the full run (every path, open and closed loop, the dead gate), the soak
//! and the profile; and what they share with the nginx+njs comparison (`compare.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{closed_loop, closed_loop_on, open_loop, open_loop_on, Pool, RunResult, Target};
use crate::process::{self, locate_binary, Callgate, Features, ProcStatus};
use crate::report::{self, Row};
use crate::stubs::Stubs;
use crate::{write_routes, Args, CallPath};

const WARMUP: Duration = Duration::from_millis(500);
/// The dead gate's rate and connections: at 200 ms per call, 100 calls/s keeps about 20 in
/// flight, well inside both the generator's connections and `--gate-max-pending`.
const DEAD_RATE: f64 = 100.0;
const DEAD_CONNECTIONS: usize = 64;

pub(crate) fn run_length(args: &Args, default: f64) -> Duration {
    Duration::from_secs_f64(args.run_secs.unwrap_or(if args.quick { 1.0 } else { default }))
}

fn today() -> String {
    let out = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the machine (builds) shows in the tail latencies: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    format!("{cores} cores ({cpu}), load average {load} at the start")
}

/// A scratch directory for the routes file and callgate's log, removed at the end.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("callgate-load-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("routes")).expect("scratch directory");
        Scratch(dir)
    }

    /// The routes file, in a directory of its own: callgate watches that directory, and its log
    /// (written in the scratch directory) must not wake the watcher at every line.
    pub(crate) fn routes(&self) -> PathBuf {
        self.0.join("routes").join("routes.json")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a run stands on: a scratch directory, the stubs, a routes file pointing at them,
/// and callgate serving it.
struct Bench {
    scratch: Scratch,
    stubs: Stubs,
    callgate: Callgate,
    features: Features,
}

impl Bench {
    async fn start(args: &Args) -> Bench {
        let scratch = Scratch::new();
        let stubs = Stubs::start(args.gate_addr, args.engine_addr, args.dead_addr).await.expect("stubs bind");
        let routes = scratch.routes();
        let chains = Features::probe(&locate_binary(args.callgate.as_deref())).chains;
        write_routes(&routes, stubs.gate, stubs.dead, args.table_numbers, chains);
        let (callgate, features) = start_callgate(args, &scratch.0, stubs.engine, &routes).await;
        Bench { scratch, stubs, callgate, features }
    }
}

pub(crate) async fn start_callgate(
    args: &Args,
    dir: &Path,
    engine: SocketAddr,
    routes: &Path,
) -> (Callgate, Features) {
    let bin = locate_binary(args.callgate.as_deref());
    let features = Features::probe(&bin);
    if let Some(store) = &args.store {
        let out = std::process::Command::new(&bin)
            .args(["store", "import", "--allow-insecure-gates", "--routes"])
            .arg(routes)
            .args(["--store", store])
            .output()
            .expect("callgate store import runs");
        assert!(out.status.success(), "store import failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let callgate = Callgate::spawn(&bin, dir, engine, routes, &features, args.store.as_deref());
    if args.store.is_some() {
        println!("table: from a shared store (--store, imported from the routes file)");
    }
    callgate.wait_ready().await;
    (callgate, features)
}

pub(crate) fn describe_setup(features: &Features, connections: usize) {
    println!("machine: {}; date: {}", machine(), today());
    println!(
        "callgate: release binary, --log-format json (a decision line per call), signatures {}; \
         load generator: {connections} keep-alive HTTP/1.1 connections, same machine",
        if features.signatures {
            "enforced (valid X-Twilio-Signature sent)"
        } else {
            "NOT enforced (binary has no --twilio-auth-token yet)"
        }
    );
}

/// How a run loads its target: open loop at `rate` calls/s, or closed loop (`None`).
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
    pub(crate) connections: usize,
}

/// A target under measurement: its name in the tables, where it listens, callgate itself (for
/// its overhead histogram) and the processes whose CPU time counts as its cost.
pub(crate) struct Subject<'a> {
    pub(crate) name: &'static str,
    pub(crate) target: &'a Target,
    pub(crate) callgate: Option<&'a Callgate>,
    pub(crate) pids: Vec<u32>,
}

/// Slices each measurement is cut into, taken in turn from every subject, so that the noise of
/// a shared machine (builds, other VMs) falls on all of them alike.
pub(crate) const SLICES: u32 = 8;

/// Measures `path` under `load` on every subject, interleaved in [`SLICES`] slices, scraping
/// callgate's overhead histogram around its slices and counting the CPU time of each subject's
/// processes. Every subject but "direct" is expected to answer as callgate does.
pub(crate) async fn measure(subjects: &[Subject<'_>], path: CallPath, load: Load) -> Vec<Row> {
    let Load { rate, duration, connections } = load;
    let slice = duration / SLICES;
    let mut scrapes = Vec::new();
    for s in subjects {
        scrapes.push(match s.callgate {
            Some(c) => Some(c.scrape().await),
            None => None,
        });
    }
    let mut pools = Vec::new();
    for s in subjects {
        pools.push(Pool::open(s.target, connections).await);
    }
    let mut results: Vec<Option<RunResult>> = subjects.iter().map(|_| None).collect();
    let mut slice_p99s: Vec<Vec<f64>> = subjects.iter().map(|_| Vec::new()).collect();
    let mut cpu = vec![0.0; subjects.len()];
    for _ in 0..SLICES {
        for (i, (s, pool)) in subjects.iter().zip(&mut pools).enumerate() {
            let call = path.call(s.name != "direct");
            let cpu_before = process::cpu_seconds(&s.pids);
            let r = match rate {
                Some(rate) => open_loop_on(pool, call, rate, slice).await,
                None => closed_loop_on(pool, call, slice).await,
            };
            cpu[i] += process::cpu_seconds(&s.pids) - cpu_before;
            slice_p99s[i].push(r.ms(0.99));
            match &mut results[i] {
                Some(total) => total.then(r),
                none => *none = Some(r),
            }
        }
    }
    let load = match rate {
        Some(rate) => format!("open {rate:.0}/s"),
        None => format!("closed {connections} conns"),
    };
    let mut rows = Vec::new();
    let slices = slice_p99s.into_iter().map(|mut p99s| {
        p99s.sort_by(f64::total_cmp);
        p99s[p99s.len() / 2]
    });
    let per_subject = scrapes.into_iter().zip(cpu).zip(slices);
    for ((s, result), ((before, cpu), slice_p99_median_ms)) in subjects.iter().zip(results).zip(per_subject) {
        let result = result.expect("at least one slice");
        let overhead_p99_us = match (s.callgate, before) {
            (Some(c), Some(before)) => c
                .scrape()
                .await
                .quantile_since(&before, "callgate_overhead_seconds", 0.99)
                .map(|(b, e)| (b * 1e6, e * 1e6)),
            _ => None,
        };
        let calls = (result.ok + result.errors).max(1) as f64;
        let cpu_us_per_call = (!s.pids.is_empty()).then(|| cpu * 1e6 / calls);
        if let Some(e) = &result.first_error {
            eprintln!("load: {} via {}, {load}: {} errors, first: {e}", path.name(), s.name, result.errors);
        }
        let load = load.clone();
        rows.push(Row {
            path: path.name(),
            target: s.name,
            load,
            result,
            overhead_p99_us,
            cpu_us_per_call,
            slice_p99_median_ms,
        });
    }
    rows
}

/// The paths to measure: --paths, else all (the chain path where the binary has chains).
fn paths(args: &Args, features: &Features) -> Vec<CallPath> {
    if args.paths.is_empty() {
        CallPath::MEASURED.into_iter().filter(|p| features.chains || *p != CallPath::Chain).collect()
    } else {
        args.paths.clone()
    }
}

pub(crate) async fn warm_up(
    targets: &[(&'static str, &Target, bool)],
    paths: &[CallPath],
    connections: usize,
) {
    for &(_, target, proxied) in targets {
        for &path in paths {
            closed_loop(target, path.call(proxied), WARMUP, connections).await;
        }
    }
}

/// The default run: every path through callgate and direct, open loop at each rate and closed
/// loop; then the dead gate.
pub async fn full(args: &Args) {
    let began = Instant::now();
    let Bench { scratch: _scratch, stubs, callgate, features } = Bench::start(args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = ProcStatus::read(callgate.pid());

    let via = Target::new(callgate.public);
    let direct = Target::new(stubs.engine);
    let conns = args.connections;
    let paths = paths(args, &features);
    warm_up(&[("callgate", &via, true), ("direct", &direct, false)], &paths, conns).await;
    let after_warmup = ProcStatus::read(callgate.pid());

    let run = run_length(args, 3.5);
    let rates: Vec<f64> =
        if args.quick { vec![args.rates.iter().copied().fold(0.0, f64::max)] } else { args.rates.clone() };
    let mut rows = Vec::new();
    let loads = rates.iter().map(|&r| Some(r)).chain([None]);
    let subjects = [
        Subject { name: "direct", target: &direct, callgate: None, pids: Vec::new() },
        Subject { name: "callgate", target: &via, callgate: Some(&callgate), pids: vec![callgate.pid()] },
    ];
    for rate in loads {
        let load = Load { rate, duration: run, connections: conns };
        for &path in &paths {
            rows.extend(measure(&subjects, path, load).await);
        }
    }
    let after_runs = ProcStatus::read(callgate.pid());
    let decisions = callgate.decision_lines();

    let dead = if args.no_dead_gate { None } else { Some(dead_gate(args, &callgate, &stubs).await) };
    let breaker = if args.no_dead_gate || !features.resilience {
        None
    } else {
        Some(dead_gate_behind_open_circuit(args, &_scratch, &stubs, &features).await)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = ProcStatus::read(callgate.pid());

    report::header("callgate load bench");
    describe_setup(&features, conns);
    println!(
        "run length {run:?} per target and load, in {SLICES} slices taken in turn from each target; \
         gate and engine are in-process stubs answering at once"
    );
    report::header("Every path, through callgate and direct to the engine");
    report::runs(&rows);
    let top = format!("open {:.0}/s", rates.last().copied().unwrap_or(2000.0));
    report::header(&format!("Added latency at {top} (callgate minus direct)"));
    report::added(&rows, &top, "callgate");
    report::header("callgate's process");
    println!("| when | RSS MiB | threads |");
    println!("|---|---:|---:|");
    for (when, s) in [
        ("idle, after start-up", idle),
        ("after warm-up", after_warmup),
        ("after the runs above", after_runs),
        (if args.no_dead_gate { "1 s later" } else { "after the dead-gate run (+1 s)" }, settled),
    ] {
        println!("| {when} | {:.1} | {} |", s.rss_mib(), s.threads);
    }
    println!("\ndecision lines logged during the runs: {decisions}");
    if let Some(dead) = dead {
        report::header("A gate that never answers (timeout_ms 200)");
        dead.print();
    }
    if let Some(rows) = breaker {
        let top = format!("open {BREAKER_RATE:.0}/s");
        report::header(&format!(
            "The same dead gate behind an open circuit (--breaker-failures 5), against no gate, at {top}"
        ));
        report::added(&rows, &top, "callgate");
    }
    println!("\n(the bench took {:.0} s)", began.elapsed().as_secs_f64());
}

struct DeadRun {
    result: RunResult,
    rate: f64,
    before: ProcStatus,
    after: ProcStatus,
    max_threads: u64,
    max_rss_kib: u64,
    timeouts: f64,
    overloads: f64,
    fail_open: f64,
    accepted: u64,
}

impl DeadRun {
    fn print(&self) {
        let r = &self.result;
        println!(
            "open loop {:.0}/s for {:?}: {} calls answered, {} errors; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.rate,
            r.elapsed,
            r.ok,
            report::errors(r),
            r.ms(0.5),
            r.ms(0.99),
            r.hist.max() as f64 / 1e6
        );
        println!(
            "gate failures: {} timeout, {} overload; fail_open decisions {}; connections the dead gate accepted: {}",
            self.timeouts, self.overloads, self.fail_open, self.accepted
        );
        println!(
            "callgate threads {} before, {} at most during, {} after; RSS {:.1} MiB before, {:.1} MiB at most, {:.1} MiB after",
            self.before.threads,
            self.max_threads,
            self.after.threads,
            self.before.rss_mib(),
            self.max_rss_kib as f64 / 1024.0,
            self.after.rss_mib()
        );
    }
}

async fn dead_gate(args: &Args, callgate: &Callgate, stubs: &Stubs) -> DeadRun {
    let via = Target::new(callgate.public);
    let before = ProcStatus::read(callgate.pid());
    let scrape_before = callgate.scrape().await;
    let accepted_before = stubs.counts.dead_accepted.load(Ordering::Relaxed);
    let pid = callgate.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let (mut threads, mut rss) = (0, 0);
            while sampling.load(Ordering::Relaxed) {
                let s = ProcStatus::read(pid);
                (threads, rss) = (threads.max(s.threads), rss.max(s.rss_kib));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (threads, rss)
        })
    };
    let duration = run_length(args, 6.0).max(Duration::from_secs(2));
    let result = open_loop(&via, CallPath::DeadGate.call(true), DEAD_RATE, duration, DEAD_CONNECTIONS).await;
    sampling.store(false, Ordering::Relaxed);
    let (max_threads, max_rss_kib) = sampler.await.expect("sampler does not panic");
    let after = ProcStatus::read(pid);
    let scrape = callgate.scrape().await;
    let failures = |cause: &str| {
        scrape.delta(&scrape_before, &format!("callgate_gate_failures_total{{cause=\"{cause}\"}}"))
    };
    DeadRun {
        result,
        rate: DEAD_RATE,
        before,
        after,
        max_threads,
        max_rss_kib,
        timeouts: failures("timeout"),
        overloads: failures("overload"),
        fail_open: scrape.delta(&scrape_before, "callgate_inbound_calls_total{decision=\"fail_open\"}"),
        accepted: stubs.counts.dead_accepted.load(Ordering::Relaxed) - accepted_before,
    }
}

/// Rate of the open-circuit run, calls/s.
const BREAKER_RATE: f64 = 2000.0;

/// A second callgate with the breaker on (5 failures, a cooldown longer than the run): the dead
/// gate's circuit is opened by a few calls, then the dead-gate number and the no-gate number are
/// measured at [`BREAKER_RATE`], each against the engine called directly. With the circuit
/// open, a call to the dead gate should cost what a call with no gate does.
async fn dead_gate_behind_open_circuit(
    args: &Args,
    scratch: &Scratch,
    stubs: &Stubs,
    features: &Features,
) -> Vec<Row> {
    let bin = locate_binary(args.callgate.as_deref());
    let extra = ["--breaker-failures", "5", "--breaker-cooldown", "1h"];
    let callgate = Callgate::spawn_with(
        &bin,
        &scratch.0,
        stubs.engine,
        &scratch.routes(),
        features,
        "breaker.log",
        &extra,
        None,
    );
    callgate.wait_ready().await;
    let via = Target::new(callgate.public);
    let direct = Target::new(stubs.engine);
    // Five timeouts open it; a few more calls make sure, and warm the pools.
    closed_loop(&via, CallPath::DeadGate.call(true), Duration::from_millis(1500), 8).await;
    let opened = callgate.scrape().await.value("callgate_circuits_open");
    assert!(opened >= 1.0, "the dead gate's circuit did not open (callgate_circuits_open {opened})");
    warm_up(&[("callgate", &via, true), ("direct", &direct, false)], &[CallPath::NoGate], args.connections)
        .await;
    let subjects = [
        Subject { name: "direct", target: &direct, callgate: None, pids: Vec::new() },
        Subject { name: "callgate", target: &via, callgate: Some(&callgate), pids: vec![callgate.pid()] },
    ];
    let load =
        Load { rate: Some(BREAKER_RATE), duration: run_length(args, 3.5), connections: args.connections };
    let mut rows = measure(&subjects, CallPath::DeadGate, load).await;
    rows.extend(measure(&subjects, CallPath::NoGate, load).await);
    rows
}

/// Closed loop (or open loop at --profile-rate) on each path through callgate for --run-secs
/// (default 10) while `perf record` samples callgate (cpu-clock, DWARF call graphs): one
/// `PREFIX-PATH.data` file per path.
pub async fn profile(args: &Args) {
    let prefix = args.profile.clone().expect("--profile PREFIX");
    let Bench { scratch: _scratch, stubs: _stubs, callgate, features } = Bench::start(args).await;
    let via = Target::new(callgate.public);
    let paths = paths(args, &features);
    warm_up(&[("callgate", &via, true)], &paths, args.connections).await;
    let run = Duration::from_secs_f64(args.run_secs.unwrap_or(10.0));
    describe_setup(&features, args.connections);
    for path in paths {
        let out = format!("{}-{}.data", prefix.display(), path.name().replace(' ', "-"));
        let mut perf = std::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,16384", "-o", &out])
            .arg("-p")
            .arg(callgate.pid().to_string())
            .args(["--", "sleep"])
            .arg(format!("{}", run.as_secs_f64() + 0.5))
            .spawn()
            .expect("perf runs");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_before = process::cpu_seconds(&[callgate.pid()]);
        let r = match args.profile_rate {
            Some(rate) => open_loop(&via, path.call(true), rate, run, args.connections).await,
            None => closed_loop(&via, path.call(true), run, args.connections).await,
        };
        let cpu = process::cpu_seconds(&[callgate.pid()]) - cpu_before;
        let _ = perf.wait();
        println!(
            "{}: {:.0} calls/s, p99 {:.3} ms, {} errors, callgate CPU {:.0} µs/call (under perf); profile in {out}",
            path.name(),
            r.calls_per_sec(),
            r.ms(0.99),
            r.errors,
            cpu * 1e6 / r.ok.max(1) as f64
        );
    }
    println!("view: perf report -i FILE --no-children --sort sym  (or --sort comm, dso; add -g caller)");
}

/// 2,000 calls/s (or --soak-rate) on the accept path for --duration, reported every 30 s.
pub async fn soak(args: &Args) {
    let Bench { scratch: _scratch, stubs: _stubs, callgate, features } = Bench::start(args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = ProcStatus::read(callgate.pid());
    let total = args.duration.unwrap_or(Duration::from_secs(600));
    let chunk = Duration::from_secs(30).min(total);
    let via = Target::new(callgate.public);

    report::header(&format!("Soak: accept path, open loop {:.0}/s for {total:?}", args.soak_rate));
    describe_setup(&features, args.connections);
    println!("idle RSS {:.1} MiB, {} threads\n", idle.rss_mib(), idle.threads);
    println!(
        "| elapsed | calls/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/call | overhead p99 | RSS MiB | threads |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut first_rss = None;
    let mut last = idle;
    while started.elapsed() + chunk / 2 < total {
        let before = callgate.scrape().await;
        let cpu_before = process::cpu_seconds(&[callgate.pid()]);
        let r = open_loop(&via, CallPath::Accept.call(true), args.soak_rate, chunk, args.connections).await;
        let cpu = process::cpu_seconds(&[callgate.pid()]) - cpu_before;
        let overhead = callgate.scrape().await.quantile_since(&before, "callgate_overhead_seconds", 0.99);
        last = ProcStatus::read(callgate.pid());
        first_rss.get_or_insert(last.rss_kib);
        println!(
            "| {:.0} s | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.0} | {} | {:.1} | {} |",
            started.elapsed().as_secs_f64(),
            r.calls_per_sec(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            report::errors(&r),
            cpu * 1e6 / r.ok.max(1) as f64,
            overhead.map_or("".into(), |(b, e)| report::overhead((b * 1e6, e * 1e6))),
            last.rss_mib(),
            last.threads
        );
        // The log would grow by ~20 MB a minute; it has been written, which is what counts.
        callgate.truncate_log();
    }
    let first = first_rss.unwrap_or(idle.rss_kib) as f64 / 1024.0;
    println!(
        "\nRSS after the first chunk {first:.1} MiB, at the end {:.1} MiB ({:+.1} MiB)",
        last.rss_mib(),
        last.rss_mib() - first
    );
}
