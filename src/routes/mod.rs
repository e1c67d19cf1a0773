//! The routing table: which gate, if any, guards a call to a dialled number. Owns the validated,
//! immutable [`RouteTable`], its [`Gate`]s and the O(1) lookup; `file` reads and writes the
//! routes-file format.

mod check;
pub mod checks;
mod delta;
mod file;
mod gate;
mod shape;
pub mod shared;
pub mod store;
pub mod watch;
pub mod writer;

pub use check::{context_wait_warnings, timeout_warnings};

pub use checks::Check;
pub use file::GateSpec;
use gate::{check_timeout, check_url};
pub use gate::{Chain, Gate, GateError, Mode, OnFailure, ValidateOptions, GATE_TIMEOUT_MS};

use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use file::PathKey;

/// Where the gate for a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The dialled number's own gate.
    Number,
    /// The gate of the number's agent.
    Agent,
    /// No gate: the call is not gated.
    None,
}

impl Source {
    /// The log spelling: `number`, `agent` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Number => "number",
            Source::Agent => "agent",
            Source::None => "none",
        }
    }
}

/// The outcome of [`RouteTable::resolve`]: at most one gate, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution<'a> {
    pub gate: Option<&'a Arc<Gate>>,
    pub source: Source,
    /// The number's agent, whether or not the gate came from it.
    pub agent_id: Option<&'a Arc<str>>,
}

/// Every problem found in a routes file (or an admin change); `Display` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutesError {
    pub problems: Vec<String>,
}

impl RoutesError {
    fn one(problem: impl Into<String>) -> RoutesError {
        RoutesError { problems: vec![problem.into()] }
    }
}

impl fmt::Display for RoutesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for RoutesError {}

const NOT_E164: &str = "not an E.164 number (+ then 2 to 15 digits)";
const NOT_AGENT_ID: &str = "not a valid agent id (1 to 128 printable ASCII characters \
    without spaces, /, ?, # or %; not \".\" or \"..\")";

/// `+` then 2 to 15 ASCII digits, nothing else.
pub fn is_e164(s: &str) -> bool {
    NumberKey::parse(s).is_some()
}

/// Agent ids appear in admin URL paths: 1 to 128 printable ASCII characters without whitespace,
/// `/`, `?`, `#` or `%`, and not `.` or `..` (which URL paths cannot carry as a segment).
pub fn validate_agent_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
}

/// An E.164 number packed into a `u64`: the digit count above bit 50, the value below
/// (10^15 - 1 < 2^50), so `+01` and `+1` stay different keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct NumberKey(u64);

const VALUE_BITS: u32 = 50;

impl NumberKey {
    /// Parses without allocating; `None` for anything that is not `+` and 2 to 15 digits.
    fn parse(s: &str) -> Option<NumberKey> {
        let digits = s.strip_prefix('+')?.as_bytes();
        if !(2..=15).contains(&digits.len()) {
            return None;
        }
        let mut value = 0u64;
        for &b in digits {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u64::from(b - b'0');
        }
        Some(NumberKey(((digits.len() as u64) << VALUE_BITS) | value))
    }

    /// A key of `digits` digits with `value` (for prefixes, 1 to 15 digits).
    fn from_parts(digits: u32, value: u64) -> NumberKey {
        NumberKey((u64::from(digits) << VALUE_BITS) | value)
    }

    fn digits(self) -> usize {
        (self.0 >> VALUE_BITS) as usize
    }

    fn value(self) -> u64 {
        self.0 & ((1 << VALUE_BITS) - 1)
    }

    /// Writes `+digits` into `buf` (16 bytes: `+` and up to 15 digits).
    fn write(self, buf: &mut [u8; 16]) -> &str {
        let n = self.digits();
        buf[0] = b'+';
        let mut value = self.value();
        for slot in buf[1..=n].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        std::str::from_utf8(&buf[..=n]).expect("ASCII digits")
    }

    /// Orders keys as their strings order: pad to 15 digits, then shorter first on a tie.
    fn string_order(self) -> (u64, usize) {
        (self.value() * 10u64.pow((15 - self.digits()) as u32), self.digits())
    }
}

