//! The routes-file format: raw serde types read in one streaming pass (a repeated key is caught
//! where it appears) and validated into a [`RouteTable`]; and the sorted serialisation back.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::{
    validate_agent_id, Agent, Gate, GateError, NumberEntry, NumberKey, OnFailure, RouteTable, RoutesError,
    ValidateOptions, NOT_AGENT_ID, NOT_E164,
};

/// A gate as written in the routes file (and in an admin API body), before validation. It
/// borrows from the input. No `Debug`: the URL may hold a secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a gate object {\"url\": ...}")]
pub struct GateSpec<'a> {
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Kept as a string so that a bad value is a reported problem, not a parse failure.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub on_failure: Option<Cow<'a, str>>,
}

impl GateSpec<'_> {
    /// The validated gate, or every problem with it (each naming its field).
    pub fn validate(&self, opts: &ValidateOptions) -> Result<Gate, Vec<GateError>> {
        let url = super::check_url(&self.url, opts);
        let timeout_ms = self.timeout_ms.map(super::check_timeout).transpose();
        let on_failure = self.on_failure.as_deref().map(str::parse::<OnFailure>).transpose();
        match (url, timeout_ms, on_failure) {
            (Ok((uri, display)), Ok(timeout_ms), Ok(on_failure)) => Ok(Gate {
                url: self.url.as_ref().into(),
                uri,
                display,
                timeout_ms,
                on_failure: on_failure.unwrap_or_default(),
            }),
            (url, timeout_ms, on_failure) => {
                Err([url.err(), timeout_ms.err(), on_failure.err()].into_iter().flatten().collect())
            }
        }
    }
}

#[cfg(test)]
impl TryFrom<(GateSpec<'_>, &ValidateOptions)> for Gate {
    type Error = GateError;

    /// The first problem only; [`GateSpec::validate`] gives them all.
    fn try_from((spec, opts): (GateSpec<'_>, &ValidateOptions)) -> Result<Gate, GateError> {
        spec.validate(opts).map_err(|mut problems| problems.swap_remove(0))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an agent object {\"gate\": ...}")]
struct RawAgent<'a> {
    #[serde(default, borrow)]
    gate: Option<GateSpec<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a number object {\"agent_id\": ..., \"gate\": ...}")]
struct RawNumber<'a> {
    #[serde(default, borrow, deserialize_with = "opt_str")]
    agent_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    gate: Option<GateSpec<'a>>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum TopField {
    Agents,
    Numbers,
}

/// A string borrowed from the input when it has no escapes (nearly always), so that reading a
/// million numbers allocates nothing per key.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str<'de>, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Str<'de>>::deserialize(d)?.map(|s| s.0))
}

/// At most this many problems are listed; the rest are counted in a last line.
const MAX_PROBLEMS: usize = 100;

pub(super) fn parse(bytes: &[u8], opts: &ValidateOptions) -> Result<RouteTable, RoutesError> {
    // Editors on Windows may save a byte-order mark; it is not JSON but is not a typo either.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Err(RoutesError::one("file is empty"));
    }
    let mut loader = Loader {
        opts,
        agents: FxHashMap::default(),
        numbers: FxHashMap::default(),
        ids: FxHashSet::default(),
        bad_agent_keys: FxHashSet::default(),
        bad_number_keys: FxHashSet::default(),
        problems: Vec::new(),
        unlisted: 0,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    FileSeed(&mut loader)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| RoutesError::one(structure_problem(&e)))?;
    if loader.unlisted > 0 {
        let more = format!("... and {} more problems", loader.unlisted);
        loader.problems.push(more);
    }
    if !loader.problems.is_empty() {
        return Err(RoutesError { problems: loader.problems });
    }
    Ok(RouteTable { agents: Arc::new(loader.agents), numbers: Arc::new(loader.numbers) })
}

