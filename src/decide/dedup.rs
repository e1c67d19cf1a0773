//! CallSid dedup (SPEC §13): Twilio retries a webhook it got no answer to, and a Fallback URL
//! may bring the same call again. A CallSid decided within `--dedup-window` gets the first
//! decision again (`replayed`); one arriving while the first is still with the gate waits for
//! that decision (`joined`, single flight). With `--store redis` the same holds across
//! replicas ([`super::shared_dedup`]), this replica's memory in front of the store and behind it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::sync::watch;

use super::link::{Link, Listener};
use super::shared_dedup::{self, Found, Remote, SharedDedup};
use super::{Call, Verdict};

/// CallSids remembered at once; beyond it the oldest go first, whatever their age. At 60 s,
/// room for 800 calls a second.
pub const MAX_ENTRIES: usize = 50_000;

/// Where decided CallSids are kept.
pub enum Dedup {
    /// `--dedup-window 0`.
    Off,
    /// This process only.
    Memory(MemoryDedup),
    /// Every replica of the shared store; this process's memory first.
    Shared(MemoryDedup, SharedDedup),
}

impl Dedup {
    /// The store for `window` (zero is off).
    pub fn new(window: Duration) -> Dedup {
        if window.is_zero() {
            Dedup::Off
        } else {
            Dedup::Memory(MemoryDedup::new(window, MAX_ENTRIES))
        }
    }

    /// The store for `window`, shared through `link` with every replica.
    pub fn shared(window: Duration, link: Arc<Link>) -> Dedup {
        match Dedup::new(window) {
            Dedup::Memory(memory) => Dedup::Shared(memory, SharedDedup::new(link, window)),
            other => other,
        }
    }

