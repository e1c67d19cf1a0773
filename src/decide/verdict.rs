//! The typed outcome of a call's decision: what was decided and why, which agent handles the
//! call, what the gate handed over, and how long the gate took. Plain data, no I/O.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde_json::{Map, Value};

use super::context::{ContextUse, Fields};
use crate::routes::{Gate, Source};

/// What became of an inbound ringing call: the `decision` label, the log line, the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject,
    FailOpen,
    FailClosed,
    NoGate,
    /// A shadow gate would have blocked the call (reject or fail-closed); it was forwarded.
    ShadowReject,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Decision::Accept,
        Decision::Reject,
        Decision::FailOpen,
        Decision::FailClosed,
        Decision::NoGate,
        Decision::ShadowReject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::FailOpen => "fail_open",
            Decision::FailClosed => "fail_closed",
            Decision::NoGate => "no_gate",
            Decision::ShadowReject => "shadow_reject",
        }
    }

    /// Whether the caller hears busy (callgate answers the reject TwiML itself).
    pub fn blocks(self) -> bool {
        match self {
            Decision::Reject | Decision::FailClosed => true,
            Decision::Accept | Decision::FailOpen | Decision::NoGate | Decision::ShadowReject => false,
        }
    }
}

/// Why a gate gave no accept or reject (SPEC §4, item 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The deadline passed, whatever was under way.
    Timeout,
    /// Refused, reset, DNS or TLS failure before an answer's head.
    Connect,
    /// The gate answered with a status other than 200.
    Status,
    /// Not an answer of SPEC §10's shapes, too long, or a read error after the head.
    Malformed,
    /// Too many requests already waiting on this gate.
    Overload,
    /// The gate's origin is failing and was not asked (SPEC §13).
    CircuitOpen,
    /// The gate's configuration cannot be used for this call (a check's placeholder, say).
    Config,
}

impl Cause {
    pub const ALL: [Cause; 7] = [
        Cause::Timeout,
        Cause::Connect,
        Cause::Status,
        Cause::Malformed,
        Cause::Overload,
        Cause::CircuitOpen,
        Cause::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Connect => "connect",
            Cause::Status => "status",
            Cause::Malformed => "malformed",
            Cause::Overload => "overload",
            Cause::CircuitOpen => "circuit_open",
            Cause::Config => "config",
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
    pub const ALL: [GateResult; 3] = [GateResult::Accept, GateResult::Reject, GateResult::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            GateResult::Accept => "accept",
            GateResult::Reject => "reject",
            GateResult::Failure => "failure",
        }
    }
}

/// How a duplicate CallSid got its decision (`callgate_dedup_total`, SPEC §13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupResult {
    /// Decided within the window: the first decision again.
    Replayed,
    /// Arrived while the first was with the gate, and waited for its decision.
    Joined,
}

impl DedupResult {
    pub const ALL: [DedupResult; 2] = [DedupResult::Replayed, DedupResult::Joined];

    pub fn as_str(self) -> &'static str {
        match self {
            DedupResult::Replayed => "replayed",
            DedupResult::Joined => "joined",
        }
    }
}

/// Why a piece of enrichment was left out (`callgate_enrichment_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// A field of the wrong type, an invalid agent id, a variable that is not a scalar.
    Invalid,
    /// `X-Callgate-Context` would be over [`MAX_CONTEXT_HEADER`].
    TooLarge,
}

impl Dropped {
    pub const ALL: [Dropped; 2] = [Dropped::Invalid, Dropped::TooLarge];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Invalid => "invalid",
            Dropped::TooLarge => "too_large",
        }
    }
}

/// The largest `X-Callgate-Context` value sent; a larger one is left out.
pub const MAX_CONTEXT_HEADER: usize = 8 * 1024;

/// What an accepting gate handed over for the call, validated: every field here is of the type
/// SPEC §10 asks, and what was not is counted in `dropped_invalid`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Enrichment {
    /// The gate's choice of agent (a valid agent id).
    pub agent_id: Option<String>,
    /// Names to strings, numbers or booleans.
    pub dynamic_variables: Option<Map<String, Value>>,
    /// Any JSON object.
    pub metadata: Option<Map<String, Value>>,
    /// Fields, or single variables, left out for their type.
    pub dropped_invalid: u32,
}

