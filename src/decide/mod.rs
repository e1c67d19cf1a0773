//! The decision core: one place where a call's decision is made. It owns the call as parsed
//! ([`Call`]), its [`Deadline`], the typed [`Verdict`], and [`decide`], which runs the stages in
//! order and returns the verdict:
//!
//! resolve the gate (one routes snapshot) → dedup (a CallSid already decided, or being decided,
//! gets that decision) → take pushed caller context, waiting for it up to the agent's
//! `context_wait_ms` → the breaker (an open circuit decides at once) → ask the gate within what
//! the deadline leaves, or for a chain gate run its checks ([`chain`]) → settle the answer by the
//! gate's `on_failure` → the gate's `mode` (shadow never blocks) → seal what the engine is handed (`X-Callgate-Context`).
//!
//! Nothing here speaks HTTP to Twilio or the engine, records metrics or logs: the webhook does
//! that, from the verdict, in one place.

pub mod answer;
pub mod breaker;
pub mod chain;
pub mod context;
pub mod dedup;
pub mod link;
pub mod record;
pub mod shared_context;
pub mod shared_dedup;
pub mod verdict;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use answer::GateDecision;
pub use verdict::{
    Cause, Decision, DedupResult, Dropped, Enrichment, GateName, GateResult, GateRun, Verdict,
};

use breaker::{Breaker, Outcome};
use dedup::{Claim, Dedup, Joined};

use crate::gate::{GateClient, GateRequest};
use crate::routes::store::RouteStore;
use crate::routes::{Gate, Mode, OnFailure, Source};
use context::{ContextStore, ContextUse, Fields, Lookup};

/// An inbound ringing call, as the webhook parsed it (borrowed from its body: nothing is
/// copied until something outlives the call). Missing `From` and `CallSid` are `""`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Call<'a> {
    pub call_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// A test call (`POST /v1/test-call`): the gate is told, and nothing is kept.
    pub test: bool,
}

/// When a gated webhook must be answered by (`--twilio-deadline` after it arrived). Every wait
/// on the call's path is cut to what is left of it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn new(arrived: Instant, within: Duration) -> Deadline {
        Deadline { at: arrived + within }
    }

    /// What is left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// `limit`, cut to what is left; `true` when it was cut.
    pub fn cap(&self, limit: Duration) -> (Duration, bool) {
        let left = self.remaining();
        if left < limit {
            (left, true)
        } else {
            (limit, false)
        }
    }
}

/// What the stages need: the table, the gate client, the breaker, the dedup cache and pushed
/// caller context.
pub struct Stages<'a> {
    pub routes: &'a RouteStore,
    pub gate: &'a GateClient,
    pub breaker: &'a Breaker,
    pub dedup: &'a Dedup,
    pub contexts: &'a dyn ContextStore,
    /// Secrets for check placeholders.
    pub credentials: &'a crate::credentials::Credentials,
    /// The time schedules are read at (injected in tests).
    pub clock: fn() -> jiff::Timestamp,
}

/// Decides `call`: every stage in order, each able to end the call's decision early.
pub async fn decide(stages: &Stages<'_>, call: &Call<'_>, deadline: Deadline) -> Verdict {
    let (gate, chain, source, number_agent_id, context_wait) = resolve(stages.routes, call.to);
    let Some(gate) = gate else {
        // No gate to ask, but pushed context still reaches the engine.
        let taken = take_context(stages, call, number_agent_id.as_deref(), context_wait, deadline).await;
        let mut verdict = Verdict::without_gate(source, number_agent_id);
        taken.apply(&mut verdict);
        verdict.seal();
        return verdict;
    };
    let lead = match stages.dedup.claim(call).await {
        Claim::Untracked => None,
        Claim::Lead(lead) => Some(lead),
        Claim::Replay(first) => return again(&first, DedupResult::Replayed, Duration::ZERO),
        Claim::Join(follow) => {
            let started = Instant::now();
            // Boxed: joining is rare, and its wait is a large future.
            match Box::pin(follow.wait(deadline.remaining())).await {
                Joined::Decided(first) => return again(&first, DedupResult::Joined, started.elapsed()),
                // The first went away undecided: decide this one.
                Joined::Undecided(lead) => lead,
            }
        }
    };
    // After dedup, so that a duplicate never takes a second context.
    let taken = take_context(stages, call, number_agent_id.as_deref(), context_wait, deadline).await;
    // The gate moves into the verdict, which names it in the decision line.
    let verdict = if gate.chain().is_some() {
        // Boxed: a chain's future is large, and most calls ask a webhook gate.
        Box::pin(run_chain(stages, call, deadline, gate, chain, source, number_agent_id, taken)).await
    } else {
        ask(stages, call, deadline, gate, source, number_agent_id, taken).await
    };
    if let Some(lead) = lead {
        lead.settle(&verdict);
    }
    verdict
}

