//! Bodies on their way in: the declared length, the content type, and reading a bounded body
//! within a deadline. Shared by the webhook, the admin API, forwarding and the gate client.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
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

/// A client's body streamed on to the engine (paths that are not voice or signed paths): at
/// most `limit` bytes, all of them within `within` of the request head, like a buffered body.
/// A body that stalls past its deadline, or a client that resets mid-body, ends the stream
/// with an error the forwarding path can tell from an engine's fault (see [`ClientFault`]);
/// [`ClientBody::finished`] tells it when the body is done, so that the engine's own deadline
/// only starts once the engine has the whole request.
pub struct ClientBody {
    inner: Limited<Incoming>,
    within: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: tokio::sync::watch::Sender<bool>,
}

/// Why a streamed client body ended early: the client's fault, never the engine's.
#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the client broke off its request body")]
    Read(#[source] hyper::Error),
    /// [`ClientFault::Read`] as found again in a forwarding error.
    #[error("the client broke off its request body")]
    Broken,
}

impl ClientBody {
    pub fn new(body: Incoming, limit: usize, within: Duration) -> ClientBody {
        use http_body::Body as _;
        // A request without a body may never be polled: it is done from the start.
        let done = tokio::sync::watch::Sender::new(body.is_end_stream());
        ClientBody {
            inner: Limited::new(body, limit),
            within,
            deadline: Box::pin(tokio::time::sleep(within)),
            done,
        }
    }

    /// How long the client has to deliver the whole body.
    pub fn within(&self) -> Duration {
        self.within
    }

    /// Completes once the body has ended (whole, failed, or dropped unread).
    pub fn finished(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.subscribe();
        async move {
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(ClientFault::Timeout(self.within).into())))
            }
            Poll::Ready(Some(Err(e))) => match e.downcast::<hyper::Error>() {
                Ok(e) => Poll::Ready(Some(Err(ClientFault::Read(*e).into()))),
                // The size limit: reported as it is (`LengthLimitError`).
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            polled => polled,
        };
        if !matches!(polled, Poll::Ready(Some(Ok(_)))) || self.inner.is_end_stream() {
            self.done.send_replace(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.done.send_replace(true);
    }
}
