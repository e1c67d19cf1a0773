//! One delivery attempt of one event: a signed POST to `--events-url` through a pooled client,
//! a 2xx within the attempt timeout delivering it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::gate::{Signer, POOL_IDLE_TIMEOUT};

/// Events are always signed in this header (`--gate-signature-header` renames only the gate's).
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-callgate-signature");

/// The header carrying the body's `webhook_delivery_id`.
pub const DELIVERY_ID_HEADER: HeaderName = HeaderName::from_static("webhook-delivery-id");

/// A receiver's answer body is read (so its connection can be reused) up to this size ...
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// ... and for at most this long after its head; the status alone decides.
const ANSWER_READ: Duration = Duration::from_secs(1);

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered(StatusCode),
    Failed(Failure),
}

/// Why an attempt did not deliver. Its text never holds the URL or the secret.
#[derive(Debug)]
pub enum Failure {
    /// The receiver answered, but not 2xx.
    Status(StatusCode),
    /// No answer's head within the attempt timeout.
    Timeout(Duration),
    /// No connection, or it broke before an answer.
    Connect(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "the receiver answered {}", status.as_u16()),
            Failure::Timeout(after) => write!(f, "no answer within {after:?}"),
            Failure::Connect(why) => write!(f, "no answer: {why}"),
        }
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Sender {
    client: HttpsClient,
    url: Uri,
    signer: Signer,
    timeout: Duration,
}

impl Sender {
    pub fn new(tls: rustls::ClientConfig, url: Uri, secret: &[u8], timeout: Duration) -> Sender {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Sender { client, url, signer: Signer::new(secret, SIGNATURE_HEADER), timeout }
    }

    /// POSTs `body`, signed now, with its delivery id. Never fails: every problem is a
    /// [`Failure`].
    pub async fn attempt(&self, delivery_id: &str, body: Bytes) -> Attempt {
        let request = match self.request(delivery_id, body) {
            Ok(r) => r,
            Err(why) => return Attempt::Failed(Failure::Connect(why)),
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => return Attempt::Failed(Failure::Timeout(self.timeout)),
            Ok(Err(e)) => return Attempt::Failed(Failure::Connect(chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let _ =
            tokio::time::timeout(ANSWER_READ, Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect())
                .await;
        if status.is_success() {
            Attempt::Delivered(status)
        } else {
            Attempt::Failed(Failure::Status(status))
        }
    }

    fn request(&self, delivery_id: &str, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let signature = HeaderValue::try_from(self.signer.sign(now, &body)).expect("ASCII header value");
        let id =
            HeaderValue::try_from(delivery_id).map_err(|_| "a stored delivery id is not a header value")?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("callgate/", env!("CARGO_PKG_VERSION"))));
        headers.insert(SIGNATURE_HEADER, signature);
        headers.insert(DELIVERY_ID_HEADER, id);
        *request.body_mut() = Full::new(body);
        Ok(request)
    }
}

/// An error and its sources, `: `-joined. hyper's errors name the failure, never the URL.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
