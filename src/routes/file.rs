//! The routes-file format: raw serde types read in one streaming pass (a repeated key is caught
//! where it appears) and validated into a [`RouteTable`]; and the sorted serialisation back.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::shape::{Fields, Name, Object, Scalar};
use super::{
    validate_agent_id, Agent, Chain, Check, Gate, GateError, Mode, NumberEntry, NumberKey, OnFailure,
    RouteTable, RoutesError, ValidateOptions, BAD_CONTEXT_WAIT, MAX_CONTEXT_WAIT_MS, NOT_AGENT_ID, NOT_E164,
};

/// A gate as written in the routes file (and in an admin API body), before validation: one of
/// `url`, `checks` or `check_set`. It borrows from the input. No `Debug`: the URL may hold a
/// secret.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a gate object {\"url\": ...}")]
pub struct GateSpec<'a> {
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub url: Option<Cow<'a, str>>,
    #[serde(default)]
    pub checks: Option<serde_json::Value>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub check_set: Option<Cow<'a, str>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Kept as a string so that a bad value is a reported problem, not a parse failure.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub on_failure: Option<Cow<'a, str>>,
    /// `enforce` or `shadow`, kept as a string like `on_failure`.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub mode: Option<Cow<'a, str>>,
}

impl GateSpec<'_> {
    /// The validated gate, or every problem with it (each naming its field). A `check_set`
    /// is checked for its name only: whether the set exists is the table's business.
    pub fn validate(&self, opts: &ValidateOptions) -> Result<Gate, Vec<GateError>> {
        let mut problems = Vec::new();
        let timeout_ms = self.timeout_ms.map(super::check_timeout).transpose().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let on_failure =
            self.on_failure.as_deref().map(str::parse::<OnFailure>).transpose().unwrap_or_else(|e| {
                problems.push(e);
                None
            });
        let on_failure = on_failure.unwrap_or_default();
        let mode = self.mode.as_deref().map(str::parse::<Mode>).transpose().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let mode = mode.unwrap_or_default();
        let gate = match (&self.url, &self.checks, &self.check_set) {
            (Some(url), None, None) => match super::check_url(url, opts) {
                Ok((uri, display, origin)) => Some(Gate {
                    url: url.as_ref().into(),
                    uri,
                    display,
                    timeout_ms,
                    on_failure,
                    mode,
                    origin,
                    chain: None,
                }),
                Err(e) => {
                    problems.insert(0, e);
                    None
                }
            },
            (None, Some(checks), None) => {
                let mut lines = Vec::new();
                let checks = super::checks::parse_checks(checks, "checks", opts, &mut lines);
                problems.extend(lines.into_iter().map(GateError::Check));
                checks.map(|c| Gate::chained(Chain::Checks(c.into()), timeout_ms, on_failure, mode))
            }
            (None, None, Some(name)) => {
                if super::validate_agent_id(name) {
                    Some(Gate::chained(Chain::Set(Arc::from(name.as_ref())), timeout_ms, on_failure, mode))
                } else {
                    problems.push(GateError::CheckSet("not a valid check set name"));
                    None
                }
            }
            _ => {
                problems.insert(0, GateError::Kind);
                None
            }
        };
        match gate {
            Some(gate) if problems.is_empty() => Ok(gate),
            _ => Err(problems),
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
    let mut loader = Loader::new(opts);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Only broken syntax stops the read; every other problem is recorded and the read goes on.
    let read = Object(FileFields { l: &mut loader, agents: false, numbers: false, check_sets: false });
    if let Err(e) = read.deserialize(&mut de).and_then(|_| de.end()) {
        loader.problem(format_args!("{}", structure_problem(&e)));
    }
    for (at, name) in std::mem::take(&mut loader.set_refs) {
        if !loader.check_sets.contains_key(&*name) {
            loader.problem(format_args!("{at}.gate.check_set: no check set named {}", Name(&name)));
        }
    }
    if loader.unlisted > 0 {
        let more = format!("... and {} more problems", loader.unlisted);
        loader.problems.push(more);
    }
    if !loader.problems.is_empty() {
        return Err(RoutesError { problems: loader.problems });
    }
    Ok(RouteTable {
        agents: Arc::new(loader.agents),
        numbers: Arc::new(loader.numbers),
        check_sets: Arc::new(loader.check_sets),
    })
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
    check_sets: std::collections::BTreeMap<Arc<str>, Arc<[Check]>>,
    /// Gates naming a check set (where, which): checked once the whole file is read.
    set_refs: Vec<(String, Arc<str>)>,
}

impl<'o> Loader<'o> {
    fn new(opts: &'o ValidateOptions) -> Loader<'o> {
        Loader {
            opts,
            agents: FxHashMap::default(),
            numbers: FxHashMap::default(),
            ids: FxHashSet::default(),
            bad_agent_keys: FxHashSet::default(),
            bad_number_keys: FxHashSet::default(),
            problems: Vec::new(),
            unlisted: 0,
            check_sets: Default::default(),
            set_refs: Vec::new(),
        }
    }

    fn problem(&mut self, line: fmt::Arguments<'_>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(line.to_string());
        } else {
            self.unlisted += 1;
        }
    }

    /// The top-level `check_sets`: name to an array of checks.
    fn check_sets_from(&mut self, sets: &serde_json::Value) {
        let Some(sets) = sets.as_object() else {
            let kind = if sets.is_array() { "array" } else { "a value other than an object" };
            self.problem(format_args!(
                "check_sets: invalid type: {kind}, expected an object of names to checks"
            ));
            return;
        };
        for (name, checks) in sets {
            let at = Entry("check_sets", name);
            if !validate_agent_id(name) {
                self.problem(format_args!("{at}: not a valid check set name (as an agent id)"));
                continue;
            }
            let mut lines = Vec::new();
            let parsed = super::checks::parse_checks(checks, &at.to_string(), self.opts, &mut lines);
            for line in lines {
                self.problem(format_args!("{line}"));
            }
            if let Some(parsed) = parsed {
                self.check_sets.insert(name.as_str().into(), parsed.into());
            }
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
    fn gate(&mut self, spec: GateSpec<'_>, at: Entry<'_>) -> Option<Arc<Gate>> {
        match spec.validate(self.opts) {
            Ok(gate) => {
                if let Some(Chain::Set(name)) = gate.chain() {
                    self.set_refs.push((at.to_string(), Arc::clone(name)));
                }
                Some(Arc::new(gate))
            }
            Err(problems) => {
                for p in problems {
                    match p {
                        GateError::Kind => self.problem(format_args!("{at}.gate: {p}")),
                        _ => self.problem(format_args!("{at}.gate.{p}")),
                    }
                }
                None
            }
        }
    }
}

/// `section.key`: where an entry is, in a problem line.
#[derive(Clone, Copy)]
struct Entry<'k>(&'static str, &'k str);

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, PathKey(self.1))
    }
}