    /// What to do with `call`: decide it (and settle the claim), replay, or join. Calls without
    /// a CallSid and test calls are never deduplicated.
    pub async fn claim(&self, call: &Call<'_>) -> Claim<'_> {
        if call.call_id.is_empty() || call.test {
            return Claim::Untracked;
        }
        match self {
            Dedup::Off => Claim::Untracked,
            Dedup::Memory(memory) => memory.claim(call.call_id),
            Dedup::Shared(memory, shared) => {
                // A duplicate on this replica joins or replays here, without the store.
                let lead = match memory.claim(call.call_id) {
                    Claim::Lead(lead) => lead,
                    here => return here,
                };
                // Boxed: the store's exchange is a large future, and every gated call's
                // future would carry its room whether or not dedup is shared.
                Box::pin(claim_shared(shared, lead, call.call_id)).await
            }
        }
    }
}

/// The shared store's part of a claim this replica leads.
async fn claim_shared<'d>(shared: &'d SharedDedup, mut lead: Lead<'d>, call_id: &str) -> Claim<'d> {
    match shared.claim(call_id).await {
        Found::Claimed(remote) => {
            lead.remote = Some(Box::new(remote));
            Claim::Lead(lead)
        }
        Found::Pending(listener, hold) => {
            let link = Arc::clone(shared.link());
            Claim::Join(Follow::Remote(Box::new(Elsewhere { lead, link, listener, hold })))
        }
        Found::Decided(first) => {
            lead.settle(&first);
            Claim::Replay(Arc::from(first))
        }
        Found::Unknown => Claim::Lead(lead),
    }
}

/// The answer to [`Dedup::claim`].
pub enum Claim<'d> {
    /// Not deduplicated: decide it.
    Untracked,
    /// The first of its CallSid: decide it and [`Lead::settle`] the decision.
    Lead(Lead<'d>),
    /// Decided within the window: this is the first decision.
    Replay(Arc<Verdict>),
    /// The first is still being decided: wait for it.
    Join(Follow<'d>),
}

/// One remembered CallSid.
struct Slot {
    /// Which claim made it (a later one may replace it).
    seq: u64,
    state: SlotState,
}

enum SlotState {
    /// Being decided; the decision arrives on the channel.
    Pending(watch::Receiver<Option<Arc<Verdict>>>),
    Done {
        verdict: Arc<Verdict>,
        at: Instant,
    },
}

/// The in-memory store: a concurrent map of CallSids and an insertion-order queue that bounds
/// it (at most `capacity` entries, each kept until its window has passed or room is needed).
pub struct MemoryDedup {
    window: Duration,
    capacity: usize,
    slots: DashMap<Box<str>, Slot, FxBuildHasher>,
    /// Claims in order, for eviction. Never locked while a map guard is held.
    order: Mutex<VecDeque<(Box<str>, u64, Instant)>>,
    seq: AtomicU64,
}

impl MemoryDedup {
    pub fn new(window: Duration, capacity: usize) -> MemoryDedup {
        MemoryDedup {
            window,
            capacity: capacity.max(1),
            slots: DashMap::default(),
            order: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// CallSids held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn claim(&self, call_id: &str) -> Claim<'_> {
        let now = Instant::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = watch::channel(None);
        let fresh = Slot { seq, state: SlotState::Pending(rx) };
        match self.slots.entry(call_id.into()) {
            Entry::Occupied(mut held) => match &held.get().state {
                SlotState::Pending(rx) => return Claim::Join(Follow::Local(rx.clone())),
                SlotState::Done { verdict, at } if now.duration_since(*at) < self.window => {
                    return Claim::Replay(Arc::clone(verdict));
                }
                SlotState::Done { .. } => {
                    held.insert(fresh);
                }
            },
            Entry::Vacant(empty) => {
                empty.insert(fresh);
            }
        }
        self.remember(call_id, seq, now);
        Claim::Lead(Lead { store: self, key: call_id.into(), seq, tx, settled: false, remote: None })
    }

    /// Queues a claim for eviction and evicts what is past its window or beyond capacity.
    fn remember(&self, call_id: &str, seq: u64, now: Instant) {
        let mut evict = Vec::new();
        {
            let mut order = self.order.lock().expect("dedup order lock");
            order.push_back((call_id.into(), seq, now));
            // A decision is made at most a Twilio deadline after its claim, so a claim older
            // than the window plus that is past its window for certain.
            let stale = self.window + Duration::from_secs(15);
            while let Some((_, _, at)) = order.front() {
                if order.len() > self.capacity || now.duration_since(*at) > stale {
                    evict.push(order.pop_front().expect("a front entry"));
                } else {
                    break;
                }
            }
        }
        for (key, seq, _) in evict {
            self.slots.remove_if(&key, |_, slot| slot.seq == seq);
        }
    }
}

/// The first call of a CallSid: its decision is handed to those that join it and kept for the
/// window. Dropped unsettled (its call went away), it forgets the CallSid, and those waiting
/// decide for themselves.
pub struct Lead<'d> {
    store: &'d MemoryDedup,
    key: Box<str>,
    seq: u64,
    tx: watch::Sender<Option<Arc<Verdict>>>,
    settled: bool,
    /// This replica's claim in the shared store, when it holds one (boxed: most leads have
    /// none, and a lead is part of every deduplicated call's future).
    remote: Option<Box<Remote>>,
}

impl Lead<'_> {
    pub fn settle(mut self, verdict: &Verdict) {
        // Kept without the gate's variables and metadata: a replay needs only what the engine
        // is handed (the sealed header) and what is logged.
        let mut kept = verdict.clone();
        kept.enrichment.dynamic_variables = None;
        kept.enrichment.metadata = None;
        let kept = Arc::new(kept);
        if let Some(mut slot) = self.store.slots.get_mut(&self.key) {
            if slot.seq == self.seq {
                slot.state = SlotState::Done { verdict: Arc::clone(&kept), at: Instant::now() };
            }
        }
        if let Some(remote) = self.remote.take() {
            remote.settle(&kept);
        }
        self.tx.send_replace(Some(kept));
        self.settled = true;
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.store.slots.remove_if(&self.key, |_, slot| slot.seq == self.seq);
            if let Some(remote) = self.remote.take() {
                remote.release();
            }
        }
    }
}

/// A duplicate waiting on the first call's decision.
pub enum Follow<'d> {
    /// The first is on this replica.
    Local(watch::Receiver<Option<Arc<Verdict>>>),
    /// The first is on another replica.
    Remote(Box<Elsewhere<'d>>),
}

/// A first call on another replica. `lead` holds this CallSid here meanwhile, so that
/// duplicates on this replica wait here; `hold` is how long the other's claim has left.
pub struct Elsewhere<'d> {
    lead: Lead<'d>,
    link: Arc<Link>,
    listener: Listener,
    hold: Duration,
}

/// What a duplicate's wait came to.
pub enum Joined<'d> {
    /// The first call's decision.
    Decided(Arc<Verdict>),
    /// The first went away undecided, or `within` passed: decide this one (settling `lead`
    /// when there is one).
    Undecided(Option<Lead<'d>>),
}

