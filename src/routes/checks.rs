//! Checks of a chain gate (SPEC §11), as configured: each check validated from its JSON into a
//! ready-to-run form (caller lists packed into hash sets, time zones resolved, templates
//! checked), every problem named by its path. The original JSON is kept for writing back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashSet;
use serde_json::{Map, Value};

use super::{NumberKey, ValidateOptions};

/// What a check does when it cannot complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCheckFailure {
    /// Fail open: the chain goes on.
    Proceed,
    /// Fail closed: the chain ends, the call is refused.
    Skip,
}

/// A check's `type`, for `callgate_checks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckType {
    ExternalApi,
    CallerList,
    Schedule,
}

impl CheckType {
    pub const ALL: [CheckType; 3] = [CheckType::ExternalApi, CheckType::CallerList, CheckType::Schedule];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::ExternalApi => "external_api",
            CheckType::CallerList => "caller_list",
            CheckType::Schedule => "schedule",
        }
    }
}

/// One validated check.
#[derive(Clone)]
pub struct Check {
    pub name: Arc<str>,
    pub enabled: bool,
    /// `None`: the gate's `on_failure` decides (accept as proceed, reject as skip).
    pub default_on_failure: Option<OnCheckFailure>,
    pub kind: CheckKind,
    /// The check as written, for `GET /v1/routes` and saving.
    pub(super) raw: Value,
}

impl Check {
    pub fn check_type(&self) -> CheckType {
        match self.kind {
            CheckKind::ExternalApi(_) => CheckType::ExternalApi,
            CheckKind::CallerList(_) => CheckType::CallerList,
            CheckKind::Schedule(_) => CheckType::Schedule,
        }
    }

    /// The check as written.
    pub fn raw(&self) -> &Value {
        &self.raw
    }
}

impl PartialEq for Check {
    fn eq(&self, other: &Check) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Check {}

// A check may carry header values with placeholders for secrets, and caller lists are data
// about people: name and type only.
impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check").field("name", &self.name).field("type", &self.check_type().as_str()).finish()
    }
}

#[derive(Clone)]
pub enum CheckKind {
    ExternalApi(Box<ExternalApi>),
    CallerList(CallerList),
    Schedule(Schedule),
}

/// A set of E.164 numbers and `+digits*` prefixes, answered without allocating.
#[derive(Clone, Default)]
pub struct NumberSet {
    exact: FxHashSet<NumberKey>,
    /// Prefixes packed as [`NumberKey`]s of their digits (1 to 15).
    prefixes: FxHashSet<NumberKey>,
    /// The distinct prefix lengths, ascending.
    prefix_lengths: Vec<u8>,
}

impl NumberSet {
    fn insert(&mut self, entry: &str) -> bool {
        if let Some(prefix) = entry.strip_suffix('*') {
            let Some(key) = prefix_key(prefix) else { return false };
            self.prefixes.insert(key);
            let len = key.digits() as u8;
            if let Err(at) = self.prefix_lengths.binary_search(&len) {
                self.prefix_lengths.insert(at, len);
            }
            return true;
        }
        match NumberKey::parse(entry) {
            Some(key) => {
                self.exact.insert(key);
                true
            }
            None => false,
        }
    }