/// A duplicate's copy of the first decision; `waited` is the time spent waiting for it.
fn again(first: &Verdict, how: DedupResult, waited: Duration) -> Verdict {
    let mut verdict = first.clone();
    verdict.dedup = Some(how);
    verdict.gate =
        first.gate.filter(|_| how == DedupResult::Joined).map(|run| GateRun { elapsed: waited, ..run });
    verdict
}

/// The breaker, then the gate, then the decision table and the gate's mode.
async fn ask(
    stages: &Stages<'_>,
    call: &Call<'_>,
    deadline: Deadline,
    gate: Arc<Gate>,
    source: Source,
    number_agent_id: Option<Arc<str>>,
    taken: Taken,
) -> Verdict {
    let Ok(ticket) = stages.breaker.admit(gate.origin()) else {
        // Not asked: decided at once, with no gate time to count.
        let mut verdict =
            settle(GateDecision::Failure(Cause::CircuitOpen), gate.on_failure(), source, number_agent_id);
        verdict.gate = None;
        taken.apply(&mut verdict);
        return finish(verdict, gate);
    };
    // After the context wait: the gate gets what the deadline has left.
    let (limit, _) = deadline.cap(stages.gate.timeout_for(&gate));
    let started = Instant::now();
    // The request is built before the wait: only the pool's boxed exchange is held across it.
    let asking = stages.gate.ask(
        &gate,
        &GateRequest {
            event: "call.inbound",
            from: call.from,
            to: call.to,
            call_id: call.call_id,
            agent_id: number_agent_id.as_deref(),
            test: call.test,
            context: taken.fields.as_deref(),
        },
        limit,
    );
    let asked = asking.await;
    let elapsed = started.elapsed();
    ticket.report(Outcome::of(&asked.decision, asked.status));
    let mut verdict = settle(asked.decision, gate.on_failure(), source, number_agent_id);
    if let Some(run) = &mut verdict.gate {
        run.elapsed = elapsed;
    }
    taken.apply(&mut verdict);
    finish(verdict, gate)
}

/// What every asked gate's verdict ends with: the gate's name, its mode, the sealed header.
fn finish(mut verdict: Verdict, gate: Arc<Gate>) -> Verdict {
    if gate.mode() == Mode::Shadow {
        shadow(&mut verdict);
    }
    verdict.gate_display = Some(GateName::Gate(gate));
    verdict.seal();
    verdict
}

/// A chain gate (`checks` or `check_set`): its checks in order within what the deadline leaves,
/// settled by the gate's `on_failure`. The checks' own HTTP attempts are not the breaker's: a
/// chain has no single origin to trip.
#[allow(clippy::too_many_arguments)]
async fn run_chain(
    stages: &Stages<'_>,
    call: &Call<'_>,
    deadline: Deadline,
    gate: Arc<Gate>,
    chain: Option<Arc<[crate::routes::Check]>>,
    source: Source,
    number_agent_id: Option<Arc<str>>,
    taken: Taken,
) -> Verdict {
    let (limit, _) = deadline.cap(stages.gate.timeout_for(&gate));
    let started = Instant::now();
    let facts = chain::Facts::Call {
        from: call.from,
        to: call.to,
        call_id: call.call_id,
        agent_id: number_agent_id.as_deref(),
    };
    // A check set removed since the gate was read leaves no checks: the gate's own failure
    // policy decides, with cause `config`.
    let outcome = match &chain {
        Some(checks) => {
            let context = taken.fields.as_deref();
            chain::run(stages, checks, &facts, context, gate.on_failure(), started + limit, (stages.clock)())
                .await
        }
        None => chain::Outcome { end: chain::End::Timeout(None), results: Vec::new() },
    };
    let mut verdict = chain::settle_chain(outcome, gate.on_failure(), source, number_agent_id);
    if chain.is_none() {
        verdict.cause = Some(Cause::Config);
    }
    if let Some(run) = &mut verdict.gate {
        run.elapsed = started.elapsed();
    }
    taken.apply(&mut verdict);
    finish(verdict, gate)
}

