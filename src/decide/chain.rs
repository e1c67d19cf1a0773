//! The chain runner (SPEC §11): a gate's checks in order, the first `skip` or fail-closed
//! failure ending the chain, each check's result kept for the verdict, the record, the log
//! line and `callgate_checks_total`. Local checks answer from memory; `external_api` checks go
//! out through the gate client's pool, retried within the gate's deadline.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use super::{Cause, Decision, GateResult, GateRun, Stages, Verdict};
use crate::credentials::CredentialMap;
use crate::routes::checks::{placeholders, Auth, CheckKind, CheckType, ExternalApi, OnCheckFailure};
use crate::routes::{Check, OnFailure, Source};

/// What became of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    Proceed,
    Skip,
    Failed,
    Disabled,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Proceed => "proceed",
            CheckStatus::Skip => "skip",
            CheckStatus::Failed => "failed",
            CheckStatus::Disabled => "disabled",
        }
    }
}

/// One check's result: its name (shared with the table, no copy), type, status and, for a
/// failure, its cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub name: Arc<str>,
    pub check_type: CheckType,
    pub status: CheckStatus,
    pub reason: Option<Cause>,
}

impl CheckResult {
    /// `{"name", "status", "reason"?}`.
    pub fn to_json(&self) -> Value {
        let mut v = Map::new();
        v.insert("name".into(), Value::String(self.name.to_string()));
        v.insert("status".into(), Value::String(self.status.as_str().into()));
        if let Some(cause) = self.reason {
            v.insert("reason".into(), Value::String(cause.as_str().into()));
        }
        Value::Object(v)
    }
}

/// Where placeholders and the checked caller come from.
pub enum Facts<'a> {
    /// An inbound call: `from`, `to`, `call_id`, `agent_id`, `customer_mobile_number` (= `from`).
    Call { from: &'a str, to: &'a str, call_id: &'a str, agent_id: Option<&'a str> },
    /// An operator's lead (`/v1/precheck`): its fields; the caller is `customer_mobile_number`.
    Payload(&'a Map<String, Value>),
}

impl Facts<'_> {
    /// The number a caller list checks.
    fn caller(&self) -> &str {
        match self {
            Facts::Call { from, .. } => from,
            Facts::Payload(p) => p.get("customer_mobile_number").and_then(Value::as_str).unwrap_or(""),
        }
    }

    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Facts::Call { from, to, call_id, agent_id } => match name {
                "from" | "customer_mobile_number" => Some(Cow::Borrowed(from)),
                "to" => Some(Cow::Borrowed(to)),
                "call_id" => Some(Cow::Borrowed(call_id)),
                "agent_id" => agent_id.map(Cow::Borrowed),
                _ => None,
            },
            Facts::Payload(p) => p.get(name).and_then(json_text),
        }
    }
}

/// A value as placeholder text: a string as itself, any other value as its JSON (`null` is
/// nothing).
fn json_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// How a chain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every enabled check proceeded.
    Accept,
    /// A check skipped (its name).
    Reject(Arc<str>),
    /// A check failed with `skip` as its failure policy.
    FailClosed(Cause, Arc<str>),
    /// Checks failed with `proceed`; the first one's cause and name.
    FailOpen(Cause, Arc<str>),
    /// The gate's deadline ran out; decided by the gate's `on_failure`.
    Timeout(Option<Arc<str>>),
}

/// A chain's end and each check's result.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub results: Vec<CheckResult>,
}

/// What one check came to.
enum Ran {
    Proceed,
    Skip,
    Failed(Cause),
    /// The gate's deadline cut the check short.
    OutOfTime,
}

