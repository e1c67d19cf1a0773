//! callgate: a pre-call gate for Twilio voice, run as a sidecar in front of a voice engine.
//!
//! Twilio's inbound-call webhook arrives here; the dialled number's gate is resolved from a
//! hot-swappable table and asked whether the call may connect; callgate then answers Twilio
//! with busy-tone TwiML itself, or forwards the request untouched to the voice engine.
//!
//! # Layout
//!
//! - [`settings`]: flags and environment → validated [`settings::Settings`].
//! - [`server`]: accept loops, connection limits, the graceful drain; [`workers`] runs the
//!   call workers, a thread and runtime each, with their own connection pools; [`conn`] keeps the
//!   header and idle timeouts; [`tls`] serves HTTPS and reloads renewed certificates.
//! - [`app`]: the state requests share and the two ways out to the engine.
//! - [`body`]: declared lengths, content types and bounded, timed body reads.
//! - [`webhook`]: the voice webhook, HTTP in and out: read, parse, verify, decide, then the
//!   busy TwiML or the engine, and the verdict recorded in one place. [`webhook::twilio`]
//!   parses Twilio's form, [`webhook::signature`] checks `X-Twilio-Signature`,
//!   [`webhook::twiml`] renders the reject.
//! - [`decide`]: **where a call's decision is made**: the call, its deadline, the typed
//!   [`decide::Verdict`], and the one function that runs the stages in order;
//!   [`decide::answer`] reads a gate's answer and its enrichment, [`decide::record`] keeps the
//!   recent decision records, [`decide::breaker`] keeps a circuit per gate origin,
//!   [`decide::dedup`] the CallSids decided within the dedup window and [`decide::context`]
//!   caller context pushed ahead of the call; with a shared store, [`decide::shared_context`]
//!   and [`decide::shared_dedup`] hold both in Redis through [`decide::link`], the call path's
//!   bounded link to it.
//! - [`gate`]: the pooled gate client: one deadline, a cap on waiting requests, signing;
//!   [`dns`] resolves gate hosts on a bounded pool with a short cache.
//! - [`engine`]: forwarding to the voice engine with callgate's typed stamp, header hygiene,
//!   WebSocket relays.
//! - [`routes`]: the validated, immutable routing table; [`routes::store`] swaps it whole;
//!   [`routes::writer`] is its one writer and [`routes::shared`] keeps it in Redis.
//! - [`file_watch`]: a file followed for change (the routes file, `--credentials`): directory
//!   events, debounced, and a metadata poll.
//! - [`events`]: decision events: the outbox under `--state-dir` and signed, retried delivery.
//! - [`admin`]: probes, `/metrics` and the admin API on the admin listener.
//! - [`logging`]: the buffered log writer that keeps `write`s off the request path, and the
//!   JSON line (`--log-format json`) written without a detour through serde.
//! - [`metrics`]: every metric name, its help text and typed recorders.
//! - [`error`]: request errors and the one match that turns them into responses.
//! - [`wire`]: leaf types every layer shares (the response body, header names).
//! - [`demo`]: `callgate demo`, a demo engine and demo gates around the real server.
//! - [`probe`]: `callgate probe`, which grades a gate before it carries calls.

pub mod admin;
pub mod app;
pub mod body;
pub mod conn;
pub mod credentials;
pub mod decide;
pub mod demo;
pub mod dns;
pub mod engine;
pub mod error;
pub mod events;
pub mod file_watch;
pub mod gate;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod routes;
pub mod server;
pub mod settings;
pub mod tls;
pub mod webhook;
pub mod wire;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use crate::app::App;
use crate::events::{Events, EventsConfig};
use crate::gate::{GateClient, Signer};
use crate::routes::store::RouteStore;
use crate::routes::writer::Writer;
use crate::routes::RouteTable;
pub use crate::server::Listeners;
use crate::settings::Settings;

pub use crate::wire::ResBody;