impl fmt::Display for NumberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write(&mut [0; 16]))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Agent {
    gate: Option<Arc<Gate>>,
    /// How long a call waits for pushed caller context (SPEC §12); 0 is no wait.
    context_wait_ms: u32,
}

/// The longest `context_wait_ms` (SPEC §3).
pub const MAX_CONTEXT_WAIT_MS: u32 = 5_000;

const BAD_CONTEXT_WAIT: &str = "must be 0 to 5000";

/// A number with neither an agent nor a gate is kept (it resolves to no gate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NumberEntry {
    /// Shares the agent's `Arc<str>` when the agent is in the table.
    agent_id: Option<Arc<str>>,
    gate: Option<Arc<Gate>>,
}

/// The validated, immutable routing table. Changes make a new table (`with_*`); the two maps
/// are shared between versions, so an agent change does not copy the numbers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    agents: Arc<FxHashMap<Arc<str>, Agent>>,
    numbers: Arc<FxHashMap<NumberKey, NumberEntry>>,
    /// Named check sets (SPEC §11), sorted by name.
    check_sets: Arc<std::collections::BTreeMap<Arc<str>, Arc<[Check]>>>,
}

impl RouteTable {
    pub fn empty() -> RouteTable {
        RouteTable::default()
    }

    /// Parses and validates a routes file, reporting every problem in file order: duplicate
    /// keys, unknown fields, values of the wrong type and invalid values alike. Only broken JSON
    /// syntax stops the read (after the problems found before it).
    pub fn parse(bytes: &[u8], opts: &ValidateOptions) -> Result<RouteTable, RoutesError> {
        file::parse(bytes, opts)
    }