/// Runs `checks` in order for `facts` until `deadline`; `now` is the time schedules are read
/// at. `on_failure` (the gate's) is the failure policy of checks that set none.
pub async fn run(
    stages: &Stages<'_>,
    checks: &[Check],
    facts: &Facts<'_>,
    context: Option<&Map<String, Value>>,
    on_failure: OnFailure,
    deadline: Instant,
    now: jiff::Timestamp,
) -> Outcome {
    let default = match on_failure {
        OnFailure::Accept => OnCheckFailure::Proceed,
        OnFailure::Reject => OnCheckFailure::Skip,
    };
    let mut results = Vec::with_capacity(checks.len());
    let mut first_failure: Option<(Cause, Arc<str>)> = None;
    let mut credentials: Option<Arc<CredentialMap>> = None;
    for check in checks {
        let result = |status, reason| CheckResult {
            name: Arc::clone(&check.name),
            check_type: check.check_type(),
            status,
            reason,
        };
        if !check.enabled {
            results.push(result(CheckStatus::Disabled, None));
            continue;
        }
        if Instant::now() >= deadline {
            return Outcome { end: End::Timeout(None), results };
        }
        let ran = match &check.kind {
            CheckKind::CallerList(list) => {
                if list.proceeds(facts.caller()) {
                    Ran::Proceed
                } else {
                    Ran::Skip
                }
            }
            CheckKind::Schedule(schedule) => {
                if schedule.is_open(now) {
                    Ran::Proceed
                } else {
                    Ran::Skip
                }
            }
            CheckKind::ExternalApi(api) => {
                let credentials = credentials.get_or_insert_with(|| stages.credentials.load());
                let lookup =
                    Lookup { facts, credentials, credential_id: api.credential_id.as_deref(), context };
                external(stages, api, &lookup, deadline).await
            }
        };
        match ran {
            Ran::Proceed => results.push(result(CheckStatus::Proceed, None)),
            Ran::Skip => {
                results.push(result(CheckStatus::Skip, None));
                return Outcome { end: End::Reject(Arc::clone(&check.name)), results };
            }
            Ran::OutOfTime => {
                results.push(result(CheckStatus::Failed, Some(Cause::Timeout)));
                return Outcome { end: End::Timeout(Some(Arc::clone(&check.name))), results };
            }
            Ran::Failed(cause) => {
                results.push(result(CheckStatus::Failed, Some(cause)));
                match check.default_on_failure.unwrap_or(default) {
                    OnCheckFailure::Skip => {
                        return Outcome { end: End::FailClosed(cause, Arc::clone(&check.name)), results };
                    }
                    OnCheckFailure::Proceed => {
                        first_failure.get_or_insert_with(|| (cause, Arc::clone(&check.name)));
                    }
                }
            }
        }
    }
    let end = match first_failure {
        Some((cause, name)) => End::FailOpen(cause, name),
        None => End::Accept,
    };
    Outcome { end, results }
}

/// The verdict of a chain gate: its end under the gate's `on_failure`, with every result.
pub fn settle_chain(
    outcome: Outcome,
    on_failure: OnFailure,
    source: Source,
    number_agent_id: Option<Arc<str>>,
) -> Verdict {
    let mut verdict = Verdict::without_gate(source, number_agent_id);
    let (decision, cause, reason, result) = match outcome.end {
        End::Accept => (Decision::Accept, None, None, GateResult::Accept),
        End::Reject(name) => (Decision::Reject, None, Some(name), GateResult::Reject),
        End::FailClosed(cause, name) => (Decision::FailClosed, Some(cause), Some(name), GateResult::Failure),
        End::FailOpen(cause, name) => (Decision::FailOpen, Some(cause), Some(name), GateResult::Failure),
        End::Timeout(name) => {
            let decision = match on_failure {
                OnFailure::Accept => Decision::FailOpen,
                OnFailure::Reject => Decision::FailClosed,
            };
            (decision, Some(Cause::Timeout), name, GateResult::Failure)
        }
    };
    verdict.decision = decision;
    verdict.cause = cause;
    verdict.reason = reason.map(|n| n.to_string());
    verdict.gate = Some(GateRun { result, elapsed: Duration::ZERO });
    verdict.checks = outcome.results;
    verdict
}

/// `/v1/precheck`'s answer.
pub struct Precheck {
    pub proceeds: bool,
    pub results: Vec<CheckResult>,
}

