//! Advice for `callgate check` beyond validity: gates whose deadline, added to the engine's,
//! reaches Twilio's 15 s webhook cap, and agents whose context wait, gate and engine together
//! reach `--twilio-deadline`.

use std::time::Duration;

use super::RouteTable;

/// Twilio gives up on a voice webhook after 15 seconds.
pub const TWILIO_WEBHOOK_CAP: Duration = Duration::from_secs(15);

/// One line per gate whose timeout plus `upstream_timeout` reaches [`TWILIO_WEBHOOK_CAP`],
/// sorted by where the gate is.
pub fn timeout_warnings(
    table: &RouteTable,
    gate_timeout: Duration,
    upstream_timeout: Duration,
) -> Vec<String> {
    let mut warnings: Vec<String> = table
        .gates()
        .filter_map(|(place, gate)| {
            let timeout = gate.timeout_ms().map_or(gate_timeout, |ms| Duration::from_millis(u64::from(ms)));
            (timeout + upstream_timeout >= TWILIO_WEBHOOK_CAP).then(|| {
                format!(
                    "{place}: timeout {timeout:?} + upstream timeout {upstream_timeout:?} reaches Twilio's 15 s cap; \
                     a slow gate and engine together lose the call"
                )
            })
        })
        .collect();
    warnings.sort();
    warnings
}

/// One line per agent whose `context_wait_ms` plus its gate's timeout plus `upstream_timeout`
/// reaches `deadline` (SPEC §13): the engine would be cut short on a call that waits in full.
pub fn context_wait_warnings(
    table: &RouteTable,
    gate_timeout: Duration,
    upstream_timeout: Duration,
    deadline: Duration,
) -> Vec<String> {
    let mut warnings: Vec<String> = table
        .agents
        .iter()
        .filter(|(_, agent)| agent.context_wait_ms > 0)
        .filter_map(|(id, agent)| {
            let wait = Duration::from_millis(u64::from(agent.context_wait_ms));
            let gate = agent.gate.as_ref().map_or(Duration::ZERO, |g| {
                g.timeout_ms().map_or(gate_timeout, |ms| Duration::from_millis(u64::from(ms)))
            });
            (wait + gate + upstream_timeout >= deadline).then(|| {
                format!(
                    "agents.{}: context_wait_ms {wait:?} + gate timeout {gate:?} + upstream timeout \
                     {upstream_timeout:?} reaches the Twilio deadline {deadline:?}; the engine is cut short on a call that waits",
                    super::file::PathKey(id)
                )
            })
        })
        .collect();
    warnings.sort();
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ValidateOptions;

    #[test]
    fn warns_for_each_gate_that_reaches_the_cap() {
        let json = r#"{"agents": {"a": {"gate": {"url": "https://g.example/a"}}},
                       "numbers": {"+15005550006": {"gate": {"url": "https://g.example/n", "timeout_ms": 6000}},
                                   "+15005550007": {"gate": {"url": "https://g.example/m", "timeout_ms": 1000}}}}"#;
        let table = RouteTable::parse(json.as_bytes(), &ValidateOptions::default()).unwrap();
        let warnings = timeout_warnings(&table, Duration::from_secs(5), Duration::from_secs(9));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("numbers.\"+15005550006\".gate: timeout 6s"), "{warnings:?}");
        let warnings = timeout_warnings(&table, Duration::from_secs(6), Duration::from_secs(9));
        assert_eq!(warnings.len(), 2, "the default timeout applies to gates without their own");
    }

    #[test]
    fn warns_for_each_agent_whose_wait_gate_and_engine_reach_the_deadline() {
        let json = r#"{"agents": {"a": {"gate": {"url": "https://g.example/a"}, "context_wait_ms": 1000},
                                  "b": {"context_wait_ms": 5000}, "c": {"gate": {"url": "https://g.example/c"}}}}"#;
        let table = RouteTable::parse(json.as_bytes(), &ValidateOptions::default()).unwrap();
        let (gate, engine, deadline) =
            (Duration::from_secs(5), Duration::from_secs(9), Duration::from_secs(14));
        let warnings = context_wait_warnings(&table, gate, engine, deadline);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("agents.a: context_wait_ms 1s + gate timeout 5s"), "{warnings:?}");
        assert!(warnings[1].starts_with("agents.b: context_wait_ms 5s + gate timeout 0ns"), "{warnings:?}");
        assert!(context_wait_warnings(&table, gate, Duration::from_secs(1), deadline).is_empty());
    }
}
