//! Decision events (SPEC §14): each reject, fail_closed and fail_open reported to
//! `--events-url`, signed, retried on `--events-retry-schedule`, through a durable outbox under
//! `--state-dir`. A call only hands its event to a bounded queue ([`Events::emit`]); the outbox
//! task ([`queue`]) writes it to disk ([`outbox`]), sends it ([`sender`]) and keeps its schedule.

mod outbox;
mod queue;
mod sender;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustls::crypto::SecureRandom;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{EventDrop, Metrics};
use crate::settings::{Secret, Settings};
pub use outbox::FILE_NAME;
pub use sender::{Attempt, Failure, DELIVERY_ID_HEADER, SIGNATURE_HEADER};

/// Events waiting between the calls and the outbox task; past it an event is dropped (counted).
pub const QUEUE_CAPACITY: usize = 10_000;

/// A gate's `reason` is cut to this many bytes in an event.
pub const MAX_REASON_BYTES: usize = 512;

/// Every event body is at most this (see [`render`]), which bounds the outbox on disk:
/// `--events-max-pending` times this, plus the store's own overhead.
pub const MAX_EVENT_BYTES: usize = 2048;

/// How long [`Events::stop`] waits for the last events to be written.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What the outbox task needs, from the settings.
pub struct EventsConfig {
    pub url: http::Uri,
    pub secret: Secret,
    /// Delays before each retry, counted from the end of the attempt before it.
    pub retry_schedule: Vec<Duration>,
    /// Events the outbox holds at most; past it the oldest is given up.
    pub max_pending: usize,
    /// One attempt's limit: 10 s (SPEC §14); tests shorten it.
    pub attempt_timeout: Duration,
    pub state_dir: PathBuf,
    /// Roots for `https://` receivers (those of the gates).
    pub tls: rustls::ClientConfig,
}

impl EventsConfig {
    /// The config, with `--events-url` set; `None` without it.
    pub fn from_settings(settings: &Settings, tls: rustls::ClientConfig) -> Option<EventsConfig> {
        let url = settings.events_url.as_ref()?;
        let secret = settings.events_signing_secret.clone()?;
        Some(EventsConfig {
            url: url.0.clone(),
            secret,
            retry_schedule: settings.events_retry_schedule.clone(),
            max_pending: settings.events_max_pending as usize,
            attempt_timeout: settings.events_attempt_timeout,
            state_dir: settings.state_dir.clone(),
            tls,
        })
    }
}

/// One decided call to report: a `reject`, `fail_closed` or `fail_open`.
#[derive(Clone, Debug)]
pub struct DecisionEvent {
    pub call_id: String,
    pub agent_id: Option<String>,
    pub from_number: Option<String>,
    pub to_number: String,
    /// "reject", "fail_closed" or "fail_open".
    pub decision: &'static str,
    /// The gate failure's cause, for fail_open and fail_closed.
    pub cause: Option<&'static str>,
    /// The gate's reason for a reject.
    pub reason: Option<String>,
    pub gate_ms: Option<f64>,
    /// Each check's result, for a chain (SPEC §11); null for a webhook gate.
    pub checks: serde_json::Value,
    pub occurred_at: SystemTime,
}

impl DecisionEvent {
    /// The event's name: `call.rejected` for a reject, `call.gate_failed` for a gate failure.
    pub fn name(&self) -> &'static str {
        match self.decision {
            "reject" => "call.rejected",
            _ => "call.gate_failed",
        }
    }
}

/// The JSON body of an event (SPEC §14), field for field.
#[derive(Serialize)]
struct Body<'a> {
    event: &'a str,
    webhook_delivery_id: &'a str,
    call_id: Option<&'a str>,
    agent_id: Option<&'a str>,
    from_number: Option<&'a str>,
    to_number: Option<&'a str>,
    decision: Option<&'a str>,
    cause: Option<&'a str>,
    reason: Option<&'a str>,
    gate_ms: Option<f64>,
    checks: &'a serde_json::Value,
    occurred_at: String,
}

impl Body<'_> {
    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("strings, numbers and a JSON value serialise"))
    }
}