/// The whole file: an object with optional `agents` and `numbers`.
struct FileFields<'l, 'o> {
    l: &'l mut Loader<'o>,
    agents: bool,
    numbers: bool,
    check_sets: bool,
}

impl<'de> Fields<'de> for FileFields<'_, '_> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Str(field)) = map.next_key::<Str<'de>>()? {
            let (seen, section) = match &*field {
                "agents" => (&mut self.agents, "agents"),
                "numbers" => (&mut self.numbers, "numbers"),
                "check_sets" => (&mut self.check_sets, "check_sets"),
                _ => {
                    let name = Name(&field);
                    self.l.problem(format_args!(
                        "unknown field {name}, expected `agents`, `numbers` or `check_sets`"
                    ));
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                self.l.problem(format_args!("duplicate field `{section}`"));
                map.next_value::<IgnoredAny>()?;
            } else if section == "agents" {
                map.next_value_seed(Object(AgentsFields(&mut *self.l)))?;
            } else if section == "check_sets" {
                let super::checks::StrictValue(sets) = map.next_value()?;
                self.l.check_sets_from(&sets);
            } else {
                map.next_value_seed(Object(NumbersFields(&mut *self.l)))?;
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        let kind = value.kind();
        self.l.problem(format_args!(
            "invalid type: {kind}, expected a routes object {{\"agents\": {{...}}, \"numbers\": {{...}}}}"
        ));
    }
}

/// `agents`: agent id → agent, each entry validated as it is read.
struct AgentsFields<'l, 'o>(&'l mut Loader<'o>);

