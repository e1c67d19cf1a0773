//! Bodies on their way in: the declared length, the content type, and reading a bounded body
//! within a deadline. Shared by the webhook, the admin API, forwarding and the gate client.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not read the request body")]
    Read(#[source] hyper::Error),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
}

/// The `Content-Length` a message declares, if it declares a readable one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// `Content-Type: application/json`, parameters (`; charset=...`) allowed.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a body of at most `limit` bytes within `within` (a client that trickles its body holds
/// a connection as surely as one that trickles its head); a declared length over the limit is
/// refused before reading anything.
pub async fn read(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    within: Duration,
) -> Result<Bytes, BodyError> {
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let collected = tokio::time::timeout(within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| BodyError::Timeout(within))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(e) => Err(BodyError::Read(*e)),
            Err(_) => Err(BodyError::TooLarge(limit)),
        },
    }
}
