//! Metric names, help texts and typed `record_*` helpers (SPEC §8). No other module calls
//! `metrics::` directly: every series is registered here at start-up, so each label value is
//! exported at 0 before the first call, and the hot path only bumps pre-resolved handles.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::gate::FailureCause;

/// What became of an inbound ringing call (the `decision` label and the log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject,
    FailOpen,
    FailClosed,
    NoGate,
}

impl Decision {
    pub const ALL: [Decision; 5] =
        [Decision::Accept, Decision::Reject, Decision::FailOpen, Decision::FailClosed, Decision::NoGate];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::FailOpen => "fail_open",
            Decision::FailClosed => "fail_closed",
            Decision::NoGate => "no_gate",
        }
    }
}

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

/// The outcome of one gate exchange, for `callgate_gate_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateResult {
    Accept,
    Reject,
    Failure,
}

impl GateResult {
    const ALL: [GateResult; 3] = [GateResult::Accept, GateResult::Reject, GateResult::Failure];

    fn as_str(self) -> &'static str {
        match self {
            GateResult::Accept => "accept",
            GateResult::Reject => "reject",
            GateResult::Failure => "failure",
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

/// Histogram buckets: 50 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 15.0, 30.0,
];

/// Pre-registered handles for every series callgate exports.
pub struct Metrics {
    handle: PrometheusHandle,
    inbound: [Counter; 5],
    gate_failures: [Counter; 5],
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
    /// By `SIGNATURE_MODES`.
    signature_mode: [Gauge; 3],
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
            gate_failures: FailureCause::ALL
                .map(|c| metrics::counter!("callgate_gate_failures_total", "cause" => c.as_str())),
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
            signature_mode: SIGNATURE_MODES
                .map(|m| metrics::gauge!("callgate_twilio_signature_mode", "mode" => m)),
        };
        metrics::gauge!("callgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Counters exist from registration; touch each so the exporter renders it at 0.
        for c in m.inbound.iter().chain(&m.gate_failures).chain(&m.upstream_errors) {
            c.increment(0);
        }
        for c in [
            &m.signature_failures,
            &m.reloads_ok,
            &m.reloads_error,
            &m.admin_writes_ok,
            &m.admin_writes_error,
        ] {
            c.increment(0);
        }
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

    pub fn record_decision(&self, decision: Decision) {
        self.inbound[decision as usize].increment(1);
    }

    pub fn record_gate(&self, result: GateResult, elapsed: Duration) {
        self.gate_duration[result as usize].record(elapsed);
    }

    pub fn record_gate_failure(&self, cause: FailureCause) {
        self.gate_failures[cause as usize].increment(1);
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
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "callgate_inbound_calls_total",
        "Inbound ringing calls by decision (accept, reject, fail_open, fail_closed, no_gate)."
    );
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
    describe_counter!("callgate_routes_reloads_total", "Routes file reloads, by result.");
    describe_gauge!("callgate_routes_entries", "Entries in the routing table in force, by kind.");
    describe_gauge!("callgate_routes_last_reload_success", "1 if the last routes reload succeeded, else 0.");
    describe_counter!("callgate_admin_writes_total", "Admin API writes, by result.");
    describe_counter!("callgate_tls_reloads_total", "TLS certificate reloads, by result.");
    describe_gauge!("callgate_build_info", "Build information; the value is always 1.");
}
