//! The admin listener: probes (`/healthz`, `/readyz`), `/metrics`, and the admin API of SPEC §6.
//! Writes go only through the routes writer; every answer is JSON, errors as
//! `{"error":{"code":"...","message":"..."}}`.

mod context;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::App;
use crate::body::{self, BodyError};
use crate::decide::record::Record;
use crate::decide::{decide, Call, Deadline};
use crate::routes::writer::{Edit, WriteError};
use crate::routes::{is_e164, validate_agent_id, Chain, Check, Gate, GateError, GateSpec, RouteTable};
use crate::settings::ApiKey;
use crate::wire::ResBody;

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Every (method, path template) the admin listener routes: what `openapi/callgate-admin.yaml`
/// describes. tests/openapi.rs proves the router, this list and the document agree; add a
/// route here when you add it to [`api`]. A 405's `Allow` header is built from it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("PUT", "/v1/integrations/precall/agent/{agent_id}"),
    ("GET", "/v1/integrations/precall/agent/{agent_id}"),
    ("DELETE", "/v1/integrations/precall/agent/{agent_id}"),
    ("PUT", "/v1/integrations/precall/number/{phone_number}"),
    ("GET", "/v1/integrations/precall/number/{phone_number}"),
    ("DELETE", "/v1/integrations/precall/number/{phone_number}"),
    ("PUT", "/v1/numbers/{phone_number}"),
    ("GET", "/v1/numbers/{phone_number}"),
    ("DELETE", "/v1/numbers/{phone_number}"),
    ("GET", "/v1/routes"),
    ("GET", "/v1/calls/{call_sid}"),
    ("POST", "/v1/test-call"),
    ("POST", "/v1/events/test"),
    ("PUT", "/v1/check-sets/{name}"),
    ("GET", "/v1/check-sets/{name}"),
    ("DELETE", "/v1/check-sets/{name}"),
    ("PUT", "/v1/agents/{agent_id}"),
    ("GET", "/v1/agents/{agent_id}"),
    ("POST", "/v1/context"),
    ("POST", "/v1/precheck"),
];

/// The OpenAPI document of the admin API, served at `GET /v1/openapi.json` (no auth). Generated
/// from `openapi/callgate-admin.yaml`; tests/openapi.rs proves the two are the same document.
pub const OPENAPI_JSON: &str = include_str!("../openapi/callgate-admin.json");

/// The methods [`ROUTES`] gives for the template that `path` matches, for a 405's `Allow`
/// header (HEAD goes with GET, as hyper answers it).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |template: &str| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    };
    let mut methods: Vec<&'static str> =
        ROUTES.iter().filter(|(_, template)| matches(template)).map(|(method, _)| *method).collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

/// A successful admin answer: a JSON value, or JSON already serialised; `Accepted` is a 202.
enum Answer {
    Json(Value),
    Raw(Bytes),
    Accepted(Value),
}

impl From<Value> for Answer {
    fn from(v: Value) -> Answer {
        Answer::Json(v)
    }
}

/// An admin API failure: its status, code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The writer refused it, and counted it as a failed write.
    from_writer: bool,
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into(), from_writer: false }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        let (status, code) = match e {
            WriteError::NoCheckSet(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            WriteError::InUse(_) => (StatusCode::CONFLICT, "in_use"),
            WriteError::ReadOnly(_) => (StatusCode::SERVICE_UNAVAILABLE, "read_only"),
            WriteError::Unsaved(_) | WriteError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "unsaved"),
            WriteError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            WriteError::StoreEmpty => (StatusCode::SERVICE_UNAVAILABLE, "store_empty"),
        };
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return ApiError {
                from_writer: true,
                ..api_error(status, code, format!("{e}; nothing changed"))
            };
        }
        ApiError {
            from_writer: true,
            ..api_error(StatusCode::SERVICE_UNAVAILABLE, code, format!("{e}; nothing changed"))
        }
    }
}

