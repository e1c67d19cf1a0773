//! The state every request shares (settings, the routes store, the gate and engine clients,
//! the decision log, readiness) and the two ways a request leaves callgate for the engine.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either as FutureEither;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::body;
use crate::decide::breaker::Breaker;
use crate::decide::context::{ContextStore, MemoryContexts};
use crate::decide::dedup::Dedup;
use crate::decide::link::Link;
use crate::decide::record::DecisionLog;
use crate::decide::shared_context::RedisContexts;
use crate::decide::Stages;
use crate::engine::{Engine, EngineBody, EngineError, Peer, Stamp, MAX_STREAMED_BODY};
use crate::error::RequestError;
use crate::events::Events;
use crate::gate::GateClient;
use crate::metrics::Metrics;
use crate::routes::store::RouteStore;
use crate::routes::writer::Writer;
use crate::settings::{Settings, SignatureMode};
use crate::webhook::signature::Verifier;
use crate::wire::ResBody;

/// A request's answer, and how long it waited on others (the gate, the engine): the rest of its
/// time in callgate is callgate's own overhead.
pub struct Served {
    pub response: Response<ResBody>,
    pub waited: Duration,
}

impl Served {
    /// callgate's own answer to a request it refused, having waited on nobody.
    pub fn refused(error: RequestError) -> Served {
        Served { response: error.into_response(), waited: Duration::ZERO }
    }
}

/// What a public-listener path is to callgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A voice path: signature-checked, inbound ringing calls gated.
    Voice,
    /// A signed path: signature-checked, not gated.
    Signed,
    /// Anything else: passed through.
    Other,
}

/// A path in the form used to compare it with the configured ones: percent-escapes decoded,
/// ASCII lower case, `;` parameters cut from every segment, dot-segments removed (RFC 3986
/// §5.2.4: `.` dropped, `..` drops the segment before it, never above the root), repeated
/// slashes collapsed, no trailing slash. Borrowed when the path is already in that form (the
/// usual case).
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    let needs_work = path.contains('%')
        || path.contains("//")
        || path.contains(';')
        || path.contains("/.")
        || (path.len() > 1 && path.ends_with('/'))
        || path.bytes().any(|b| b.is_ascii_uppercase());
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    let decoded = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        // `/twilio/voice;x=1` is routed as `/twilio/voice` by servlet-style engines.
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Shared by every connection on both listeners.
pub struct App {
    pub settings: Settings,
    pub routes: Arc<RouteStore>,
    /// The only way to change the table.
    pub writer: Writer,
    pub gate: GateClient,
    /// Decision events, with `--events-url`.
    pub events: Option<Events>,
    pub engine: Engine,
    pub metrics: &'static Metrics,
    /// The last `--decision-log-size` decided calls.
    pub decisions: DecisionLog,
    /// One circuit per gate origin (`--breaker-failures`, `--breaker-cooldown`).
    pub breaker: Breaker,
    /// CallSids decided within `--dedup-window`.
    pub dedup: Dedup,
    /// Caller context pushed ahead of the call (`POST /v1/context`).
    pub contexts: Arc<dyn ContextStore>,
    /// Checks `X-Twilio-Signature`; `None` with `--twilio-signature off`.
    pub verifier: Option<Verifier>,
    /// `--voice-path`s and `--signed-path`s in canonical form.
    voice_paths: Vec<String>,
    signed_paths: Vec<String>,
    /// Turns true once the first table is in; the admin API waits for it.
    pub table_loaded: tokio::sync::watch::Sender<bool>,
    /// Upgraded streams in flight (also held by the engine), drained on shutdown.
    pub streams: TaskTracker,
    /// Secrets for check placeholders (`--credentials`).
    pub credentials: Arc<crate::credentials::Credentials>,
    ready: AtomicBool,
}