/// A shadow gate's verdict: never blocks (`shadow_reject` where it would have), and its
/// enrichment is recorded but not forwarded.
pub fn shadow(verdict: &mut Verdict) {
    verdict.shadow = true;
    verdict.forward_enrichment = false;
    if verdict.decision.blocks() {
        verdict.decision = Decision::ShadowReject;
    }
}

/// Pushed caller context as the call came by it.
struct Taken {
    context: Option<ContextUse>,
    fields: Option<Arc<Fields>>,
    waited: Duration,
}

impl Taken {
    fn apply(self, verdict: &mut Verdict) {
        verdict.context = self.context;
        verdict.pushed_context = self.fields;
        verdict.context_waited = self.waited;
    }
}

/// The context stage (SPEC §12): the context pushed for this caller and the number's agent,
/// taken at once or waited for up to the agent's `context_wait_ms`, cut to the deadline. A test
/// call leaves pushed context alone; a caller that is not an E.164 number (anonymous, `sip:`)
/// can have none pushed, so it never waits.
async fn take_context(
    stages: &Stages<'_>,
    call: &Call<'_>,
    agent_id: Option<&str>,
    wait_ms: u32,
    deadline: Deadline,
) -> Taken {
    let started = Instant::now();
    let lookup = match agent_id {
        Some(agent_id) if !call.test && crate::routes::is_e164(call.from) => {
            let (wait, _) = deadline.cap(Duration::from_millis(u64::from(wait_ms)));
            if wait.is_zero() && stages.contexts.holds_none() {
                // Nothing to take and no wait: no lookup.
                Lookup::Absent
            } else {
                stages.contexts.take(agent_id, call.from, wait).await
            }
        }
        _ => Lookup::Absent,
    };
    let context = lookup.context_use();
    Taken { context, fields: lookup.into_fields().map(Arc::new), waited: started.elapsed() }
}

/// What a call takes out of one snapshot of the table: its gate, a chain gate's checks, where the
/// gate came from, the number's agent and that agent's `context_wait_ms`.
type Resolved = (Option<Arc<Gate>>, Option<Arc<[crate::routes::Check]>>, Source, Option<Arc<str>>, u32);

/// Resolves `to` in one snapshot of the table, taking out only what the call needs, so that no
/// snapshot is held across a wait.
fn resolve(routes: &RouteStore, to: &str) -> Resolved {
    let table = routes.load();
    let resolution = table.resolve(to);
    let chain = resolution.gate.and_then(|g| table.chain_of(g)).cloned();
    let wait = resolution.agent_id.map_or(0, |id| table.agent_context_wait_ms(id));
    (resolution.gate.cloned(), chain, resolution.source, resolution.agent_id.cloned(), wait)
}

