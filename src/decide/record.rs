//! The decision record (SPEC §10): what was decided about a call and why, kept for the last
//! `--decision-log-size` calls and served at `GET /v1/calls/{call_sid}`. A call puts its record in
//! the log itself, under one lock held for a few hundred instructions, never across an await,
//! and shared with nothing else on the call's path. The log is a ring of records with a hash
//! index into it; once the ring is full, a call's record overwrites the oldest in place, its
//! ids copied into the room the oldest's had, so that keeping a record allocates and frees
//! nothing. (Handing records to a keeper task instead woke another thread for every call,
//! which cost a quarter of the throughput at 32 connections; a concurrent map with its own
//! eviction queue cost three shared cache lines and two allocations a call; a fresh block of
//! ids per record was one more malloc a call, freed at eviction by whichever worker evicted
//! it.) Records hold no caller context, variables or metadata.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use super::context::ContextUse;
use super::{Call, Cause, Decision, DedupResult, Verdict};
use crate::routes::Source;

/// One decided call, as `GET /v1/calls/{call_sid}` answers it. Made on every call's path and
/// kept for `--decision-log-size` calls after it, so it is small (88 bytes in the ring) and
/// holds one allocation at most calls, reused by the record that overwrites it: its ids, agent
/// id and reason are one block, its labels are the verdict's own one-byte types, what few calls
/// have is boxed, and its timestamp is formatted only when it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `call_id`, `to`, `from`, the agent that handles the call and the gate's reason.
    pub ids: CallIds,
    pub source: Source,
    pub decision: Decision,
    pub cause: Option<Cause>,
    /// hit, waited or miss (pushed caller context).
    pub context: Option<ContextUse>,
    /// replayed or joined (CallSid dedup).
    pub dedup: Option<DedupResult>,
    pub gate_ms: Option<f64>,
    pub at: SystemTime,
    /// A gate's override or a chain's results: `None` when the call has neither.
    pub rare: Option<Box<Rare>>,
}

/// The parts of a record few calls have.
#[derive(Clone, Debug, PartialEq)]
pub struct Rare {
    /// The gate's override only.
    pub override_agent_id: Option<String>,
    /// Each check's name, status and reason (check chains).
    pub checks: Option<serde_json::Value>,
}

impl Record {
    /// `call`'s record, as `verdict` decided it at `at`.
    pub fn new(call: &Call<'_>, verdict: &Verdict, at: SystemTime) -> Record {
        Record::with(call, verdict, at, Rare::of(verdict))
    }

    fn with(call: &Call<'_>, verdict: &Verdict, at: SystemTime, rare: Option<Box<Rare>>) -> Record {
        let mut record = Record {
            ids: CallIds::default(),
            source: verdict.source,
            decision: verdict.decision,
            cause: None,
            context: None,
            dedup: None,
            gate_ms: None,
            at,
            rare: None,
        };
        record.set(call, verdict, at, rare);
        record
    }

    /// Overwrites this record with `call`'s, in place: the ids' room is reused when it is large
    /// enough. Returns the rare parts it held, for the caller to drop.
    fn set(
        &mut self,
        call: &Call<'_>,
        verdict: &Verdict,
        at: SystemTime,
        rare: Option<Box<Rare>>,
    ) -> Option<Box<Rare>> {
        self.ids.set(call.call_id, call.to, call.from, verdict.agent_id(), verdict.reason.as_deref());
        self.source = verdict.source;
        self.decision = verdict.decision;
        self.cause = verdict.cause;
        self.context = verdict.context;
        self.dedup = verdict.dedup;
        self.gate_ms = verdict.gate_ms();
        self.at = at;
        std::mem::replace(&mut self.rare, rare)
    }
}

impl Rare {
    /// What of `verdict` few calls have: `None` without an override or check results.
    fn of(verdict: &Verdict) -> Option<Box<Rare>> {
        let override_agent_id = verdict.override_agent_id();
        (override_agent_id.is_some() || !verdict.checks.is_empty()).then(|| {
            Box::new(Rare {
                override_agent_id: override_agent_id.map(Into::into),
                checks: (!verdict.checks.is_empty()).then(|| verdict.checks_json()),
            })
        })
    }
}