    /// Whether the number (already parsed) is in the set, exactly or by a prefix.
    fn contains_key(&self, number: NumberKey) -> bool {
        if self.exact.contains(&number) {
            return true;
        }
        let (digits, value) = (number.digits() as u32, number.value());
        self.prefix_lengths.iter().take_while(|&&len| u32::from(len) <= digits).any(|&len| {
            let head = value / 10u64.pow(digits - u32::from(len));
            self.prefixes.contains(&NumberKey::from_parts(u32::from(len), head))
        })
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `+` and 1 to 15 digits, as a key of that many digits.
fn prefix_key(prefix: &str) -> Option<NumberKey> {
    let digits = prefix.strip_prefix('+')?.as_bytes();
    if !(1..=15).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().fold(0u64, |v, &b| v * 10 + u64::from(b - b'0'));
    Some(NumberKey::from_parts(digits.len() as u32, value))
}

/// Twilio's stand-ins for a withheld caller number.
const WITHHELD: [&str; 4] = ["+266696687", "+7378742833", "+8656696", "+86282452253"];

/// `caller_list`: deny and allow lists, and what an anonymous caller gets.
#[derive(Clone)]
pub struct CallerList {
    pub deny: NumberSet,
    pub allow: Option<NumberSet>,
    /// `true`: anonymous callers are skipped.
    pub skip_anonymous: bool,
}

impl CallerList {
    /// Whether `caller` proceeds. No allocation.
    pub fn proceeds(&self, caller: &str) -> bool {
        let number = match NumberKey::parse(caller) {
            Some(n) if !WITHHELD.contains(&caller) => n,
            // Anonymous, restricted, empty, client:, sip:, a withheld stand-in.
            _ => return !self.skip_anonymous,
        };
        if self.deny.contains_key(number) {
            return false;
        }
        self.allow.as_ref().is_none_or(|allow| allow.contains_key(number))
    }
}

/// One opening window: on `days` (bit 0 Monday), from `from` to `to` (minutes of the day); `to`
/// at or before `from` runs into the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub days: u8,
    pub from: u16,
    pub to: u16,
}

/// `schedule`: opening hours in an IANA zone.
#[derive(Clone)]
pub struct Schedule {
    pub zone: jiff::tz::TimeZone,
    pub open: Vec<Window>,
    pub closed: FxHashSet<jiff::civil::Date>,
}

impl Schedule {
    /// Whether the schedule is open at `now`.
    pub fn is_open(&self, now: jiff::Timestamp) -> bool {
        let local = self.zone.to_datetime(now);
        let date = local.date();
        if self.closed.contains(&date) {
            return false;
        }
        let minute = u16::from(local.hour() as u8) * 60 + u16::from(local.minute() as u8);
        let today = 1u8 << (date.weekday().to_monday_zero_offset() as u8);
        let yesterday = if today == 1 { 1 << 6 } else { today >> 1 };
        self.open.iter().any(|w| {
            if w.from < w.to {
                w.days & today != 0 && (w.from..w.to).contains(&minute)
            } else {
                (w.days & today != 0 && minute >= w.from) || (w.days & yesterday != 0 && minute < w.to)
            }
        })
    }
}

/// `external_api` (the seed's pre-check): the request template and how to read the answer.
#[derive(Clone)]
pub struct ExternalApi {
    pub credential_id: Option<Box<str>>,
    pub url: Box<str>,
    pub method: http::Method,
    pub headers: Vec<(http::HeaderName, Box<str>)>,
    pub body: Option<Map<String, Value>>,
    pub auth: Option<Auth>,
    pub query_params: Vec<(Box<str>, Box<str>)>,
    pub timeout: Duration,
    pub max_retries: u32,
    /// `response_field` split at `.`.
    pub response_field: Vec<Box<str>>,
    pub response_field_value: Value,
}

#[derive(Clone)]
pub enum Auth {
    Bearer { token: Box<str> },
    Basic { username: Box<str>, password: Box<str> },
}

/// `http_request.timeout` in seconds.
pub const API_TIMEOUT_S: std::ops::RangeInclusive<u64> = 1..=30;
/// `http_request.max_retries`.
pub const API_MAX_RETRIES: std::ops::RangeInclusive<u64> = 1..=5;

/// The placeholder names in `template` (`{name}`: letters, digits, `_`, `-`, `.`); other braces
/// are text.
pub fn placeholders(template: &str) -> impl Iterator<Item = (std::ops::Range<usize>, &str)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let open = at + template[at..].find('{')?;
        let close = match template[open + 1..].find(['}', '{']) {
            Some(i) => open + 1 + i,
            None => return None,
        };
        at = close;
        if template.as_bytes()[close] != b'}' {
            continue;
        }
        let name = &template[open + 1..close];
        at = close + 1;
        if !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Some((open..close + 1, name));
        }
    })
}