impl<'de> Fields<'de> for AgentsFields<'_, '_> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        let l = &mut *self.0;
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let at = Entry("agents", &key);
            let valid = validate_agent_id(&key);
            let repeated = if valid {
                l.agents.contains_key(&*key)
            } else {
                !l.bad_agent_keys.insert(key.as_ref().into())
            };
            if repeated {
                l.problem(format_args!("{at}: duplicate key"));
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if !valid {
                l.problem(format_args!("{at}: {NOT_AGENT_ID}"));
            }
            let fields = AgentFields { l: &mut *l, at, gate: None, context_wait_ms: 0, seen: [false; 2] };
            let AgentFields { gate, context_wait_ms, .. } = map.next_value_seed(Object(fields))?;
            let gate = gate.and_then(|spec| l.gate(spec, at));
            if valid {
                let id = l.intern(&key);
                l.agents.insert(id, Agent { gate, context_wait_ms });
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        let kind = value.kind();
        self.0
            .problem(format_args!("agents: invalid type: {kind}, expected an object of agent ids to agents"));
    }
}

/// One agent: `{"gate": ..., "context_wait_ms": ...}`.
struct AgentFields<'l, 'o, 'k, 'de> {
    l: &'l mut Loader<'o>,
    at: Entry<'k>,
    gate: Option<GateSpec<'de>>,
    context_wait_ms: u32,
    /// `gate`, `context_wait_ms`.
    seen: [bool; 2],
}

impl<'de> Fields<'de> for AgentFields<'_, '_, '_, 'de> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        let at = self.at;
        while let Some(Str(field)) = map.next_key::<Str<'de>>()? {
            let Some(i) = ["gate", "context_wait_ms"].iter().position(|f| *f == field) else {
                let name = Name(&field);
                self.l.problem(format_args!(
                    "{at}: unknown field {name}, expected `gate` or `context_wait_ms`"
                ));
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut self.seen[i], true) {
                self.l.problem(format_args!("{at}: duplicate field `{field}`"));
                map.next_value::<IgnoredAny>()?;
            } else if i == 0 {
                self.gate = map.next_value_seed(Object(GateFields::new(&mut *self.l, at)))?.spec();
            } else {
                match map.next_value::<Scalar<'de>>()? {
                    Scalar::Int(ms) if ms <= u64::from(MAX_CONTEXT_WAIT_MS) => {
                        self.context_wait_ms = ms as u32
                    }
                    Scalar::Int(ms) => {
                        self.l.problem(format_args!("{at}.context_wait_ms: {BAD_CONTEXT_WAIT} (got {ms})"))
                    }
                    Scalar::Null => {}
                    other => {
                        let kind = other.kind();
                        self.l.problem(format_args!(
                            "{at}.context_wait_ms: invalid type: {kind}, expected an integer (0 to 5000)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        let (at, kind) = (self.at, value.kind());
        self.l
            .problem(format_args!("{at}: invalid type: {kind}, expected an agent object {{\"gate\": ...}}"));
    }
}

/// `numbers`: E.164 number → number entry, each entry validated as it is read.
struct NumbersFields<'l, 'o>(&'l mut Loader<'o>);

impl<'de> Fields<'de> for NumbersFields<'_, '_> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        let l = &mut *self.0;
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let at = Entry("numbers", &key);
            let number = NumberKey::parse(&key);
            let repeated = match number {
                Some(number) => l.numbers.contains_key(&number),
                None => !l.bad_number_keys.insert(key.as_ref().into()),
            };
            if repeated {
                l.problem(format_args!("{at}: duplicate key"));
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if number.is_none() {
                l.problem(format_args!("{at}: {NOT_E164}"));
            }
            let NumberFields { agent_id, gate, .. } = map.next_value_seed(Object(NumberFields {
                l: &mut *l,
                at,
                agent_id: None,
                gate: None,
                seen: [false; 2],
            }))?;
            let agent_id = match agent_id {
                Some(id) if validate_agent_id(&id) => Some(l.intern(&id)),
                Some(_) => {
                    l.problem(format_args!("{at}.agent_id: {NOT_AGENT_ID}"));
                    None
                }
                None => None,
            };
            let gate = gate.and_then(|spec| l.gate(spec, at));
            if let Some(number) = number {
                l.numbers.insert(number, NumberEntry { agent_id, gate });
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        let kind = value.kind();
        self.0.problem(format_args!(
            "numbers: invalid type: {kind}, expected an object of E.164 numbers to number entries"
        ));
    }
}

/// One number: `{"agent_id": ..., "gate": ...}`.
struct NumberFields<'l, 'o, 'k, 'de> {
    l: &'l mut Loader<'o>,
    at: Entry<'k>,
    agent_id: Option<Cow<'de, str>>,
    gate: Option<GateSpec<'de>>,
    /// `agent_id`, `gate`.
    seen: [bool; 2],
}

impl<'de> Fields<'de> for NumberFields<'_, '_, '_, 'de> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        let at = self.at;
        while let Some(Str(field)) = map.next_key::<Str<'de>>()? {
            let Some(i) = ["agent_id", "gate"].iter().position(|f| *f == field) else {
                let name = Name(&field);
                self.l.problem(format_args!("{at}: unknown field {name}, expected `agent_id` or `gate`"));
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut self.seen[i], true) {
                self.l.problem(format_args!("{at}: duplicate field `{field}`"));
                map.next_value::<IgnoredAny>()?;
            } else if i == 1 {
                self.gate = map.next_value_seed(Object(GateFields::new(&mut *self.l, at)))?.spec();
            } else {
                match map.next_value::<Scalar<'de>>()? {
                    Scalar::Str(id) => self.agent_id = Some(id),
                    Scalar::Null => {}
                    other => {
                        let kind = other.kind();
                        self.l
                            .problem(format_args!("{at}.agent_id: invalid type: {kind}, expected a string"));
                    }
                }
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        let (at, kind) = (self.at, value.kind());
        self.l.problem(format_args!(
            "{at}: invalid type: {kind}, expected a number object {{\"agent_id\": ..., \"gate\": ...}}"
        ));
    }
}

