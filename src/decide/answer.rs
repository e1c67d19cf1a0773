//! A webhook gate's 200 answer read strictly (SPEC §4 item 3, §10): only `"action":"reject"`
//! rejects; an accept is `"action":"accept"` or the `call_inbound` shape, with its enrichment
//! validated; anything else is `malformed`. Pure: bytes in, [`GateDecision`] out.

use serde_json::Value;

use super::verdict::{Cause, Enrichment};

/// What the gate said.
#[derive(Debug, PartialEq)]
pub enum GateDecision {
    /// An accept of either shape, with what it handed over.
    Accept(Enrichment),
    /// `{"action":"reject"}` with status 200; `reason` if the gate gave one as a string.
    Reject { reason: Option<String> },
    /// No accept or reject, and why.
    Failure(Cause),
}

/// Reads a gate's 200 answer body.
pub fn parse_answer(body: &[u8]) -> GateDecision {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice(body) else {
        return GateDecision::Failure(Cause::Malformed);
    };
    // `action` decides whenever it is there, whatever else the answer holds.
    match answer.get("action") {
        Some(Value::String(action)) if action == "reject" => GateDecision::Reject {
            reason: match answer.remove("reason") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
        },
        Some(Value::String(action)) if action == "accept" => GateDecision::Accept(Enrichment::read(
            answer.remove("agent_id"),
            answer.remove("dynamic_variables"),
            answer.remove("metadata"),
        )),
        Some(_) => GateDecision::Failure(Cause::Malformed),
        None => match answer.remove("call_inbound") {
            Some(Value::Object(mut inbound)) => GateDecision::Accept(Enrichment::read(
                inbound.remove("override_agent_id"),
                inbound.remove("dynamic_variables"),
                inbound.remove("metadata"),
            )),
            _ => GateDecision::Failure(Cause::Malformed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accept(agent: Option<&str>, vars: Option<Value>, metadata: Option<Value>) -> GateDecision {
        let object = |v: Value| v.as_object().unwrap().clone();
        GateDecision::Accept(Enrichment {
            agent_id: agent.map(Into::into),
            dynamic_variables: vars.map(object),
            metadata: metadata.map(object),
            dropped_invalid: 0,
        })
    }

    #[test]
    fn only_exact_actions_decide() {
        assert_eq!(parse_answer(br#"{"action":"accept"}"#), accept(None, None, None));
        assert_eq!(
            parse_answer(br#"{"action":"reject","reason":"no credit"}"#),
            GateDecision::Reject { reason: Some("no credit".into()) }
        );
        assert_eq!(parse_answer(br#"{"action":"reject","reason":7}"#), GateDecision::Reject { reason: None });
        for bad in [
            &br#"{"action":"REJECT"}"#[..],
            br#"{"action":"maybe"}"#,
            br#"{"action":null}"#,
            br#"{}"#,
            br#"{"call_inbound":5}"#,
            br#"{"call_inbound":null}"#,
            br#"{"call_inbound":[]}"#,
            br#"{"action":"maybe","call_inbound":{}}"#,
            br#"[{"action":"reject"}]"#,
            br#""reject""#,
            b"",
            br#"{"action":"rej"#,
        ] {
            assert_eq!(
                parse_answer(bad),
                GateDecision::Failure(Cause::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn both_accept_shapes_carry_enrichment() {
        assert_eq!(
            parse_answer(
                br#"{"action":"accept","agent_id":"agent_b","dynamic_variables":{"n":"Ada"},"metadata":{"k":[1]}}"#
            ),
            accept(Some("agent_b"), Some(json!({"n": "Ada"})), Some(json!({"k": [1]})))
        );
        assert_eq!(
            parse_answer(
                br#"{"call_inbound":{"override_agent_id":"agent_c","dynamic_variables":{"t":2},"metadata":{}}}"#
            ),
            accept(Some("agent_c"), Some(json!({"t": 2})), Some(json!({})))
        );
        assert_eq!(parse_answer(br#"{"call_inbound":{}}"#), accept(None, None, None));
        // `action` decides when both are there: the reject stands, and so does an accept's own
        // top-level enrichment (the call_inbound fields are not read).
        assert_eq!(
            parse_answer(br#"{"action":"reject","call_inbound":{"override_agent_id":"x"}}"#),
            GateDecision::Reject { reason: None }
        );
        assert_eq!(
            parse_answer(br#"{"action":"accept","call_inbound":{"override_agent_id":"agent_x"}}"#),
            accept(None, None, None)
        );
        // A reject carrying enrichment still rejects.
        assert_eq!(
            parse_answer(br#"{"action":"reject","agent_id":"agent_b","metadata":{"a":1}}"#),
            GateDecision::Reject { reason: None }
        );
    }

    #[test]
    fn bad_enrichment_is_dropped_never_fails_the_accept() {
        let GateDecision::Accept(e) =
            parse_answer(br#"{"action":"accept","agent_id":"a/b","dynamic_variables":[1],"metadata":"x"}"#)
        else {
            panic!("an accept with bad enrichment is still an accept");
        };
        assert_eq!(e, Enrichment { dropped_invalid: 3, ..Enrichment::default() });
    }
}