/// `line L column C: message`, with any string value the message quotes left out: a gate URL
/// written where an object belongs must not print its token.
fn structure_problem(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(at.as_str()).unwrap_or(&full);
    let msg = ["invalid type: string ", "invalid value: string "]
        .iter()
        .find_map(|prefix| {
            let rest = msg.strip_prefix(prefix)?;
            let expected = rest.rfind(", expected ")?;
            Some(format!("{}{}", prefix.trim_end(), &rest[expected..]))
        })
        .unwrap_or_else(|| msg.to_owned());
    if e.line() == 0 {
        return msg;
    }
    format!("line {} column {}: {msg}", e.line(), e.column())
}

/// The state of one streaming parse: the tables being built and the problems found so far.
struct Loader<'o> {
    opts: &'o ValidateOptions,
    agents: FxHashMap<Arc<str>, Agent>,
    numbers: FxHashMap<NumberKey, NumberEntry>,
    /// Every agent id seen, so that all mentions of an id share one allocation.
    ids: FxHashSet<Arc<str>>,
    /// Invalid keys are not in the tables, but repeating one is still a duplicate key.
    bad_agent_keys: FxHashSet<Box<str>>,
    bad_number_keys: FxHashSet<Box<str>>,
    problems: Vec<String>,
    unlisted: usize,
}

impl Loader<'_> {
    fn problem(&mut self, line: fmt::Arguments<'_>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(line.to_string());
        } else {
            self.unlisted += 1;
        }
    }

    fn intern(&mut self, id: &str) -> Arc<str> {
        if let Some(id) = self.ids.get(id) {
            return Arc::clone(id);
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(Arc::clone(&id));
        id
    }

    /// The validated gate, or `None` with each problem recorded under `section.key.gate`.
    fn gate(&mut self, spec: GateSpec<'_>, section: &str, key: &str) -> Option<Arc<Gate>> {
        match spec.validate(self.opts) {
            Ok(gate) => Some(Arc::new(gate)),
            Err(problems) => {
                for p in problems {
                    self.problem(format_args!("{section}.{}.gate.{p}", PathKey(key)));
                }
                None
            }
        }
    }
}

fn duplicate_key<E: de::Error>(key: &str) -> E {
    E::custom(format_args!("duplicate key {}", Quoted(key)))
}

/// The whole file: an object with optional `agents` and `numbers`.
struct FileSeed<'l, 'o>(&'l mut Loader<'o>);

impl<'de> DeserializeSeed<'de> for FileSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a routes object {\"agents\": {...}, \"numbers\": {...}}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut agents, mut numbers) = (false, false);
        while let Some(field) = map.next_key::<TopField>()? {
            let seen = match field {
                TopField::Agents => std::mem::replace(&mut agents, true),
                TopField::Numbers => std::mem::replace(&mut numbers, true),
            };
            if seen {
                let name = if matches!(field, TopField::Agents) { "agents" } else { "numbers" };
                return Err(de::Error::duplicate_field(name));
            }
            match field {
                TopField::Agents => map.next_value_seed(AgentsSeed(&mut *self.0))?,
                TopField::Numbers => map.next_value_seed(NumbersSeed(&mut *self.0))?,
            }
        }
        Ok(())
    }
}

/// `agents`: agent id → agent, each entry validated as it is read.
struct AgentsSeed<'l, 'o>(&'l mut Loader<'o>);

impl<'de> DeserializeSeed<'de> for AgentsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AgentsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of agent ids to agents")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let l = self.0;
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let valid = validate_agent_id(&key);
            let repeated = if valid {
                l.agents.contains_key(&*key)
            } else {
                !l.bad_agent_keys.insert(key.as_ref().into())
            };
            if repeated {
                return Err(duplicate_key(&key));
            }
            let raw: RawAgent<'de> = map.next_value()?;
            if !valid {
                l.problem(format_args!("agents.{}: {NOT_AGENT_ID}", PathKey(&key)));
            }
            let gate = raw.gate.and_then(|spec| l.gate(spec, "agents", &key));
            if valid {
                let id = l.intern(&key);
                l.agents.insert(id, Agent { gate });
            }
        }
        Ok(())
    }
}

/// `numbers`: E.164 number → number entry, each entry validated as it is read.
struct NumbersSeed<'l, 'o>(&'l mut Loader<'o>);

