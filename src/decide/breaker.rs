//! The circuit breaker (SPEC §13): one circuit per gate origin (scheme, host, port), shared by
//! every call worker. `--breaker-failures` consecutive timeouts, connect failures or 5xx answers
//! open it; while open, calls are decided at once (`circuit_open`); `--breaker-cooldown` after
//! it opened, exactly one call probes (half-open) and its outcome closes or re-opens it.
//!
//! The hot path is a map read and a few atomics: no lock is held across the gate's wait, and
//! nothing is allocated per call (the key is the origin the routes table computed at load).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::StatusCode;
use rustc_hash::FxBuildHasher;

use super::{Cause, GateDecision};
use crate::metrics::Metrics;

/// Circuits tracked before closed, healthy ones are forgotten (origins churn with the table).
const MAX_CIRCUITS: usize = 10_000;

/// Where a circuit went: the `to` label of `callgate_circuit_transitions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub const ALL: [CircuitState; 3] = [CircuitState::Open, CircuitState::HalfOpen, CircuitState::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> CircuitState {
        match v {
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Milliseconds on a monotonic clock; injected so the state machine is tested without waiting.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The real clock: milliseconds since the breaker was made.
pub struct MonotonicClock(Instant);

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// What a gate exchange says about its origin's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The origin answered (any 200, a 4xx, a malformed body): it is up.
    Answered,
    /// A timeout, a connect failure or a 5xx: counts toward opening.
    Failed,
    /// The gate was not asked (overload, a configuration problem): says nothing.
    NotAsked,
}

impl Outcome {
    /// Classifies a gate's answer and the status it came with.
    pub fn of(decision: &GateDecision, status: Option<StatusCode>) -> Outcome {
        match decision {
            GateDecision::Failure(Cause::Timeout | Cause::Connect) => Outcome::Failed,
            GateDecision::Failure(Cause::Status) if status.is_some_and(|s| s.is_server_error()) => {
                Outcome::Failed
            }
            GateDecision::Failure(Cause::Overload | Cause::CircuitOpen | Cause::Config) => Outcome::NotAsked,
            _ => Outcome::Answered,
        }
    }
}

/// One origin's circuit.
struct Circuit {
    /// The origin's host alone, for log lines.
    host: Box<str>,
    state: AtomicU8,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// When it last opened ([`Clock::now_ms`]).
    opened_at: AtomicU64,
}

/// The call was refused: its gate's circuit is open.
#[derive(Debug, PartialEq, Eq)]
pub struct CircuitOpen;

/// Every origin's circuit. Shared by all call workers.
pub struct Breaker {
    /// Consecutive failures that open a circuit; 0 turns the breaker off.
    threshold: u32,
    cooldown_ms: u64,
    clock: Box<dyn Clock>,
    circuits: DashMap<Arc<str>, Arc<Circuit>, FxBuildHasher>,
    /// Circuits open or half-open (`callgate_circuits_open`).
    open: AtomicUsize,
    metrics: Option<&'static Metrics>,
}

impl Breaker {
    /// A breaker on the real clock, recording into `metrics`.
    pub fn new(threshold: u32, cooldown: Duration, metrics: &'static Metrics) -> Breaker {
        let mut breaker = Breaker::with_clock(threshold, cooldown, Box::new(MonotonicClock(Instant::now())));
        breaker.metrics = Some(metrics);
        breaker
    }

    /// A breaker on `clock`, recording no metrics (unit tests).
    pub fn with_clock(threshold: u32, cooldown: Duration, clock: Box<dyn Clock>) -> Breaker {
        Breaker {
            threshold,
            cooldown_ms: cooldown.as_millis() as u64,
            clock,
            circuits: DashMap::default(),
            open: AtomicUsize::new(0),
            metrics: None,
        }
    }