impl Enrichment {
    /// Validates the three fields as a gate sent them (absent and `null` are the same).
    pub fn read(
        agent_id: Option<Value>,
        dynamic_variables: Option<Value>,
        metadata: Option<Value>,
    ) -> Enrichment {
        let mut dropped_invalid = 0;
        let mut invalid = || dropped_invalid += 1;
        let agent_id = match agent_id {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if crate::routes::validate_agent_id(&id) => Some(id),
            Some(_) => {
                invalid();
                None
            }
        };
        let dynamic_variables = match dynamic_variables {
            None | Some(Value::Null) => None,
            Some(Value::Object(mut vars)) => {
                let before = vars.len();
                vars.retain(|_, v| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)));
                for _ in vars.len()..before {
                    invalid();
                }
                Some(vars)
            }
            Some(_) => {
                invalid();
                None
            }
        };
        let metadata = match metadata {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                invalid();
                None
            }
        };
        Enrichment { agent_id, dynamic_variables, metadata, dropped_invalid }
    }
}

/// How long the gate took and what it came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateRun {
    pub result: GateResult,
    pub elapsed: Duration,
}

/// The gate a call asked, as the decision line names it: `scheme://host[:port]/path`, safe for
/// logs. The table's gate itself (its name is not copied), or the name another replica
/// recorded (a duplicate CallSid's copy of its decision, through the shared store).
#[derive(Clone, Debug)]
pub enum GateName {
    Gate(Arc<Gate>),
    Recorded(Arc<str>),
}

impl GateName {
    pub fn as_str(&self) -> &str {
        match self {
            GateName::Gate(gate) => gate.display(),
            GateName::Recorded(name) => name,
        }
    }
}

/// Everything decided about one call. Made by [`crate::decide::decide`] alone; read by the
/// webhook (TwiML or forwarding), the metrics, the decision line and the decision record.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub decision: Decision,
    /// Set for `fail_open` and `fail_closed` (and a shadow gate's failure).
    pub cause: Option<Cause>,
    /// The gate's `reason` for a reject (a string), for the log and the record.
    pub reason: Option<String>,
    /// Where the gate came from.
    pub source: Source,
    /// The number's agent.
    pub number_agent_id: Option<Arc<str>>,
    /// Validated enrichment from an accepting gate (recorded, not forwarded, for a shadow gate).
    pub enrichment: Enrichment,
    /// The gate exchange, when a gate was asked.
    pub gate: Option<GateRun>,
    /// The gate asked, for the decision line.
    pub gate_display: Option<GateName>,
    /// `X-Callgate-Context` for the engine, when the call has something to carry and it fits.
    pub context_header: Option<HeaderValue>,
    /// `X-Callgate-Context` was left out for its size.
    pub context_too_large: bool,
    /// Whether the enrichment is forwarded (not for a shadow gate).
    pub forward_enrichment: bool,
    /// Each check's result, for a chain gate.
    pub checks: Vec<super::chain::CheckResult>,
    /// Set when this is a duplicate CallSid's copy of the first decision: it is not counted or
    /// recorded as a decision of its own.
    pub dedup: Option<DedupResult>,
    /// The gate was in shadow mode: its decision was observed, not enforced.
    pub shadow: bool,
    /// How the call came by pushed caller context (SPEC §12): hit, waited or miss.
    pub context: Option<ContextUse>,
    /// The pushed context the call took: for the gate request, check placeholders and the
    /// engine. Never logged or recorded.
    pub pushed_context: Option<Arc<Fields>>,
    /// How long the call waited for pushed context (a wait on others, not callgate's overhead).
    pub context_waited: Duration,
}

impl Verdict {
    /// A call decided without asking anyone.
    pub fn without_gate(source: Source, number_agent_id: Option<Arc<str>>) -> Verdict {
        Verdict {
            decision: Decision::NoGate,
            cause: None,
            reason: None,
            source,
            number_agent_id,
            enrichment: Enrichment::default(),
            gate: None,
            gate_display: None,
            context_header: None,
            context_too_large: false,
            forward_enrichment: true,
            checks: Vec::new(),
            dedup: None,
            shadow: false,
            context: None,
            pushed_context: None,
            context_waited: Duration::ZERO,
        }
    }

    /// The gate's agent override, when one is forwarded.
    pub fn override_agent_id(&self) -> Option<&str> {
        self.enrichment.agent_id.as_deref()
    }

    /// The agent that handles the call: the gate's override first, else the number's.
    pub fn agent_id(&self) -> Option<&str> {
        let forwarded = self.forward_enrichment.then(|| self.override_agent_id()).flatten();
        forwarded.or(self.number_agent_id.as_deref())
    }

