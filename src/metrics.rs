//! Metric names, help texts and typed `record_*` helpers (SPEC §8). No other module calls
//! `metrics::` directly: every series is registered here at start-up, so each label value is
//! exported at 0 before the first call, and the hot path only bumps pre-resolved handles.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::decide::breaker::CircuitState;
use crate::decide::chain::{CheckResult, CheckStatus};
use crate::decide::context::ContextResult;
use crate::decide::{Cause, Decision, DedupResult, Dropped, GateResult, Verdict};
use crate::routes::checks::CheckType;

/// Why the engine could not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamCause {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamCause {
    const ALL: [UpstreamCause; 3] = [UpstreamCause::Connect, UpstreamCause::Timeout, UpstreamCause::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamCause::Connect => "connect",
            UpstreamCause::Timeout => "timeout",
            UpstreamCause::Protocol => "protocol",
        }
    }
}

/// Which listener route a request took, for `callgate_request_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Voice,
    Proxy,
}

impl Route {
    const ALL: [Route; 2] = [Route::Voice, Route::Proxy];

    fn as_str(self) -> &'static str {
        match self {
            Route::Voice => "voice",
            Route::Proxy => "proxy",
        }
    }
}

/// What became of a decision event's attempt, for `callgate_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventResult {
    /// The receiver answered 2xx.
    Delivered,
    /// An attempt failed and another is scheduled.
    Retried,
    /// The event left the outbox undelivered: its schedule ran out, or the outbox was full.
    GivenUp,
}

impl EventResult {
    const ALL: [EventResult; 3] = [EventResult::Delivered, EventResult::Retried, EventResult::GivenUp];

    fn as_str(self) -> &'static str {
        match self {
            EventResult::Delivered => "delivered",
            EventResult::Retried => "retried",
            EventResult::GivenUp => "given_up",
        }
    }
}

/// Why a decision event was lost before its schedule ran out, for `callgate_events_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventDrop {
    /// The hand-off queue from calls to the outbox was full; the event was never stored.
    QueueFull,
    /// The outbox held `--events-max-pending` events; the oldest was given up for a new one.
    OutboxFull,
}

impl EventDrop {
    const ALL: [EventDrop; 2] = [EventDrop::QueueFull, EventDrop::OutboxFull];

    fn as_str(self) -> &'static str {
        match self {
            EventDrop::QueueFull => "queue_full",
            EventDrop::OutboxFull => "outbox_full",
        }
    }
}

/// What a shared-store operation was doing when it failed, for `callgate_store_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Read,
    Write,
    Subscribe,
}

impl StoreOp {
    const ALL: [StoreOp; 3] = [StoreOp::Read, StoreOp::Write, StoreOp::Subscribe];

    fn as_str(self) -> &'static str {
        match self {
            StoreOp::Read => "read",
            StoreOp::Write => "write",
            StoreOp::Subscribe => "subscribe",
        }
    }
}

/// Histogram buckets: 50 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 15.0, 30.0,
];

/// Pre-registered handles for every series callgate exports.
pub struct Metrics {
    handle: PrometheusHandle,
    inbound: [Counter; Decision::ALL.len()],
    gate_failures: [Counter; Cause::ALL.len()],
    enrichment_dropped: [Counter; Dropped::ALL.len()],
    deadline_cut: Counter,
    dedup: [Counter; DedupResult::ALL.len()],
    circuit_transitions: [Counter; CircuitState::ALL.len()],
    circuits_open: Gauge,
    shadow_calls: Counter,
    context: [Counter; ContextResult::ALL.len()],
    context_entries: Gauge,
    gate_duration: [Histogram; 3],
    request_duration: [Histogram; 2],
    overhead: Histogram,
    upstream_errors: [Counter; 3],
    signature_failures: Counter,
    reloads_ok: Counter,
    reloads_error: Counter,
    entries_agent: Gauge,
    entries_number: Gauge,
    last_reload_success: Gauge,
    admin_writes_ok: Counter,
    admin_writes_error: Counter,
    tls_reloads_ok: Counter,
    tls_reloads_error: Counter,
    /// `callgate_checks_total`, by check type then result (proceed, skip, failure).
    checks: [[Counter; 3]; CheckType::ALL.len()],
    credentials_reloads: [Counter; 2],
    /// By `SIGNATURE_MODES`.
    signature_mode: [Gauge; 3],
    events: [Counter; 3],
    events_dropped: [Counter; 2],
    events_pending: Gauge,
    events_outbox_ok: Gauge,
    events_outbox_errors: Counter,
    store_up: Gauge,
    store_errors: [Counter; 3],
    open_connections: Gauge,
}