impl<'d> Follow<'d> {
    /// The first call's decision, or what to decide with if it went away or `within` passed.
    pub async fn wait(self, within: Duration) -> Joined<'d> {
        match self {
            Follow::Local(mut rx) => match tokio::time::timeout(within, rx.wait_for(Option::is_some)).await {
                Ok(Ok(decided)) => match decided.clone() {
                    Some(first) => Joined::Decided(first),
                    None => Joined::Undecided(None),
                },
                _ => Joined::Undecided(None),
            },
            Follow::Remote(elsewhere) => {
                let Elsewhere { lead, link, listener, hold } = *elsewhere;
                match shared_dedup::wait(&link, &listener, &lead.key, hold, within).await {
                    Some(first) => {
                        lead.settle(&first);
                        Joined::Decided(Arc::new(first))
                    }
                    None => Joined::Undecided(Some(lead)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Decision;
    use crate::routes::Source;

    fn call(sid: &str) -> Call<'_> {
        Call { call_id: sid, from: "+15550001111", to: "+15550002222", test: false }
    }

    fn verdict(decision: Decision) -> Verdict {
        Verdict { decision, ..Verdict::without_gate(Source::Number, None) }
    }

    #[tokio::test]
    async fn a_decided_call_is_replayed_and_a_pending_one_joined() {
        // The wait is spawned, so what it borrows lives for the test.
        let dedup: &'static Dedup = Box::leak(Box::new(Dedup::new(Duration::from_secs(60))));
        let Claim::Lead(lead) = dedup.claim(&call("CA1")).await else { panic!("the first leads") };
        let Claim::Join(follow) = dedup.claim(&call("CA1")).await else { panic!("a second joins") };
        let waiting = tokio::spawn(follow.wait(Duration::from_secs(5)));
        lead.settle(&verdict(Decision::Reject));
        let Joined::Decided(first) = waiting.await.unwrap() else { panic!("joined") };
        assert_eq!(first.decision, Decision::Reject);
        let Claim::Replay(first) = dedup.claim(&call("CA1")).await else { panic!("a third replays") };
        assert_eq!(first.decision, Decision::Reject);
        assert!(matches!(dedup.claim(&call("CA2")).await, Claim::Lead(_)));
    }

    #[tokio::test]
    async fn no_callsid_test_calls_and_off_are_never_deduplicated() {
        let dedup = Dedup::new(Duration::from_secs(60));
        for _ in 0..2 {
            assert!(matches!(dedup.claim(&call("")).await, Claim::Untracked));
            let test = Call { test: true, ..call("CA1") };
            assert!(matches!(dedup.claim(&test).await, Claim::Untracked));
        }
        let off = Dedup::new(Duration::ZERO);
        assert!(matches!(off.claim(&call("CA1")).await, Claim::Untracked));
    }

    #[tokio::test]
    async fn a_lead_that_goes_away_releases_those_waiting() {
        let dedup = Dedup::new(Duration::from_secs(60));
        let Claim::Lead(lead) = dedup.claim(&call("CA1")).await else { panic!() };
        let Claim::Join(follow) = dedup.claim(&call("CA1")).await else { panic!() };
        drop(lead);
        assert!(matches!(follow.wait(Duration::from_secs(5)).await, Joined::Undecided(None)));
        assert!(matches!(dedup.claim(&call("CA1")).await, Claim::Lead(_)), "forgotten, asked again");
    }

    #[tokio::test]
    async fn after_the_window_it_is_decided_again_and_memory_is_bounded() {
        let memory = MemoryDedup::new(Duration::from_millis(30), 3);
        let Claim::Lead(lead) = memory.claim("CA1") else { panic!() };
        lead.settle(&verdict(Decision::Accept));
        assert!(matches!(memory.claim("CA1"), Claim::Replay(_)));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(matches!(memory.claim("CA1"), Claim::Lead(_)), "past the window");

        for i in 0..10 {
            if let Claim::Lead(lead) = memory.claim(&format!("CB{i}")) {
                lead.settle(&verdict(Decision::Accept));
            }
        }
        assert_eq!(memory.len(), 3, "the oldest are evicted");
        assert!(matches!(memory.claim("CB9"), Claim::Replay(_)));
        assert!(matches!(memory.claim("CB0"), Claim::Lead(_)));
    }

    #[tokio::test]
    async fn what_is_kept_leaves_out_the_variables_and_metadata() {
        let dedup = Dedup::new(Duration::from_secs(60));
        let Claim::Lead(lead) = dedup.claim(&call("CA1")).await else { panic!() };
        let mut v = verdict(Decision::Accept);
        v.enrichment.metadata = Some(serde_json::Map::new());
        v.enrichment.agent_id = Some("agent_b".into());
        lead.settle(&v);
        let Claim::Replay(kept) = dedup.claim(&call("CA1")).await else { panic!() };
        assert!(kept.enrichment.metadata.is_none());
        assert_eq!(kept.agent_id(), Some("agent_b"));
    }
}
