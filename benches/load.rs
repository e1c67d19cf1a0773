//! End-to-end load benchmark of the release `callgate` binary over real loopback sockets.
//!
//! In-process stubs (a gate that answers at once, by path, `accept` or `reject`; an engine that
//! answers a small TwiML; a gate that never answers) sit behind callgate, started as deployed:
//! JSON logs on with a line per decision, signatures enforced once the binary has the flags.
//! Each path (reject, accept, chain, no gate, passthrough) is measured through callgate and against the
//! engine called directly, open-loop at fixed rates and closed-loop at 32 connections.
//!
//! ```sh
//! cargo build --release && cargo bench --bench load              # full run, under 3 minutes
//! cargo bench --bench load -- --quick                            # smoke run (or LOAD_QUICK=1)
//! cargo bench --bench load -- --soak [--duration 10m]            # 2,000 calls/s, RSS every 30 s
//! cargo bench --bench load -- --store redis://127.0.0.1:6379     # the table from a shared store
//! cargo bench --bench load -- --profile /tmp/cg --paths accept    # perf record callgate
//! cargo bench --bench load -- --stubs-only --stubs-file F        # stubs for bench/compare.sh
//! cargo bench --bench load -- --compare 127.0.0.1:18480 --stubs-file F   # vs nginx+njs
//! cargo bench --bench load -- --compare A --node B --stubs-file F      # and node+express
//! ```

#[path = "common/child.rs"]
mod child;
#[path = "load/client.rs"]
mod client;
#[path = "load/compare.rs"]
mod compare;
#[path = "load/process.rs"]
mod process;
#[path = "load/report.rs"]
mod report;
#[path = "load/runs.rs"]
mod runs;
#[path = "load/stubs.rs"]
mod stubs;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;

use client::Call;

#[derive(Debug, Parser)]
#[command(name = "load", about = "End-to-end load benchmark of the release callgate binary")]
pub struct Args {
    /// A short smoke run: 2,000 calls/s only, 1 s per run (also LOAD_QUICK=1).
    #[arg(long, env = "LOAD_QUICK")]
    pub quick: bool,
    /// Only the soak: 2,000 calls/s on the accept path for --duration, RSS every 30 s.
    #[arg(long)]
    pub soak: bool,
    /// Length of the soak (default 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Rate of the soak, calls/s.
    #[arg(long, default_value_t = 2000.0)]
    pub soak_rate: f64,
    /// Seconds per target and measurement (default 3.5, or 1 with --quick; 5 and 1 in --compare).
    #[arg(long)]
    pub run_secs: Option<f64>,
    /// Open-loop rates, calls/s (--quick keeps only the highest).
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
    pub rates: Vec<f64>,
    /// Only these paths (reject, accept, no-gate, passthrough), e.g. to profile one.
    #[arg(long, value_delimiter = ',', value_parser = parse_path)]
    pub paths: Vec<CallPath>,
    /// Skip the gate-that-never-answers run.
    #[arg(long)]
    pub no_dead_gate: bool,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Worker threads of the bench's own runtime (load generator and stubs).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The callgate binary (default: $CARGO_TARGET_DIR/release/callgate, built if missing).
    #[arg(long)]
    pub callgate: Option<PathBuf>,
    /// Serve the table from this shared store (`redis://...`) instead of the routes file: the
    /// routes file is imported into it first (`callgate store import`), then callgate runs with
    /// `--store` (routing stays in memory; pushed-context lookups go to Redis).
    #[arg(long)]
    pub store: Option<String>,
    /// Extra numbers in the routes file (each with an agent), for a realistic table size.
    #[arg(long, default_value_t = 0)]
    pub table_numbers: u64,
    /// Start only the stubs, write their addresses and a routes file (see --stubs-file), and
    /// serve until killed.
    #[arg(long)]
    pub stubs_only: bool,
    /// With --stubs-only, where to write the stubs' addresses and the routes file, token and
    /// public URL (`KEY=VALUE` lines; the routes file goes in a `routes` directory beside it); with --compare, where to
    /// read them.
    #[arg(long)]
    pub stubs_file: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub gate_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub engine_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub dead_addr: SocketAddr,
    /// Compare callgate with an nginx+njs listening at this address, both in front of the stubs
    /// of --stubs-file.
    #[arg(long)]
    pub compare: Option<SocketAddr>,
    /// With --compare, nginx's pid file: its master's and workers' CPU time and memory are
    /// reported beside callgate's.
    #[arg(long)]
    pub nginx_pid_file: Option<PathBuf>,
    /// With --compare, what the peer at that address is called in the report (bench/ab.sh
    /// puts another callgate build there).
    #[arg(long, default_value = "nginx+njs")]
    pub compare_name: String,
    /// With --compare, also a node+express (bench/node/) listening at this address.
    #[arg(long)]
    pub node: Option<SocketAddr>,
    /// With --node, its primary process: its and its workers' CPU time and memory are reported.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// Profile callgate with `perf record` during a closed loop on each path; writes
    /// PREFIX-PATH.data files.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// With --profile, an open loop at this rate instead of the closed loop.
    #[arg(long)]
    pub profile_rate: Option<f64>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Benchmark name filters from `cargo bench -- FILTER`: the run is skipped unless one
    /// matches "load".
    #[arg(hide = true)]
    pub filters: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let explicit =
        args.quick || args.soak || args.stubs_only || args.compare.is_some() || args.profile.is_some();
    if !args.bench && !explicit {
        println!("load: nothing to do outside `cargo bench` (see --help)");
        return;
    }
    if !args.filters.is_empty() && !args.filters.iter().any(|f| "load".contains(f.as_str())) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("runtime starts");
    runtime.block_on(async {
        if args.stubs_only {
            compare::stubs_only(&args).await
        } else if args.compare.is_some() {
            compare::compare(&args).await
        } else if args.profile.is_some() {
            runs::profile(&args).await
        } else if args.soak {
            runs::soak(&args).await
        } else {
            runs::full(&args).await
        }
    });
}

