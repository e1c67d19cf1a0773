//! The admin API's caller-context calls (SPEC §6, §12): reading a `POST /v1/context` push and
//! a `PUT /v1/agents/{agent_id}` body. Nothing here logs a pushed value.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::{api_error, ApiError, Strict};
use crate::body::{self, BodyError};
use crate::decide::context::{Fields, MAX_CONTEXT_BODY};
use crate::routes::{is_e164, validate_agent_id, MAX_CONTEXT_WAIT_MS};

/// A push: its agent id, the caller's number and the other fields. `agent_id` or `agentId`, and
/// `phone_number` or `phoneNumber` (the seed's spelling); any content type, the body read as
/// JSON.
pub(super) async fn read_push(
    headers: &HeaderMap,
    body: Incoming,
    within: Duration,
) -> Result<(String, String, Fields), ApiError> {
    let bytes = match body::read(headers, body, MAX_CONTEXT_BODY, within).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(_)) => {
            return Err(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "a context push is at most 8 KiB",
            ))
        }
        Err(BodyError::Timeout(_)) => {
            return Err(api_error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive in time",
            ))
        }
        Err(BodyError::Read(_)) => {
            return Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", "could not read the body"))
        }
    };
    // serde's message may quote a value: say only where the JSON broke.
    let Strict(value) = serde_json::from_slice::<Strict>(&bytes).map_err(|e| {
        let at = format!("line {} column {}", e.line(), e.column());
        api_error(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON ({at})"))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
    };
    let agent_id = either(&mut fields, "agent_id", "agentId")?;
    let caller = either(&mut fields, "phone_number", "phoneNumber")?;
    if !validate_agent_id(&agent_id) {
        return Err(invalid("agent_id: not a valid agent id"));
    }
    if !is_e164(&caller) {
        return Err(invalid("phone_number: the caller's number in E.164 (+ then 2 to 15 digits)"));
    }
    Ok((agent_id, caller, fields))
}

/// The string under `snake` or `camel` (one of them, not both), taken out of `fields`.
fn either(fields: &mut Fields, snake: &str, camel: &str) -> Result<String, ApiError> {
    match (fields.remove(snake), fields.remove(camel)) {
        (Some(Value::String(v)), None) | (None, Some(Value::String(v))) => Ok(v),
        (Some(_), Some(_)) => Err(invalid(&format!("give {snake} or {camel}, not both"))),
        (None, None) => Err(invalid(&format!("{snake} (or {camel}) is required"))),
        _ => Err(invalid(&format!("{snake}: must be a string"))),
    }
}

fn invalid(message: &str) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, "invalid_field", message)
}

/// A `PUT /v1/agents/{agent_id}` body: `{"context_wait_ms": 0..5000}`.
pub(super) fn read_agent_settings(value: &Value) -> Result<u32, ApiError> {
    let Value::Object(object) = value else {
        return Err(api_error(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "context_wait_ms") {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid(&format!("unknown field {shown:?}, expected `context_wait_ms`")));
    }
    match object.get("context_wait_ms").and_then(Value::as_u64) {
        Some(ms) if ms <= u64::from(MAX_CONTEXT_WAIT_MS) => Ok(ms as u32),
        _ => Err(invalid("context_wait_ms: an integer, 0 to 5000")),
    }
}