    /// Whether a call to a gate of `origin` may ask it. The ticket must be given the exchange's
    /// [`Outcome`]; a probe's ticket dropped unreported lets the next call probe instead.
    pub fn admit(&self, origin: &Arc<str>) -> Result<Ticket<'_>, CircuitOpen> {
        if self.threshold == 0 {
            return Ok(Ticket { breaker: self, circuit: None, probe: false });
        }
        let circuit = match self.circuits.get(&**origin) {
            Some(c) => Arc::clone(&c),
            None => self.track(origin),
        };
        match circuit.state.load(Ordering::SeqCst) {
            CLOSED => Ok(Ticket { breaker: self, circuit: Some(circuit), probe: false }),
            OPEN => {
                let due = circuit.opened_at.load(Ordering::SeqCst).saturating_add(self.cooldown_ms);
                if self.clock.now_ms() >= due
                    && circuit
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    self.moved(&circuit, CircuitState::HalfOpen);
                    Ok(Ticket { breaker: self, circuit: Some(circuit), probe: true })
                } else {
                    Err(CircuitOpen)
                }
            }
            _ => Err(CircuitOpen),
        }
    }

    /// The state of `origin`'s circuit (closed when untracked).
    pub fn state(&self, origin: &str) -> CircuitState {
        self.circuits
            .get(origin)
            .map_or(CircuitState::Closed, |c| CircuitState::from_u8(c.state.load(Ordering::SeqCst)))
    }

    /// Circuits open or half-open.
    pub fn open_circuits(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Starts tracking `origin` (once per origin, not per call).
    #[cold]
    fn track(&self, origin: &Arc<str>) -> Arc<Circuit> {
        if self.circuits.len() >= MAX_CIRCUITS {
            self.circuits.retain(|_, c| {
                c.state.load(Ordering::SeqCst) != CLOSED || c.failures.load(Ordering::SeqCst) > 0
            });
        }
        let entry = self.circuits.entry(Arc::clone(origin)).or_insert_with(|| {
            Arc::new(Circuit {
                host: host_of(origin).into(),
                state: AtomicU8::new(CLOSED),
                failures: AtomicU32::new(0),
                opened_at: AtomicU64::new(0),
            })
        });
        Arc::clone(&entry)
    }

    fn report(&self, circuit: &Circuit, probe: bool, outcome: Outcome) {
        match (probe, outcome) {
            (true, Outcome::Answered) => {
                circuit.failures.store(0, Ordering::SeqCst);
                circuit.state.store(CLOSED, Ordering::SeqCst);
                self.open.fetch_sub(1, Ordering::SeqCst);
                self.moved(circuit, CircuitState::Closed);
            }
            (true, Outcome::Failed) => {
                circuit.opened_at.store(self.clock.now_ms(), Ordering::SeqCst);
                circuit.state.store(OPEN, Ordering::SeqCst);
                self.moved(circuit, CircuitState::Open);
            }
            // Nothing learnt: open again as it was, so the next call probes.
            (true, Outcome::NotAsked) => {
                circuit.state.store(OPEN, Ordering::SeqCst);
                self.moved(circuit, CircuitState::Open);
            }
            (false, Outcome::Answered) => {
                if circuit.failures.load(Ordering::Relaxed) != 0 {
                    circuit.failures.store(0, Ordering::SeqCst);
                }
            }
            (false, Outcome::Failed) => {
                let failures = circuit.failures.fetch_add(1, Ordering::SeqCst) + 1;
                // A late failure of a call let through before it opened changes nothing.
                if failures >= self.threshold && circuit.state.load(Ordering::SeqCst) == CLOSED {
                    // Set before the state turns: whoever sees it open sees when it opened.
                    circuit.opened_at.store(self.clock.now_ms(), Ordering::SeqCst);
                    if circuit
                        .state
                        .compare_exchange(CLOSED, OPEN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        self.open.fetch_add(1, Ordering::SeqCst);
                        self.moved(circuit, CircuitState::Open);
                    }
                }
            }
            (false, Outcome::NotAsked) => {}
        }
    }

    /// Logs and counts a transition.
    fn moved(&self, circuit: &Circuit, to: CircuitState) {
        let open = self.open.load(Ordering::SeqCst);
        if let Some(metrics) = self.metrics {
            metrics.record_circuit_transition(to, open);
        }
        let host = &*circuit.host;
        match to {
            CircuitState::Open => tracing::warn!(
                host,
                failures = circuit.failures.load(Ordering::SeqCst),
                cooldown_ms = self.cooldown_ms,
                "gate circuit open: calls to this gate origin are decided at once (circuit_open) until a probe succeeds"
            ),
            CircuitState::HalfOpen => tracing::info!(host, "gate circuit half-open: one call probes the gate"),
            CircuitState::Closed => tracing::info!(host, "gate circuit closed: the gate answered its probe"),
        }
    }
}

/// `host` of `scheme://host:port`.
fn host_of(origin: &str) -> &str {
    let rest = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    rest.rsplit_once(':').map_or(rest, |(host, _)| host)
}

/// A call's leave to ask its gate, to be handed the exchange's [`Outcome`].
#[must_use = "report the exchange's outcome"]
pub struct Ticket<'b> {
    breaker: &'b Breaker,
    /// `None` with the breaker off.
    circuit: Option<Arc<Circuit>>,
    /// This call is the half-open probe.
    probe: bool,
}