fn parse_path(s: &str) -> Result<CallPath, String> {
    CallPath::MEASURED
        .into_iter()
        .find(|p| p.name().replace(' ', "-") == s)
        .ok_or_else(|| format!("{s:?}: one of reject, accept, chain, no-gate, passthrough"))
}

/// The calls the bench makes, each on its own route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPath {
    /// A number whose own gate rejects.
    Reject,
    /// A number whose agent's gate accepts.
    Accept,
    /// A number whose agent has no gate.
    NoGate,
    /// A number whose gate is a chain: a caller list, opening hours (always open) and an
    /// `external_api` check answered by the stub gate.
    Chain,
    /// A status callback: not a voice path, forwarded as is.
    Passthrough,
    /// A number whose gate never answers (timeout_ms 200).
    DeadGate,
}

impl CallPath {
    pub const MEASURED: [CallPath; 5] =
        [CallPath::Reject, CallPath::Accept, CallPath::Chain, CallPath::NoGate, CallPath::Passthrough];

    pub fn name(self) -> &'static str {
        match self {
            CallPath::Reject => "reject",
            CallPath::Accept => "accept",
            CallPath::NoGate => "no gate",
            CallPath::Chain => "chain",
            CallPath::Passthrough => "passthrough",
            CallPath::DeadGate => "dead gate",
        }
    }

    fn number(self) -> &'static str {
        match self {
            CallPath::Reject => "+447700900001",
            CallPath::Accept => "+447700900002",
            CallPath::NoGate => "+447700900003",
            CallPath::Chain => "+447700900005",
            CallPath::DeadGate => "+447700900004",
            CallPath::Passthrough => "+447700900123",
        }
    }

    /// The signed request for this path, expecting the answer callgate should give (`proxied`)
    /// or the engine's own answer (the engine called directly).
    pub fn call(self, proxied: bool) -> Arc<Call> {
        let (path, form) = match self {
            CallPath::Passthrough => {
                ("/twilio/status", &include_bytes!("../fixtures/twilio/status-callback.form")[..])
            }
            _ => ("/twilio/voice", &include_bytes!("../fixtures/twilio/inbound-ringing.form")[..]),
        };
        let form = String::from_utf8_lossy(form.trim_ascii_end())
            .replace("%2B447700900123", &self.number().replace('+', "%2B"));
        let expect = if proxied && self == CallPath::Reject {
            callgate::webhook::twiml::reject_busy()
        } else {
            Bytes::from_static(stubs::ENGINE_TWIML)
        };
        Arc::new(Call::new(path, Bytes::from(form), process::AUTH_TOKEN, process::PUBLIC_URL, expect))
    }
}

/// Writes the bench's routes file: one number per path, plus `filler` numbers. The chain path's
/// number only with `chains` (a binary from before check chains refuses the whole file).
pub fn write_routes(path: &Path, gate: SocketAddr, dead: SocketAddr, filler: u64, chains: bool) {
    let mut numbers = serde_json::json!({
        CallPath::Reject.number(): { "gate": { "url": format!("http://{gate}/precall/reject") } },
        CallPath::Accept.number(): { "agent_id": "agent_bench_accept" },
        CallPath::NoGate.number(): { "agent_id": "agent_bench_nogate" },
        CallPath::DeadGate.number(): { "gate": { "url": format!("http://{dead}/hold"), "timeout_ms": 200 } },
    });
    let map = numbers.as_object_mut().expect("an object");
    if chains {
        map.insert(CallPath::Chain.number().to_owned(), serde_json::json!({ "gate": { "checks": [
            // The fixture's caller (+447386172392) is not on it: the list is looked through.
            { "type": "caller_list", "name": "Blocklist", "deny": ["+447700900999", "+4487*"] },
            { "type": "schedule", "name": "Opening hours", "timezone": "Europe/London",
              "open": [{ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00", "to": "00:00" }] },
            { "type": "external_api", "name": "Billing API",
              "http_request": { "url": format!("http://{gate}/precall/check?phone={{customer_mobile_number}}") },
              "response_config": { "response_field": "action", "response_field_value": "accept" } }
        ] } }));
    }
    for i in 0..filler {
        map.insert(format!("+4420{:08}", i), serde_json::json!({ "agent_id": "agent_bench_accept" }));
    }
    let routes = serde_json::json!({
        "agents": { "agent_bench_accept": { "gate": { "url": format!("http://{gate}/precall/accept") } } },
        "numbers": numbers,
    });
    let mut file = std::fs::File::create(path).expect("routes file is writable");
    serde_json::to_writer_pretty(&mut file, &routes).expect("routes serialise");
    file.write_all(b"\n").expect("routes file is writable");
}
