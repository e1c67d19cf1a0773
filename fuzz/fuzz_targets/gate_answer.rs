//! A gate's answer (`gate::parse_answer`): never panics, and decides only on a JSON object
//! whose `action` is exactly "accept" or "reject" (checked against serde_json's reading).
#![no_main]

use callgate::gate::{parse_answer, GateDecision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decision = parse_answer(data);
    let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    let action =
        value.as_ref().and_then(|v| v.as_object()).and_then(|o| o.get("action")).and_then(|a| a.as_str());
    match decision {
        GateDecision::Accept => assert_eq!(action, Some("accept")),
        GateDecision::Reject { reason } => {
            assert_eq!(action, Some("reject"));
            let given = value.as_ref().and_then(|v| v.get("reason")).and_then(|r| r.as_str());
            assert_eq!(reason.as_deref(), given);
        }
        GateDecision::Failure(_) => assert!(!matches!(action, Some("accept" | "reject"))),
    }
});
