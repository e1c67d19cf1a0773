//! For bench/compare.sh: the stubs alone in their own process, and callgate against nginx+njs
//! in front of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::client::Target;
use crate::process::{self, ProcStatus};
use crate::report;
use crate::runs::{
    describe_setup, measure, run_length, start_callgate, warm_up, Load, Scratch, Subject, SLICES,
};
use crate::stubs::Stubs;
use crate::{write_routes, Args, CallPath};

/// Only the stubs, for bench/compare.sh: writes their addresses and a routes file, then serves
/// until killed.
pub async fn stubs_only(args: &Args) {
    let file = args.stubs_file.clone().expect("--stubs-only needs --stubs-file");
    let stubs = Stubs::start(args.gate_addr, args.engine_addr, args.dead_addr).await.expect("stubs bind");
    // In a directory of its own, which callgate watches: nothing else is written there.
    let routes = file.with_file_name("routes").join("routes.json");
    std::fs::create_dir_all(routes.parent().expect("a parent")).expect("routes directory");
    // The peers implement webhook gates only.
    write_routes(&routes, stubs.gate, stubs.dead, args.table_numbers, false);
    let text = format!(
        "GATE={}\nENGINE={}\nDEAD={}\nROUTES={}\nTOKEN={}\nPUBLIC_URL={}\n",
        stubs.gate,
        stubs.engine,
        stubs.dead,
        routes.display(),
        process::AUTH_TOKEN,
        process::PUBLIC_URL,
    );
    // Written whole under a temporary name, so a reader never sees half of it.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).expect("stubs file is writable");
    std::fs::rename(&tmp, &file).expect("stubs file is writable");
    eprintln!("load: stubs serving; gate {} engine {} dead {}", stubs.gate, stubs.engine, stubs.dead);
    std::future::pending::<()>().await;
}

/// A process (or a master and its workers) doing callgate's job, measured beside it.
struct Rival {
    name: &'static str,
    target: Target,
    pids: Vec<u32>,
}

/// nginx+njs at --compare (its master and workers from --nginx-pid-file), and node+express at
/// --node (its primary and workers from --node-pid) when given.
fn rivals(args: &Args) -> Vec<Rival> {
    let nginx_master = args
        .nginx_pid_file
        .as_ref()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .and_then(|s| s.trim().parse().ok());
    let mut rivals = vec![Rival {
        // Named once per run; the report's rows borrow the name for the whole run.
        name: Box::leak(args.compare_name.clone().into_boxed_str()),
        target: Target::new(args.compare.expect("--compare ADDR")),
        pids: nginx_master.map(process::with_children).unwrap_or_default(),
    }];
    if let Some(addr) = args.node {
        rivals.push(Rival {
            name: "node+express",
            target: Target::new(addr),
            pids: args.node_pid.map(process::with_children).unwrap_or_default(),
        });
    }
    rivals
}

/// Reads `KEY=VALUE` lines written by [`stubs_only`].
fn read_stubs_file(path: &Path) -> (SocketAddr, PathBuf) {
    let text = std::fs::read_to_string(path).expect("stubs file is readable");
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key}= missing from {}", path.display()))
            .to_owned()
    };
    (get("ENGINE").parse().expect("ENGINE is an address"), PathBuf::from(get("ROUTES")))
}

/// callgate against nginx+njs (and node+express) on the same stubs: closed loop on the reject
/// and accept paths, and open loop at 2,000 calls/s on the accept path, with the engine called
/// directly as the baseline for added latency.
pub async fn compare(args: &Args) {
    let stubs_file = args.stubs_file.clone().expect("--compare needs --stubs-file");
    let (engine, routes) = read_stubs_file(&stubs_file);
    let scratch = Scratch::new();
    let (callgate, features) = start_callgate(args, &scratch.0, engine, &routes).await;
    let idle = ProcStatus::read(callgate.pid());
    let via = Target::new(callgate.public);
    let rivals = rivals(args);
    let direct = Target::new(engine);
    let conns = args.connections;
    let mut targets = vec![("callgate", &via, true), ("direct", &direct, false)];
    targets.extend(rivals.iter().map(|r| (r.name, &r.target, true)));
    warm_up(&targets, &[CallPath::Reject, CallPath::Accept], conns).await;

    let run = run_length(args, 5.0);
    let mut rows = Vec::new();
    let closed = Load { rate: None, duration: run, connections: conns };
    let subjects = || {
        let mut all = vec![Subject {
            name: "callgate",
            target: &via,
            callgate: Some(&callgate),
            pids: vec![callgate.pid()],
        }];
        all.extend(rivals.iter().map(|r| Subject {
            name: r.name,
            target: &r.target,
            callgate: None,
            pids: r.pids.clone(),
        }));
        all
    };
    for path in [CallPath::Reject, CallPath::Accept] {
        rows.extend(measure(&subjects(), path, closed).await);
    }
    let rate = 2000.0;
    let open = Load { rate: Some(rate), ..closed };
    let mut with_direct = vec![Subject { name: "direct", target: &direct, callgate: None, pids: Vec::new() }];
    with_direct.extend(subjects());
    rows.extend(measure(&with_direct, CallPath::Accept, open).await);
    let after = ProcStatus::read(callgate.pid());

    let names: Vec<&str> = rivals.iter().map(|r| r.name).collect();
    report::header(&format!("callgate vs {}", names.join(" and ")));
    describe_setup(&features, conns);
    println!(
        "run length {run:?} per target and load, in {SLICES} slices taken in turn from each target; \
         all in front of the same stub gate and engine (another process)"
    );
    report::runs(&rows);
    report::header("Throughput and p99, side by side");
    for rival in &names {
        report::versus(&rows, "callgate", rival);
        println!();
    }
    report::header(&format!("Added latency at open {rate:.0}/s, accept path"));
    for name in std::iter::once("callgate").chain(names.iter().copied()) {
        report::added(&rows, &format!("open {rate:.0}/s"), name);
    }
    println!(
        "\ncallgate RSS {:.1} MiB idle, {:.1} MiB after ({} threads)",
        idle.rss_mib(),
        after.rss_mib(),
        after.threads
    );
    for rival in &rivals {
        let rss: u64 = rival.pids.iter().map(|&p| ProcStatus::read(p).rss_kib).sum();
        println!(
            "{} RSS after, its {} processes: {:.1} MiB",
            rival.name,
            rival.pids.len(),
            rss as f64 / 1024.0
        );
    }
}