/// Reads and validates an array of checks at `at` (e.g. `check_sets.screening`); every problem
/// is pushed, with its path.
pub fn parse_checks(
    value: &Value,
    at: &str,
    opts: &ValidateOptions,
    problems: &mut Vec<String>,
) -> Option<Vec<Check>> {
    let Value::Array(items) = value else {
        problems.push(format!("{at}: invalid type: {}, expected an array of checks", kind(value)));
        return None;
    };
    let before = problems.len();
    let mut checks = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if let Some(check) = parse_check(item, &at, opts, problems) {
            checks.push(check);
        }
    }
    (problems.len() == before).then_some(checks)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() => "integer",
        Value::Number(n) if n.is_i64() => "negative integer",
        Value::Number(_) => "floating point number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Field reading for one JSON object: unknown fields and wrong types recorded as problems.
struct Obj<'v, 'p> {
    map: &'v Map<String, Value>,
    at: String,
    problems: &'p mut Vec<String>,
}

impl<'v, 'p> Obj<'v, 'p> {
    fn new(value: &'v Value, at: &str, what: &str, problems: &'p mut Vec<String>) -> Option<Obj<'v, 'p>> {
        match value {
            Value::Object(map) => Some(Obj { map, at: at.to_owned(), problems }),
            other => {
                problems.push(format!("{at}: invalid type: {}, expected {what}", kind(other)));
                None
            }
        }
    }

    fn allow(&mut self, fields: &[&str]) {
        for key in self.map.keys() {
            if !fields.contains(&key.as_str()) {
                let expected = fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                self.problems.push(format!(
                    "{}: unknown field {}, expected one of {expected}",
                    self.at,
                    super::shape::Name(key)
                ));
            }
        }
    }

    fn problem(&mut self, field: &str, message: impl fmt::Display) {
        self.problems.push(format!("{}.{field}: {message}", self.at));
    }

    fn get(&self, field: &str) -> Option<&'v Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn required(&mut self, field: &str) -> Option<&'v Value> {
        let v = self.get(field);
        if v.is_none() {
            self.problems.push(format!("{}: missing field `{field}`", self.at));
        }
        v
    }

    fn typed<T>(
        &mut self,
        field: &str,
        v: Option<&'v Value>,
        want: &str,
        read: impl FnOnce(&'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = v?;
        let got = read(v);
        if got.is_none() {
            let k = kind(v);
            self.problem(field, format_args!("invalid type: {k}, expected {want}"));
        }
        got
    }

    fn str(&mut self, field: &str, required: bool) -> Option<&'v str> {
        let v = if required { self.required(field) } else { self.get(field) };
        self.typed(field, v, "a string", Value::as_str)
    }

    fn int(&mut self, field: &str) -> Option<u64> {
        let v = self.get(field);
        self.typed(field, v, "an integer", Value::as_u64)
    }

    fn string_map(&mut self, field: &str) -> Vec<(&'v str, &'v str)> {
        let v = self.get(field);
        let Some(map) = self.typed(field, v, "an object of strings", Value::as_object) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            match v.as_str() {
                Some(s) => out.push((k.as_str(), s)),
                None => {
                    let kind = kind(v);
                    self.problem(
                        &format!("{field}.{}", super::file::PathKey(k)),
                        format_args!("invalid type: {kind}, expected a string"),
                    );
                }
            }
        }
        out
    }

    fn sub(&mut self, field: &str, v: &'v Value, what: &str) -> Option<Obj<'v, '_>> {
        let at = format!("{}.{field}", self.at);
        Obj::new(v, &at, what, self.problems)
    }
}

const CHECK_FIELDS: &[&str] = &["type", "name", "enabled", "default_on_failure"];