/// One request on the admin listener.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<ResBody> {
    let path = request.uri().path();
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json" => {
            return probe(&app, path, request.method())
        }
        _ => {}
    }
    let path = path.to_owned();
    let write = matches!(*request.method(), Method::PUT | Method::DELETE);
    let result = api(&app, request).await;
    // A write refused before it reached the writer is counted here (the writer counts its
    // own); an unauthenticated request is not a write.
    if let Err(e) = &result {
        if write && !e.from_writer && e.status != StatusCode::UNAUTHORIZED {
            app.metrics.record_admin_write(false);
        }
    }
    match result {
        Ok(Answer::Json(body)) => json_response(StatusCode::OK, &body),
        Ok(Answer::Raw(body)) => text(StatusCode::OK, "application/json", body),
        Ok(Answer::Accepted(body)) => json_response(StatusCode::ACCEPTED, &body),
        Err(e) if e.status == StatusCode::METHOD_NOT_ALLOWED => {
            with_allow(error(e.status, e.code, &e.message), &path)
        }
        Err(e) => error(e.status, e.code, &e.message),
    }
}

/// A 405 names the methods the endpoint takes (RFC 9110 §15.5.6).
fn with_allow(mut response: Response<ResBody>, path: &str) -> Response<ResBody> {
    let allow = allowed_methods(path).join(", ");
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
}

