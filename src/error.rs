//! Request errors on the public listener and the one function that turns each into what the
//! client sees. The match is exhaustive on purpose: a new failure does not compile until someone
//! decides what Twilio gets.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ClientFault;
use crate::engine::EngineError;
use crate::webhook::signature::SignatureError;
use crate::webhook::twilio::FormError;
use crate::ResBody;

/// Why a request on the public listener got an answer from callgate rather than the engine.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the request body")]
    BodyRead(#[source] hyper::Error),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("a GET or HEAD webhook carries no body: its signature covers the URL alone")]
    BodyOnGet,
    #[error("malformed form body")]
    Form(#[from] FormError),
    #[error("inbound ringing call without To")]
    MissingTo,
    // The reason is logged, never answered: it would tell a prober which SharedKey ids exist.
    #[error("X-Twilio-Signature did not validate")]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RequestError {
    /// The response for this error. Nothing here reaches the gate or the engine.
    pub fn into_response(self) -> Response<ResBody> {
        let status = match &self {
            RequestError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::BodyRead(_) => StatusCode::BAD_REQUEST,
            RequestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            RequestError::BodyOnGet => StatusCode::BAD_REQUEST,
            RequestError::Form(_) => StatusCode::BAD_REQUEST,
            RequestError::MissingTo => StatusCode::BAD_REQUEST,
            RequestError::Signature(_) => StatusCode::FORBIDDEN,
            RequestError::Engine(EngineError::Connect(_)) => StatusCode::BAD_GATEWAY,
            RequestError::Engine(EngineError::Protocol(_)) => StatusCode::BAD_GATEWAY,
            RequestError::Engine(EngineError::UnaskedUpgrade) => StatusCode::BAD_GATEWAY,
            RequestError::Engine(EngineError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            RequestError::Engine(EngineError::BodyTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Engine(EngineError::Client(ClientFault::Timeout(_))) => StatusCode::REQUEST_TIMEOUT,
            RequestError::Engine(EngineError::Client(_)) => StatusCode::BAD_REQUEST,
        };
        let close = matches!(
            self,
            RequestError::BodyTooLarge(_)
                | RequestError::BodyRead(_)
                | RequestError::BodyTimeout(_)
                | RequestError::Engine(EngineError::Client(_))
        );
        text_response(status, format!("{self}\n"), close)
    }
}

/// A short plain-text answer from callgate itself.
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