    /// The gate for a call to `to` (Twilio's raw `To`): the number's own gate, else its agent's,
    /// else none. Anything not in E.164 form (`sip:`, `client:`) has no gate. O(1), no allocation.
    pub fn resolve(&self, to: &str) -> Resolution<'_> {
        let Some(entry) = NumberKey::parse(to).and_then(|key| self.numbers.get(&key)) else {
            return Resolution { gate: None, source: Source::None, agent_id: None };
        };
        let agent_id = entry.agent_id.as_ref();
        if let Some(gate) = &entry.gate {
            return Resolution { gate: Some(gate), source: Source::Number, agent_id };
        }
        match agent_id.and_then(|id| self.agent_gate(id)) {
            Some(gate) => Resolution { gate: Some(gate), source: Source::Agent, agent_id },
            None => Resolution { gate: None, source: Source::None, agent_id },
        }
    }

    /// The named check set.
    pub fn check_set(&self, name: &str) -> Option<&Arc<[Check]>> {
        self.check_sets.get(name)
    }

    /// Whether any gate names the check set.
    pub fn check_set_in_use(&self, name: &str) -> bool {
        self.gates().any(|(_, g)| matches!(g.chain(), Some(Chain::Set(n)) if &**n == name))
    }

    /// Sets or removes a check set; returns whether it was set. The caller checks that a set
    /// removed is not in use.
    pub fn set_check_set(&mut self, name: &str, checks: Option<Arc<[Check]>>) -> bool {
        let sets = Arc::make_mut(&mut self.check_sets);
        match checks {
            Some(checks) => sets.insert(name.into(), checks).is_some(),
            None => sets.remove(name).is_some(),
        }
    }

    /// The checks a gate runs: its own, or its set's (`None` for a webhook gate, or a set
    /// that is not in this table).
    pub fn chain_of<'t>(&'t self, gate: &'t Gate) -> Option<&'t Arc<[Check]>> {
        match gate.chain()? {
            Chain::Checks(checks) => Some(checks),
            Chain::Set(name) => self.check_sets.get(&**name),
        }
    }

    /// Every `credential_id` an `external_api` check names, with where (sorted, by place).
    pub fn credential_ids(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut scan = |place: String, checks: &[Check]| {
            for (i, check) in checks.iter().enumerate() {
                if let checks::CheckKind::ExternalApi(api) = &check.kind {
                    if let Some(id) = &api.credential_id {
                        found.push((format!("{place}[{i}]"), id.to_string()));
                    }
                }
            }
        };
        for (name, checks) in self.check_sets.iter() {
            scan(format!("check_sets.{}", file::PathKey(name)), checks);
        }
        for (place, gate) in self.gates() {
            if let Some(Chain::Checks(checks)) = gate.chain() {
                scan(format!("{place}.checks"), checks);
            }
        }
        found.sort();
        found
    }

    /// Agents in the table, with or without a gate.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Numbers in the table, including those with neither an agent nor a gate.
    pub fn number_count(&self) -> usize {
        self.numbers.len()
    }

    #[cfg(test)]
    /// The table in the routes-file format, keys sorted; `parse` reads it back to an equal
    /// table. For large tables prefer the `Serialize` impl (`serde_json::to_writer`), which
    /// streams instead of building a `Value`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a route table has string keys only")
    }

    /// Every gate in the table, each named by its place in the routes file
    /// (`agents.ID.gate`, `numbers."+N".gate`).
    pub fn gates(&self) -> impl Iterator<Item = (String, &Gate)> + '_ {
        let agents = self.agents.iter().filter_map(|(id, agent)| {
            agent.gate.as_deref().map(|g| (format!("agents.{}.gate", PathKey(id)), g))
        });
        let numbers = self.numbers.iter().filter_map(|(key, entry)| {
            entry.gate.as_deref().map(|g| (format!("numbers.{}.gate", PathKey(&key.to_string())), g))
        });
        agents.chain(numbers)
    }

    /// How long a call for `agent_id` waits for pushed caller context; 0 for an agent not in
    /// the table.
    pub fn agent_context_wait_ms(&self, agent_id: &str) -> u32 {
        self.agents.get(agent_id).map_or(0, |a| a.context_wait_ms)
    }

    pub fn agent_gate(&self, agent_id: &str) -> Option<&Arc<Gate>> {
        self.agents.get(agent_id)?.gate.as_ref()
    }

    /// The number's own gate (not its agent's); `None` also for a number not in E.164 form.
    pub fn number_gate(&self, number: &str) -> Option<&Arc<Gate>> {
        self.numbers.get(&NumberKey::parse(number)?)?.gate.as_ref()
    }

    pub fn number_agent(&self, number: &str) -> Option<&Arc<str>> {
        self.numbers.get(&NumberKey::parse(number)?)?.agent_id.as_ref()
    }

    #[cfg(test)]
    /// A copy with the agent's gate set, or with the agent removed (`None`). The caller has
    /// checked `agent_id` with [`validate_agent_id`] (else the saved file would not load).
    pub fn with_agent_gate(&self, agent_id: &str, gate: Option<Gate>) -> RouteTable {
        let mut next = self.clone();
        next.set_agent_gate(agent_id, gate);
        next
    }

    #[cfg(test)]
    /// A copy with the number's own gate set or removed.
    pub fn with_number_gate(&self, number: &str, gate: Option<Gate>) -> Result<RouteTable, RoutesError> {
        let mut next = self.clone();
        next.set_number_gate(number, gate)?;
        Ok(next)
    }

    #[cfg(test)]
    /// A copy with the number's agent set or removed. The agent need not be in the table.
    pub fn with_number_agent(&self, number: &str, agent_id: Option<&str>) -> Result<RouteTable, RoutesError> {
        let mut next = self.clone();
        next.set_number_agent(number, agent_id)?;
        Ok(next)
    }

    /// Sets the agent's gate, or removes the agent (`None`); returns whether it had a gate.
    /// A map shared with another table is copied once, on the first change: a batch of
    /// changes to one table copies each map at most once.
    pub fn set_agent_gate(&mut self, agent_id: &str, gate: Option<Gate>) -> bool {
        debug_assert!(validate_agent_id(agent_id), "unchecked agent id");
        let had_gate = self.agent_gate(agent_id).is_some();
        match gate {
            None if !had_gate => {}
            None => {
                // The agent stays while it has other settings.
                let agents = Arc::make_mut(&mut self.agents);
                let agent = agents.get_mut(agent_id).expect("it has a gate");
                agent.gate = None;
                if *agent == Agent::default() {
                    agents.remove(agent_id);
                }
            }
            Some(gate) => {
                let gate = Some(Arc::new(gate));
                Arc::make_mut(&mut self.agents).entry(agent_id.into()).or_default().gate = gate;
            }
        }
        had_gate
    }

    /// Sets the agent's `context_wait_ms` (validated by the caller); returns whether it had a
    /// wait. An agent left with no gate and no wait is removed, as a gate removal does.
    pub fn set_agent_context_wait(&mut self, agent_id: &str, wait_ms: u32) -> bool {
        debug_assert!(validate_agent_id(agent_id) && wait_ms <= MAX_CONTEXT_WAIT_MS);
        let had = self.agent_context_wait_ms(agent_id) > 0;
        if !had && wait_ms == 0 {
            return false;
        }
        let agents = Arc::make_mut(&mut self.agents);
        let agent = agents.entry(agent_id.into()).or_default();
        agent.context_wait_ms = wait_ms;
        if *agent == Agent::default() {
            agents.remove(agent_id);
        }
        had
    }

    /// Sets or removes the number's own gate; returns whether it had one.
    pub fn set_number_gate(&mut self, number: &str, gate: Option<Gate>) -> Result<bool, RoutesError> {
        let key = number_key(number)?;
        Ok(self.change_number(key, |entry| std::mem::replace(&mut entry.gate, gate.map(Arc::new)).is_some()))
    }

    /// Sets or removes the number's agent; returns whether it had one. The agent need not be
    /// in the table.
    pub fn set_number_agent(&mut self, number: &str, agent_id: Option<&str>) -> Result<bool, RoutesError> {
        let key = number_key(number)?;
        let agent_id = match agent_id {
            Some(id) if !validate_agent_id(id) => {
                return Err(RoutesError::one(format!(
                    "numbers.{}.agent_id: {NOT_AGENT_ID}",
                    PathKey(number)
                )));
            }
            // Share the agent's id when it is in the table, as `parse` does.
            Some(id) => Some(match self.agents.get_key_value(id) {
                Some((interned, _)) => Arc::clone(interned),
                None => Arc::from(id),
            }),
            None => None,
        };
        Ok(self.change_number(key, |entry| std::mem::replace(&mut entry.agent_id, agent_id).is_some()))
    }

    /// Applies `change` to the number's entry (empty if absent) and drops an entry left empty.
    fn change_number(&mut self, key: NumberKey, change: impl FnOnce(&mut NumberEntry) -> bool) -> bool {
        let old = self.numbers.get(&key);
        let mut entry = old.cloned().unwrap_or_default();
        let had = change(&mut entry);
        let keep = entry.agent_id.is_some() || entry.gate.is_some();
        if keep || old.is_some() {
            let numbers = Arc::make_mut(&mut self.numbers);
            if keep {
                numbers.insert(key, entry);
            } else {
                numbers.remove(&key);
            }
        }
        had
    }
}