impl<'de> DeserializeSeed<'de> for NumbersSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NumbersSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of E.164 numbers to number entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let l = self.0;
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let number = NumberKey::parse(&key);
            let repeated = match number {
                Some(number) => l.numbers.contains_key(&number),
                None => !l.bad_number_keys.insert(key.as_ref().into()),
            };
            if repeated {
                return Err(duplicate_key(&key));
            }
            let raw: RawNumber<'de> = map.next_value()?;
            if number.is_none() {
                l.problem(format_args!("numbers.{}: {NOT_E164}", PathKey(&key)));
            }
            let agent_id = match raw.agent_id {
                Some(id) if validate_agent_id(&id) => Some(l.intern(&id)),
                Some(_) => {
                    l.problem(format_args!("numbers.{}.agent_id: {NOT_AGENT_ID}", PathKey(&key)));
                    None
                }
                None => None,
            };
            let gate = raw.gate.and_then(|spec| l.gate(spec, "numbers", &key));
            if let Some(number) = number {
                l.numbers.insert(number, NumberEntry { agent_id, gate });
            }
        }
        Ok(())
    }
}

/// A key in a problem's path: bare when it is a plain word (`agents.a1`), else quoted
/// (`numbers."+4477"`), and cut short when long so that a problem stays one readable line.
pub(super) struct PathKey<'a>(pub(super) &'a str);

impl fmt::Display for PathKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.0.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && self.0.len() <= 64
            && self.0.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if plain {
            f.write_str(self.0)
        } else {
            Quoted(self.0).fmt(f)
        }
    }
}

/// A JSON-style quoted string, cut to 64 characters.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for (i, c) in self.0.chars().enumerate() {
            if i == 64 {
                return f.write_str("...\"");
            }
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

// Serialisation streams in sorted key order, so that saving a large table builds no `Value`
// and the file diffs cleanly.
impl Serialize for RouteTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut top = s.serialize_map(Some(2))?;
        top.serialize_entry("agents", &SortedAgents(&self.agents))?;
        top.serialize_entry("numbers", &SortedNumbers(&self.numbers))?;
        top.end()
    }
}

struct SortedAgents<'a>(&'a FxHashMap<Arc<str>, Agent>);

impl Serialize for SortedAgents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut agents: Vec<_> = self.0.iter().collect();
        agents.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut map = s.serialize_map(Some(agents.len()))?;
        for (id, agent) in agents {
            map.serialize_entry(&**id, agent)?;
        }
        map.end()
    }
}

struct SortedNumbers<'a>(&'a FxHashMap<NumberKey, NumberEntry>);

impl Serialize for SortedNumbers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The order key is computed once per number, not once per comparison.
        let mut numbers: Vec<_> = self.0.iter().map(|(n, e)| (n.string_order(), n, e)).collect();
        numbers.sort_unstable_by_key(|(order, _, _)| *order);
        let numbers = numbers.into_iter().map(|(_, n, e)| (n, e));
        let mut map = s.serialize_map(Some(self.0.len()))?;
        let mut buf = [0; 16];
        for (number, entry) in numbers {
            map.serialize_entry(number.write(&mut buf), entry)?;
        }
        map.end()
    }
}

impl Serialize for Agent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(usize::from(self.gate.is_some())))?;
        if let Some(gate) = &self.gate {
            map.serialize_entry("gate", &**gate)?;
        }
        map.end()
    }
}

impl Serialize for NumberEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = usize::from(self.agent_id.is_some()) + usize::from(self.gate.is_some());
        let mut map = s.serialize_map(Some(len))?;
        if let Some(id) = &self.agent_id {
            map.serialize_entry("agent_id", &**id)?;
        }
        if let Some(gate) = &self.gate {
            map.serialize_entry("gate", &**gate)?;
        }
        map.end()
    }
}

