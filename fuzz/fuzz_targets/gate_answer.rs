//! A gate's answer (`gate::parse_answer`): never panics, and decides only on a JSON object whose
//! `action` is exactly "accept" or "reject", or that has no `action` and a `call_inbound` object
//! (the second accept shape, SPEC §10); checked against serde_json's own reading.
#![no_main]

use callgate::gate::{parse_answer, GateDecision};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let decision = parse_answer(data);
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let object = value.as_ref().and_then(Value::as_object);
    let action = object.and_then(|o| o.get("action")).map(|a| a.as_str());
    let inbound_shape =
        object.is_some_and(|o| !o.contains_key("action") && o.get("call_inbound").is_some_and(Value::is_object));
    match decision {
        GateDecision::Accept(_) => assert!(action == Some(Some("accept")) || inbound_shape),
        GateDecision::Reject { reason } => {
            assert_eq!(action, Some(Some("reject")));
            let given = value.as_ref().and_then(|v| v.get("reason")).and_then(|r| r.as_str());
            assert_eq!(reason.as_deref(), given);
        }
        GateDecision::Failure(_) => {
            assert!(!matches!(action, Some(Some("accept" | "reject"))) && !inbound_shape)
        }
    }
});