fn parse_check(value: &Value, at: &str, opts: &ValidateOptions, problems: &mut Vec<String>) -> Option<Check> {
    let mut o = Obj::new(value, at, "a check object {\"type\": ..., \"name\": ...}", problems)?;
    let before = o.problems.len();
    let ty = o.str("type", true);
    let name = o.str("name", true);
    if name.is_some_and(|n| n.trim().is_empty() || n.len() > 128) {
        o.problem("name", "must be 1 to 128 characters");
    }
    let enabled = o.get("enabled");
    let enabled = o.typed("enabled", enabled, "a boolean", Value::as_bool).unwrap_or(true);
    let default_on_failure = match o.str("default_on_failure", false) {
        None => None,
        Some("proceed") => Some(OnCheckFailure::Proceed),
        Some("skip") => Some(OnCheckFailure::Skip),
        Some(_) => {
            o.problem("default_on_failure", "must be \"proceed\" or \"skip\"");
            None
        }
    };
    let kind = match ty {
        Some("external_api") => {
            o.allow(&[CHECK_FIELDS, &["credential_id", "http_request", "response_config"]].concat());
            external_api(&mut o, opts).map(|api| CheckKind::ExternalApi(Box::new(api)))
        }
        Some("caller_list") => {
            o.allow(&[CHECK_FIELDS, &["deny", "allow", "anonymous"]].concat());
            caller_list(&mut o).map(CheckKind::CallerList)
        }
        Some("schedule") => {
            o.allow(&[CHECK_FIELDS, &["timezone", "open", "closed_dates"]].concat());
            schedule(&mut o).map(CheckKind::Schedule)
        }
        Some(_) => {
            o.problem("type", "must be \"external_api\", \"caller_list\" or \"schedule\"");
            None
        }
        None => None,
    };
    if o.problems.len() != before {
        return None;
    }
    Some(Check { name: name?.into(), enabled, default_on_failure, kind: kind?, raw: value.clone() })
}

fn number_set(o: &mut Obj<'_, '_>, field: &str) -> Option<NumberSet> {
    let v = o.get(field);
    let items = o.typed(field, v, "an array of E.164 numbers or prefixes", Value::as_array)?;
    let mut set = NumberSet::default();
    for (i, item) in items.iter().enumerate() {
        let ok = item.as_str().is_some_and(|s| set.insert(s));
        if !ok {
            o.problem(&format!("{field}[{i}]"), "not an E.164 number or a prefix such as \"+4487*\"");
        }
    }
    Some(set)
}