/// The `mode` label values of `callgate_twilio_signature_mode` (`--twilio-signature`).
const SIGNATURE_MODES: [&str; 3] = ["enforce", "report", "off"];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics: installs the Prometheus recorder on first use. The recorder is
/// global, so every server in one process shares these series.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::install)
}

impl Metrics {
    fn install() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // A second recorder in one process (tests) keeps the first; render from whichever won.
        let _ = metrics::set_global_recorder(recorder);
        describe();

        let m = Metrics {
            handle,
            inbound: Decision::ALL
                .map(|d| metrics::counter!("callgate_inbound_calls_total", "decision" => d.as_str())),
            gate_failures: Cause::ALL
                .map(|c| metrics::counter!("callgate_gate_failures_total", "cause" => c.as_str())),
            enrichment_dropped: Dropped::ALL
                .map(|r| metrics::counter!("callgate_enrichment_dropped_total", "reason" => r.as_str())),
            deadline_cut: metrics::counter!("callgate_deadline_cut_total"),
            dedup: DedupResult::ALL
                .map(|r| metrics::counter!("callgate_dedup_total", "result" => r.as_str())),
            circuit_transitions: CircuitState::ALL
                .map(|to| metrics::counter!("callgate_circuit_transitions_total", "to" => to.as_str())),
            circuits_open: metrics::gauge!("callgate_circuits_open"),
            shadow_calls: metrics::counter!("callgate_shadow_calls_total"),
            context: ContextResult::ALL
                .map(|r| metrics::counter!("callgate_context_total", "result" => r.as_str())),
            context_entries: metrics::gauge!("callgate_context_entries"),
            gate_duration: GateResult::ALL
                .map(|r| metrics::histogram!("callgate_gate_duration_seconds", "result" => r.as_str())),
            request_duration: Route::ALL
                .map(|r| metrics::histogram!("callgate_request_duration_seconds", "route" => r.as_str())),
            overhead: metrics::histogram!("callgate_overhead_seconds"),
            upstream_errors: UpstreamCause::ALL
                .map(|c| metrics::counter!("callgate_upstream_errors_total", "cause" => c.as_str())),
            signature_failures: metrics::counter!("callgate_twilio_signature_failures_total"),
            reloads_ok: metrics::counter!("callgate_routes_reloads_total", "result" => "ok"),
            reloads_error: metrics::counter!("callgate_routes_reloads_total", "result" => "error"),
            entries_agent: metrics::gauge!("callgate_routes_entries", "kind" => "agent"),
            entries_number: metrics::gauge!("callgate_routes_entries", "kind" => "number"),
            last_reload_success: metrics::gauge!("callgate_routes_last_reload_success"),
            admin_writes_ok: metrics::counter!("callgate_admin_writes_total", "result" => "ok"),
            admin_writes_error: metrics::counter!("callgate_admin_writes_total", "result" => "error"),
            tls_reloads_ok: metrics::counter!("callgate_tls_reloads_total", "result" => "ok"),
            tls_reloads_error: metrics::counter!("callgate_tls_reloads_total", "result" => "error"),
            checks: CheckType::ALL.map(|t| {
                ["proceed", "skip", "failure"]
                    .map(|r| metrics::counter!("callgate_checks_total", "type" => t.as_str(), "result" => r))
            }),
            credentials_reloads: ["ok", "error"]
                .map(|r| metrics::counter!("callgate_credentials_reloads_total", "result" => r)),
            signature_mode: SIGNATURE_MODES
                .map(|m| metrics::gauge!("callgate_twilio_signature_mode", "mode" => m)),
            events: EventResult::ALL
                .map(|r| metrics::counter!("callgate_events_total", "result" => r.as_str())),
            events_dropped: EventDrop::ALL
                .map(|r| metrics::counter!("callgate_events_dropped_total", "reason" => r.as_str())),
            events_pending: metrics::gauge!("callgate_events_pending"),
            events_outbox_ok: metrics::gauge!("callgate_events_outbox_ok"),
            events_outbox_errors: metrics::counter!("callgate_events_outbox_errors_total"),
            store_up: metrics::gauge!("callgate_store_up"),
            store_errors: StoreOp::ALL
                .map(|op| metrics::counter!("callgate_store_errors_total", "op" => op.as_str())),
            open_connections: metrics::gauge!("callgate_open_connections"),
        };
        m.store_up.set(1.0);
        m.events_pending.set(0.0);
        m.events_outbox_ok.set(1.0);
        m.open_connections.increment(0.0);
        metrics::gauge!("callgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Counters exist from registration; touch each so the exporter renders it at 0.
        for c in m
            .inbound
            .iter()
            .chain(&m.gate_failures)
            .chain(&m.enrichment_dropped)
            .chain(&m.upstream_errors)
            .chain(&m.events)
            .chain(&m.events_dropped)
            .chain(&m.dedup)
            .chain(&m.circuit_transitions)
            .chain(&m.context)
            .chain(&m.store_errors)
        {
            c.increment(0);
        }
        for c in [
            &m.signature_failures,
            &m.deadline_cut,
            &m.shadow_calls,
            &m.reloads_ok,
            &m.reloads_error,
            &m.admin_writes_ok,
            &m.admin_writes_error,
            &m.events_outbox_errors,
        ] {
            c.increment(0);
        }
        for c in m.checks.iter().flatten().chain(&m.credentials_reloads) {
            c.increment(0);
        }
        m.circuits_open.set(0.0);
        m.context_entries.set(0.0);
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets. Samples wait in a queue until a
    /// scrape or this upkeep, so without it an unscraped callgate would grow under load.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Everything a decided call counts: its decision, the gate's time and result, the
    /// failure's cause, and enrichment left out.
    pub fn record_verdict(&self, verdict: &Verdict) {
        self.inbound[verdict.decision as usize].increment(1);
        if let Some(run) = verdict.gate {
            self.gate_duration[run.result as usize].record(run.elapsed);
        }
        if let Some(cause) = verdict.cause {
            self.gate_failures[cause as usize].increment(1);
        }
        for reason in verdict.dropped() {
            self.enrichment_dropped[reason as usize].increment(1);
        }
        if verdict.shadow {
            self.shadow_calls.increment(1);
        }
        if let Some(used) = verdict.context {
            self.record_context(used.result());
        }
        self.record_checks(&verdict.checks);
    }

    /// Each run check's result (a disabled check is not counted).
    pub fn record_checks(&self, results: &[CheckResult]) {
        for r in results {
            let result = match r.status {
                CheckStatus::Proceed => 0,
                CheckStatus::Skip => 1,
                CheckStatus::Failed => 2,
                CheckStatus::Disabled => continue,
            };
            self.checks[r.check_type as usize][result].increment(1);
        }
    }

    pub fn record_credentials_reload(&self, ok: bool) {
        self.credentials_reloads[usize::from(!ok)].increment(1);
    }

    /// A duplicate CallSid given the first decision (not counted as a decision of its own).
    pub fn record_dedup(&self, result: DedupResult) {
        self.dedup[result as usize].increment(1);
    }

    /// A gate circuit moved `to`; `open` circuits are now open or half-open.
    pub fn record_circuit_transition(&self, to: CircuitState, open: usize) {
        let i = CircuitState::ALL.iter().position(|s| *s == to).expect("every state is listed");
        self.circuit_transitions[i].increment(1);
        self.circuits_open.set(open as f64);
    }

    /// Pushed caller context stored, taken, waited for, missed, expired, evicted or refused.
    pub fn record_context(&self, result: ContextResult) {
        self.context[result as usize].increment(1);
    }

    /// Pushed contexts held now.
    pub fn set_context_entries(&self, n: usize) {
        self.context_entries.set(n as f64);
    }

    /// The engine's timeout was cut to fit `--twilio-deadline`.
    pub fn record_deadline_cut(&self) {
        self.deadline_cut.increment(1);
    }

    pub fn record_request(&self, route: Route, elapsed: Duration) {
        self.request_duration[route as usize].record(elapsed);
    }

    pub fn record_overhead(&self, overhead: Duration) {
        self.overhead.record(overhead);
    }

    pub fn record_upstream_error(&self, cause: UpstreamCause) {
        self.upstream_errors[cause as usize].increment(1);
    }

    /// A client connection on the public listener opened (`+1`) or closed (`-1`); upgraded
    /// connections count until their relay ends.
    pub fn record_open_connections(&self, delta: f64) {
        self.open_connections.increment(delta);
    }

    pub fn record_signature_failure(&self) {
        self.signature_failures.increment(1);
    }

    /// 1 for the `--twilio-signature` mode in force (`enforce`, `report` or `off`), 0 for the others.
    pub fn record_signature_mode(&self, mode: &str) {
        for (gauge, m) in self.signature_mode.iter().zip(SIGNATURE_MODES) {
            gauge.set(if m == mode { 1.0 } else { 0.0 });
        }
    }

    pub fn record_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.increment(1);
        } else {
            self.reloads_error.increment(1);
        }
        self.last_reload_success.set(if ok { 1.0 } else { 0.0 });
    }

    pub fn record_table(&self, agents: usize, numbers: usize) {
        self.entries_agent.set(agents as f64);
        self.entries_number.set(numbers as f64);
    }

    pub fn record_tls_reload(&self, ok: bool) {
        if ok {
            self.tls_reloads_ok.increment(1);
        } else {
            self.tls_reloads_error.increment(1);
        }
    }

    pub fn record_admin_write(&self, ok: bool) {
        if ok {
            self.admin_writes_ok.increment(1);
        } else {
            self.admin_writes_error.increment(1);
        }
    }

    pub fn record_event(&self, result: EventResult) {
        self.events[result as usize].increment(1);
    }

    pub fn record_event_dropped(&self, reason: EventDrop, count: u64) {
        self.events_dropped[reason as usize].increment(count);
    }

    pub fn set_events_pending(&self, pending: usize) {
        self.events_pending.set(pending as f64);
    }

    /// The outer result of one write to the events outbox on disk.
    pub fn record_outbox_write(&self, ok: bool) {
        if !ok {
            self.events_outbox_errors.increment(1);
        }
        self.events_outbox_ok.set(if ok { 1.0 } else { 0.0 });
    }
}

