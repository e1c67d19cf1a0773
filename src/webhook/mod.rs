//! The voice webhook. This is the only place that orders the phases of a voice request:
//! read the body (413) → parse the form (400) → gate only inbound ringing calls (400 without
//! `To`) → resolve one gate from one routes snapshot → ask it → reject with TwiML, or forward.

pub mod signature;
pub mod twilio;
pub mod twiml;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::body;
use crate::engine::Peer;
use crate::error::RequestError;
use crate::gate::{GateDecision, GateRequest};
use crate::metrics::{Decision, GateResult};
use crate::routes::{Gate, OnFailure, Source};
use crate::settings::SignatureMode;
use crate::App;
use crate::ResBody;
use signature::{signed_url, SignedBody};
use twilio::{parse_form, CallParams, Params};

/// Largest body accepted on a voice or signed path.
pub const MAX_WEBHOOK_BODY: usize = 64 * 1024;

const X_TWILIO_SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");
const X_TWILIO_SIGNATURE_SETTINGS: HeaderName =
    HeaderName::from_static("x-twilio-webhooks-signature-settings");
const X_CALLGATE_DECISION: HeaderName = HeaderName::from_static("x-callgate-decision");
const X_CALLGATE_AGENT_ID: HeaderName = HeaderName::from_static("x-callgate-agent-id");

/// The time a request spent waiting on others (gate, engine), to be taken out of the overhead.
#[derive(Default)]
pub struct Waits(pub Duration);

/// Handles one request to a voice path (`gated`) or a signed path: the body limit, form and
/// signature checks, then, on a voice path, the gate for an inbound ringing call.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    peer: Peer,
    gated: bool,
    waits: &mut Waits,
) -> Result<Response<ResBody>, RequestError> {
    let (parts, body) = request.into_parts();
    let body = body::read(&parts.headers, body, MAX_WEBHOOK_BODY, app.settings.header_timeout).await?;
    // The query lives in the URI; keep our own handle on it so `parts` can move on.
    let uri = parts.uri.clone();
    let (params, carrier) = parse_params(&parts, &uri, &body)?;
    verify_signature(app, &parts, peer, carrier.signed(&params, &body))?;
    let call = CallParams::from_params(&params);
    if !gated || !call.is_inbound_ringing() {
        let decision = gated.then_some(("not_gated", None));
        let request = Request::from_parts(parts, Either::Left(Full::new(body.clone())));
        return app.forward_buffered(request, peer, decision, waits).await;
    }
    let to = call.to.ok_or(RequestError::MissingTo)?;

    let (gate, source, agent_id) = resolve(app, to);
    let outcome = match &gate {
        None => Outcome { decision: Decision::NoGate, cause: None, reason: None, gate_time: None },
        Some(gate) => ask(app, gate, &call, to, agent_id.as_deref(), waits).await,
    };
    log_decision(&call, to, agent_id.as_deref(), source, gate.as_deref(), &outcome);
    app.metrics.record_decision(outcome.decision);

    match outcome.decision {
        Decision::Reject | Decision::FailClosed => Ok(reject_response()),
        Decision::Accept | Decision::FailOpen | Decision::NoGate => {
            let request = Request::from_parts(parts, Either::Left(Full::new(body.clone())));
            let label = outcome.decision.as_str();
            app.forward_buffered(request, peer, Some((label, agent_id.as_deref())), waits).await
        }
    }
}

/// Where a webhook's parameters came from, which decides what its signature covers.
#[derive(Clone, Copy)]
enum Carrier {
    /// A GET's query: the URL alone is signed.
    Query,
    /// A form body: its decoded parameters are appended to the URL.
    Form,
    /// A JSON body: covered by the URL's `bodySHA256`.
    Json,
}

impl Carrier {
    fn signed<'a>(self, params: &'a Params<'a>, body: &'a [u8]) -> SignedBody<'a> {
        match self {
            Carrier::Query => SignedBody::Nothing,
            Carrier::Form => SignedBody::Form(params),
            Carrier::Json => SignedBody::Json(body),
        }
    }
}

/// The webhook's parameters (a GET's query, a POST's form; none for a JSON body). Twilio sends
/// every POST as a form: any body but JSON is read as one, so a URL-only signature can never
/// carry a forged body.
fn parse_params<'b>(
    parts: &http::request::Parts,
    uri: &'b http::Uri,
    body: &'b [u8],
) -> Result<(Params<'b>, Carrier), RequestError> {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        Ok((parse_form(uri.query().unwrap_or("").as_bytes())?, Carrier::Query))
    } else if body::is_json(&parts.headers) {
        Ok((Vec::new(), Carrier::Json))
    } else {
        Ok((parse_form(body)?, Carrier::Form))
    }
}

