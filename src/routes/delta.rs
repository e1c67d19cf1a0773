//! A write's change, sent with its notice on the shared store's channel (SPEC §15), so that the
//! other replicas put it in force without reading and parsing the whole table (about 0.9 s at a
//! million numbers). The change is the entries the write touched, as they now are, written as a
//! small routes document of their own; a replica applies it only on top of the version it was
//! made from, and reads the whole table right after anyway, so the table in force ends up being
//! the store's exactly whatever the change carried.
//!
//! The notice is `{version}\n{from}\n{touched}\n{entries}`: the new version, the version the
//! write replaced, the touched names (JSON) and the entries (a routes document).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::writer::Edit;
use super::{Gate, RouteTable, ValidateOptions};

/// Past this many touched entries a write sends no change: the replicas read the whole table.
const MAX_TOUCHED: usize = 10_000;

/// The names a batch of edits touched.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Touched {
    agents: BTreeSet<String>,
    numbers: BTreeSet<String>,
    check_sets: BTreeSet<String>,
}

impl Touched {
    pub fn of<'e>(edits: impl IntoIterator<Item = &'e Edit>) -> Touched {
        let mut touched = Touched::default();
        for edit in edits {
            match edit {
                Edit::AgentGate { agent_id, .. } | Edit::AgentContextWait { agent_id, .. } => {
                    touched.agents.insert(agent_id.clone());
                }
                Edit::NumberGate { number, .. } | Edit::NumberAgent { number, .. } => {
                    touched.numbers.insert(number.clone());
                }
                Edit::CheckSet { name, .. } => {
                    touched.check_sets.insert(name.clone());
                }
            }
        }
        touched
    }

    fn len(&self) -> usize {
        self.agents.len() + self.numbers.len() + self.check_sets.len()
    }
}

/// The change as sent after the version lines: the touched names and their entries in `table`
/// (with the check sets their gates name, so the entries validate on their own). Empty when
/// there are too many to be worth it.
pub fn encode(table: &RouteTable, touched: &Touched) -> Vec<u8> {
    if touched.len() > MAX_TOUCHED {
        return Vec::new();
    }
    let mut part = RouteTable::empty();
    let mut sets = touched.check_sets.clone();
    let mut named = |gate: &Gate| {
        if let Some(super::Chain::Set(name)) = gate.chain() {
            sets.insert(name.to_string());
        }
    };
    for id in &touched.agents {
        if let Some(gate) = table.agent_gate(id) {
            named(gate);
            part.set_agent_gate(id, Some(Gate::clone(gate)));
        }
        let wait = table.agent_context_wait_ms(id);
        if wait > 0 {
            part.set_agent_context_wait(id, wait);
        }
    }
    for number in &touched.numbers {
        if let Some(agent) = table.number_agent(number) {
            let _ = part.set_number_agent(number, Some(agent));
        }
        if let Some(gate) = table.number_gate(number) {
            named(gate);
            let _ = part.set_number_gate(number, Some(Gate::clone(gate)));
        }
    }
    for name in &sets {
        if let Some(checks) = table.check_set(name) {
            part.set_check_set(name, Some(checks.clone()));
        }
    }
    let mut out = serde_json::to_vec(touched).expect("names serialise");
    out.push(b'\n');
    serde_json::to_writer(&mut out, &part).expect("a table serialises");
    out
}

/// A notice read: its version, the version it replaced, and its change if it has one.
pub struct Notice<'a> {
    pub version: i64,
    pub from: Option<i64>,
    pub change: Option<&'a [u8]>,
}

impl Notice<'_> {
    pub fn read(payload: &[u8]) -> Option<Notice<'_>> {
        let mut parts = payload.splitn(3, |b| *b == b'\n');
        let version = std::str::from_utf8(parts.next()?).ok()?.trim().parse().ok()?;
        let from = parts.next().and_then(|f| std::str::from_utf8(f).ok()?.parse().ok());
        let change = parts.next().filter(|c| !c.is_empty());
        Some(Notice { version, from, change })
    }
}

/// `current` with the change applied; `None` if the change does not read or validate.
pub fn apply(current: &RouteTable, change: &[u8], options: &ValidateOptions) -> Option<RouteTable> {
    let mut parts = change.splitn(2, |b| *b == b'\n');
    let touched: Touched = serde_json::from_slice(parts.next()?).ok()?;
    let part = RouteTable::parse(parts.next()?, options).ok()?;
    let mut table = current.clone();
    for name in &touched.check_sets {
        if let Some(checks) = part.check_set(name) {
            table.set_check_set(name, Some(checks.clone()));
        }
    }
    for id in &touched.agents {
        table.set_agent_gate(id, part.agent_gate(id).map(|g| Gate::clone(g)));
        table.set_agent_context_wait(id, part.agent_context_wait_ms(id));
    }
    for number in &touched.numbers {
        table.set_number_gate(number, part.number_gate(number).map(|g| Gate::clone(g))).ok()?;
        table.set_number_agent(number, part.number_agent(number).map(|a| &**a)).ok()?;
    }
    for name in &touched.check_sets {
        if part.check_set(name).is_none() {
            table.set_check_set(name, None);
        }
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> RouteTable {
        RouteTable::parse(json.as_bytes(), &ValidateOptions { allow_insecure_gates: true }).unwrap()
    }

    #[test]
    fn a_change_applied_elsewhere_gives_the_writers_table() {
        let options = ValidateOptions { allow_insecure_gates: true };
        let before = parse(
            r#"{"agents": {"a1": {"gate": {"url": "https://g/a1"}}, "a2": {"context_wait_ms": 300}},
                "numbers": {"+15550000001": {"agent_id": "a1"}, "+15550000002": {"gate": {"url": "https://g/n2"}}}}"#,
        );
        let mut after = before.clone();
        let edits = vec![
            Edit::NumberAgent { number: "+15550000003".into(), agent_id: Some("a2".into()) },
            Edit::NumberGate { number: "+15550000002".into(), gate: None },
            Edit::AgentGate { agent_id: "a1".into(), gate: None },
            Edit::AgentContextWait { agent_id: "a2".into(), wait_ms: 900 },
        ];
        after.set_number_agent("+15550000003", Some("a2")).unwrap();
        after.set_number_gate("+15550000002", None).unwrap();
        after.set_agent_gate("a1", None);
        after.set_agent_context_wait("a2", 900);
        let change = encode(&after, &Touched::of(&edits));
        let applied = apply(&before, &change, &options).unwrap();
        assert_eq!(serde_json::to_value(&applied).unwrap(), serde_json::to_value(&after).unwrap());

        let notice = [b"7\n6\n".as_slice(), &change].concat();
        let read = Notice::read(&notice).unwrap();
        assert_eq!((read.version, read.from, read.change), (7, Some(6), Some(change.as_slice())));
        let bare = Notice::read(b"8").unwrap();
        assert_eq!((bare.version, bare.from, bare.change), (8, None, None));
        assert!(apply(&before, b"not json\n{}", &options).is_none());
    }
}
