//! The outbox task: takes events from the calls' queue in batches, writes each batch to the
//! outbox in one transaction, then sends what is due (a bounded number at once) and writes what
//! each attempt came to: removed when delivered or given up, rescheduled otherwise.
//!
//! In memory it keeps only each pending event's schedule; bodies are read back from disk when
//! sent. An event whose write failed (an unwritable or full `--state-dir`) keeps its body in
//! memory instead, and is still delivered on its schedule, though a restart loses it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::outbox::{Change, Outbox, OutboxError, Row};
use super::sender::{Attempt, Sender};
use super::{render, EventsConfig, Fresh};
use crate::metrics::{EventDrop, EventResult, Metrics};

/// Events taken from the queue into one write transaction at most.
const BATCH: usize = 1024;

/// Attempts under way at once; the rest wait their turn (a hanging receiver holds this many).
const MAX_IN_FLIGHT: usize = 32;

/// After a failed read of bodies from disk, the events are tried again this much later.
const READ_RETRY: Duration = Duration::from_secs(1);

/// A failing outbox is logged at most this often (every failure is counted).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One pending event.
struct Entry {
    /// Attempts made and failed.
    attempts: u32,
    /// Unix milliseconds.
    next_at: u64,
    /// The delivery id and body, while they are not (yet) on disk.
    held: Option<(String, Bytes)>,
    in_flight: bool,
}

struct Queue {
    sender: Arc<Sender>,
    schedule: Vec<Duration>,
    max_pending: usize,
    metrics: &'static Metrics,
    store: Option<Arc<Outbox>>,
    /// By key: oldest first.
    entries: BTreeMap<u64, Entry>,
    /// (next_at, key) of every entry not in flight.
    due: BTreeSet<(u64, u64)>,
    next_key: u64,
    /// Written at the next commit.
    changes: Vec<Change>,
    attempts: JoinSet<(u64, String, Attempt)>,
    last_error_log: Option<std::time::Instant>,
}