/// The decision table: what a gate's answer comes to under its `on_failure`. Pure; the gate's
/// time is filled in by the caller.
pub fn settle(
    answer: GateDecision,
    on_failure: OnFailure,
    source: Source,
    number_agent_id: Option<Arc<str>>,
) -> Verdict {
    let mut verdict = Verdict::without_gate(source, number_agent_id);
    let result = match answer {
        GateDecision::Accept(enrichment) => {
            verdict.decision = Decision::Accept;
            verdict.enrichment = enrichment;
            GateResult::Accept
        }
        GateDecision::Reject { reason } => {
            verdict.decision = Decision::Reject;
            verdict.reason = reason;
            GateResult::Reject
        }
        GateDecision::Failure(cause) => {
            verdict.decision = match on_failure {
                OnFailure::Accept => Decision::FailOpen,
                OnFailure::Reject => Decision::FailClosed,
            };
            verdict.cause = Some(cause);
            GateResult::Failure
        }
    };
    verdict.gate = Some(GateRun { result, elapsed: Duration::ZERO });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_under_every_on_failure() {
        let accept = || GateDecision::Accept(Enrichment::default());
        let reject = || GateDecision::Reject { reason: Some("no credit".into()) };
        for on_failure in [OnFailure::Accept, OnFailure::Reject] {
            let v = settle(accept(), on_failure, Source::Number, None);
            assert_eq!(
                (v.decision, v.cause, v.gate.unwrap().result),
                (Decision::Accept, None, GateResult::Accept)
            );
            let v = settle(reject(), on_failure, Source::Agent, None);
            assert_eq!((v.decision, v.cause), (Decision::Reject, None));
            assert_eq!(v.reason.as_deref(), Some("no credit"));
            assert_eq!(v.gate.unwrap().result, GateResult::Reject);
            for cause in Cause::ALL {
                let v = settle(GateDecision::Failure(cause), on_failure, Source::Number, None);
                let expected = match on_failure {
                    OnFailure::Accept => Decision::FailOpen,
                    OnFailure::Reject => Decision::FailClosed,
                };
                assert_eq!((v.decision, v.cause), (expected, Some(cause)));
                assert_eq!(v.gate.unwrap().result, GateResult::Failure);
                assert_eq!(v.decision.blocks(), on_failure == OnFailure::Reject);
            }
        }
    }

    #[test]
    fn an_override_names_the_agent_and_the_numbers_agent_stays_known() {
        let enrichment = Enrichment { agent_id: Some("agent_vip".into()), ..Enrichment::default() };
        let v = settle(
            GateDecision::Accept(enrichment),
            OnFailure::Accept,
            Source::Number,
            Some("agent_a".into()),
        );
        assert_eq!(v.agent_id(), Some("agent_vip"));
        assert_eq!(v.override_agent_id(), Some("agent_vip"));
        assert_eq!(v.number_agent_id.as_deref(), Some("agent_a"));
    }

    #[test]
    fn a_shadow_gate_never_blocks_and_forwards_no_enrichment() {
        let reject = || GateDecision::Reject { reason: Some("no credit".into()) };
        let mut v = settle(reject(), OnFailure::Accept, Source::Number, None);
        shadow(&mut v);
        assert_eq!((v.decision, v.reason.as_deref()), (Decision::ShadowReject, Some("no credit")));
        let mut v = settle(GateDecision::Failure(Cause::Timeout), OnFailure::Reject, Source::Number, None);
        shadow(&mut v);
        assert_eq!((v.decision, v.cause), (Decision::ShadowReject, Some(Cause::Timeout)));
        let mut v = settle(GateDecision::Failure(Cause::Timeout), OnFailure::Accept, Source::Number, None);
        shadow(&mut v);
        assert_eq!(v.decision, Decision::FailOpen);
        let enrichment = Enrichment { agent_id: Some("agent_vip".into()), ..Enrichment::default() };
        let mut v =
            settle(GateDecision::Accept(enrichment), OnFailure::Accept, Source::Number, Some("a".into()));
        shadow(&mut v);
        v.seal();
        assert_eq!((v.decision, v.agent_id(), v.shadow), (Decision::Accept, Some("a"), true));
        assert_eq!(v.enrichment.agent_id.as_deref(), Some("agent_vip"), "recorded");
    }

    #[test]
    fn the_deadline_cuts_what_is_left() {
        let deadline = Deadline::new(Instant::now(), Duration::from_secs(6));
        assert_eq!(deadline.cap(Duration::from_secs(1)), (Duration::from_secs(1), false));
        let (cut, was_cut) = deadline.cap(Duration::from_secs(9));
        assert!(was_cut && cut <= Duration::from_secs(6) && cut > Duration::from_secs(5));
        let passed = Deadline::new(Instant::now() - Duration::from_secs(10), Duration::from_secs(6));
        assert_eq!(passed.cap(Duration::from_secs(9)), (Duration::ZERO, true));
    }
}