    /// The gate's time in milliseconds, when a gate was asked.
    pub fn gate_ms(&self) -> Option<f64> {
        self.gate.map(|g| (g.elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0)
    }

    /// Builds `X-Callgate-Context` (SPEC §10): unpadded base64url of a compact JSON object with
    /// the call's `dynamic_variables`, `metadata` (a shadow gate's are not forwarded), pushed
    /// `context` (and, as they come, `checks`), plus `agent_id` when known; only when there is
    /// one of those to carry, and at most [`MAX_CONTEXT_HEADER`] long.
    pub fn seal(&mut self) {
        self.context_header = None;
        self.context_too_large = false;
        let mut carried = Map::new();
        if self.forward_enrichment {
            if let Some(vars) = &self.enrichment.dynamic_variables {
                carried.insert("dynamic_variables".into(), Value::Object(vars.clone()));
            }
            if let Some(metadata) = &self.enrichment.metadata {
                carried.insert("metadata".into(), Value::Object(metadata.clone()));
            }
        }
        if let Some(context) = &self.pushed_context {
            carried.insert("context".into(), Value::Object(Fields::clone(context)));
        }
        if !self.checks.is_empty() {
            carried.insert("checks".into(), self.checks_json());
        }
        if carried.is_empty() {
            return;
        }
        if let Some(agent) = self.agent_id() {
            carried.insert("agent_id".into(), Value::String(agent.to_owned()));
        }
        let json = serde_json::to_vec(&carried).expect("a JSON map serialises");
        // base64 grows by 4/3: skip the encoding when it cannot fit.
        if json.len().div_ceil(3) * 4 > MAX_CONTEXT_HEADER + 4 {
            self.context_too_large = true;
            return;
        }
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        if encoded.len() > MAX_CONTEXT_HEADER {
            self.context_too_large = true;
            return;
        }
        self.context_header =
            Some(HeaderValue::try_from(encoded).expect("base64url is a valid header value"));
    }

    /// The chain's results as `[{"name", "status", "reason"?}]`.
    pub fn checks_json(&self) -> Value {
        Value::Array(self.checks.iter().map(super::chain::CheckResult::to_json).collect())
    }

    /// Each dropped piece of enrichment, by reason, for the metrics.
    pub fn dropped(&self) -> impl Iterator<Item = Dropped> + '_ {
        std::iter::repeat_n(Dropped::Invalid, self.enrichment.dropped_invalid as usize)
            .chain(self.context_too_large.then_some(Dropped::TooLarge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enrichment_keeps_what_is_valid_and_counts_the_rest() {
        let e = Enrichment::read(
            Some(json!("agent_vip")),
            Some(json!({"name": "Ada", "tier": 3, "vip": true, "bad": {"x": 1}, "list": [1]})),
            Some(json!({"crm": {"id": 7}})),
        );
        assert_eq!(e.agent_id.as_deref(), Some("agent_vip"));
        assert_eq!(e.dynamic_variables.unwrap().len(), 3);
        assert!(e.metadata.is_some());
        assert_eq!(e.dropped_invalid, 2);

        let e = Enrichment::read(Some(json!("has space")), Some(json!([1])), Some(json!("x")));
        assert_eq!(e, Enrichment { dropped_invalid: 3, ..Enrichment::default() });

        let e = Enrichment::read(Some(Value::Null), None, Some(Value::Null));
        assert_eq!(e, Enrichment::default());
    }

    #[test]
    fn the_context_header_carries_what_the_call_has_and_fits() {
        let mut v = Verdict::without_gate(Source::Number, Some("agent_a".into()));
        v.seal();
        assert!(v.context_header.is_none(), "nothing to carry");

        v.enrichment.dynamic_variables = Some(json!({"name": "Ada"}).as_object().unwrap().clone());
        v.enrichment.agent_id = Some("agent_b".into());
        v.seal();
        use base64::Engine as _;
        let header = v.context_header.as_ref().unwrap().to_str().unwrap();
        assert!(!header.contains('=') && !header.contains('+') && !header.contains('/'));
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value, json!({"agent_id": "agent_b", "dynamic_variables": {"name": "Ada"}}));

        v.enrichment.metadata = Some(json!({"blob": "x".repeat(9 * 1024)}).as_object().unwrap().clone());
        v.seal();
        assert!(v.context_header.is_none() && v.context_too_large);
        assert_eq!(v.dropped().collect::<Vec<_>>(), [Dropped::TooLarge]);

        v.forward_enrichment = false;
        v.seal();
        assert!(v.context_header.is_none() && !v.context_too_large);
        assert_eq!(v.agent_id(), Some("agent_a"), "a shadow gate's override is not used");

        // Pushed context is the caller's, not the gate's: carried whatever the gate's mode.
        v.pushed_context = Some(Arc::new(json!({"customer_name": "Jane"}).as_object().unwrap().clone()));
        v.seal();
        let header = v.context_header.as_ref().unwrap().to_str().unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value, json!({"agent_id": "agent_a", "context": {"customer_name": "Jane"}}));
    }
}