/// The body sent for `event`, within [`MAX_EVENT_BYTES`]: the reason cut to
/// [`MAX_REASON_BYTES`] and the call's strings to 128 bytes (Twilio's are far shorter); if that
/// is still too long (long `checks`), `checks` null; if even that is (strings that JSON escaping
/// blows up), every string cut to 32 bytes.
fn render(delivery_id: &str, event: &DecisionEvent) -> Bytes {
    let occurred_at = humantime::format_rfc3339_millis(event.occurred_at).to_string();
    let null = serde_json::Value::Null;
    let mut bytes = Bytes::new();
    for (reason_max, field_max, checks) in
        [(MAX_REASON_BYTES, 128, &event.checks), (MAX_REASON_BYTES, 128, &null), (32, 32, &null)]
    {
        let body = Body {
            event: event.name(),
            webhook_delivery_id: delivery_id,
            call_id: Some(cut(&event.call_id, field_max)),
            agent_id: event.agent_id.as_deref().map(|a| cut(a, field_max)),
            from_number: event.from_number.as_deref().map(|f| cut(f, field_max)),
            to_number: Some(cut(&event.to_number, field_max)),
            decision: Some(event.decision),
            cause: event.cause,
            reason: event.reason.as_deref().map(|r| cut(r, reason_max)),
            gate_ms: event.gate_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
            checks,
            occurred_at: occurred_at.clone(),
        };
        bytes = body.to_bytes();
        if bytes.len() <= MAX_EVENT_BYTES {
            break;
        }
    }
    bytes
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A new `webhook_delivery_id`: `whd_` and 32 hex digits of random bytes.
pub fn delivery_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    static RANDOM: OnceLock<&'static dyn SecureRandom> = OnceLock::new();
    let random = RANDOM.get_or_init(|| rustls::crypto::ring::default_provider().secure_random);
    if random.fill(&mut bytes).is_err() {
        // The system's generator failed (never seen in practice): still unique in this process
        // and, with the time and a per-process random hash key, across processes.
        use std::hash::BuildHasher;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        let mixed = std::collections::hash_map::RandomState::new().hash_one((now, n));
        bytes[..8].copy_from_slice(&now.to_be_bytes());
        bytes[8..].copy_from_slice(&(mixed ^ n).to_be_bytes());
    }
    format!("whd_{}", hex::encode(bytes))
}

/// An event handed from a call to the outbox task, with its delivery id made at emit time.
struct Fresh {
    delivery_id: String,
    event: DecisionEvent,
}