impl Ticket<'_> {
    pub fn report(mut self, outcome: Outcome) {
        if let Some(circuit) = self.circuit.take() {
            self.breaker.report(&circuit, self.probe, outcome);
        }
    }

    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Ticket<'_> {
    /// A probe abandoned (its call went away) must not leave the circuit half-open for good.
    fn drop(&mut self) {
        if let Some(circuit) = self.circuit.take() {
            if self.probe {
                self.breaker.report(&circuit, true, Outcome::NotAsked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestClock(Arc<AtomicU64>);

    impl Clock for TestClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn breaker(threshold: u32) -> (Breaker, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = Box::new(TestClock(Arc::clone(&now)));
        (Breaker::with_clock(threshold, Duration::from_secs(30), clock), now)
    }

    fn fail(b: &Breaker, origin: &Arc<str>, n: usize) {
        for _ in 0..n {
            b.admit(origin).unwrap().report(Outcome::Failed);
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_an_answer_in_between_resets_the_count() {
        let (b, _) = breaker(3);
        let origin: Arc<str> = "https://gate.example:443".into();
        fail(&b, &origin, 2);
        b.admit(&origin).unwrap().report(Outcome::Answered);
        fail(&b, &origin, 2);
        assert_eq!(b.state(&origin), CircuitState::Closed);
        fail(&b, &origin, 1);
        assert_eq!(b.state(&origin), CircuitState::Open);
        assert_eq!(b.open_circuits(), 1);
        assert_eq!(b.admit(&origin).err(), Some(CircuitOpen));
    }

    #[test]
    fn after_the_cooldown_exactly_one_call_probes_and_its_answer_closes_it() {
        let (b, now) = breaker(2);
        let origin: Arc<str> = "https://gate.example:443".into();
        fail(&b, &origin, 2);
        now.fetch_add(29_999, Ordering::SeqCst);
        assert!(b.admit(&origin).is_err(), "still cooling down");
        now.fetch_add(1, Ordering::SeqCst);
        let probe = b.admit(&origin).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.state(&origin), CircuitState::HalfOpen);
        for _ in 0..10 {
            assert!(b.admit(&origin).is_err(), "others short-circuit while the probe is out");
        }
        probe.report(Outcome::Answered);
        assert_eq!(b.state(&origin), CircuitState::Closed);
        assert_eq!(b.open_circuits(), 0);
        let ticket = b.admit(&origin).unwrap();
        assert!(!ticket.is_probe());
        ticket.report(Outcome::Answered);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown() {
        let (b, now) = breaker(1);
        let origin: Arc<str> = "http://10.0.0.1:8080".into();
        fail(&b, &origin, 1);
        now.fetch_add(30_000, Ordering::SeqCst);
        b.admit(&origin).unwrap().report(Outcome::Failed);
        assert_eq!(b.state(&origin), CircuitState::Open);
        assert_eq!(b.open_circuits(), 1);
        now.fetch_add(29_000, Ordering::SeqCst);
        assert!(b.admit(&origin).is_err());
        now.fetch_add(1_000, Ordering::SeqCst);
        assert!(b.admit(&origin).unwrap().is_probe());
    }

    #[test]
    fn a_late_failure_of_a_call_let_through_before_it_opened_does_not_delay_the_probe() {
        let (b, now) = breaker(2);
        let origin: Arc<str> = "https://gate.example:443".into();
        let late = b.admit(&origin).unwrap();
        fail(&b, &origin, 2);
        now.fetch_add(20_000, Ordering::SeqCst);
        late.report(Outcome::Failed);
        now.fetch_add(10_000, Ordering::SeqCst);
        assert!(b.admit(&origin).unwrap().is_probe());
    }

    #[test]
    fn an_abandoned_or_unasked_probe_lets_the_next_call_probe() {
        let (b, now) = breaker(1);
        let origin: Arc<str> = "https://gate.example:443".into();
        fail(&b, &origin, 1);
        now.fetch_add(30_000, Ordering::SeqCst);
        drop(b.admit(&origin).unwrap());
        assert_eq!(b.state(&origin), CircuitState::Open);
        let probe = b.admit(&origin).unwrap();
        assert!(probe.is_probe());
        probe.report(Outcome::NotAsked);
        assert!(b.admit(&origin).unwrap().is_probe());
    }

    #[test]
    fn only_timeouts_connect_failures_and_5xx_count() {
        let failure = |c| GateDecision::Failure(c);
        let status = |s: u16| Some(StatusCode::from_u16(s).unwrap());
        assert_eq!(Outcome::of(&failure(Cause::Timeout), None), Outcome::Failed);
        assert_eq!(Outcome::of(&failure(Cause::Connect), None), Outcome::Failed);
        assert_eq!(Outcome::of(&failure(Cause::Status), status(503)), Outcome::Failed);
        assert_eq!(Outcome::of(&failure(Cause::Status), status(404)), Outcome::Answered);
        assert_eq!(Outcome::of(&failure(Cause::Status), status(302)), Outcome::Answered);
        assert_eq!(Outcome::of(&failure(Cause::Malformed), status(200)), Outcome::Answered);
        assert_eq!(Outcome::of(&failure(Cause::Overload), None), Outcome::NotAsked);
        assert_eq!(Outcome::of(&GateDecision::Reject { reason: None }, status(200)), Outcome::Answered);
    }

    #[test]
    fn origins_are_separate_and_zero_turns_it_off() {
        let (b, _) = breaker(1);
        let (one, two): (Arc<str>, Arc<str>) =
            ("https://a.example:443".into(), "https://a.example:8443".into());
        fail(&b, &one, 1);
        assert!(b.admit(&one).is_err());
        assert!(b.admit(&two).is_ok());

        let (off, _) = breaker(0);
        fail(&off, &one, 100);
        assert!(off.admit(&one).is_ok());
        assert_eq!(off.state(&one), CircuitState::Closed);
    }

    #[test]
    fn the_log_names_the_host_alone() {
        assert_eq!(host_of("https://gate.example:443"), "gate.example");
        assert_eq!(host_of("http://[::1]:8080"), "[::1]");
    }
}
