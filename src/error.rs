//! Request errors on the public listener and the one function that turns each into what the
//! client sees. The match is exhaustive on purpose: a new failure does not compile until someone
//! decides what Twilio gets.

use http::{Response, StatusCode};

use crate::body::{BodyError, ClientFault};
use crate::engine::EngineError;
use crate::webhook::signature::SignatureError;
use crate::webhook::twilio::FormError;
pub use crate::wire::text_response;
use crate::wire::ResBody;

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

impl From<BodyError> for RequestError {
    fn from(e: BodyError) -> RequestError {
        match e {
            BodyError::TooLarge(limit) => RequestError::BodyTooLarge(limit),
            BodyError::Read(e) => RequestError::BodyRead(e),
            BodyError::Timeout(within) => RequestError::BodyTimeout(within),
        }
    }
}
