//! The admin listener: probes (`/healthz`, `/readyz`), `/metrics`, and the admin API.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::app::App;
use crate::ResBody;

/// One request on the admin listener.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<ResBody> {
    let path = request.uri().path();
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    match path {
        "/healthz" | "/readyz" | "/metrics" if !get => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        }
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" if app.is_ready() => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "not ready\n".into()),
        "/metrics" => {
            text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", app.metrics.render().into())
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ResBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `{"error":{"code":"...","message":"..."}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<ResBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    text(status, "application/json", Bytes::from(body.to_string()))
}