/// Every field of SPEC §10, in order; a field without a value is `null`.
impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rare = self.rare.as_deref();
        let mut out = serializer.serialize_struct("Record", 14)?;
        out.serialize_field("call_id", self.ids.call_id())?;
        out.serialize_field("to", self.ids.to())?;
        out.serialize_field("from", self.ids.from())?;
        out.serialize_field("agent_id", &self.ids.agent_id())?;
        out.serialize_field("override_agent_id", &rare.and_then(|r| r.override_agent_id.as_deref()))?;
        out.serialize_field("source", self.source.as_str())?;
        out.serialize_field("decision", self.decision.as_str())?;
        out.serialize_field("cause", &self.cause.map(Cause::as_str))?;
        out.serialize_field("reason", &self.ids.reason())?;
        out.serialize_field("gate_ms", &self.gate_ms)?;
        out.serialize_field("checks", &rare.and_then(|r| r.checks.as_ref()))?;
        out.serialize_field("context", &self.context.map(ContextUse::as_str))?;
        out.serialize_field("dedup", &self.dedup.map(DedupResult::as_str))?;
        out.serialize_field("at", &format_args!("{}", humantime::format_rfc3339_millis(self.at)))?;
        out.end()
    }
}

/// A call's `call_id`, `to`, `from`, agent id and the gate's reason, end to end in one block.
/// A record overwritten in the ring reuses the block.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CallIds {
    text: String,
    /// Where each part after `call_id` starts in `text`: `to`, `from`, the agent id, the reason;
    /// [`ABSENT`] set on an agent id or reason the call does not have.
    starts: [u32; 4],
}

const ABSENT: u32 = 1 << 31;

/// A new block is made this much larger than its ids (at least), so that the calls that reuse
/// it, whose numbers and agent ids differ in length, seldom need a larger one.
const ROOM: usize = 32;

impl CallIds {
    pub fn new(call_id: &str, to: &str, from: &str, agent_id: Option<&str>, reason: Option<&str>) -> CallIds {
        let mut ids = CallIds::default();
        ids.set(call_id, to, from, agent_id, reason);
        ids
    }

    fn set(&mut self, call_id: &str, to: &str, from: &str, agent_id: Option<&str>, reason: Option<&str>) {
        let parts = [call_id, to, from, agent_id.unwrap_or(""), reason.unwrap_or("")];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.text.clear();
        if self.text.capacity() < len {
            self.text = String::with_capacity(len + ROOM);
        }
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // A webhook body and a gate's answer are at most 64 KiB each: every offset fits
                // below ABSENT.
                self.starts[i - 1] = u32::try_from(self.text.len()).expect("ids come from bounded bodies");
            }
            self.text.push_str(part);
        }
        if agent_id.is_none() {
            self.starts[2] |= ABSENT;
        }
        if reason.is_none() {
            self.starts[3] |= ABSENT;
        }
    }

    /// Part `i` (0 is `call_id`), or `None` for an absent one.
    fn part(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { self.starts[i - 1] };
        if start & ABSENT != 0 {
            return None;
        }
        let end = self.starts.get(i).map_or(self.text.len(), |&e| (e & !ABSENT) as usize);
        Some(&self.text[start as usize..end])
    }

    pub fn call_id(&self) -> &str {
        self.part(0).unwrap_or_default()
    }

    pub fn to(&self) -> &str {
        self.part(1).unwrap_or_default()
    }

    pub fn from(&self) -> &str {
        self.part(2).unwrap_or_default()
    }

    /// The agent that handles the call: the gate's override, else the number's.
    pub fn agent_id(&self) -> Option<&str> {
        self.part(3)
    }

    /// The gate's reason for a reject.
    pub fn reason(&self) -> Option<&str> {
        self.part(4)
    }
}

impl std::fmt::Debug for CallIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallIds")
            .field("call_id", &self.call_id())
            .field("to", &self.to())
            .field("from", &self.from())
            .field("agent_id", &self.agent_id())
            .field("reason", &self.reason())
            .finish()
    }
}

/// The last `capacity` records by CallSid. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog(Arc<Log>);

struct Log {
    ring: Mutex<Ring>,
    /// 0 keeps none (and never takes the lock).
    capacity: usize,
}