/// Runs `checks` for an operator's lead within `limit` (SPEC §11): `skip` when a check skips
/// or fails closed.
pub async fn precheck(
    stages: &Stages<'_>,
    checks: &[Check],
    payload: &Map<String, Value>,
    limit: Duration,
) -> Precheck {
    let facts = Facts::Payload(payload);
    let deadline = Instant::now() + limit;
    let outcome = run(stages, checks, &facts, None, OnFailure::Accept, deadline, (stages.clock)()).await;
    let proceeds = matches!(outcome.end, End::Accept | End::FailOpen(..) | End::Timeout(_));
    Precheck { proceeds, results: outcome.results }
}

/// Placeholder values: the call (or lead) first, then the credential, then pushed context.
struct Lookup<'a> {
    facts: &'a Facts<'a>,
    credentials: &'a CredentialMap,
    credential_id: Option<&'a str>,
    context: Option<&'a Map<String, Value>>,
}

impl Lookup<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(v) = self.facts.get(name) {
            return Some(v);
        }
        let secret = self.credential_id.and_then(|id| self.credentials.get(id)).and_then(|c| c.get(name));
        if let Some(secret) = secret {
            return Some(Cow::Borrowed(secret.expose()));
        }
        self.context.and_then(|c| c.get(name)).and_then(json_text)
    }

    /// `template` with each placeholder's value, percent-encoded when `encode`; `None` when one
    /// resolves to nothing.
    fn fill(&self, template: &str, encode: bool) -> Option<String> {
        let mut out = String::with_capacity(template.len() + 16);
        let mut last = 0;
        for (range, name) in placeholders(template) {
            out.push_str(&template[last..range.start]);
            let value = self.get(name)?;
            if encode {
                out.extend(utf8_percent_encode(&value, COMPONENT));
            } else {
                out.push_str(&value);
            }
            last = range.end;
        }
        out.push_str(&template[last..]);
        Some(out)
    }

    /// A JSON body with placeholders filled in its strings (keys are left as written).
    fn fill_json(&self, value: &Value) -> Option<Value> {
        Some(match value {
            Value::String(s) => Value::String(self.fill(s, false)?),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.fill_json(v)).collect::<Option<_>>()?)
            }
            Value::Object(map) => Value::Object(
                map.iter().map(|(k, v)| Some((k.clone(), self.fill_json(v)?))).collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// What a URL component keeps as it is: RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The request of one `external_api` check, ready to send any number of times.
struct Prepared {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Prepared {
    fn request(&self) -> http::Request<http_body_util::Full<Bytes>> {
        let mut request = http::Request::new(http_body_util::Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Builds the check's request with every placeholder filled; `None` (cause `config`) when one
/// resolves to nothing or the result is not a usable request. Nothing here is logged: the
/// request may carry secrets.
fn prepare(api: &ExternalApi, lookup: &Lookup<'_>) -> Option<Prepared> {
    let mut url = lookup.fill(&api.url, true)?;
    if !api.query_params.is_empty() {
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (key, value) in &api.query_params {
            url.push(sep);
            sep = '&';
            url.extend(utf8_percent_encode(key, COMPONENT));
            url.push('=');
            url.extend(utf8_percent_encode(&lookup.fill(value, false)?, COMPONENT));
        }
    }
    let uri = http::Uri::try_from(url).ok()?;
    uri.host()?;
    let mut headers = http::HeaderMap::with_capacity(api.headers.len() + 2);
    for (name, value) in &api.headers {
        headers.append(name.clone(), HeaderValue::try_from(lookup.fill(value, false)?).ok()?);
    }
    match &api.auth {
        None => {}
        Some(Auth::Bearer { token }) => {
            let value = format!("Bearer {}", lookup.fill(token, false)?);
            headers.insert(AUTHORIZATION, HeaderValue::try_from(value).ok()?);
        }
        Some(Auth::Basic { username, password }) => {
            use base64::Engine as _;
            let pair = format!("{}:{}", lookup.fill(username, false)?, lookup.fill(password, false)?);
            let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            headers.insert(AUTHORIZATION, HeaderValue::try_from(value).ok()?);
        }
    }
    let body = match &api.body {
        None => Bytes::new(),
        Some(body) => {
            let filled = lookup.fill_json(&Value::Object(body.clone()))?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Bytes::from(serde_json::to_vec(&filled).expect("a JSON value serialises"))
        }
    };
    Some(Prepared { method: api.method.clone(), uri, headers, body })
}

/// The pause before retry `n` (0-based): 50, 100, 200, 400 ms...
fn backoff(n: u32) -> Duration {
    Duration::from_millis(50 << n.min(4))
}

/// Runs one `external_api` check: at most 1 + `max_retries` requests (retried on timeout,
/// connect, 5xx and 429 only), never past `deadline`.
async fn external(stages: &Stages<'_>, api: &ExternalApi, lookup: &Lookup<'_>, deadline: Instant) -> Ran {
    let Some(prepared) = prepare(api, lookup) else { return Ran::Failed(Cause::Config) };
    let mut attempt = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ran::OutOfTime;
        }
        let cut = left < api.timeout;
        let (failure, retryable) = match stages.gate.send(prepared.request(), left.min(api.timeout)).await {
            Ok((status, body)) if status.is_success() => {
                return match serde_json::from_slice::<Value>(&body) {
                    Ok(answer) if field(&answer, &api.response_field) == Some(&api.response_field_value) => {
                        Ran::Proceed
                    }
                    Ok(_) => Ran::Skip,
                    Err(_) => Ran::Failed(Cause::Malformed),
                };
            }
            Ok((status, _)) => {
                (Cause::Status, status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
            }
            Err(Cause::Timeout) if cut => return Ran::OutOfTime,
            Err(cause) => (cause, matches!(cause, Cause::Timeout | Cause::Connect)),
        };
        if !retryable || attempt >= api.max_retries {
            return Ran::Failed(failure);
        }
        let pause = backoff(attempt);
        if Instant::now() + pause >= deadline {
            return Ran::Failed(failure);
        }
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// The value at `path` (keys, and indexes into arrays).
fn field<'v>(answer: &'v Value, path: &[Box<str>]) -> Option<&'v Value> {
    path.iter().try_fold(answer, |v, key| match v {
        Value::Object(map) => map.get(&**key),
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_walk_objects_and_arrays() {
        let answer = json!({"data": {"items": [{"is_dnd": false}, {"is_dnd": true}]}, "blocked": "false"});
        let path = |p: &str| p.split('.').map(Into::into).collect::<Vec<Box<str>>>();
        assert_eq!(field(&answer, &path("data.items.1.is_dnd")), Some(&json!(true)));
        assert_eq!(field(&answer, &path("data.items.0.is_dnd")), Some(&json!(false)));
        assert_eq!(field(&answer, &path("data.items.2.is_dnd")), None);
        assert_eq!(field(&answer, &path("blocked")), Some(&json!("false")));
        assert_eq!(field(&answer, &path("blocked.x")), None);
    }

    #[test]
    fn placeholders_fill_from_the_call_then_credentials_then_context() {
        let mut credentials = CredentialMap::default();
        credentials.insert(
            "cred".into(),
            [("key".into(), crate::credentials::Secret::new("S3CRET"))].into_iter().collect(),
        );
        let context = json!({"tier": 3, "from": "+440000000000", "key": "pushed"});
        let facts = Facts::Call { from: "+447700900123", to: "+15005550006", call_id: "CA1", agent_id: None };
        let lookup = Lookup {
            facts: &facts,
            credentials: &credentials,
            credential_id: Some("cred"),
            context: context.as_object(),
        };
        assert_eq!(lookup.fill("{from}|{key}|{tier}", false).unwrap(), "+447700900123|S3CRET|3");
        assert_eq!(lookup.fill("p={customer_mobile_number}", true).unwrap(), "p=%2B447700900123");
        assert_eq!(lookup.fill("{agent_id}", false), None);
        assert_eq!(lookup.fill("{nothing}", false), None);
        assert_eq!(backoff(0), Duration::from_millis(50));
    }
}