fn probe(app: &App, path: &str, method: &Method) -> Response<ResBody> {
    if method != Method::GET && method != Method::HEAD {
        return with_allow(error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET"), path);
    }
    let plain = "text/plain; charset=utf-8";
    match path {
        "/v1/openapi.json" => {
            text(StatusCode::OK, "application/json", Bytes::from_static(OPENAPI_JSON.as_bytes()))
        }
        "/healthz" => text(StatusCode::OK, plain, "ok\n".into()),
        "/readyz" if app.is_ready() => text(StatusCode::OK, plain, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, plain, "not ready\n".into()),
        _ => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", app.metrics.render().into()),
    }
}

/// The routes of the admin API, after authentication (401 comes before 404).
async fn api(app: &App, request: Request<Incoming>) -> Result<Answer, ApiError> {
    authenticate(&app.settings.api_keys, request.headers())?;
    // Until the first table is in, an answer would describe an empty table (and a write would
    // be applied to one): wait for it. The load is seconds at most; probes do not wait.
    let _ = app.table_loaded.subscribe().wait_for(|loaded| *loaded).await;
    let (parts, body) = request.into_parts();
    let segments: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
    let method = &parts.method;
    match segments.as_slice() {
        ["v1", "integrations", "precall", "agent", id] => {
            gate_endpoint(app, GateOwner::Agent, id, method, &parts.headers, body).await
        }
        ["v1", "integrations", "precall", "number", number] => {
            gate_endpoint(app, GateOwner::Number, number, method, &parts.headers, body).await
        }
        ["v1", "numbers", number] => {
            let number = phone_number(number)?;
            match *method {
                Method::PUT => {
                    let agent = read_assignment(&parts.headers, body, app.settings.header_timeout).await?;
                    app.writer
                        .edit(Edit::NumberAgent { number: number.clone(), agent_id: Some(agent.clone()) })
                        .await?;
                    Ok(json!({ "phone_number": number, "agent_id": agent }).into())
                }
                Method::GET => {
                    let table = app.routes.load();
                    Ok(
                        json!({ "phone_number": number, "agent_id": table.number_agent(&number).map(|a| &**a) }).into(),
                    )
                }
                Method::DELETE => {
                    let deleted =
                        app.writer.edit(Edit::NumberAgent { number: number.clone(), agent_id: None }).await?;
                    Ok(json!({ "ok": true, "deleted": deleted, "phone_number": number }).into())
                }
                _ => Err(not_allowed()),
            }
        }
        ["v1", "test-call"] => match *method {
            Method::POST => test_call(app, &parts.headers, body).await,
            _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")),
        },
        ["v1", "context"] => match *method {
            Method::POST => {
                let pushed = context::read_push(&parts.headers, body, app.settings.header_timeout).await;
                let (agent_id, caller, fields) = pushed.inspect_err(|_| {
                    app.metrics.record_context(crate::decide::context::ContextResult::Refused)
                })?;
                app.contexts.push(&agent_id, &caller, fields).await;
                let expires_in_s = app.contexts.ttl().as_secs();
                Ok(Answer::Accepted(json!({ "ok": true, "expires_in_s": expires_in_s })))
            }
            _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")),
        },
        ["v1", "agents", id] => {
            let agent_id = agent_id(id)?;
            match *method {
                Method::PUT => {
                    let value = read_json(&parts.headers, body, app.settings.header_timeout).await?;
                    let wait_ms = context::read_agent_settings(&value)?;
                    app.writer.edit(Edit::AgentContextWait { agent_id: agent_id.clone(), wait_ms }).await?;
                    Ok(json!({ "agent_id": agent_id, "context_wait_ms": wait_ms }).into())
                }
                Method::GET => {
                    let wait_ms = app.routes.load().agent_context_wait_ms(&agent_id);
                    Ok(json!({ "agent_id": agent_id, "context_wait_ms": wait_ms }).into())
                }
                _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use PUT or GET")),
            }
        }
        ["v1", "calls", call_sid] => match *method {
            Method::GET => {
                let sid = decoded(call_sid).unwrap_or_default();
                match app.decisions.get(&sid) {
                    Some(record) => Ok(serde_json::to_value(&record).expect("a record serialises").into()),
                    None => Err(api_error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no recent decision for that call (unknown, or older than the last --decision-log-size)",
                    )),
                }
            }
            _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")),
        },
        ["v1", "check-sets", name] => check_set_endpoint(app, name, method, &parts.headers, body).await,
        ["v1", "precheck"] => match *method {
            Method::POST => {
                let value = read_json(&parts.headers, body, app.settings.header_timeout).await?;
                precheck(app, value).await
            }
            _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")),
        },
        ["v1", "routes"] => match *method {
            // Serialised straight from the table, so a million numbers never become a `Value`,
            // and off the runtime, which also answers probes and scrapes.
            Method::GET => {
                let table = app.routes.load_full();
                let json = tokio::task::spawn_blocking(move || serde_json::to_vec(&*table))
                    .await
                    .expect("serialising does not panic")
                    .expect("a table serialises");
                Ok(Answer::Raw(Bytes::from(json)))
            }
            _ => Err(not_allowed()),
        },
        ["v1", "events", "test"] => match *method {
            Method::POST => {
                let Some(events) = &app.events else {
                    return Err(api_error(
                        StatusCode::CONFLICT,
                        "not_configured",
                        "decision events are off: start callgate with --events-url and --events-signing-secret",
                    ));
                };
                Ok(json!(events.send_test().await).into())
            }
            _ => Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")),
        },
        _ => Err(api_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
    }
}

/// `POST /v1/test-call` (SPEC §16): a call through resolution, context and the gate, told it is
/// a test (`"test": true`), answered with the decision record it would get. Nothing is
/// forwarded, kept or counted as a call.
async fn test_call(app: &App, headers: &HeaderMap, body: Incoming) -> Result<Answer, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestCall {
        to: String,
        #[serde(default)]
        from: String,
    }
    let value = read_json(headers, body, app.settings.header_timeout).await?;
    if !value.get("to").is_some_and(Value::is_string) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "to is required and must be a string",
        ));
    }
    let request: TestCall = from_value(&value)?;
    let call_id = test_call_sid();
    let call = Call { call_id: &call_id, from: &request.from, to: &request.to, test: true };
    let deadline = Deadline::new(std::time::Instant::now(), app.settings.twilio_deadline);
    let verdict = decide(&app.stages(), &call, deadline).await;
    let record = Record::new(&call, &verdict, std::time::SystemTime::now());
    Ok(serde_json::to_value(record).expect("a record serialises").into())
}

/// A CallSid for a test call: `CA` and 32 hex digits, from the process's random hash keys.
fn test_call_sid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("CA{:016x}{:016x}", random(), random())
}

/// What a gate endpoint sets the gate of: an agent (`/precall/agent/{agent_id}`) or a number
/// (`/precall/number/{phone_number}`). The two endpoints differ only in these four things.
#[derive(Clone, Copy)]
enum GateOwner {
    Agent,
    Number,
}