impl Metrics {
    /// Whether the shared store answers (always 1 with `--store file`).
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(if up { 1.0 } else { 0.0 });
    }

    pub fn record_store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].increment(1);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "callgate_inbound_calls_total",
        "Inbound ringing calls by decision (accept, reject, fail_open, fail_closed, no_gate, shadow_reject)."
    );
    describe_counter!(
        "callgate_enrichment_dropped_total",
        "Gate enrichment left out, by reason: a field of the wrong type (invalid) or an X-Callgate-Context over 8 KiB (too_large)."
    );
    describe_counter!(
        "callgate_deadline_cut_total",
        "Calls whose engine timeout was cut to fit --twilio-deadline."
    );
    describe_counter!(
        "callgate_context_total",
        "Pushed caller context, by result: stored, hit (there at ring time), waited (arrived during the wait), miss (a wait that ended empty), expired, evicted (over --context-max-entries), refused (a bad push)."
    );
    describe_gauge!("callgate_context_entries", "Pushed caller contexts held now.");
    describe_counter!(
        "callgate_gate_failures_total",
        "Gate exchanges that failed, by cause; each became a fail_open or fail_closed."
    );
    describe_histogram!(
        "callgate_gate_duration_seconds",
        Unit::Seconds,
        "Time spent on the gate exchange, by result."
    );
    describe_histogram!(
        "callgate_request_duration_seconds",
        Unit::Seconds,
        "Whole request time in callgate until the response head, by route."
    );
    describe_histogram!(
        "callgate_overhead_seconds",
        Unit::Seconds,
        "Request time in callgate less the waits on the gate and the engine."
    );
    describe_counter!(
        "callgate_upstream_errors_total",
        "Requests the voice engine could not answer, by cause."
    );
    describe_counter!(
        "callgate_twilio_signature_failures_total",
        "Requests whose X-Twilio-Signature did not validate."
    );
    describe_gauge!(
        "callgate_twilio_signature_mode",
        "1 for the --twilio-signature mode in force (enforce, report, off), 0 for the others."
    );
    describe_counter!(
        "callgate_dedup_total",
        "Duplicate CallSids given the first decision again, by how: replayed (decided within --dedup-window) or joined (waited for the first's gate answer)."
    );
    describe_counter!(
        "callgate_circuit_transitions_total",
        "Gate circuit breaker transitions, by the state entered (open, half_open, closed)."
    );
    describe_gauge!(
        "callgate_circuits_open",
        "Gate origins whose circuit is open or half-open: their calls are decided at once with cause circuit_open."
    );
    describe_counter!(
        "callgate_shadow_calls_total",
        "Inbound calls decided by a gate in shadow mode (the denominator for shadow_reject)."
    );
    describe_counter!("callgate_routes_reloads_total", "Routes file reloads, by result.");
    describe_counter!(
        "callgate_checks_total",
        "Checks of chain gates and prechecks run, by type and result."
    );
    describe_counter!("callgate_credentials_reloads_total", "Credentials file reloads, by result.");
    describe_gauge!("callgate_routes_entries", "Entries in the routing table in force, by kind.");
    describe_gauge!("callgate_routes_last_reload_success", "1 if the last routes reload succeeded, else 0.");
    describe_counter!("callgate_admin_writes_total", "Admin API writes, by result.");
    describe_counter!("callgate_tls_reloads_total", "TLS certificate reloads, by result.");
    describe_counter!(
        "callgate_events_total",
        "Decision event attempts by result: delivered (2xx), retried (failed, another scheduled), given_up."
    );
    describe_counter!(
        "callgate_events_dropped_total",
        "Decision events lost before their schedule ran out: queue_full (never stored), outbox_full (oldest given up)."
    );
    describe_gauge!("callgate_events_pending", "Decision events in the outbox, waiting for delivery.");
    describe_gauge!(
        "callgate_events_outbox_ok",
        "1 while the events outbox is written to --state-dir; 0 after a failed write (events then kept in memory only)."
    );
    describe_counter!(
        "callgate_events_outbox_errors_total",
        "Writes to the events outbox on disk that failed."
    );
    describe_gauge!(
        "callgate_store_up",
        "1 while the shared store (--store redis://) answers, else 0; always 1 with --store file."
    );
    describe_counter!(
        "callgate_store_errors_total",
        "Shared store operations that failed, by op: read, write, subscribe."
    );
    describe_gauge!(
        "callgate_open_connections",
        "Client connections open on the public listener, upgraded (WebSocket) ones included."
    );
    describe_gauge!("callgate_build_info", "Build information; the value is always 1.");
}