/// A gate: `{"url": ..., "timeout_ms": ..., "on_failure": ..., "mode": ...}`; `null` is no gate.
struct GateFields<'l, 'o, 'k, 'de> {
    l: &'l mut Loader<'o>,
    at: Entry<'k>,
    /// An object was read (not `null` or a value of the wrong type).
    object: bool,
    url: Option<Cow<'de, str>>,
    timeout_ms: Option<u64>,
    on_failure: Option<Cow<'de, str>>,
    checks: Option<serde_json::Value>,
    check_set: Option<Cow<'de, str>>,
    mode: Option<Cow<'de, str>>,
    /// `url`, `timeout_ms`, `on_failure`, `mode`, `checks`, `check_set`.
    seen: [bool; 6],
}

const GATE_FIELDS: [&str; 6] = ["url", "timeout_ms", "on_failure", "mode", "checks", "check_set"];

impl<'l, 'o, 'k, 'de> GateFields<'l, 'o, 'k, 'de> {
    fn new(l: &'l mut Loader<'o>, at: Entry<'k>) -> Self {
        GateFields {
            l,
            at,
            object: false,
            url: None,
            timeout_ms: None,
            on_failure: None,
            checks: None,
            check_set: None,
            mode: None,
            seen: [false; 6],
        }
    }

    /// The gate as written, or `None`.
    fn spec(self) -> Option<GateSpec<'de>> {
        if !self.object {
            return None;
        }
        let kinds = [&self.seen[0], &self.seen[4], &self.seen[5]].into_iter().filter(|s| **s).count();
        let given = usize::from(self.url.is_some())
            + usize::from(self.checks.is_some())
            + usize::from(self.check_set.is_some());
        if kinds != 1 || given != 1 {
            // A value of the wrong type was reported already.
            if kinds != 1 {
                self.l.problem(format_args!("{}.gate: {}", self.at, GateError::Kind));
            }
            return None;
        }
        Some(GateSpec {
            url: self.url,
            checks: self.checks,
            check_set: self.check_set,
            timeout_ms: self.timeout_ms,
            on_failure: self.on_failure,
            mode: self.mode,
        })
    }
}

