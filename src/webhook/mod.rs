//! The voice webhook, HTTP in and out: read the body (413) → parse the form (400) → check the
//! signature (403) → only inbound ringing calls are decided (400 without `To`), by
//! [`crate::decide`] → busy TwiML, or forward to the engine; then record the verdict.

pub mod signature;
pub mod twilio;
pub mod twiml;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::app::Served;
use crate::body;
use crate::decide::{decide, Call, Deadline, Decision, GateName, Verdict};
use crate::engine::{Peer, Stamp};
use crate::error::RequestError;
use crate::events::DecisionEvent;
use crate::settings::SignatureMode;
use crate::wire::{ResBody, X_TWILIO_SIGNATURE, X_TWILIO_SIGNATURE_SETTINGS};
use crate::App;
use signature::{signed_url, SignedBody};
use twilio::{parse_form, CallParams, Params};

/// Largest body accepted on a voice or signed path.
pub const MAX_WEBHOOK_BODY: usize = 64 * 1024;

/// Handles one request to a voice path (`gated`) or a signed path that arrived (its head read)
/// at `arrived`: the body limit, form and signature checks, then, on a voice path, the decision
/// for an inbound ringing call, and the busy reject or the forward to the engine.
///
/// Every gated call's future is this one, moved into place by hyper on each request, so it is
/// kept small: not an `async fn` (which would hold the request twice), the decision's
/// working values scoped to the wait that needs them, and the engine's request built and boxed
/// by its pool before the wait for its answer.
pub fn handle(
    app: &App,
    request: Request<Incoming>,
    peer: Peer,
    gated: bool,
    arrived: Instant,
) -> impl Future<Output = Served> + Send + '_ {
    let (parts, body) = request.into_parts();
    async move {
        let body = match body::read(&parts.headers, body, MAX_WEBHOOK_BODY, app.settings.header_timeout).await
        {
            Ok(body) => body,
            Err(e) => return Served::refused(e.into()),
        };
        let (forwarding, gate_wait) = {
            // The query lives in the URI; keep our own handle on it so `parts` can move on.
            let uri = parts.uri.clone();
            let (params, carrier) = match parse_params(&parts, &uri, &body) {
                Ok(parsed) => parsed,
                Err(e) => return Served::refused(e),
            };
            if let Err(e) = verify_signature(app, &parts, peer, carrier.signed(&params, &body)) {
                return Served::refused(e);
            }
            let params = CallParams::from_params(&params);
            if !gated || !params.is_inbound_ringing() {
                let stamp = if gated { Stamp::NotGated } else { Stamp::None };
                (
                    app.forward(buffered(parts, &body), peer, stamp, app.settings.upstream_timeout),
                    Duration::ZERO,
                )
            } else {
                let Some(to) = params.to else { return Served::refused(RequestError::MissingTo) };
                let call = Call {
                    call_id: params.call_sid.unwrap_or(""),
                    from: params.from.unwrap_or(""),
                    to,
                    test: false,
                };
                let deadline = Deadline::new(arrived, app.settings.twilio_deadline);
                let verdict = decide(&app.stages(), &call, deadline).await;
                record(app, &call, &verdict);
                let gate_wait = verdict.gate.map_or(Duration::ZERO, |g| g.elapsed) + verdict.context_waited;
                if verdict.decision.blocks() {
                    return Served { response: reject_response(), waited: gate_wait };
                }
                let (timeout, cut) = deadline.cap(app.settings.upstream_timeout);
                if cut {
                    app.metrics.record_deadline_cut();
                }
                let stamp = Stamp::Decided {
                    decision: verdict.decision,
                    agent_id: verdict.agent_id(),
                    context: verdict.context_header.as_ref(),
                };
                (app.forward(buffered(parts, &body), peer, stamp, timeout), gate_wait)
            }
        };
        let mut served = forwarding.await;
        served.waited += gate_wait;
        served
    }
}

/// The request for the engine: Twilio's head and the body as read, untouched.
fn buffered(parts: http::request::Parts, body: &bytes::Bytes) -> Request<crate::engine::EngineBody> {
    Request::from_parts(parts, Either::Left(Full::new(body.clone())))
}