impl App {
    pub fn new(
        settings: Settings,
        routes: Arc<RouteStore>,
        writer: Writer,
        gate: GateClient,
        events: Option<Events>,
        metrics: &'static Metrics,
    ) -> App {
        let streams = TaskTracker::new();
        let engine =
            Engine::new(settings.upstream.clone(), settings.idle_timeout, streams.clone(), settings.workers);
        let verifier = (settings.twilio_signature != SignatureMode::Off).then(|| {
            Verifier::new(
                settings.twilio_auth_tokens.iter().map(|t| t.expose().to_owned()).collect(),
                settings
                    .twilio_shared_keys
                    .iter()
                    .map(|k| (k.id.clone(), k.secret.expose().to_owned()))
                    .collect(),
            )
        });
        let canonical = |paths: &[String]| paths.iter().map(|p| canonical_path(p).into_owned()).collect();
        let voice_paths = canonical(&settings.voice_paths);
        let decisions = DecisionLog::new(settings.decision_log_size);
        let memory = MemoryContexts::start(settings.context_ttl, settings.context_max_entries, metrics);
        // With a shared store, context (and dedup) go through it, this replica's memory behind.
        let link = match &settings.store {
            crate::settings::Store::Redis(url) => {
                Link::start(url, &settings.store_prefix, settings.context_ttl, metrics).ok()
            }
            crate::settings::Store::File => None,
        };
        let contexts: Arc<dyn ContextStore> = match &link {
            Some(link) => Arc::new(RedisContexts::new(Arc::clone(link), memory, metrics)),
            None => memory,
        };
        let signed_paths = canonical(&settings.signed_paths);
        let breaker = Breaker::new(settings.breaker_failures, settings.breaker_cooldown, metrics);
        let dedup = match &link {
            Some(link) => Dedup::shared(settings.dedup_window, Arc::clone(link)),
            None => Dedup::new(settings.dedup_window),
        };
        App {
            breaker,
            dedup,
            settings,
            routes,
            writer,
            gate,
            events,
            engine,
            metrics,
            decisions,
            contexts,
            verifier,
            voice_paths,
            signed_paths,
            streams,
            credentials: Arc::default(),
            table_loaded: tokio::sync::watch::Sender::new(false),
            ready: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Which listed path `path` is, if any. Paths are compared in a canonical form, so that a
    /// spelling an engine may route the same way (`/Twilio/Voice/`, `//twilio/voice`,
    /// `/twilio/%76oice`) cannot skip the signature check or the gate.
    pub fn path_kind(&self, path: &str) -> PathKind {
        let path = canonical_path(path);
        if self.voice_paths.iter().any(|p| *p == path) {
            PathKind::Voice
        } else if self.signed_paths.iter().any(|p| *p == path) {
            PathKind::Signed
        } else {
            PathKind::Other
        }
    }

    /// What the decision core needs of the shared state.
    pub fn stages(&self) -> Stages<'_> {
        Stages {
            routes: &self.routes,
            gate: &self.gate,
            credentials: &self.credentials,
            clock: jiff::Timestamp::now,
            breaker: &self.breaker,
            dedup: &self.dedup,
            contexts: &*self.contexts,
        }
    }

    /// Forwards a request whose body callgate has read, marked as `stamp` says, waiting at most
    /// `timeout` for the engine's answer head. The request is marked and wrapped in the engine pool's
    /// boxed exchange before anything waits: the future keeps no copy of it and no `stamp`.
    pub fn forward<'s>(
        &'s self,
        mut request: Request<EngineBody>,
        peer: Peer,
        stamp: Stamp<'_>,
        timeout: Duration,
    ) -> impl Future<Output = Served> + Send + use<'s> {
        self.engine.prepare(&mut request, peer, &stamp);
        self.send(request, timeout)
    }

    /// Forwards any other request, streaming its body (up to [`MAX_STREAMED_BODY`]).
    pub fn forward_stream(
        &self,
        request: Request<Incoming>,
        peer: Peer,
    ) -> impl Future<Output = Served> + Send + '_ {
        if body::declared_length(request.headers()).is_some_and(|n| n > MAX_STREAMED_BODY as u64) {
            return FutureEither::Left(std::future::ready(Served::refused(RequestError::BodyTooLarge(
                MAX_STREAMED_BODY,
            ))));
        }
        let within = self.settings.header_timeout;
        let mut request = request.map(|b| Either::Right(body::ClientBody::new(b, MAX_STREAMED_BODY, within)));
        self.engine.prepare(&mut request, peer, &Stamp::None);
        FutureEither::Right(self.send(request, self.settings.upstream_timeout))
    }

    fn send(
        &self,
        request: Request<EngineBody>,
        timeout: Duration,
    ) -> impl Future<Output = Served> + Send + '_ {
        let started = Instant::now();
        self.engine.forward(request, timeout).map(move |result| self.served(result, started.elapsed()))
    }

    /// The engine's answer passed on, or callgate's own for a failed exchange (counted and
    /// logged when the engine was at fault).
    fn served(&self, result: Result<Response<Incoming>, EngineError>, waited: Duration) -> Served {
        let response = match result {
            Ok(response) => response.map(Either::Right),
            Err(e) => {
                match e.cause() {
                    Some(cause) => {
                        self.metrics.record_upstream_error(cause);
                        tracing::warn!(error = %format_args!("{e:#}"), "engine request failed");
                    }
                    None => tracing::debug!(error = %e, "request refused or broken off by the client"),
                }
                RequestError::from(e).into_response()
            }
        };
        Served { response, waited }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_path;

    #[test]
    fn near_miss_spellings_of_a_path_are_the_same_path() {
        for path in [
            "/twilio/voice",
            "/twilio/voice/",
            "/Twilio/Voice",
            "//twilio//voice",
            "/twilio/%76oice",
            "/TWILIO/voice//",
            "/twilio/./voice",
            "/twilio/a/../voice",
            "/../twilio/voice",
            "/twilio/voice;x=1",
            "/twilio;a=b/voice;",
            "/twilio/%2e/voice/.",
            "/twilio/voice/a/%2E%2E",
            "/twilio/voice/a/..;x/",
        ] {
            assert_eq!(canonical_path(path), "/twilio/voice", "{path}");
        }
        assert!(matches!(canonical_path("/twilio/voice"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(canonical_path("/"), "/");
        assert_ne!(canonical_path("/twilio/voices"), "/twilio/voice");
        assert_ne!(canonical_path("/twilio/voice/.."), "/twilio/voice");
        assert_eq!(canonical_path("/.."), "/");
        assert!(matches!(canonical_path("/twilio/v.oice"), std::borrow::Cow::Borrowed(_)));
    }
}
