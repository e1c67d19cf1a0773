//! Criterion benchmark of a local check chain (issue 12): a caller list of 100,000 entries
//! (numbers and prefixes) and an opening-hours schedule, run through the real chain runner as a
//! call would run it. Target: under 1 µs per call.
//!
//! `cargo bench --bench chains`. Every input is built outside the measured loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use callgate::decide::chain::{run, Facts};
use callgate::decide::Stages;
use callgate::routes::{OnFailure, RouteTable};

fn open_hours() -> jiff::Timestamp {
    // A Wednesday at 11:00 in London: the schedule is open, so both checks run.
    "2026-06-10T10:00:00Z".parse().unwrap()
}

fn local_chain(c: &mut Criterion) {
    let mut deny: Vec<String> = (0..95_000u64).map(|i| format!("+4477009{i:05}")).collect();
    deny.extend((0..5_000u64).map(|i| format!("+1212{i:04}*")));
    let routes = json!({"check_sets": {"local": [
        {"type": "caller_list", "name": "Blocklist", "deny": deny},
        {"type": "schedule", "name": "Opening hours", "timezone": "Europe/London",
         "open": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "17:30"}],
         "closed_dates": ["2026-12-25", "2026-12-26"]}
    ]}});
    let table = RouteTable::parse(routes.to_string().as_bytes(), &Default::default()).unwrap();
    let checks = table.check_set("local").unwrap().clone();
    let store = callgate::routes::store::RouteStore::new(table);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let gate = callgate::gate::GateClient::new(
        callgate::tls::gate_client_config(None).unwrap(),
        Duration::from_secs(1),
        10,
        None,
        1,
    );
    let credentials = callgate::credentials::Credentials::default();
    let metrics = callgate::metrics::get();
    let breaker = callgate::decide::breaker::Breaker::new(0, Duration::from_secs(1), metrics);
    let dedup = callgate::decide::dedup::Dedup::new(Duration::ZERO);
    let contexts = callgate::decide::context::MemoryContexts::new(Duration::from_secs(1), 1, metrics);
    let stages = Stages {
        routes: &store,
        gate: &gate,
        breaker: &breaker,
        dedup: &dedup,
        contexts: &contexts,
        credentials: &credentials,
        clock: open_hours,
    };
    let callers = ["+447700912345", "+442079460000", "+12125550100", "anonymous"];
    let deadline = Instant::now() + Duration::from_secs(3600);
    let now = open_hours();

    let mut group = c.benchmark_group("chain");
    group.bench_function("caller_list_100k_and_schedule", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % callers.len();
            let facts = Facts::Call { from: callers[i], to: "+15005550006", call_id: "CA1", agent_id: None };
            let outcome =
                runtime.block_on(run(&stages, &checks, &facts, None, OnFailure::Accept, deadline, now));
            black_box(outcome)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = local_chain
}
criterion_main!(benches);