/// What `POST /v1/events/test` answers.
#[derive(Debug, Serialize)]
pub struct TestOutcome {
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// The handle calls and the admin API use: cheap to clone.
#[derive(Clone)]
pub struct Events {
    shared: Arc<Shared>,
}

struct Shared {
    queue: mpsc::Sender<Fresh>,
    sender: Arc<sender::Sender>,
    metrics: &'static Metrics,
    /// Unix second of the last "queue full" line, so a flood logs once a second.
    last_full_log: AtomicU64,
    stop: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl Events {
    /// Starts the outbox task on the current runtime. It opens the outbox under `state_dir`
    /// and resumes every event pending there; if it cannot, events are kept in memory (counted
    /// in `callgate_events_outbox_errors_total`, `callgate_events_outbox_ok` 0).
    pub fn start(config: EventsConfig, metrics: &'static Metrics) -> Events {
        let sender = Arc::new(sender::Sender::new(
            config.tls.clone(),
            config.url.clone(),
            config.secret.expose().as_bytes(),
            config.attempt_timeout,
        ));
        let (queue, incoming) = mpsc::channel(QUEUE_CAPACITY);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(queue::run(config, Arc::clone(&sender), incoming, stopped, metrics));
        Events {
            shared: Arc::new(Shared {
                queue,
                sender,
                metrics,
                last_full_log: AtomicU64::new(0),
                stop: Mutex::new(Some((stop, task))),
            }),
        }
    }

    /// Hands `event` to the outbox task. Never blocks or waits: with the queue full, the event is
    /// dropped, counted (`callgate_events_dropped_total{reason="queue_full"}`) and logged.
    pub fn emit(&self, event: DecisionEvent) {
        let fresh = Fresh { delivery_id: delivery_id(), event };
        let Err(e) = self.shared.queue.try_send(fresh) else { return };
        self.shared.metrics.record_event_dropped(EventDrop::QueueFull, 1);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if self.shared.last_full_log.swap(now, Ordering::Relaxed) != now {
            let fresh = e.into_inner();
            tracing::warn!(
                call_id = %fresh.event.call_id,
                webhook_delivery_id = %fresh.delivery_id,
                "decision event dropped: the events queue is full (the outbox is not keeping up)"
            );
        }
    }

    /// Sends a `call.test` event at once, outside the outbox, and says what the receiver did.
    pub async fn send_test(&self) -> TestOutcome {
        let id = delivery_id();
        let body = Body {
            event: "call.test",
            webhook_delivery_id: &id,
            call_id: Some("CA00000000000000000000000000000000"),
            agent_id: None,
            from_number: Some("+15005550006"),
            to_number: Some("+15005550006"),
            decision: None,
            cause: None,
            reason: None,
            gate_ms: None,
            checks: &serde_json::Value::Null,
            occurred_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        match self.shared.sender.attempt(&id, body.to_bytes()).await {
            Attempt::Delivered(status) => {
                TestOutcome { delivered: true, status: Some(status.as_u16()), error: None }
            }
            Attempt::Failed(failure) => TestOutcome {
                delivered: false,
                status: match failure {
                    Failure::Status(s) => Some(s.as_u16()),
                    Failure::Timeout(_) | Failure::Connect(_) => None,
                },
                error: Some(failure.to_string()),
            },
        }
    }

    /// Stops the outbox task once what is queued is written (waiting a few seconds at most).
    /// Attempts under way are abandoned: their events stay in the outbox for the next start.
    pub async fn stop(&self) {
        let Some((stop, task)) = self.shared.stop.lock().expect("not poisoned").take() else { return };
        let _ = stop.send(());
        let abort = task.abort_handle();
        if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
            abort.abort();
            tracing::warn!("events outbox: the last events were not written in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: &'static str) -> DecisionEvent {
        DecisionEvent {
            call_id: "CA1".into(),
            agent_id: Some("agent_a".into()),
            from_number: Some("+14155550100".into()),
            to_number: "+447700900123".into(),
            decision,
            cause: None,
            reason: Some("no credit".into()),
            gate_ms: Some(12.345_678),
            checks: serde_json::Value::Null,
            occurred_at: UNIX_EPOCH + Duration::from_millis(1_715_900_000_123),
        }
    }

    #[test]
    fn a_body_has_every_field_of_the_spec() {
        let body: serde_json::Value = serde_json::from_slice(&render("whd_x", &event("reject"))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "event": "call.rejected", "webhook_delivery_id": "whd_x", "call_id": "CA1",
                "agent_id": "agent_a", "from_number": "+14155550100", "to_number": "+447700900123",
                "decision": "reject", "cause": null, "reason": "no credit", "gate_ms": 12.346,
                "checks": null, "occurred_at": "2024-05-16T22:53:20.123Z"
            })
        );
        assert_eq!(event("fail_open").name(), "call.gate_failed");
        assert_eq!(event("fail_closed").name(), "call.gate_failed");
    }

    #[test]
    fn a_long_reason_and_long_checks_are_cut_to_bound_the_body() {
        let mut long = event("reject");
        long.reason = Some("é".repeat(5_000));
        long.checks = serde_json::json!([{ "name": "x".repeat(10_000) }]);
        let bytes = render("whd_x", &long);
        assert!(bytes.len() <= MAX_EVENT_BYTES, "{}", bytes.len());
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["reason"].as_str().unwrap().len(), MAX_REASON_BYTES);
        assert_eq!(body["checks"], serde_json::Value::Null);

        // Strings that escaping blows up six-fold are cut further.
        let mut escaped = event("reject");
        escaped.reason = Some("\u{1}".repeat(5_000));
        escaped.call_id = "\u{1}".repeat(5_000);
        escaped.from_number = Some("\u{1}".repeat(5_000));
        escaped.to_number = "\u{1}".repeat(5_000);
        let bytes = render("whd_x", &escaped);
        assert!(bytes.len() <= MAX_EVENT_BYTES, "{}", bytes.len());
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["call_id"].as_str().unwrap().len(), 32);
    }

    #[tokio::test]
    async fn emit_never_waits_on_a_full_queue_it_counts_the_drop() {
        let metrics = crate::metrics::get();
        let series = r#"callgate_events_dropped_total{reason="queue_full"} "#;
        let dropped = || -> f64 {
            let text = metrics.render();
            text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
        };
        let before = dropped();
        // A queue of one that nothing drains.
        let (queue, _incoming) = mpsc::channel(1);
        let events = Events {
            shared: Arc::new(Shared {
                queue,
                sender: Arc::new(sender::Sender::new(
                    crate::tls::gate_client_config(None).unwrap(),
                    "http://127.0.0.1:1/".parse().unwrap(),
                    b"s",
                    Duration::from_secs(1),
                )),
                metrics,
                last_full_log: AtomicU64::new(0),
                stop: Mutex::new(None),
            }),
        };
        for _ in 0..3 {
            events.emit(event("reject"));
        }
        assert_eq!(dropped() - before, 2.0, "the first was queued, the others dropped");
    }

    #[test]
    fn delivery_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| delivery_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(id.starts_with("whd_") && id.len() == 36, "{id}");
            assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