fn caller_list(o: &mut Obj<'_, '_>) -> Option<CallerList> {
    let deny = number_set(o, "deny").unwrap_or_default();
    let allow = number_set(o, "allow");
    let skip_anonymous = match o.str("anonymous", false) {
        None | Some("proceed") => false,
        Some("skip") => true,
        Some(_) => {
            o.problem("anonymous", "must be \"proceed\" or \"skip\"");
            false
        }
    };
    Some(CallerList { deny, allow, skip_anonymous })
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `HH:MM` as minutes; `24:00` only where `end` allows it.
fn clock(s: &str, end: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn schedule(o: &mut Obj<'_, '_>) -> Option<Schedule> {
    let zone = match o.str("timezone", true) {
        Some(name) => match jiff::tz::TimeZone::get(name) {
            Ok(zone) => Some(zone),
            Err(_) => {
                o.problem("timezone", "not an IANA time zone name (such as \"Europe/London\")");
                None
            }
        },
        None => None,
    };
    let mut open = Vec::new();
    let v = o.required("open");
    if let Some(windows) = o.typed("open", v, "an array of {\"days\", \"from\", \"to\"}", Value::as_array) {
        for (i, w) in windows.iter().enumerate() {
            let Some(mut w) = o.sub(&format!("open[{i}]"), w, "an object {\"days\", \"from\", \"to\"}")
            else {
                continue;
            };
            w.allow(&["days", "from", "to"]);
            let days = w.required("days");
            let mut mask = 0u8;
            if let Some(days) = w.typed("days", days, "an array of days", Value::as_array) {
                for (j, d) in days.iter().enumerate() {
                    match d.as_str().and_then(|d| DAYS.iter().position(|x| *x == d)) {
                        Some(bit) => mask |= 1 << bit,
                        None => w.problem(
                            &format!("days[{j}]"),
                            "must be one of mon, tue, wed, thu, fri, sat, sun",
                        ),
                    }
                }
            }
            let from = w.str("from", true).map(|s| (clock(s, false), s));
            let to = w.str("to", true).map(|s| (clock(s, true), s));
            if let Some((None, _)) = from {
                w.problem("from", "must be HH:MM (00:00 to 23:59)");
            }
            if let Some((None, _)) = to {
                w.problem("to", "must be HH:MM (00:00 to 24:00)");
            }
            if let (Some((Some(from), _)), Some((Some(to), _))) = (from, to) {
                open.push(Window {
                    days: mask,
                    from,
                    to: if to == 24 * 60 && from == 0 { to } else { to % (24 * 60) },
                });
            }
        }
    }
    let mut closed = FxHashSet::default();
    let v = o.get("closed_dates");
    if let Some(dates) = o.typed("closed_dates", v, "an array of YYYY-MM-DD dates", Value::as_array) {
        for (i, d) in dates.iter().enumerate() {
            match d.as_str().filter(|s| s.len() == 10).and_then(|s| s.parse::<jiff::civil::Date>().ok()) {
                Some(date) => {
                    closed.insert(date);
                }
                None => o.problem(&format!("closed_dates[{i}]"), "must be a date YYYY-MM-DD"),
            }
        }
    }
    Some(Schedule { zone: zone?, open, closed })
}

fn external_api(o: &mut Obj<'_, '_>, opts: &ValidateOptions) -> Option<ExternalApi> {
    let credential_id = o.str("credential_id", false).map(Into::into);
    let request = o.required("http_request");
    let response = o.required("response_config");
    let mut api = None;
    if let Some(request) = request {
        if let Some(mut r) = o.sub("http_request", request, "an object {\"url\", ...}") {
            r.allow(&["url", "method", "headers", "body", "auth", "query_params", "timeout", "max_retries"]);
            let url = r.str("url", true);
            if let Some(url) = url {
                check_url_template(&mut r, url, opts);
            }
            let method = match r.str("method", false) {
                None => Some(http::Method::GET),
                Some(m) => match m.to_ascii_uppercase().as_str() {
                    "GET" => Some(http::Method::GET),
                    "POST" => Some(http::Method::POST),
                    "PUT" => Some(http::Method::PUT),
                    "PATCH" => Some(http::Method::PATCH),
                    "DELETE" => Some(http::Method::DELETE),
                    "HEAD" => Some(http::Method::HEAD),
                    _ => {
                        r.problem("method", "must be GET, POST, PUT, PATCH, DELETE or HEAD");
                        None
                    }
                },
            };
            let mut headers = Vec::new();
            for (name, value) in r.string_map("headers") {
                match http::HeaderName::try_from(name) {
                    Ok(h) if value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) => {
                        headers.push((h, value.into()))
                    }
                    Ok(_) => r.problem(
                        &format!("headers.{}", super::file::PathKey(name)),
                        "contains control characters",
                    ),
                    Err(_) => r.problem(
                        &format!("headers.{}", super::file::PathKey(name)),
                        "not a valid header name",
                    ),
                }
            }
            let body = r.get("body");
            let body = r.typed("body", body, "a JSON object", Value::as_object).cloned();
            let auth = match r.get("auth") {
                None => None,
                Some(v) => match r.sub("auth", v, "an object {\"type\": \"bearer\" or \"basic\", ...}") {
                    None => None,
                    Some(mut a) => match a.str("type", true) {
                        Some("bearer") => {
                            a.allow(&["type", "token"]);
                            a.str("token", true).map(|t| Auth::Bearer { token: t.into() })
                        }
                        Some("basic") => {
                            a.allow(&["type", "username", "password"]);
                            let (u, p) = (a.str("username", true), a.str("password", true));
                            Some(Auth::Basic { username: u?.into(), password: p?.into() })
                        }
                        Some(_) => {
                            a.problem("type", "must be \"bearer\" or \"basic\"");
                            None
                        }
                        None => None,
                    },
                },
            };
            let query_params =
                r.string_map("query_params").into_iter().map(|(k, v)| (k.into(), v.into())).collect();
            let timeout = match r.int("timeout") {
                None if r.get("timeout").is_none() => Some(10),
                Some(t) if API_TIMEOUT_S.contains(&t) => Some(t),
                Some(t) => {
                    r.problem("timeout", format_args!("must be 1 to 30 seconds (got {t})"));
                    None
                }
                None => None,
            };
            let max_retries = match r.int("max_retries") {
                None if r.get("max_retries").is_none() => Some(2),
                Some(n) if API_MAX_RETRIES.contains(&n) => Some(n),
                Some(n) => {
                    r.problem("max_retries", format_args!("must be 1 to 5 (got {n})"));
                    None
                }
                None => None,
            };
            if let (Some(url), Some(method), Some(timeout), Some(max_retries)) =
                (url, method, timeout, max_retries)
            {
                api = Some(ExternalApi {
                    credential_id,
                    url: url.into(),
                    method,
                    headers,
                    body,
                    auth,
                    query_params,
                    timeout: Duration::from_secs(timeout),
                    max_retries: max_retries as u32,
                    response_field: Vec::new(),
                    response_field_value: Value::Null,
                });
            }
        }
    }
    let response = response.and_then(|v| {
        let mut r =
            o.sub("response_config", v, "an object {\"response_field\", \"response_field_value\"}")?;
        r.allow(&["response_field", "response_field_value"]);
        let field = r.str("response_field", true);
        if field.is_some_and(|f| f.is_empty() || f.split('.').any(str::is_empty)) {
            r.problem("response_field", "must be a path such as \"blocked\" or \"data.items.0.is_dnd\"");
        }
        // `null` is a value to compare with here, so it is looked up directly.
        let Some(value) = r.map.get("response_field_value") else {
            r.problems.push(format!("{}: missing field `response_field_value`", r.at));
            return None;
        };
        Some((field?.split('.').map(Into::into).collect::<Vec<_>>(), value.clone()))
    });
    let (field, value) = response?;
    let mut api = api?;
    api.response_field = field;
    api.response_field_value = value;
    Some(api)
}

/// The URL with every placeholder as `x` must be an `http(s)://` URL with a host.
fn check_url_template(r: &mut Obj<'_, '_>, url: &str, opts: &ValidateOptions) {
    let mut sample = String::with_capacity(url.len());
    let mut last = 0;
    for (range, _) in placeholders(url) {
        sample.push_str(&url[last..range.start]);
        sample.push('x');
        last = range.end;
    }
    sample.push_str(&url[last..]);
    if sample.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return r.problem("url", "contains whitespace or control characters");
    }
    match url::Url::parse(&sample) {
        Err(e) => r.problem("url", format_args!("not a valid URL ({e})")),
        Ok(u) => match u.scheme() {
            "https" => {}
            "http" if opts.allow_insecure_gates => {}
            _ => r.problem(
                "url",
                if opts.allow_insecure_gates {
                    "must be https:// or http://"
                } else {
                    "must be https:// (or http:// with --allow-insecure-gates)"
                },
            ),
        },
    }
}