/// The routes-file form, secrets and all. `on_failure` is written only when not the default.
impl Serialize for Gate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reject = self.on_failure == OnFailure::Reject;
        let len = 1 + usize::from(self.timeout_ms.is_some()) + usize::from(reject);
        let mut map = s.serialize_map(Some(len))?;
        map.serialize_entry("url", &*self.url)?;
        if let Some(ms) = self.timeout_ms {
            map.serialize_entry("timeout_ms", &ms)?;
        }
        if reject {
            map.serialize_entry("on_failure", OnFailure::Reject.as_str())?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Source;
    use super::*;

    const STRICT: ValidateOptions = ValidateOptions { allow_insecure_gates: false };
    const INSECURE: ValidateOptions = ValidateOptions { allow_insecure_gates: true };

    fn problems(json: &str, opts: &ValidateOptions) -> Vec<String> {
        let err = RouteTable::parse(json.as_bytes(), opts).unwrap_err();
        assert!(!err.problems.is_empty());
        err.problems
    }

    fn problem(json: &str) -> String {
        let mut all = problems(json, &STRICT);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    const GATE: &str = r#"{"url": "https://g.example/"}"#;

    #[test]
    fn example_fixture_parses_and_resolves() {
        let t = RouteTable::parse(include_bytes!("../../fixtures/routes/example.json"), &STRICT).unwrap();
        assert_eq!((t.agent_count(), t.number_count()), (1, 3));
        let r = t.resolve("+447700900123");
        assert_eq!(r.source, Source::Agent);
        assert_eq!(r.gate.unwrap().url(), "https://api.example.com/precall?token=S3CRET");
        let r = t.resolve("+447700900124");
        assert_eq!(r.source, Source::Number);
        let gate = r.gate.unwrap();
        assert_eq!((gate.timeout_ms(), gate.on_failure()), (Some(2000), OnFailure::Reject));
        assert_eq!(t.resolve("+15005550006").source, Source::Agent);
        // One allocation per agent id, shared by the agent and its numbers.
        let (id, _) = t.agents.get_key_value("agent_f2b06c0e0bd877e9").unwrap();
        assert!(Arc::ptr_eq(id, r.agent_id.unwrap()));
    }

    #[test]
    fn invalid_fixtures_fail_with_a_helpful_line() {
        let cases: [(&[u8], &str); 6] = [
            (
                include_bytes!("../../fixtures/routes/invalid-duplicate-key.json"),
                "duplicate key \"+447700900123\"",
            ),
            (include_bytes!("../../fixtures/routes/invalid-empty.json"), "file is empty"),
            (include_bytes!("../../fixtures/routes/invalid-unknown-field.json"), "unknown field `timeout`"),
            (
                include_bytes!("../../fixtures/routes/invalid-number.json"),
                "numbers.\"+4477009001234567\": not an E.164",
            ),
            (
                include_bytes!("../../fixtures/routes/invalid-http-gate.json"),
                "agents.agent_local.gate.url: must be https://",
            ),
            (
                include_bytes!("../../fixtures/routes/invalid-timeout.json"),
                "numbers.\"+447700900124\".gate.timeout_ms: must be 100 to 30000 (got 50)",
            ),
        ];
        for (bytes, want) in cases {
            let err = RouteTable::parse(bytes, &STRICT).unwrap_err();
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
        let http = include_bytes!("../../fixtures/routes/invalid-http-gate.json");
        assert!(RouteTable::parse(http, &INSECURE).is_ok());
    }

    #[test]
    fn empty_and_whitespace_files_are_errors() {
        for empty in ["", " ", "\n\t \r\n", "\u{feff}"] {
            assert_eq!(problem(empty), "file is empty");
        }
        assert_eq!(RouteTable::parse(b"{}", &STRICT).unwrap(), RouteTable::empty());
        let t = RouteTable::parse(b"\xEF\xBB\xBF{\"agents\": {}, \"numbers\": {}}", &STRICT);
        assert_eq!(t.unwrap(), RouteTable::empty());
    }

    #[test]
    fn duplicate_keys_are_errors_with_their_position() {
        let json = "{\"agents\": {\n  \"a1\": {},\n  \"a1\": {}\n}}";
        assert_eq!(problem(json), "line 3 column 6: duplicate key \"a1\"");
        let json = "{\"numbers\": {\n  \"+447700900123\": {},\n  \"+447700900123\": {}}}";
        assert_eq!(problem(json), "line 3 column 17: duplicate key \"+447700900123\"");
        // Escapes make a different spelling of the same key.
        let json = r#"{"numbers": {"+447700900123": {}, "\u002b447700900123": {}}}"#;
        assert!(problem(json).ends_with("duplicate key \"+447700900123\""));
        // Invalid keys are not in the table, but repeating one is still caught.
        assert!(problem(r#"{"agents": {"a b": {}, "a b": {}}}"#).ends_with("duplicate key \"a b\""));
        assert!(problem(r#"{"numbers": {"+1": {}, "+1": {}}}"#).ends_with("duplicate key \"+1\""));
        assert!(problem(r#"{"agents": {}, "agents": {}}"#).ends_with("duplicate field `agents`"));
    }

    #[test]
    fn duplicate_fields_inside_entries_are_errors() {
        let json = r#"{"numbers": {"+447700900123": {"agent_id": "a", "agent_id": "b"}}}"#;
        assert!(problem(json).ends_with("duplicate field `agent_id`"), "{}", problem(json));
        let json = r#"{"agents": {"a": {"gate": {"url": "https://x/", "url": "https://y/"}}}}"#;
        assert!(problem(json).ends_with("duplicate field `url`"));
        let json = format!(r#"{{"agents": {{"a": {{"gate": {GATE}, "gate": {GATE}}}}}}}"#);
        assert!(problem(&json).ends_with("duplicate field `gate`"));
    }

    #[test]
    fn unknown_fields_are_errors_everywhere() {
        let cases = [
            (r#"{"agent": {}}"#, "line 1 column 8: unknown field `agent`, expected `agents` or `numbers`"),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout": 5}}}}"#,
                "unknown field `timeout`",
            ),
            (r#"{"agents": {"a": {"gates": {}}}}"#, "unknown field `gates`"),
            (r#"{"numbers": {"+447700900123": {"agent": "a"}}}"#, "unknown field `agent`"),
        ];
        for (json, want) in cases {
            assert!(problem(json).contains(want), "{} lacks {want}", problem(json));
        }
    }

    #[test]
    fn structure_errors_stop_at_the_first() {
        let cases = [
            ("[]", "line 1 column 0: invalid type: sequence, expected a routes object"),
            ("null", "line 1 column 4: invalid type: null, expected a routes object"),
            (r#"{"agents": null}"#, "invalid type: null, expected an object of agent ids"),
            (r#"{"numbers": {"+447700900123": "a1"}}"#, "invalid type: string, expected a number object"),
            (r#"{"agents": {"a": {"gate": {}}}}"#, "missing field `url`"),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout_ms": "5"}}}}"#,
                "invalid type: string, expected u64",
            ),
            (r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout_ms": -5}}}}"#, "expected u64"),
            ("{} {}", "line 1 column 4: trailing characters"),
            ("{\"agents\": {", "line 1 column 12: EOF while parsing an object"),
        ];
        for (json, want) in cases {
            assert!(problem(json).contains(want), "{} lacks {want}", problem(json));
        }
    }

    #[test]
    fn bad_numbers_are_reported() {
        for bad in ["+", "+1", "+1234567890123456", "+44770090012a", "447700900123", "+44 7700900"] {
            let json = format!(r#"{{"numbers": {{"{bad}": {{"agent_id": "a1"}}}}}}"#);
            assert_eq!(problem(&json), format!("numbers.\"{bad}\": {NOT_E164}"));
        }
        let ok = r#"{"numbers": {"+12": {}, "+123456789012345": {}, "+012": {}, "+12 ": {}}}"#;
        assert_eq!(problems(ok, &STRICT), [format!("numbers.\"+12 \": {NOT_E164}")]);
    }

    #[test]
    fn bad_agent_ids_are_reported() {
        let json = r#"{"agents": {"a/b": {}}, "numbers": {"+447700900123": {"agent_id": ""}}}"#;
        let want = [
            format!("agents.\"a/b\": {NOT_AGENT_ID}"),
            format!("numbers.\"+447700900123\".agent_id: {NOT_AGENT_ID}"),
        ];
        assert_eq!(problems(json, &STRICT), want);
    }

    #[test]
    fn gate_schemes_follow_the_insecure_flag() {
        let http = r#"{"agents": {"a1": {"gate": {"url": "http://localhost:8080/gate"}}}}"#;
        let want = "agents.a1.gate.url: must be https:// (or http:// with --allow-insecure-gates)";
        assert_eq!(problem(http), want);
        let t = RouteTable::parse(http.as_bytes(), &INSECURE).unwrap();
        assert_eq!(t.agent_gate("a1").unwrap().display(), "http://localhost:8080/gate");

        let ftp = r#"{"agents": {"a1": {"gate": {"url": "ftp://files.example/gate"}}}}"#;
        assert_eq!(problem(ftp), want);
        assert_eq!(problems(ftp, &INSECURE), ["agents.a1.gate.url: must be https:// or http://"]);
    }

    #[test]
    fn timeouts_and_failure_policies_are_checked() {
        let gate = |fields: &str| {
            format!(r#"{{"numbers": {{"+447700900123": {{"gate": {{"url": "https://x/", {fields}}}}}}}}}"#)
        };
        let at = "numbers.\"+447700900123\".gate";
        for ms in [99, 30_001, 1u64 << 40] {
            let json = gate(&format!("\"timeout_ms\": {ms}"));
            assert_eq!(problem(&json), format!("{at}.timeout_ms: must be 100 to 30000 (got {ms})"));
        }
        let json = gate(r#""on_failure": "maybe""#);
        assert_eq!(problem(&json), format!("{at}.on_failure: must be \"accept\" or \"reject\""));
        let json = gate(r#""timeout_ms": 100, "on_failure": "accept""#);
        let t = RouteTable::parse(json.as_bytes(), &STRICT).unwrap();
        let g = t.number_gate("+447700900123").unwrap();
        assert_eq!((g.timeout_ms(), g.on_failure()), (Some(100), OnFailure::Accept));
    }

    #[test]
    fn every_semantic_problem_is_reported_in_file_order() {
        let json = r#"{
          "agents": {
            "ok": {"gate": {"url": "https://x/"}},
            "bad id": {"gate": {"url": "http://x/?token=S3CRET", "timeout_ms": 99, "on_failure": "maybe"}}
          },
          "numbers": {
            "+1": {"agent_id": "ok"},
            "+447700900123": {"agent_id": "a?b", "gate": {"url": "ftp://x/"}}
          }
        }"#;
        let want = [
            format!("agents.\"bad id\": {NOT_AGENT_ID}"),
            "agents.\"bad id\".gate.url: must be https:// (or http:// with --allow-insecure-gates)".into(),
            "agents.\"bad id\".gate.timeout_ms: must be 100 to 30000 (got 99)".into(),
            "agents.\"bad id\".gate.on_failure: must be \"accept\" or \"reject\"".into(),
            format!("numbers.\"+1\": {NOT_E164}"),
            format!("numbers.\"+447700900123\".agent_id: {NOT_AGENT_ID}"),
            "numbers.\"+447700900123\".gate.url: must be https:// (or http:// with --allow-insecure-gates)"
                .into(),
        ];
        let err = RouteTable::parse(json.as_bytes(), &STRICT).unwrap_err();
        assert_eq!(err.problems, want);
        assert_eq!(err.to_string(), want.join("\n"));
    }

    #[test]
    fn problems_beyond_the_limit_are_counted() {
        let numbers: Vec<String> = (0..150).map(|i| format!("\"+1{i}x\": {{}}")).collect();
        let json = format!("{{\"numbers\": {{{}}}}}", numbers.join(","));
        let all = problems(&json, &STRICT);
        assert_eq!(all.len(), MAX_PROBLEMS + 1);
        assert_eq!(all[MAX_PROBLEMS], "... and 50 more problems");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let cases = [
            r#"{"agents": {"a": {"gate": {"url": "http://x/p?token=S3CRET"}}}}"#,
            r#"{"agents": {"a": {"gate": {"url": "https://user:S3CRET@x/p", "timeout_ms": 1}}}}"#,
            r#"{"agents": {"a": {"gate": {"url": "https://user:S3CRET@x:99999/p"}}}}"#,
            r#"{"agents": {"a": {"gate": {"url": "https://x/p?token=S3CRET", "on_failure": 1}}}}"#,
            r#"{"agents": {"a": {"gate": "https://x/p?token=S3CRET"}}}"#,
            r#"{"agents": {"a": {"gate": {"url": "https://x/p?token=S3CRET", "timeout_ms": "S3CRET"}}}}"#,
        ];
        for json in cases {
            let err = RouteTable::parse(json.as_bytes(), &STRICT).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains("S3CRET"), "{shown}");
            }
        }
        let t = RouteTable::parse(include_bytes!("../../fixtures/routes/example.json"), &STRICT);
        let t = t.unwrap();
        let shown = format!("{t:?} {:?}", t.resolve("+447700900123"));
        assert!(!shown.contains("S3CRET") && shown.contains("https://api.example.com/precall"));
    }

    #[test]
    fn to_json_round_trips_with_sorted_keys() {
        let example = include_bytes!("../../fixtures/routes/example.json");
        let t = RouteTable::parse(example, &STRICT).unwrap();
        let value = t.to_json();
        let again = RouteTable::parse(value.to_string().as_bytes(), &STRICT).unwrap();
        assert_eq!(again, t);
        assert_eq!(value["numbers"]["+447700900124"]["gate"]["on_failure"], "reject");

        // Sorted by the key strings (not the packed numbers), agents and numbers alike.
        let json = r#"{"agents": {"b": {}, "a": {"gate": {"url": "https://x/"}}},
            "numbers": {"+13": {}, "+120": {"agent_id": "zz"}, "+12": {}, "+01": {}}}"#;
        let t = RouteTable::parse(json.as_bytes(), &STRICT).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        let want = r#"{"agents":{"a":{"gate":{"url":"https://x/"}},"b":{}},"numbers":{"+01":{},"+12":{},"+120":{"agent_id":"zz"},"+13":{}}}"#;
        assert_eq!(text, want);
        assert_eq!(RouteTable::parse(text.as_bytes(), &STRICT).unwrap(), t);
        assert_eq!(RouteTable::empty().to_json(), serde_json::json!({"agents": {}, "numbers": {}}));
    }

    #[test]
    fn keys_and_values_borrow_from_the_input() {
        let Str(plain) = serde_json::from_str::<Str>(r#""+447700900123""#).unwrap();
        assert!(matches!(plain, Cow::Borrowed(_)));
        let Str(escaped) = serde_json::from_str::<Str>(r#""\u002b447700900123""#).unwrap();
        assert_eq!(escaped, "+447700900123");
        let raw: RawNumber = serde_json::from_str(
            r#"{"agent_id": "a1", "gate": {"url": "https://x/", "on_failure": "reject"}}"#,
        )
        .unwrap();
        assert!(matches!(raw.agent_id, Some(Cow::Borrowed("a1"))));
        let spec = raw.gate.unwrap();
        assert!(matches!((&spec.url, &spec.on_failure), (Cow::Borrowed(_), Some(Cow::Borrowed(_)))));
    }

    #[test]
    fn gate_spec_converts_with_try_from() {
        let spec: GateSpec = serde_json::from_str(r#"{"url": "ftp://x/", "timeout_ms": 5}"#).unwrap();
        let all = spec.validate(&STRICT).unwrap_err();
        assert_eq!(all.iter().map(GateError::field).collect::<Vec<_>>(), ["url", "timeout_ms"]);
        assert_eq!(Gate::try_from((spec, &STRICT)).unwrap_err().field(), "url");
        let spec: GateSpec = serde_json::from_str(r#"{"url": "https://x/"}"#).unwrap();
        let gate = Gate::try_from((spec, &STRICT)).unwrap();
        assert_eq!(gate, Gate::new("https://x/", None, OnFailure::Accept, &STRICT).unwrap());
    }
}