/// Why callgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Routes(#[from] routes::writer::LoadError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("invalid --store: {0}")]
    Store(#[from] routes::shared::StoreError),
    #[error("invalid credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves on `listeners` until `shutdown` completes, then drains and returns.
///
/// The admin listener answers first (`/readyz` 503) while the routes file loads; the public
/// listener is served once the table is in, and `/readyz` turns 200.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let options = settings.validate_options();
    let metrics = metrics::get();
    metrics.record_signature_mode(settings.twilio_signature.as_str());
    let server_tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(tls::ServerTls::load(cert, key)?),
        _ => None,
    };
    let routes = Arc::new(RouteStore::new(RouteTable::empty()));
    let shared = match &settings.store {
        settings::Store::File => None,
        settings::Store::Redis(url) => Some(routes::shared::Redis::open(url, &settings.store_prefix)?),
    };
    let follower = shared.as_ref().map(routes::shared::Redis::follower);
    let (writer, loaded) =
        Writer::start(Arc::clone(&routes), settings.routes.clone(), options, metrics, shared);
    let signer = settings
        .gate_signing_secret
        .as_ref()
        .map(|secret| Signer::new(secret.expose().as_bytes(), settings.gate_signature_header.clone()));
    let gate_tls = tls::gate_client_config(settings.gate_ca_file.as_deref())?;
    let events = EventsConfig::from_settings(&settings, gate_tls.clone()).map(|c| Events::start(c, metrics));
    let gate = GateClient::new(
        gate_tls,
        settings.gate_timeout,
        settings.gate_max_pending as usize,
        signer,
        settings.workers,
    );
    let mut credentials = Arc::new(credentials::Credentials::default());
    let mut credentials_read = None;
    if let Some(path) = &settings.credentials {
        match std::fs::read(path) {
            Ok(bytes) => match credentials::parse(&bytes) {
                Ok(map) => {
                    credentials = Arc::new(credentials::Credentials::new(map));
                    credentials_read = Some(bytes);
                }
                Err(reason) => {
                    return Err(StartError::Credentials { path: path.display().to_string(), reason })
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e.kind(), "credentials file not readable; starting with none")
            }
        }
    }
    let mut app = App::new(settings, routes, writer.clone(), gate, events, metrics);
    app.credentials = Arc::clone(&credentials);
    let app = Arc::new(app);
    let _credentials_watch = app.settings.credentials.clone().map(|path| {
        AbortOnDrop(tokio::spawn(credentials::follow(path, credentials_read, credentials, metrics)))
    });
    let _upkeep = AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            metrics.upkeep();
        }
    }));
    let public = listeners.public.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin = server::AdminServer::start(Arc::clone(&app), listeners.admin);
    tracing::info!(
        listen = %public,
        admin_listen = %admin.addr(),
        settings = ?app.settings,
        "listeners bound"
    );
    // A replica of a shared store may wait for the store to answer before it has a table: a
    // signal meanwhile is a clean stop.
    let mut shutdown = std::pin::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = loaded => loaded,
        () = &mut shutdown => {
            tracing::info!("stopped before the routing table was in");
            admin.stop().await;
            if let Some(events) = &app.events {
                events.stop().await;
            }
            return Ok(());
        }
    };
    match loaded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            admin.stop().await;
            if let Some(events) = &app.events {
                events.stop().await;
            }
            return Err(e.into());
        }
        Err(_) => unreachable!("the writer reports its first load"),
    }
    app.table_loaded.send_replace(true);
    // File mode follows the routes file; a shared store's replica follows the store.
    let _watching = follower
        .is_none()
        .then(|| AbortOnDrop(tokio::spawn(routes::watch::follow(app.settings.routes.clone(), writer))));
    let _following = follower.map(|(client, channel)| {
        AbortOnDrop(tokio::spawn(routes::shared::follow(client, channel, app.writer.clone(), metrics)))
    });
    tracing::info!(
        listen = %public,
        upstream = %format_args!("{}://{}{}", app.settings.upstream.scheme, app.settings.upstream.authority, app.settings.upstream.prefix),
        voice_paths = ?app.settings.voice_paths,
        workers = app.settings.workers,
        "callgate serving"
    );
    let _tls_watch = server_tls.as_ref().map(|t| AbortOnDrop(t.watch(metrics)));
    let events = app.events.clone();
    server::serve(app, listeners.public, server_tls.map(|t| t.acceptor), shutdown).await;
    admin.stop().await;
    if let Some(events) = events {
        events.stop().await;
    }
    Ok(())
}