impl GateOwner {
    /// The id's field name in answers.
    fn key(self) -> &'static str {
        match self {
            GateOwner::Agent => "agent_id",
            GateOwner::Number => "phone_number",
        }
    }

    fn parse(self, segment: &str) -> Result<String, ApiError> {
        match self {
            GateOwner::Agent => agent_id(segment),
            GateOwner::Number => phone_number(segment),
        }
    }

    fn gate<'t>(self, table: &'t RouteTable, id: &str) -> Option<&'t Gate> {
        match self {
            GateOwner::Agent => table.agent_gate(id),
            GateOwner::Number => table.number_gate(id),
        }
        .map(|g| &**g)
    }

    fn edit(self, id: String, gate: Option<Gate>) -> Edit {
        match self {
            GateOwner::Agent => Edit::AgentGate { agent_id: id, gate },
            GateOwner::Number => Edit::NumberGate { number: id, gate },
        }
    }
}

/// PUT, GET or DELETE of an agent's or a number's gate (SPEC §6).
async fn gate_endpoint(
    app: &App,
    owner: GateOwner,
    segment: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Answer, ApiError> {
    let id = owner.parse(segment)?;
    let key = owner.key();
    match *method {
        Method::PUT => {
            let gate = read_gate(app, headers, body).await?;
            let answer = gate_answer(key, &id, &gate);
            app.writer.edit(owner.edit(id, Some(gate))).await?;
            Ok(answer.into())
        }
        Method::GET => Ok(gate_state(key, &id, owner.gate(&app.routes.load(), &id)).into()),
        Method::DELETE => {
            let deleted = app.writer.edit(owner.edit(id.clone(), None)).await?;
            Ok(json!({ "ok": true, "deleted": deleted, key: id }).into())
        }
        _ => Err(not_allowed()),
    }
}

/// PUT, GET or DELETE of a named check set (SPEC §6): the body and the answer's `checks` are
/// an array of checks.
async fn check_set_endpoint(
    app: &App,
    segment: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Answer, ApiError> {
    let name = match decoded(segment) {
        Some(n) if validate_agent_id(&n) => n.into_owned(),
        _ => return Err(api_error(StatusCode::BAD_REQUEST, "invalid_field", "invalid check set name")),
    };
    match *method {
        Method::PUT => {
            let value = read_json(headers, body, app.settings.header_timeout).await?;
            let checks = read_checks(app, &value, "checks")?;
            // What is kept, as GET answers it (a `null` member read as not given is left out).
            let answer = json!({ "name": name, "checks": checks.iter().map(Check::raw).collect::<Vec<_>>() });
            app.writer.edit(Edit::CheckSet { name, checks: Some(checks) }).await?;
            Ok(answer.into())
        }
        Method::GET => match app.routes.load().check_set(&name) {
            Some(checks) => {
                let checks: Vec<&Value> = checks.iter().map(Check::raw).collect();
                Ok(json!({ "name": name, "checks": checks }).into())
            }
            None => Err(api_error(StatusCode::NOT_FOUND, "not_found", "no check set of that name")),
        },
        Method::DELETE => {
            let deleted = app.writer.edit(Edit::CheckSet { name: name.clone(), checks: None }).await?;
            Ok(json!({ "ok": true, "deleted": deleted, "name": name }).into())
        }
        _ => Err(not_allowed()),
    }
}

/// An array of checks, validated; every problem in the message, each with its path.
fn read_checks(app: &App, value: &Value, at: &str) -> Result<Arc<[Check]>, ApiError> {
    let mut problems = Vec::new();
    match crate::routes::checks::parse_checks(value, at, &app.settings.validate_options(), &mut problems) {
        Some(checks) => Ok(checks.into()),
        None => Err(api_error(StatusCode::BAD_REQUEST, "invalid_field", problems.join("; "))),
    }
}

/// `POST /v1/precheck` (SPEC §11): an operator's outbound call checked by a named set or the
/// checks given, with the lead's `payload` as placeholders.
async fn precheck(app: &App, value: Value) -> Result<Answer, ApiError> {
    let field = |name: &str, message: &str| {
        api_error(StatusCode::BAD_REQUEST, "invalid_field", format!("{name}: {message}"))
    };
    let Value::Object(mut request) = value else {
        return Err(field("body", "must be an object {\"check_set\" or \"checks\", \"payload\"}"));
    };
    if let Some(unknown) = request.keys().find(|k| !["check_set", "checks", "payload"].contains(&k.as_str()))
    {
        let shown: String = unknown.chars().take(64).collect();
        return Err(field(&shown, "unknown field, expected `check_set`, `checks` or `payload`"));
    }
    let payload = match request.remove("payload") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(field("payload", "must be an object of the lead's fields")),
    };
    if payload.get("customer_mobile_number").is_some_and(|v| !v.is_string()) {
        return Err(field("payload.customer_mobile_number", "must be a string"));
    }
    let checks = match (request.get("check_set"), request.get("checks")) {
        (Some(Value::String(name)), None) => match app.routes.load().check_set(name) {
            Some(checks) => Arc::clone(checks),
            None => return Err(field("check_set", "no check set of that name")),
        },
        (Some(_), None) => return Err(field("check_set", "must be a string")),
        (None, Some(checks)) => read_checks(app, checks, "checks")?,
        (None, None) => return Err(field("check_set", "give `check_set` or `checks`")),
        (Some(_), Some(_)) => return Err(field("checks", "give `check_set` or `checks`, not both")),
    };
    let outcome =
        crate::decide::chain::precheck(&app.stages(), &checks, &payload, app.settings.gate_timeout).await;
    app.metrics.record_checks(&outcome.results);
    let results: Vec<Value> = outcome
        .results
        .iter()
        .map(|r| {
            let mut v = json!({ "name": &*r.name, "status": r.status.as_str() });
            if let Some(cause) = r.reason {
                v["reason"] = json!(cause.as_str());
            }
            v
        })
        .collect();
    Ok(json!({ "decision": if outcome.proceeds { "proceed" } else { "skip" }, "pre_check_results": results })
        .into())
}

/// `Authorization: Bearer KEY_ID:KEY_SECRET` against the configured keys. The id picks the key;
/// the secret is compared in constant time. With no keys configured, every call is refused.
fn authenticate(keys: &[ApiKey], headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = || {
        api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer KEY_ID:KEY_SECRET (the full key: id, a colon, then the secret)",
        )
    };
    let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(refused)?;
    let (scheme, credentials) = value.split_once(' ').ok_or_else(refused)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(refused());
    }
    let (id, secret) = credentials.trim().split_once(':').ok_or_else(refused)?;
    let key = keys.iter().find(|k| k.id == id).ok_or_else(refused)?;
    if key.matches(secret.as_bytes()) {
        Ok(())
    } else {
        Err(refused())
    }
}

