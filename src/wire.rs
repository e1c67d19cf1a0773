//! Leaf types every layer shares: the response body type, the header names callgate reads and
//! writes, and callgate's own short plain-text answers. Imports nothing of callgate's.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Every response body callgate sends: its own (buffered) or the engine's (streamed).
pub type ResBody = Either<Full<Bytes>, Incoming>;

pub const X_TWILIO_SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");
pub const X_TWILIO_SIGNATURE_SETTINGS: HeaderName =
    HeaderName::from_static("x-twilio-webhooks-signature-settings");
/// What callgate decided about a voice request (SPEC §4, item 5).
pub const X_CALLGATE_DECISION: HeaderName = HeaderName::from_static("x-callgate-decision");
/// The agent that handles the call: the gate's override, else the number's.
pub const X_CALLGATE_AGENT_ID: HeaderName = HeaderName::from_static("x-callgate-agent-id");
/// Unpadded base64url of the call's enrichment as compact JSON (SPEC §10).
pub const X_CALLGATE_CONTEXT: HeaderName = HeaderName::from_static("x-callgate-context");

/// A short plain-text answer from callgate itself; with `close`, the connection ends after it.
pub fn text_response(status: StatusCode, text: String, close: bool) -> Response<ResBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if close {
        // The rest of an unread body would be taken for the next request: end the connection.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