fn number_key(number: &str) -> Result<NumberKey, RoutesError> {
    NumberKey::parse(number)
        .ok_or_else(|| RoutesError::one(format!("numbers.{}: {NOT_E164}", PathKey(number))))
}

// A table may hold a million numbers: say how big it is, not what is in it.
impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("agents", &self.agents.len())
            .field("numbers", &self.numbers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: ValidateOptions = ValidateOptions { allow_insecure_gates: false };

    fn gate(url: &str) -> Gate {
        Gate::new(url, None, OnFailure::Accept, &OPTS).unwrap()
    }

    fn table() -> RouteTable {
        RouteTable::empty()
            .with_agent_gate("a1", Some(gate("https://agent.example/gate")))
            .with_agent_gate("a2", Some(gate("https://agent2.example/gate")))
            .with_agent_gate("a2", None)
            .with_number_agent("+447700900123", Some("a1"))
            .unwrap()
            .with_number_agent("+447700900124", Some("a1"))
            .unwrap()
            .with_number_gate("+447700900124", Some(gate("https://number.example/gate")))
            .unwrap()
            .with_number_agent("+447700900125", Some("a2"))
            .unwrap()
            .with_number_gate("+15005550006", Some(gate("https://lonely.example/")))
            .unwrap()
    }

    #[test]
    fn e164() {
        for ok in ["+12", "+447700900123", "+123456789012345", "+01"] {
            assert!(is_e164(ok), "{ok}");
        }
        let bad = ["", "+", "+1", "+1234567890123456", "447700900123", "+44770090012a", "+44 7700"];
        for bad in bad.into_iter().chain(["+４４", "sip:+447700900123@x", "client:alice"]) {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn agent_ids() {
        let long = "a".repeat(128);
        for ok in ["a", "agent_f2b06c0e0bd877e9", "A-b.c~d:e@f!", "...", long.as_str()] {
            assert!(validate_agent_id(ok), "{ok}");
        }
        let too_long = "a".repeat(129);
        for bad in ["", "a b", "a/b", "a?b", "a#b", "a%20", "é", "a\tb", ".", "..", &too_long] {
            assert!(!validate_agent_id(bad), "{bad}");
        }
    }

    #[test]
    fn number_keys_keep_leading_zeros_and_string_order() {
        let key = |s| NumberKey::parse(s).unwrap();
        assert_ne!(key("+012"), key("+12"));
        assert_ne!(key("+001"), key("+01"));
        let mut numbers = ["+999", "+123456789012345", "+12", "+120", "+1200", "+13", "+01", "+001"];
        for n in numbers {
            assert_eq!(key(n).to_string(), n);
        }
        let mut by_key = numbers.map(key);
        by_key.sort_by_key(|k| k.string_order());
        numbers.sort_unstable();
        assert_eq!(by_key.map(|k| k.to_string()), numbers.map(String::from));
    }

    #[test]
    fn resolution_order_number_then_agent_then_none() {
        let t = table();
        let own = t.resolve("+447700900124");
        assert_eq!(own.source, Source::Number);
        assert_eq!(own.gate.unwrap().url(), "https://number.example/gate");
        assert_eq!(own.agent_id.map(|a| &**a), Some("a1"));

        let agent = t.resolve("+447700900123");
        assert_eq!(agent.source, Source::Agent);
        assert_eq!(agent.gate.unwrap().url(), "https://agent.example/gate");
        assert_eq!(agent.agent_id.map(|a| &**a), Some("a1"));

        // The agent has no gate (a2 was removed) and the number has none of its own.
        let none = t.resolve("+447700900125");
        assert_eq!((none.gate, none.source), (None, Source::None));
        assert_eq!(none.agent_id.map(|a| &**a), Some("a2"));

        let lonely = t.resolve("+15005550006");
        assert_eq!((lonely.source, lonely.agent_id), (Source::Number, None));
    }

    #[test]
    fn non_numbers_and_unknown_numbers_resolve_to_none() {
        let t = table();
        let none = Resolution { gate: None, source: Source::None, agent_id: None };
        for to in ["sip:+447700900123@example.com", "client:alice", "", "+", "garbage", "+447700900999"] {
            assert_eq!(t.resolve(to), none, "{to}");
        }
        assert_eq!(RouteTable::empty().resolve("+447700900123"), none);
    }

    #[test]
    fn source_names() {
        let names = [Source::Number, Source::Agent, Source::None].map(Source::as_str);
        assert_eq!(names, ["number", "agent", "none"]);
    }

    #[test]
    fn user_info_is_refused_and_never_echoed() {
        let err =
            Gate::new("https://user:S3CRET@api.example.com/p", None, OnFailure::Accept, &OPTS).unwrap_err();
        assert_eq!(err.field(), "url");
        assert!(!err.to_string().contains("S3CRET"), "{err}");
        assert!(Gate::new("https://user@api.example.com/p", None, OnFailure::Accept, &OPTS).is_err());
    }

    #[test]
    fn gate_display_hides_query_and_userinfo() {
        let g = Gate::new(
            "https://API.example.com:8443/pre%20call?token=S3CRET#frag",
            Some(2000),
            OnFailure::Reject,
            &OPTS,
        )
        .unwrap();
        assert_eq!(g.display(), "https://api.example.com:8443/pre%20call");
        assert!(g.url().contains("S3CRET"));
        for shown in [format!("{g:?}"), format!("{g}"), format!("{:?}", Arc::new(g.clone()))] {
            assert!(!shown.contains("S3CRET"), "{shown}");
        }
        assert_eq!(g.uri().host(), Some("api.example.com"));
        assert_eq!(g.uri().path_and_query().unwrap().as_str(), "/pre%20call?token=S3CRET");
        assert_eq!((g.timeout_ms(), g.on_failure()), (Some(2000), OnFailure::Reject));

        let default_port = gate("https://[::1]:443/x?token=S3CRET");
        assert_eq!(default_port.display(), "https://[::1]/x");
        assert_eq!(gate("https://example.com").display(), "https://example.com/");
    }

    #[test]
    fn gate_errors_name_the_field_and_hide_the_url() {
        let insecure = ValidateOptions { allow_insecure_gates: true };
        let err = |url: &str, opts| Gate::new(url, None, OnFailure::Accept, opts).unwrap_err();
        let cases = [
            (
                err("http://user:S3CRET@example.com/?token=S3CRET", &OPTS),
                "url: must be https:// (or http:// with --allow-insecure-gates)",
            ),
            (
                err("ftp://example.com/?token=S3CRET", &OPTS),
                "url: must be https:// (or http:// with --allow-insecure-gates)",
            ),
            (err("ftp://example.com/?token=S3CRET", &insecure), "url: must be https:// or http://"),
            (err("example.com/?token=S3CRET", &OPTS), "url: not a valid URL (relative URL without a base)"),
            (
                err("https://exa mple.com/?token=S3CRET", &OPTS),
                "url: contains whitespace or control characters",
            ),
            (err(" https://example.com/", &OPTS), "url: contains whitespace or control characters"),
            (err("https://:S3CRET@/x", &OPTS), "url: not a valid URL (empty host)"),
            (
                err("https://example.com:99999/?token=S3CRET", &OPTS),
                "url: not a valid URL (invalid port number)",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
            assert_eq!(e.field(), "url");
            assert!(!format!("{e:?}").contains("S3CRET"));
        }
        assert!(Gate::new("http://localhost:8080/gate", None, OnFailure::Accept, &insecure).is_ok());

        for ms in [99, 30_001, 0] {
            let e = Gate::new("https://example.com/", Some(ms), OnFailure::Accept, &OPTS).unwrap_err();
            assert_eq!(e.to_string(), format!("timeout_ms: must be 100 to 30000 (got {ms})"));
            assert_eq!(e.field(), "timeout_ms");
        }
        for ms in [100, 30_000] {
            assert!(Gate::new("https://example.com/", Some(ms), OnFailure::Accept, &OPTS).is_ok());
        }
        let e = "maybe".parse::<OnFailure>().unwrap_err();
        assert_eq!(
            (e.field(), e.to_string().as_str()),
            ("on_failure", "on_failure: must be \"accept\" or \"reject\"")
        );
        assert_eq!("reject".parse::<OnFailure>().unwrap(), OnFailure::Reject);
        assert!("Reject".parse::<OnFailure>().is_err());
    }

    #[test]
    fn agent_builder_sets_replaces_and_removes() {
        let t = RouteTable::empty().with_agent_gate("a1", Some(gate("https://one.example/")));
        assert_eq!(t.agent_gate("a1").unwrap().url(), "https://one.example/");
        let replaced = t.with_agent_gate("a1", Some(gate("https://two.example/")));
        assert_eq!(replaced.agent_gate("a1").unwrap().url(), "https://two.example/");
        assert_eq!(t.agent_gate("a1").unwrap().url(), "https://one.example/", "old table unchanged");
        assert_eq!(replaced.agent_count(), 1);
        let removed = replaced.with_agent_gate("a1", None);
        assert_eq!((removed.agent_gate("a1"), removed.agent_count()), (None, 0));
        assert_eq!(removed.with_agent_gate("nobody", None), removed);
        assert_eq!(t.agent_gate("nobody"), None);
    }

    #[test]
    fn number_builders_set_remove_and_drop_empty_entries() {
        let t = table();
        assert_eq!(t.number_count(), 4);
        assert_eq!(t.number_gate("+447700900124").unwrap().url(), "https://number.example/gate");
        assert_eq!(t.number_gate("+447700900123"), None, "only the number's own gate");
        assert_eq!(t.number_agent("+447700900123").map(|a| &**a), Some("a1"));
        assert_eq!((t.number_agent("+15005550006"), t.number_agent("sip:x")), (None, None));

        // Removing the gate keeps the agent; removing the agent then drops the entry.
        let t2 = t.with_number_gate("+447700900124", None).unwrap();
        assert_eq!(t2.resolve("+447700900124").source, Source::Agent);
        assert_eq!(t2.number_count(), 4);
        let t3 = t2.with_number_agent("+447700900124", None).unwrap();
        assert_eq!((t3.number_count(), t3.number_agent("+447700900124")), (3, None));
        // Only a gate: removing it drops the entry too.
        let t4 = t3.with_number_gate("+15005550006", None).unwrap();
        assert_eq!(t4.number_count(), 2);
        // Removing what is not there changes nothing.
        assert_eq!(t4.with_number_agent("+447700900999", None).unwrap(), t4);
        assert_eq!(t.number_count(), 4, "old table unchanged");

        // A new number's agent shares the agent's id allocation.
        let t5 = t.with_number_agent("+447700900126", Some("a1")).unwrap();
        let shared = t5.number_agent("+447700900126").unwrap();
        assert!(Arc::ptr_eq(shared, t5.agents.get_key_value("a1").unwrap().0));
        // ...and may name an agent not in the table.
        let t6 = t.with_number_agent("+447700900126", Some("ghost")).unwrap();
        assert_eq!(t6.resolve("+447700900126").agent_id.map(|a| &**a), Some("ghost"));
    }

    #[test]
    fn number_builders_reject_bad_input() {
        let t = table();
        let err = t.with_number_gate("+44 7700", None).unwrap_err();
        assert_eq!(err.to_string(), "numbers.\"+44 7700\": not an E.164 number (+ then 2 to 15 digits)");
        assert!(t.with_number_agent("447700900123", Some("a1")).is_err());
        let err = t.with_number_agent("+447700900123", Some("a/b")).unwrap_err();
        assert_eq!(err.problems, [format!("numbers.\"+447700900123\".agent_id: {NOT_AGENT_ID}")]);
    }

    #[test]
    fn an_agents_context_wait_outlives_its_gate_and_goes_with_the_last_setting() {
        let mut t = table();
        assert_eq!(t.agent_context_wait_ms("a1"), 0);
        assert!(!t.set_agent_context_wait("a1", 1500));
        assert_eq!(t.agent_context_wait_ms("a1"), 1500);
        assert!(t.set_agent_gate("a1", None));
        assert_eq!((t.agent_count(), t.agent_context_wait_ms("a1")), (1, 1500), "the wait stays");
        assert!(t.set_agent_context_wait("a1", 0));
        assert_eq!(t.agent_count(), 0, "nothing left: the agent goes");
        assert!(!t.set_agent_context_wait("ghost", 0));
        assert_eq!(t.agent_count(), 0);
    }

    #[test]
    fn routes_error_prints_one_problem_per_line() {
        let err = RoutesError { problems: vec!["one".into(), "two".into()] };
        assert_eq!(err.to_string(), "one\ntwo");
        assert_eq!(format!("{:?}", table()), "RouteTable { agents: 1, numbers: 4 }");
    }
}