/// Checks `X-Twilio-Signature` as `--twilio-signature` says: off, report (count, log, let
/// through) or enforce (403).
fn verify_signature(
    app: &App,
    parts: &http::request::Parts,
    peer: Peer,
    body: SignedBody<'_>,
) -> Result<(), RequestError> {
    let Some(verifier) = &app.verifier else { return Ok(()) };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = signed_url(app.settings.public_url.as_deref(), peer.tls, &parts.headers, path_and_query);
    let signature = parts.headers.get(X_TWILIO_SIGNATURE).map(HeaderValue::as_bytes);
    let settings = parts.headers.get(X_TWILIO_SIGNATURE_SETTINGS).map(HeaderValue::as_bytes);
    let verified = url.and_then(|url| verifier.verify(&url, body, signature, settings));
    let Err(e) = verified else { return Ok(()) };
    app.metrics.record_signature_failure();
    let enforce = app.settings.twilio_signature == SignatureMode::Enforce;
    tracing::warn!(
        path = parts.uri.path(),
        reason = e.as_str(),
        peer = %peer.addr.ip(),
        action = if enforce { "refused" } else { "let through (report mode)" },
        "X-Twilio-Signature did not validate"
    );
    if enforce {
        Err(RequestError::Signature(e))
    } else {
        Ok(())
    }
}

/// Resolves `to` in one snapshot of the table, taking out only what the call needs so that no
/// snapshot is held across the gate's wait.
fn resolve(app: &App, to: &str) -> (Option<Arc<Gate>>, Source, Option<Arc<str>>) {
    let table = app.routes.load();
    let resolution = table.resolve(to);
    (resolution.gate.cloned(), resolution.source, resolution.agent_id.cloned())
}

struct Outcome {
    decision: Decision,
    cause: Option<&'static str>,
    reason: Option<String>,
    gate_time: Option<Duration>,
}

async fn ask(
    app: &App,
    gate: &Gate,
    call: &CallParams<'_>,
    to: &str,
    agent_id: Option<&str>,
    waits: &mut Waits,
) -> Outcome {
    let request = GateRequest {
        event: "call.inbound",
        from: call.from.unwrap_or(""),
        to,
        call_id: call.call_sid.unwrap_or(""),
        agent_id,
    };
    let started = Instant::now();
    let answer = app.gate.check(gate, &request).await;
    let elapsed = started.elapsed();
    waits.0 += elapsed;
    let (decision, result, cause, reason) = match answer {
        GateDecision::Accept => (Decision::Accept, GateResult::Accept, None, None),
        GateDecision::Reject { reason } => (Decision::Reject, GateResult::Reject, None, reason),
        GateDecision::Failure(cause) => {
            app.metrics.record_gate_failure(cause);
            let decision = match gate.on_failure() {
                OnFailure::Accept => Decision::FailOpen,
                OnFailure::Reject => Decision::FailClosed,
            };
            (decision, GateResult::Failure, Some(cause.as_str()), None)
        }
    };
    app.metrics.record_gate(result, elapsed);
    Outcome { decision, cause, reason, gate_time: Some(elapsed) }
}

/// The one log line per decided call (SPEC §9). The gate is named by its display form only.
fn log_decision(
    call: &CallParams<'_>,
    to: &str,
    agent_id: Option<&str>,
    source: Source,
    gate: Option<&Gate>,
    outcome: &Outcome,
) {
    tracing::info!(
        target: "callgate::call",
        call_id = call.call_sid.unwrap_or(""),
        to,
        agent_id = agent_id.unwrap_or(""),
        source = source.as_str(),
        decision = outcome.decision.as_str(),
        cause = outcome.cause.unwrap_or(""),
        reason = outcome.reason.as_deref().unwrap_or(""),
        gate_ms = outcome.gate_time.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        gate = gate.map_or("", Gate::display),
        "call decided"
    );
}

/// Busy-tone TwiML: the caller hears busy and the call is never answered.
pub fn reject_response() -> Response<ResBody> {
    let mut response = Response::new(Either::Left(Full::new(twiml::reject_busy())));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

/// Sets callgate's own headers on a voice request bound for the engine.
pub fn set_decision_headers(headers: &mut http::HeaderMap, decision: &'static str, agent_id: Option<&str>) {
    headers.insert(X_CALLGATE_DECISION, HeaderValue::from_static(decision));
    if let Some(v) = agent_id.and_then(|a| HeaderValue::try_from(a).ok()) {
        headers.insert(X_CALLGATE_AGENT_ID, v);
    }
}