fn not_allowed() -> ApiError {
    api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint takes PUT, GET or DELETE")
}

/// A path segment percent-decoded, if it decodes to UTF-8.
fn decoded(segment: &str) -> Option<std::borrow::Cow<'_, str>> {
    percent_encoding::percent_decode_str(segment).decode_utf8().ok()
}

/// A `{phone_number}` path segment, `+` or `%2B`, as E.164.
fn phone_number(segment: &str) -> Result<String, ApiError> {
    match decoded(segment) {
        Some(n) if is_e164(&n) => Ok(n.into_owned()),
        _ => Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_phone_number",
            "a phone number is E.164: + then 2 to 15 digits (write + or %2B)",
        )),
    }
}

fn agent_id(segment: &str) -> Result<String, ApiError> {
    match decoded(segment) {
        Some(id) if validate_agent_id(&id) => Ok(id.into_owned()),
        _ => Err(api_error(StatusCode::BAD_REQUEST, "invalid_field", "invalid agent_id")),
    }
}

/// Reads a JSON PUT body: 415 unless `application/json`, 413 over 64 KiB, 400 if not JSON.
async fn read_json(headers: &HeaderMap, body: Incoming, within: Duration) -> Result<Value, ApiError> {
    if !body::is_json(headers) {
        return Err(api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    let bytes = match body::read(headers, body, MAX_ADMIN_BODY, within).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(_)) => {
            return Err(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is over 64 KiB",
            ))
        }
        Err(BodyError::Timeout(_)) => {
            return Err(api_error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive in time",
            ))
        }
        Err(_) => return Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", "could not read the body")),
    };
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(value)) => Ok(value),
        Err(e) => {
            Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}")))
        }
    }
}