impl<'de> Fields<'de> for GateFields<'_, '_, '_, 'de> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        self.object = true;
        let at = self.at;
        while let Some(Str(field)) = map.next_key::<Str<'de>>()? {
            let Some(i) = GATE_FIELDS.iter().position(|f| *f == field) else {
                let name = Name(&field);
                self.l.problem(format_args!(
                    "{at}.gate: unknown field {name}, expected `url`, `checks`, `check_set`, `timeout_ms`, `on_failure` or `mode`"
                ));
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let name = GATE_FIELDS[i];
            if std::mem::replace(&mut self.seen[i], true) {
                self.l.problem(format_args!("{at}.gate: duplicate field `{name}`"));
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if i == 4 {
                let super::checks::StrictValue(checks) = map.next_value()?;
                self.checks = Some(checks);
                continue;
            }
            match (i, map.next_value::<Scalar<'de>>()?) {
                (0, Scalar::Str(url)) => self.url = Some(url),
                (1, Scalar::Int(ms)) => self.timeout_ms = Some(ms),
                (2, Scalar::Str(policy)) => self.on_failure = Some(policy),
                (5, Scalar::Str(name)) => self.check_set = Some(name),
                (3, Scalar::Str(mode)) => self.mode = Some(mode),
                (1..=3, Scalar::Null) => {}
                (_, other) => {
                    let (kind, want) = (other.kind(), if i == 1 { "an integer" } else { "a string" });
                    self.l.problem(format_args!("{at}.gate.{name}: invalid type: {kind}, expected {want}"));
                }
            }
        }
        Ok(())
    }

    fn other(&mut self, value: Scalar<'de>) {
        if !matches!(value, Scalar::Null) {
            let (at, kind) = (self.at, value.kind());
            self.l.problem(format_args!(
                "{at}.gate: invalid type: {kind}, expected a gate object {{\"url\": ...}}"
            ));
        }
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
        let sets = !self.check_sets.is_empty();
        let mut top = s.serialize_map(Some(2 + usize::from(sets)))?;
        top.serialize_entry("agents", &SortedAgents(&self.agents))?;
        top.serialize_entry("numbers", &SortedNumbers(&self.numbers))?;
        if sets {
            let sets = self.check_sets.iter().map(|(name, checks)| (&**name, ChecksJson(checks)));
            top.serialize_entry("check_sets", &SerMap(std::cell::Cell::new(Some(sets))))?;
        }
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
        let len = usize::from(self.gate.is_some()) + usize::from(self.context_wait_ms > 0);
        let mut map = s.serialize_map(Some(len))?;
        if let Some(gate) = &self.gate {
            map.serialize_entry("gate", &**gate)?;
        }
        if self.context_wait_ms > 0 {
            map.serialize_entry("context_wait_ms", &self.context_wait_ms)?;
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

/// Checks as written.
struct ChecksJson<'a>(&'a [Check]);

impl Serialize for ChecksJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Check::raw))
    }
}

/// A map from an iterator, serialised once.
struct SerMap<I>(std::cell::Cell<Option<I>>);

impl<'k, V: Serialize, I: Iterator<Item = (&'k str, V)>> Serialize for SerMap<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.take().expect("serialised once"))
    }
}