/// Everything a decided call leaves behind, from its verdict, in one place: the metrics, the
/// decision line (SPEC §9) and the decision record (SPEC §10). A duplicate CallSid's copy of
/// the first decision counts only as a dedup and keeps the first record.
fn record(app: &App, call: &Call<'_>, verdict: &Verdict) {
    match verdict.dedup {
        Some(how) => app.metrics.record_dedup(how),
        None => app.metrics.record_verdict(verdict),
    }
    // A field with nothing to say is left out of the line (each is one less to format per call).
    tracing::info!(
        target: "callgate::call",
        call_id = call.call_id,
        to = call.to,
        agent_id = verdict.agent_id(),
        source = verdict.source.as_str(),
        decision = verdict.decision.as_str(),
        cause = verdict.cause.map(|c| c.as_str()),
        reason = verdict.reason.as_deref(),
        gate_ms = verdict.gate_ms(),
        override_agent_id = verdict.override_agent_id(),
        // hit, waited or miss only: pushed context is data about people, never logged.
        context = verdict.context.map(|c| c.as_str()),
        gate = verdict.gate_display.as_ref().map(GateName::as_str),
        checks = (!verdict.checks.is_empty()).then(|| tracing::field::display(Checks(&verdict.checks))),
        dedup = verdict.dedup.map(|d| d.as_str()),
        shadow = verdict.shadow.then_some(true),
        "call decided"
    );
    if verdict.dedup.is_some() {
        return;
    }
    if verdict.enrichment.dropped_invalid > 0 || verdict.context_too_large {
        // Names the problem, never the values (data about people).
        tracing::warn!(
            call_id = call.call_id,
            invalid = verdict.enrichment.dropped_invalid,
            context_too_large = verdict.context_too_large,
            "gate enrichment dropped; the call goes on without it"
        );
    }
    app.decisions.keep(call, verdict, SystemTime::now());
    emit_event(app, call, verdict);
}

/// Hands a reject, fail_closed or fail_open to the decision events (SPEC §14); never waits.
fn emit_event(app: &App, call: &Call<'_>, verdict: &Verdict) {
    let Some(events) = &app.events else { return };
    match verdict.decision {
        Decision::Reject | Decision::FailClosed | Decision::FailOpen => {}
        Decision::Accept | Decision::NoGate | Decision::ShadowReject => return,
    }
    events.emit(DecisionEvent {
        call_id: call.call_id.to_owned(),
        agent_id: verdict.agent_id().map(str::to_owned),
        from_number: (!call.from.is_empty()).then(|| call.from.to_owned()),
        to_number: call.to.to_owned(),
        decision: verdict.decision.as_str(),
        cause: verdict.cause.map(|c| c.as_str()),
        reason: verdict.reason.clone(),
        gate_ms: verdict.gate_ms(),
        checks: if verdict.checks.is_empty() { serde_json::Value::Null } else { verdict.checks_json() },
        occurred_at: SystemTime::now(),
    });
}

/// A chain's results for the decision line: `name=status` joined by `,` (names and statuses
/// only; a failure's cause is in the record).
struct Checks<'a>(&'a [crate::decide::chain::CheckResult]);

impl std::fmt::Display for Checks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", c.name, c.status.as_str())?;
        }
        Ok(())
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
        // Nothing signs a GET's body: it could only be a forgery riding on a signed URL.
        if !body.is_empty() {
            return Err(RequestError::BodyOnGet);
        }
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
    static REFUSALS: crate::logging::Throttle = crate::logging::Throttle::new(20);
    let Some(left_out) = REFUSALS.admit() else { return if enforce { Err(e.into()) } else { Ok(()) } };
    tracing::warn!(
        left_out,
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

/// Busy-tone TwiML: the caller hears busy and the call is never answered.
pub fn reject_response() -> Response<ResBody> {
    let mut response = Response::new(Either::Left(Full::new(twiml::reject_busy())));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}