/// A JSON value in which no object gives a key twice: as in the routes file, the last one
/// silently winning is refused (`invalid_json`).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format_args!("duplicate key {shown:?}")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Strict(Value::Object(object)))
    }
}

/// A gate PUT body: `{"url": "https://...", "timeout_ms"?, "on_failure"?, "mode"?}`, validated.
async fn read_gate(app: &App, headers: &HeaderMap, body: Incoming) -> Result<Gate, ApiError> {
    let value = read_json(headers, body, app.settings.header_timeout).await?;
    let Value::Object(object) = &value else {
        return Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
    };
    let kinds = ["url", "checks", "check_set"].iter().filter(|k| object.contains_key(**k)).count();
    if kinds != 1 {
        // No kind at all answers as a missing `url` always has.
        let code = if kinds == 0 { "invalid_url" } else { "invalid_field" };
        return Err(api_error(StatusCode::BAD_REQUEST, code, GateError::Kind.to_string()));
    }
    if object.get("url").is_some_and(|u| !u.is_string()) {
        return Err(api_error(StatusCode::BAD_REQUEST, "invalid_url", "url must be a string"));
    }
    let spec: GateSpec<'_> = from_value(&value)?;
    spec.validate(&app.settings.validate_options()).map_err(|errors| {
        let first = errors.first();
        let code = match first.map(GateError::field) {
            Some("url") => "invalid_url",
            _ => "invalid_field",
        };
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        api_error(StatusCode::BAD_REQUEST, code, message)
    })
}

/// A number assignment PUT body: `{"agent_id": "..."}`.
async fn read_assignment(headers: &HeaderMap, body: Incoming, within: Duration) -> Result<String, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Assignment {
        agent_id: String,
    }
    let value = read_json(headers, body, within).await?;
    let assignment: Assignment = from_value(&value)?;
    if !validate_agent_id(&assignment.agent_id) {
        return Err(api_error(StatusCode::BAD_REQUEST, "invalid_field", "invalid agent_id"));
    }
    Ok(assignment.agent_id)
}

/// serde's messages quote the offending value, which may be a secret URL: keep only the part
/// before the quote.
fn scrub(message: &str) -> String {
    message.split('"').next().unwrap_or(message).trim_end().to_owned()
}

/// A GET's answer: `{key: id, "precall_webhook_url": url or null, "is_set"}`, and a chain
/// gate's `checks` or `check_set`.
fn gate_state(key: &str, id: &str, gate: Option<&Gate>) -> Value {
    let url = gate.filter(|g| g.chain().is_none()).map(Gate::url);
    let mut state = json!({ key: id, "precall_webhook_url": url, "is_set": gate.is_some() });
    match gate.and_then(Gate::chain) {
        Some(Chain::Checks(checks)) => {
            state["checks"] = Value::Array(checks.iter().map(|c| c.raw().clone()).collect());
        }
        Some(Chain::Set(name)) => state["check_set"] = json!(&**name),
        None => {}
    }
    state
}

/// A PUT's answer: the state, plus the options set.
fn gate_answer(key: &str, id: &str, gate: &Gate) -> Value {
    let mut answer = gate_state(key, id, Some(gate));
    if let Some(ms) = gate.timeout_ms() {
        answer["timeout_ms"] = json!(ms);
    }
    answer["on_failure"] = json!(gate.on_failure().as_str());
    answer["mode"] = json!(gate.mode().as_str());
    answer
}

/// A JSON value read as `T`; a wrong or unknown field is `invalid_field`, scrubbed of values.
fn from_value<'v, T: serde::Deserialize<'v>>(value: &'v Value) -> Result<T, ApiError> {
    T::deserialize(value)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid_field", scrub(&e.to_string())))
}

fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ResBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResBody> {
    text(status, "application/json", Bytes::from(body.to_string()))
}

/// `{"error":{"code":"...","message":"..."}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<ResBody> {
    json_response(status, &json!({ "error": { "code": code, "message": message } }))
}