/// Runs until `stop` fires or every [`super::Events`] handle is gone; then writes what is
/// queued and returns.
pub(super) async fn run(
    config: EventsConfig,
    sender: Arc<Sender>,
    mut incoming: mpsc::Receiver<Fresh>,
    mut stop: oneshot::Receiver<()>,
    metrics: &'static Metrics,
) {
    let mut queue = Queue {
        sender,
        schedule: config.retry_schedule,
        max_pending: config.max_pending.max(1),
        metrics,
        store: None,
        entries: BTreeMap::new(),
        due: BTreeSet::new(),
        next_key: 1,
        changes: Vec::new(),
        attempts: JoinSet::new(),
        last_error_log: None,
    };
    queue.open(config.state_dir).await;
    let mut fresh = Vec::with_capacity(BATCH);
    loop {
        let wake = queue.next_wake();
        tokio::select! {
            biased;
            _ = &mut stop => break,
            n = incoming.recv_many(&mut fresh, BATCH) => {
                if n == 0 {
                    break;
                }
            }
            Some(done) = queue.attempts.join_next(), if !queue.attempts.is_empty() => {
                if let Ok((key, id, attempt)) = done {
                    queue.finished(key, &id, attempt);
                }
            }
            _ = sleep_until_ms(wake.unwrap_or(0)), if wake.is_some() => {}
        }
        while let Some(done) = queue.attempts.try_join_next() {
            if let Ok((key, id, attempt)) = done {
                queue.finished(key, &id, attempt);
            }
        }
        queue.admit(fresh.drain(..));
        queue.commit().await;
        queue.dispatch().await;
        queue.metrics.set_events_pending(queue.entries.len());
    }
    // What the calls handed over before the stop is written, so a restart sends it.
    incoming.close();
    while let Ok(f) = incoming.try_recv() {
        fresh.push(f);
    }
    queue.admit(fresh.drain(..));
    queue.commit().await;
    queue.metrics.set_events_pending(queue.entries.len());
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

async fn sleep_until_ms(at: u64) {
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
}

impl Queue {
    /// Opens the outbox and takes in every event pending there, on its schedule.
    async fn open(&mut self, dir: std::path::PathBuf) {
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || Outbox::open(&dir)).await.expect("opening does not panic") {
            Ok((store, rows)) => {
                self.metrics.record_outbox_write(true);
                if !rows.is_empty() {
                    tracing::info!(pending = rows.len(), state_dir = %shown, "decision events resumed from the outbox");
                }
                for Row { key, attempts, next_at } in rows {
                    self.entries.insert(key, Entry { attempts, next_at, held: None, in_flight: false });
                    self.due.insert((next_at, key));
                    self.next_key = self.next_key.max(key + 1);
                }
                self.store = Some(Arc::new(store));
                self.evict();
            }
            Err(e) => {
                self.metrics.record_outbox_write(false);
                tracing::error!(
                    error = %e,
                    "events outbox cannot be opened; decision events are kept in memory only until callgate restarts with a writable --state-dir"
                );
            }
        }
        self.metrics.set_events_pending(self.entries.len());
    }

    /// When the loop should next wake for an event coming due, if it can send one.
    fn next_wake(&self) -> Option<u64> {
        if self.attempts.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.due.first().map(|&(at, _)| at)
    }

    /// Takes in new events: due at once, held in memory until written.
    fn admit(&mut self, fresh: impl Iterator<Item = Fresh>) {
        let now = now_ms();
        let mut any = false;
        for Fresh { delivery_id, event } in fresh {
            any = true;
            let key = self.next_key;
            self.next_key += 1;
            let body = render(&delivery_id, &event);
            self.changes.push(Change::Insert {
                key,
                delivery_id: delivery_id.clone(),
                body: body.clone(),
                next_at: now,
            });
            self.entries.insert(
                key,
                Entry { attempts: 0, next_at: now, held: Some((delivery_id, body)), in_flight: false },
            );
            self.due.insert((now, key));
        }
        if any {
            self.evict();
        }
    }

    /// Past `max_pending`, gives up the oldest events.
    fn evict(&mut self) {
        let over = self.entries.len().saturating_sub(self.max_pending);
        if over == 0 {
            return;
        }
        for _ in 0..over {
            let Some((key, entry)) = self.entries.pop_first() else { break };
            if !entry.in_flight {
                self.due.remove(&(entry.next_at, key));
            }
            self.changes.push(Change::Remove(key));
            self.metrics.record_event(EventResult::GivenUp);
        }
        self.metrics.record_event_dropped(EventDrop::OutboxFull, over as u64);
        tracing::warn!(
            given_up = over,
            max_pending = self.max_pending,
            "events outbox full (--events-max-pending): the oldest undelivered events were given up"
        );
    }

    /// Writes the changes gathered since the last commit, in one transaction. If the write
    /// fails, new events keep their bodies in memory.
    async fn commit(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        let Some(store) = self.store.clone() else {
            // No outbox: nothing to write; every event is held in memory already.
            return;
        };
        let (result, changes) = tokio::task::spawn_blocking(move || (store.apply(&changes), changes))
            .await
            .expect("writing does not panic");
        self.metrics.record_outbox_write(result.is_ok());
        match result {
            Ok(()) => {
                for change in &changes {
                    if let Change::Insert { key, .. } = change {
                        if let Some(entry) = self.entries.get_mut(key) {
                            entry.held = None;
                        }
                    }
                }
            }
            Err(e) => self.log_error(&e, changes.len()),
        }
    }

    fn log_error(&mut self, e: &OutboxError, changes: usize) {
        let now = std::time::Instant::now();
        if self.last_error_log.is_some_and(|at| now.duration_since(at) < ERROR_LOG_EVERY) {
            return;
        }
        self.last_error_log = Some(now);
        tracing::error!(
            error = %e,
            changes,
            "events outbox write failed; new events are kept in memory only (a restart would lose them)"
        );
    }

    /// Starts an attempt for each event due, up to [`MAX_IN_FLIGHT`] at once.
    async fn dispatch(&mut self) {
        let now = now_ms();
        let mut picked = Vec::new();
        while self.attempts.len() + picked.len() < MAX_IN_FLIGHT {
            match self.due.first() {
                Some(&(at, key)) if at <= now => {
                    self.due.pop_first();
                    picked.push(key);
                }
                _ => break,
            }
        }
        if picked.is_empty() {
            return;
        }
        let on_disk: Vec<u64> = picked
            .iter()
            .copied()
            .filter(|key| self.entries.get(key).is_some_and(|e| e.held.is_none()))
            .collect();
        let mut read = BTreeMap::new();
        if let (false, Some(store)) = (on_disk.is_empty(), self.store.clone()) {
            let keys = on_disk.clone();
            match tokio::task::spawn_blocking(move || store.read(&keys))
                .await
                .expect("reading does not panic")
            {
                Ok(found) => read.extend(on_disk.iter().copied().zip(found)),
                Err(e) => {
                    self.metrics.record_outbox_write(false);
                    self.log_error(&e, 0);
                }
            }
        }
        for key in picked {
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            let (id, body) = match (&entry.held, read.remove(&key)) {
                (Some(held), _) => held.clone(),
                (None, Some(Some(found))) => found,
                (None, Some(None)) => {
                    // Gone from disk under us (a hand edit): nothing left to send.
                    self.entries.remove(&key);
                    self.metrics.record_event(EventResult::GivenUp);
                    tracing::warn!(key, "decision event missing from the outbox; given up");
                    continue;
                }
                (None, None) => {
                    // The read failed: try again shortly, not counted as an attempt.
                    entry.next_at = now + READ_RETRY.as_millis() as u64;
                    self.due.insert((entry.next_at, key));
                    continue;
                }
            };
            entry.in_flight = true;
            let sender = Arc::clone(&self.sender);
            self.attempts.spawn(async move {
                let attempt = sender.attempt(&id, body).await;
                (key, id, attempt)
            });
        }
    }

    /// Records what an attempt came to.
    fn finished(&mut self, key: u64, delivery_id: &str, attempt: Attempt) {
        // An event given up while its attempt was under way (the outbox was full) is gone.
        let Some(entry) = self.entries.get_mut(&key) else { return };
        entry.in_flight = false;
        let failure = match attempt {
            Attempt::Delivered(_) => {
                self.entries.remove(&key);
                self.changes.push(Change::Remove(key));
                self.metrics.record_event(EventResult::Delivered);
                return;
            }
            Attempt::Failed(failure) => failure,
        };
        entry.attempts += 1;
        match self.schedule.get(entry.attempts as usize - 1) {
            Some(delay) => {
                entry.next_at = now_ms() + delay.as_millis() as u64;
                self.due.insert((entry.next_at, key));
                if entry.held.is_none() {
                    self.changes.push(Change::Reschedule(Row {
                        key,
                        attempts: entry.attempts,
                        next_at: entry.next_at,
                    }));
                }
                self.metrics.record_event(EventResult::Retried);
                tracing::debug!(
                    webhook_delivery_id = delivery_id,
                    attempts = entry.attempts,
                    error = %failure,
                    "decision event attempt failed; retrying later"
                );
            }
            None => {
                let attempts = entry.attempts;
                self.entries.remove(&key);
                self.changes.push(Change::Remove(key));
                self.metrics.record_event(EventResult::GivenUp);
                tracing::warn!(
                    attempts,
                    webhook_delivery_id = delivery_id,
                    error = %failure,
                    "decision event given up: the retry schedule ran out"
                );
            }
        }
    }
}