/// The routes-file form, secrets and all. `on_failure` and `mode` are written only when not
/// the default.
impl Serialize for Gate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reject = self.on_failure == OnFailure::Reject;
        let shadow = self.mode == Mode::Shadow;
        let len = 1 + usize::from(self.timeout_ms.is_some()) + usize::from(reject) + usize::from(shadow);
        let mut map = s.serialize_map(Some(len))?;
        match &self.chain {
            None => map.serialize_entry("url", &*self.url)?,
            Some(Chain::Checks(checks)) => map.serialize_entry("checks", &ChecksJson(checks))?,
            Some(Chain::Set(name)) => map.serialize_entry("check_set", &**name)?,
        }
        if let Some(ms) = self.timeout_ms {
            map.serialize_entry("timeout_ms", &ms)?;
        }
        if reject {
            map.serialize_entry("on_failure", OnFailure::Reject.as_str())?;
        }
        if shadow {
            map.serialize_entry("mode", Mode::Shadow.as_str())?;
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
                "numbers.\"+447700900123\": duplicate key",
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
    fn duplicate_keys_are_errors_with_their_path() {
        let json = "{\"agents\": {\n  \"a1\": {},\n  \"a1\": {}\n}}";
        assert_eq!(problem(json), "agents.a1: duplicate key");
        let json = "{\"numbers\": {\n  \"+447700900123\": {},\n  \"+447700900123\": {}}}";
        assert_eq!(problem(json), "numbers.\"+447700900123\": duplicate key");
        // Escapes make a different spelling of the same key.
        let json = r#"{"numbers": {"+447700900123": {}, "\u002b447700900123": {}}}"#;
        assert_eq!(problem(json), "numbers.\"+447700900123\": duplicate key");
        // Invalid keys are not in the table, but repeating one is still caught (once).
        let all = problems(r#"{"agents": {"a b": {}, "a b": {}}}"#, &STRICT);
        assert_eq!(all, [format!("agents.\"a b\": {NOT_AGENT_ID}"), "agents.\"a b\": duplicate key".into()]);
        let all = problems(r#"{"numbers": {"+1": {}, "+1": {}}}"#, &STRICT);
        assert_eq!(all, [format!("numbers.\"+1\": {NOT_E164}"), "numbers.\"+1\": duplicate key".into()]);
        assert_eq!(problem(r#"{"agents": {}, "agents": {}}"#), "duplicate field `agents`");
    }

    #[test]
    fn duplicate_fields_inside_entries_are_errors() {
        let json = r#"{"numbers": {"+447700900123": {"agent_id": "a", "agent_id": "b"}}}"#;
        assert_eq!(problem(json), "numbers.\"+447700900123\": duplicate field `agent_id`");
        let json = r#"{"agents": {"a": {"gate": {"url": "https://x/", "url": "https://y/"}}}}"#;
        assert_eq!(problem(json), "agents.a.gate: duplicate field `url`");
        let json = format!(r#"{{"agents": {{"a": {{"gate": {GATE}, "gate": {GATE}}}}}}}"#);
        assert_eq!(problem(&json), "agents.a: duplicate field `gate`");
    }

    #[test]
    fn unknown_fields_are_errors_everywhere() {
        let cases = [
            (r#"{"agent": {}}"#, "unknown field `agent`, expected `agents`, `numbers` or `check_sets`"),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout": 5}}}}"#,
                "agents.a.gate: unknown field `timeout`, expected `url`, `checks`, `check_set`, `timeout_ms`, `on_failure` or `mode`",
            ),
            (
                r#"{"agents": {"a": {"gates": {}}}}"#,
                "agents.a: unknown field `gates`, expected `gate` or `context_wait_ms`",
            ),
            (
                r#"{"numbers": {"+447700900123": {"agent": "a"}}}"#,
                "numbers.\"+447700900123\": unknown field `agent`, expected `agent_id` or `gate`",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(problem(json), want);
        }
    }

    #[test]
    fn values_of_the_wrong_type_are_reported_by_path() {
        let at = "numbers.\"+447700900123\"";
        let cases = [
            ("[]".to_owned(), "invalid type: array, expected a routes object".to_owned()),
            ("null".into(), "invalid type: null, expected a routes object".into()),
            (
                r#"{"agents": null}"#.into(),
                "agents: invalid type: null, expected an object of agent ids".into(),
            ),
            (
                r#"{"numbers": {"+447700900123": "a1"}}"#.into(),
                format!("{at}: invalid type: string, expected a number object"),
            ),
            (
                r#"{"agents": {"a": {"gate": {}}}}"#.into(),
                "agents.a.gate: needs exactly one of `url`, `checks` or `check_set`".into(),
            ),
            (
                r#"{"agents": {"a": {"gate": 5}}}"#.into(),
                "agents.a.gate: invalid type: integer, expected a gate object".into(),
            ),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout_ms": "5"}}}}"#.into(),
                "agents.a.gate.timeout_ms: invalid type: string, expected an integer".into(),
            ),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "timeout_ms": -5}}}}"#.into(),
                "agents.a.gate.timeout_ms: invalid type: negative integer, expected an integer".into(),
            ),
            (
                r#"{"agents": {"a": {"gate": {"url": ["https://x/"]}}}}"#.into(),
                "agents.a.gate.url: invalid type: array, expected a string".into(),
            ),
            (
                format!(r#"{{"numbers": {{"+447700900123": {{"agent_id": 7, "gate": {GATE}}}}}}}"#),
                format!("{at}.agent_id: invalid type: integer, expected a string"),
            ),
        ];
        for (json, want) in cases {
            let got = problem(&json);
            assert!(got.starts_with(&want), "{json}: {got} is not {want}");
        }
        // `null` is no value for an optional field.
        let json = r#"{"numbers": {"+447700900123": {"agent_id": null, "gate": null}},
                       "agents": {"a": {"gate": {"url": "https://x/", "timeout_ms": null, "on_failure": null}}}}"#;
        assert!(RouteTable::parse(json.as_bytes(), &STRICT).is_ok());
    }

    #[test]
    fn structural_problems_do_not_hide_the_others() {
        let json = r#"{
          "agent": {"x": 1},
          "agents": {"a1": {"gate": {"url": "ftp://x/", "timeout_ms": "fast", "retry": true}}, "a1": {}},
          "numbers": {"+1": {"agent_id": "a1"}, "+447700900123": {"gate": {"url": "https://x/", "timeout_ms": 5}}}
        }"#;
        let want = [
            "unknown field `agent`, expected `agents`, `numbers` or `check_sets`",
            "agents.a1.gate.timeout_ms: invalid type: string, expected an integer",
            "agents.a1.gate: unknown field `retry`, expected `url`, `checks`, `check_set`, `timeout_ms`, `on_failure` or `mode`",
            "agents.a1.gate.url: must be https:// (or http:// with --allow-insecure-gates)",
            "agents.a1: duplicate key",
            &format!("numbers.\"+1\": {NOT_E164}"),
            "numbers.\"+447700900123\".gate.timeout_ms: must be 100 to 30000 (got 5)",
        ];
        assert_eq!(problems(json, &STRICT), want);
    }

    #[test]
    fn broken_syntax_stops_the_read_after_the_problems_before_it() {
        let cases = [
            ("{} {}", "line 1 column 4: trailing characters"),
            ("{\"agents\": {", "line 1 column 12: EOF while parsing an object"),
            ("{\"agents\": [1,,]}", "line 1 column 15: expected value"),
        ];
        for (json, want) in cases {
            assert_eq!(problem(json), want);
        }
        let json = "{\"numbers\": {\"+1\": {}, \"+447700900123\": {\n";
        assert_eq!(
            problems(json, &STRICT),
            [format!("numbers.\"+1\": {NOT_E164}"), "line 2 column 0: EOF while parsing an object".into()]
        );
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
    fn a_gates_mode_is_enforce_or_shadow_and_round_trips() {
        let gate = |fields: &str| {
            format!(r#"{{"numbers": {{"+447700900123": {{"gate": {{"url": "https://x/", {fields}}}}}}}}}"#)
        };
        let at = "numbers.\"+447700900123\".gate";
        for bad in [r#""mode": "Shadow""#, r#""mode": "observe""#, r#""mode": """#] {
            assert_eq!(problem(&gate(bad)), format!("{at}.mode: must be \"enforce\" or \"shadow\""));
        }
        assert_eq!(
            problem(&gate(r#""mode": 1"#)),
            format!("{at}.mode: invalid type: integer, expected a string")
        );
        let t = RouteTable::parse(gate(r#""mode": "shadow""#).as_bytes(), &STRICT).unwrap();
        assert_eq!(t.number_gate("+447700900123").unwrap().mode(), Mode::Shadow);
        let value = t.to_json();
        assert_eq!(value["numbers"]["+447700900123"]["gate"]["mode"], "shadow");
        assert_eq!(RouteTable::parse(value.to_string().as_bytes(), &STRICT).unwrap(), t);
        let t = RouteTable::parse(gate(r#""mode": "enforce""#).as_bytes(), &STRICT).unwrap();
        assert_eq!(t.number_gate("+447700900123").unwrap().mode(), Mode::Enforce);
        assert!(
            t.to_json()["numbers"]["+447700900123"]["gate"].get("mode").is_none(),
            "the default is not written"
        );
    }

    #[test]
    fn gates_on_one_scheme_host_and_port_share_an_origin() {
        let origin = |url: &str| Gate::new(url, None, OnFailure::Accept, &INSECURE).unwrap().origin().clone();
        assert_eq!(origin("https://g.example/a?token=S3CRET"), origin("https://g.example:443/b").clone());
        assert_eq!(&*origin("https://g.example/a"), "https://g.example:443");
        assert_ne!(origin("https://g.example/a"), origin("http://g.example/a"));
        assert_ne!(origin("https://g.example/a"), origin("https://g.example:8443/a"));
        assert_ne!(origin("https://g.example/a"), origin("https://h.example/a"));
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
    fn chain_gates_and_check_sets_parse_validate_and_round_trip() {
        let json = r#"{
          "agents": {"agent_support": {"gate": {"check_set": "screening", "timeout_ms": 3000}}},
          "numbers": {"+447700900125": {"agent_id": "agent_support"},
                      "+447700900126": {"gate": {"checks": [{"type": "caller_list", "name": "B", "deny": ["+44*"]}], "on_failure": "reject"}}},
          "check_sets": {"screening": [
            {"type": "caller_list", "name": "Blocklist", "deny": ["+447386172392", "+4487*"]},
            {"type": "schedule", "name": "Opening hours", "timezone": "Europe/London",
             "open": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "17:30"}]},
            {"type": "external_api", "name": "DND Check", "credential_id": "cred_dnd_provider",
             "http_request": {"url": "https://dnd-api.example.com/check?phone={customer_mobile_number}",
                              "headers": {"Authorization": "Bearer {dnd_api_key}"}, "timeout": 2},
             "response_config": {"response_field": "blocked", "response_field_value": false},
             "default_on_failure": "proceed"}]}
        }"#;
        let t = RouteTable::parse(json.as_bytes(), &STRICT).unwrap();
        let gate = t.resolve("+447700900125").gate.unwrap();
        assert_eq!(t.chain_of(gate).unwrap().len(), 3);
        assert!(t.check_set_in_use("screening"));
        assert_eq!(
            t.credential_ids(),
            [("check_sets.screening[2]".to_owned(), "cred_dnd_provider".to_owned())]
        );
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(RouteTable::parse(text.as_bytes(), &STRICT).unwrap(), t);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["agents"]["agent_support"]["gate"]["check_set"], "screening");
        assert_eq!(value["check_sets"]["screening"][2]["http_request"]["timeout"], 2);

        let cases = [
            (r#"{"agents": {"a": {"gate": {"check_set": "nope"}}}}"#, "agents.a.gate.check_set: no check set named `nope`"),
            (
                r#"{"agents": {"a": {"gate": {"url": "https://x/", "check_set": "s"}}}, "check_sets": {"s": []}}"#,
                "agents.a.gate: needs exactly one of `url`, `checks` or `check_set`",
            ),
            (
                r#"{"agents": {"a": {"gate": {"checks": [{"type": "schedule", "name": "h", "timezone": "Europe/London", "open": [], "x": 1}]}}}}"#,
                "agents.a.gate.checks[0]: unknown field `x`, expected one of `type`, `name`, `enabled`, `default_on_failure`, `timezone`, `open`, `closed_dates`",
            ),
            (
                r#"{"check_sets": {"s": [{"type": "external_api", "name": "e", "http_request": {"url": "https://x/", "max_retries": 9}, "response_config": {"response_field": "a", "response_field_value": 1}}]}}"#,
                "check_sets.s[0].http_request.max_retries: must be 1 to 5 (got 9)",
            ),
            (r#"{"check_sets": {"s": {}}}"#, "check_sets.s: invalid type: object, expected an array of checks"),
        ];
        for (json, want) in cases {
            assert_eq!(problem(json), want);
        }
    }

    #[test]
    fn context_wait_is_checked_and_round_trips() {
        let json = r#"{"agents": {"a": {"context_wait_ms": 1500}, "b": {"context_wait_ms": 0}}}"#;
        let t = RouteTable::parse(json.as_bytes(), &STRICT).unwrap();
        assert_eq!((t.agent_context_wait_ms("a"), t.agent_context_wait_ms("b")), (1500, 0));
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"agents":{"a":{"context_wait_ms":1500},"b":{}},"numbers":{}}"#);
        assert_eq!(RouteTable::parse(text.as_bytes(), &STRICT).unwrap(), t);
        let cases = [
            (
                r#"{"agents": {"a": {"context_wait_ms": 5001}}}"#,
                "agents.a.context_wait_ms: must be 0 to 5000 (got 5001)",
            ),
            (
                r#"{"agents": {"a": {"context_wait_ms": -1}}}"#,
                "agents.a.context_wait_ms: invalid type: negative integer, expected an integer (0 to 5000)",
            ),
            (
                r#"{"agents": {"a": {"context_wait_ms": "1500"}}}"#,
                "agents.a.context_wait_ms: invalid type: string, expected an integer (0 to 5000)",
            ),
            (
                r#"{"agents": {"a": {"context_wait_ms": 1, "context_wait_ms": 2}}}"#,
                "agents.a: duplicate field `context_wait_ms`",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(problem(json), want);
        }
    }

    #[test]
    fn keys_and_values_borrow_from_the_input() {
        let Str(plain) = serde_json::from_str::<Str>(r#""+447700900123""#).unwrap();
        assert!(matches!(plain, Cow::Borrowed(_)));
        let Str(escaped) = serde_json::from_str::<Str>(r#""\u002b447700900123""#).unwrap();
        assert_eq!(escaped, "+447700900123");
        let json = r#"{"agent_id": "a1", "gate": {"url": "https://x/", "on_failure": "reject"}}"#;
        let mut loader = Loader::new(&STRICT);
        let fields = NumberFields {
            l: &mut loader,
            at: Entry("numbers", "+447700900123"),
            agent_id: None,
            gate: None,
            seen: [false; 2],
        };
        let raw = Object(fields).deserialize(&mut serde_json::Deserializer::from_str(json)).unwrap();
        assert!(matches!(raw.agent_id, Some(Cow::Borrowed("a1"))));
        let spec = raw.gate.unwrap();
        assert!(matches!((&spec.url, &spec.on_failure), (Some(Cow::Borrowed(_)), Some(Cow::Borrowed(_)))));
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