/// The records and an index of them by CallSid.
struct Ring {
    /// Record number `seq` is in slot `seq % capacity`: the ring fills up to the capacity, then
    /// each record overwrites the oldest in place, reusing its room (no allocation, and nothing
    /// freed, on a call's path once the ring is full).
    records: Vec<Record>,
    /// The next record's number.
    next: u64,
    /// The CallSid's hash and the number of its newest record, for each kept CallSid. A CallSid
    /// decided again points at its newer record; its older one stays in the ring, unindexed,
    /// until it is overwritten.
    index: HashTable<(u64, u64)>,
}

fn hash(call_id: &str) -> u64 {
    FxBuildHasher.hash_one(call_id)
}

/// The slot of record number `seq`.
fn slot(seq: u64, capacity: usize) -> usize {
    (seq % capacity as u64) as usize
}

impl Ring {
    fn at(&self, seq: u64, capacity: usize) -> &Record {
        &self.records[slot(seq, capacity)]
    }

    /// The number of `call_id`'s newest record.
    fn find(&self, call_id: &str, capacity: usize) -> Option<u64> {
        let found =
            self.index.find(hash(call_id), |&(_, seq)| self.at(seq, capacity).ids.call_id() == call_id);
        found.map(|&(_, seq)| seq)
    }

    /// Keeps `call`'s record (its CallSid hashing to `h`) as the newest, in the oldest's slot
    /// once the ring is full. Returns the rare parts of the record it overwrote, to be dropped
    /// after the lock.
    fn keep(
        &mut self,
        call: &Call<'_>,
        h: u64,
        verdict: &Verdict,
        at: SystemTime,
        rare: Option<Box<Rare>>,
        capacity: usize,
    ) -> Option<Box<Rare>> {
        let seq = self.next;
        self.next += 1;
        let overwritten = match self.records.get_mut(slot(seq, capacity)) {
            None => {
                self.records.push(Record::with(call, verdict, at, rare));
                None
            }
            Some(oldest) => {
                // Unindexed unless it is still its CallSid's newest record.
                let oldest_seq = seq - capacity as u64;
                if let Ok(entry) = self.index.find_entry(hash(oldest.ids.call_id()), |e| e.1 == oldest_seq) {
                    entry.remove();
                }
                oldest.set(call, verdict, at, rare)
            }
        };
        let Ring { records, index, .. } = self;
        let same = |&(_, s): &(u64, u64)| records[slot(s, capacity)].ids.call_id() == call.call_id;
        match index.find_mut(h, same) {
            Some(newest) => newest.1 = seq,
            None => {
                index.insert_unique(h, (h, seq), |e| e.0);
            }
        }
        overwritten
    }
}

