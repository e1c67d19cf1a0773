//! Advice for `callgate check` beyond validity: gates whose deadline, added to the engine's,
//! reaches Twilio's 15 s webhook cap.

use std::time::Duration;

use super::RouteTable;

/// Twilio gives up on a voice webhook after 15 seconds.
pub const TWILIO_WEBHOOK_CAP: Duration = Duration::from_secs(15);

/// One line per gate whose timeout plus `upstream_timeout` reaches [`TWILIO_WEBHOOK_CAP`].
pub fn timeout_warnings(
    table: &RouteTable,
    gate_timeout: Duration,
    upstream_timeout: Duration,
) -> Vec<String> {
    let doc = table.to_json();
    let mut warnings = Vec::new();
    for kind in ["agents", "numbers"] {
        let Some(entries) = doc.get(kind).and_then(|e| e.as_object()) else { continue };
        for (key, entry) in entries {
            let Some(gate) = entry.get("gate") else { continue };
            let timeout =
                gate.get("timeout_ms").and_then(|t| t.as_u64()).map_or(gate_timeout, Duration::from_millis);
            if timeout + upstream_timeout >= TWILIO_WEBHOOK_CAP {
                warnings.push(format!(
                    "{kind}.{key}.gate: timeout {timeout:?} + upstream timeout {upstream_timeout:?} reaches Twilio's 15 s cap; a slow gate and engine together lose the call"
                ));
            }
        }
    }
    warnings
}