/// A JSON value in which no object gives a key twice (the last one silently winning would hide
/// a typo).
pub struct StrictValue(pub Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StrictValue, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format_args!("duplicate key {shown:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(StrictValue(Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OPTS: ValidateOptions = ValidateOptions { allow_insecure_gates: false };

    fn parse(v: Value) -> Result<Vec<Check>, Vec<String>> {
        let mut problems = Vec::new();
        parse_checks(&v, "checks", &OPTS, &mut problems).ok_or(problems)
    }

    #[test]
    fn placeholders_are_found() {
        let found: Vec<_> =
            placeholders("https://x/{a}?p={b_c}&{ {bad name} {d.e}").map(|(_, n)| n).collect();
        assert_eq!(found, ["a", "b_c", "d.e"]);
        assert_eq!(placeholders("{}{x").count(), 0);
    }

    #[test]
    fn caller_lists_match_numbers_and_prefixes() {
        let checks =
            parse(json!([{"type": "caller_list", "name": "b", "deny": ["+447386172392", "+4487*", "+1*"]}]))
                .unwrap();
        let CheckKind::CallerList(list) = &checks[0].kind else { panic!() };
        assert!(!list.proceeds("+447386172392"));
        assert!(!list.proceeds("+448712345678"));
        assert!(!list.proceeds("+15005550006"));
        assert!(list.proceeds("+447386172393"));
        assert!(list.proceeds("+4486"));
        for anon in ["", "anonymous", "Restricted", "client:alice", "sip:x@y", "+266696687", "+8656696"] {
            assert!(list.proceeds(anon), "{anon}");
        }
        let checks =
            parse(json!([{"type": "caller_list", "name": "a", "allow": ["+4477*"], "anonymous": "skip"}]))
                .unwrap();
        let CheckKind::CallerList(list) = &checks[0].kind else { panic!() };
        assert!(list.proceeds("+447700900123"));
        assert!(!list.proceeds("+447800900123"));
        assert!(!list.proceeds("UNKNOWN"));
        assert!(!list.proceeds("+7378742833"));
    }

    #[test]
    fn every_problem_is_named() {
        let err = parse(json!([
            {"type": "caller_list", "name": "b", "deny": ["+44 77", "+*"], "extra": 1},
            {"type": "schedule", "name": "s", "timezone": "Mars/Olympus", "open": [{"days": ["mon", "xyz"], "from": "9:00", "to": "25:00"}], "closed_dates": ["2026-13-01"]},
            {"type": "external_api", "name": "e", "http_request": {"url": "ftp://x/{a}", "timeout": 31, "max_retries": 0, "retries": 1}, "response_config": {"response_field": "a..b"}},
            {"type": "nope", "name": 5}
        ]))
        .unwrap_err();
        let want = [
            "checks[0]: unknown field `extra`, expected one of `type`, `name`, `enabled`, `default_on_failure`, `deny`, `allow`, `anonymous`",
            "checks[0].deny[0]: not an E.164 number or a prefix such as \"+4487*\"",
            "checks[0].deny[1]: not an E.164 number or a prefix such as \"+4487*\"",
            "checks[1].timezone: not an IANA time zone name (such as \"Europe/London\")",
            "checks[1].open[0].days[1]: must be one of mon, tue, wed, thu, fri, sat, sun",
            "checks[1].open[0].from: must be HH:MM (00:00 to 23:59)",
            "checks[1].open[0].to: must be HH:MM (00:00 to 24:00)",
            "checks[1].closed_dates[0]: must be a date YYYY-MM-DD",
            "checks[2].http_request: unknown field `retries`, expected one of `url`, `method`, `headers`, `body`, `auth`, `query_params`, `timeout`, `max_retries`",
            "checks[2].http_request.url: must be https:// (or http:// with --allow-insecure-gates)",
            "checks[2].http_request.timeout: must be 1 to 30 seconds (got 31)",
            "checks[2].http_request.max_retries: must be 1 to 5 (got 0)",
            "checks[2].response_config.response_field: must be a path such as \"blocked\" or \"data.items.0.is_dnd\"",
            "checks[2].response_config: missing field `response_field_value`",
            "checks[3].name: invalid type: integer, expected a string",
            "checks[3].type: must be \"external_api\", \"caller_list\" or \"schedule\"",
        ];
        assert_eq!(err, want);
    }

    #[test]
    fn schedules_follow_the_zone_across_dst_and_midnight() {
        let checks = parse(json!([{"type": "schedule", "name": "h", "timezone": "Europe/London",
            "open": [{"days": ["sun"], "from": "09:00", "to": "17:00"}, {"days": ["fri"], "from": "22:00", "to": "02:00"}],
            "closed_dates": ["2026-12-25"]}]))
        .unwrap();
        let CheckKind::Schedule(s) = &checks[0].kind else { panic!() };
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // Sunday 29 March 2026: the clocks go forward at 01:00 UTC. 08:30 UTC is 09:30 BST.
        assert!(s.is_open(at("2026-03-29T08:30:00Z")));
        // A week earlier (GMT), 08:30 UTC is 08:30 local: closed.
        assert!(!s.is_open(at("2026-03-22T08:30:00Z")));
        assert!(s.is_open(at("2026-03-22T16:59:00Z")));
        assert!(!s.is_open(at("2026-03-29T16:30:00Z")), "17:30 BST");
        // Friday 22:00 to Saturday 02:00.
        assert!(s.is_open(at("2026-01-02T23:00:00Z")));
        assert!(s.is_open(at("2026-01-03T01:59:00Z")));
        assert!(!s.is_open(at("2026-01-03T02:00:00Z")));
        assert!(!s.is_open(at("2026-01-01T23:00:00Z")), "a Thursday");
        // Christmas 2026 is a Friday: closed all day, the night window too.
        assert!(!s.is_open(at("2026-12-25T23:00:00Z")));
    }
}