impl DecisionLog {
    pub fn new(capacity: usize) -> DecisionLog {
        let reserve = capacity.min(1 << 16);
        let ring =
            Ring { records: Vec::with_capacity(reserve), next: 0, index: HashTable::with_capacity(reserve) };
        DecisionLog(Arc::new(Log { ring: Mutex::new(ring), capacity }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.0.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `call`'s record, as `verdict` decided it at `at`, in place of the oldest past the
    /// capacity. A call without a CallSid cannot be looked up, so it is not kept.
    pub fn keep(&self, call: &Call<'_>, verdict: &Verdict, at: SystemTime) {
        if call.call_id.is_empty() || self.0.capacity == 0 {
            return;
        }
        // What needs no lock is done before it.
        let (h, rare) = (hash(call.call_id), Rare::of(verdict));
        let overwritten = self.lock().keep(call, h, verdict, at, rare, self.0.capacity);
        // Freed after the lock is released.
        drop(overwritten);
    }

    /// The record of a recent call.
    pub fn get(&self, call_id: &str) -> Option<Record> {
        let ring = self.lock();
        ring.find(call_id, self.0.capacity).map(|seq| ring.at(seq, self.0.capacity).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Verdict;
    use crate::routes::Source;

    fn call(sid: &str) -> Call<'_> {
        Call { call_id: sid, from: "+15550001111", to: "+15550002222", test: false }
    }

    fn kept(log: &DecisionLog, sid: &str) -> Record {
        log.get(sid).unwrap_or_else(|| panic!("{sid} was not kept"))
    }

    #[test]
    fn keeps_the_last_n_and_evicts_the_oldest() {
        let log = DecisionLog::new(2);
        let verdict = Verdict::without_gate(Source::None, None);
        for sid in ["CA1", "CA2", "CA3"] {
            log.keep(&call(sid), &verdict, SystemTime::UNIX_EPOCH);
        }
        let newest = kept(&log, "CA3");
        assert_eq!(newest.decision, Decision::NoGate);
        let json = serde_json::to_value(&newest).unwrap();
        assert_eq!(json["at"], "1970-01-01T00:00:00.000Z");
        assert!(log.get("CA2").is_some());
        assert!(log.get("CA1").is_none(), "the oldest is evicted");
        // A CallSid decided again is one entry, the newer; its older place in the order does
        // not evict it.
        let accepted = Verdict { decision: Decision::Accept, ..verdict.clone() };
        log.keep(&call("CA2"), &accepted, SystemTime::now());
        log.keep(&call("CA4"), &verdict, SystemTime::now());
        kept(&log, "CA4");
        assert_eq!(log.get("CA2").unwrap().decision, Decision::Accept);
        assert!(log.get("CA3").is_none());
    }

    #[test]
    fn the_index_follows_the_ring_through_many_evictions() {
        let log = DecisionLog::new(7);
        let verdict = Verdict::without_gate(Source::None, None);
        let mut order = Vec::new();
        for i in 0..1000u32 {
            // Eleven CallSids in an order that repeats some before they are evicted.
            let sid = format!("CA{}", (i * 7 + i / 3) % 11);
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(i));
            log.keep(&call(&sid), &verdict, at);
            order.push((sid, at));
        }
        let last7 = &order[order.len() - 7..];
        for n in 0..11 {
            let sid = format!("CA{n}");
            let newest = last7.iter().rev().find(|(s, _)| *s == sid);
            assert_eq!(log.get(&sid).map(|r| r.at), newest.map(|(_, at)| *at), "{sid}");
        }
    }

    #[test]
    fn a_slot_in_the_ring_stays_small() {
        // Every call writes one, cold, and it stays for --decision-log-size calls.
        assert!(std::mem::size_of::<Record>() <= 88, "{}", std::mem::size_of::<Record>());
    }

    #[test]
    fn an_overwritten_slot_holds_only_the_new_record() {
        let log = DecisionLog::new(1);
        let long = "x".repeat(500);
        let mut rejected = Verdict::without_gate(Source::Number, Some("agent_a".into()));
        rejected.decision = Decision::Reject;
        rejected.reason = Some(long.clone());
        rejected.enrichment.agent_id = Some("agent_vip".into());
        log.keep(&call("CA1"), &Verdict::without_gate(Source::None, None), SystemTime::UNIX_EPOCH);
        // Longer ids than the slot had room for, and an override.
        log.keep(&call("CA2"), &rejected, SystemTime::UNIX_EPOCH);
        let r = kept(&log, "CA2");
        assert_eq!((r.ids.reason(), r.ids.agent_id()), (Some(long.as_str()), Some("agent_vip")));
        assert_eq!(r.rare.as_ref().and_then(|r| r.override_agent_id.as_deref()), Some("agent_vip"));
        assert!(log.get("CA1").is_none());
        // Shorter ids, no reason, no override: nothing of the record before is left.
        log.keep(&call("CA3"), &Verdict::without_gate(Source::None, None), SystemTime::UNIX_EPOCH);
        let r = kept(&log, "CA3");
        assert_eq!(
            r,
            Record::new(&call("CA3"), &Verdict::without_gate(Source::None, None), SystemTime::UNIX_EPOCH)
        );
        assert_eq!((r.ids.reason(), r.ids.agent_id(), r.rare), (None, None, None));
        assert!(log.get("CA2").is_none());
    }

    #[test]
    fn ids_keep_each_part_and_tell_absent_from_empty() {
        let ids = CallIds::new("CA1", "+15550002222", "", Some(""), None);
        assert_eq!((ids.call_id(), ids.to(), ids.from()), ("CA1", "+15550002222", ""));
        assert_eq!((ids.agent_id(), ids.reason()), (Some(""), None));
        let ids = CallIds::new("", "+1", "anonymous", None, Some("no credit"));
        assert_eq!((ids.call_id(), ids.to(), ids.from()), ("", "+1", "anonymous"));
        assert_eq!((ids.agent_id(), ids.reason()), (None, Some("no credit")));
    }
}
