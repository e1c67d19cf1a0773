//! The decision record (SPEC §10): what was decided about a call and why, kept for the last
//! `--decision-log-size` calls and served at `GET /v1/calls/{call_sid}`. A call puts its record in
//! the log itself, under one lock held for a few hundred instructions, never across an await,
//! and shared with nothing else on the call's path. The log is a ring of records in decision
//! order with a hash index into it: keeping a record allocates nothing of its own in the steady
//! state (the record takes over the call's strings), and evicting one frees only those. (Handing
//! records to a keeper task instead woke another thread for every call, which cost a quarter of
//! the throughput at 32 connections; a concurrent map with its own eviction queue cost three
//! shared cache lines and two allocations a call.) Records hold no caller context, variables or
//! metadata.

use std::collections::VecDeque;
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
/// holds one allocation at most calls: its ids, agent id and reason are one block, its labels
/// are the verdict's own one-byte types, what few calls have is boxed, and its timestamp is
/// formatted only when it is read.
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
    pub fn new(call: &Call<'_>, verdict: &Verdict, at: SystemTime) -> Record {
        let override_agent_id = verdict.override_agent_id();
        let rare = (override_agent_id.is_some() || !verdict.checks.is_empty()).then(|| {
            Box::new(Rare {
                override_agent_id: override_agent_id.map(Into::into),
                checks: (!verdict.checks.is_empty()).then(|| verdict.checks_json()),
            })
        });
        Record {
            ids: CallIds::new(
                call.call_id,
                call.to,
                call.from,
                verdict.agent_id(),
                verdict.reason.as_deref(),
            ),
            source: verdict.source,
            decision: verdict.decision,
            cause: verdict.cause,
            context: verdict.context,
            dedup: verdict.dedup,
            gate_ms: verdict.gate_ms(),
            at,
            rare,
        }
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
#[derive(Clone, PartialEq, Eq)]
pub struct CallIds {
    text: Box<str>,
    /// Where each part after `call_id` starts in `text`: `to`, `from`, the agent id, the reason;
    /// [`ABSENT`] set on an agent id or reason the call does not have.
    starts: [u32; 4],
}

const ABSENT: u32 = 1 << 31;

impl CallIds {
    pub fn new(call_id: &str, to: &str, from: &str, agent_id: Option<&str>, reason: Option<&str>) -> CallIds {
        let parts = [call_id, to, from, agent_id.unwrap_or(""), reason.unwrap_or("")];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut starts = [0u32; 4];
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // A webhook body and a gate's answer are at most 64 KiB each: every offset fits
                // below ABSENT.
                starts[i - 1] = u32::try_from(text.len()).expect("ids come from bounded bodies");
            }
            text.push_str(part);
        }
        if agent_id.is_none() {
            starts[2] |= ABSENT;
        }
        if reason.is_none() {
            starts[3] |= ABSENT;
        }
        CallIds { text: text.into(), starts }
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

/// The records in decision order and an index of them by CallSid.
struct Ring {
    /// Oldest first, each with its CallSid's hash; the record at position `i` has sequence
    /// number `first + i`. (With the hash beside it, evicting a record reads nothing of it.)
    records: VecDeque<(u64, Record)>,
    first: u64,
    /// The sequence number of each kept CallSid's newest record. A CallSid decided again points
    /// at its newer record; its older one stays in the ring, unindexed, until it is evicted.
    index: HashTable<u64>,
}

fn hash(call_id: &str) -> u64 {
    FxBuildHasher.hash_one(call_id)
}

impl Ring {
    fn at(&self, seq: u64) -> &(u64, Record) {
        &self.records[(seq - self.first) as usize]
    }

    /// The index entry of `call_id`'s newest record.
    fn find(&self, call_id: &str) -> Option<u64> {
        self.index.find(hash(call_id), |&seq| self.at(seq).1.ids.call_id() == call_id).copied()
    }

    /// Adds `record` as the newest; returns the oldest when the ring held more than `capacity`.
    fn push(&mut self, record: Record, capacity: usize) -> Option<Record> {
        let seq = self.first + self.records.len() as u64;
        let h = hash(record.ids.call_id());
        self.records.push_back((h, record));
        let Ring { records, first, index, .. } = self;
        let at = |s: u64| &records[(s - *first) as usize];
        let call_id = at(seq).1.ids.call_id();
        match index.find_mut(h, |&s| at(s).1.ids.call_id() == call_id) {
            Some(newest) => *newest = seq,
            None => {
                index.insert_unique(h, seq, |&s| at(s).0);
            }
        }
        if self.records.len() <= capacity {
            return None;
        }
        let (oldest_hash, oldest) = self.records.pop_front().expect("over capacity, so not empty");
        let oldest_seq = self.first;
        self.first += 1;
        // Unindexed unless it is still its CallSid's newest record.
        if let Ok(entry) = self.index.find_entry(oldest_hash, |&s| s == oldest_seq) {
            entry.remove();
        }
        Some(oldest)
    }
}

impl DecisionLog {
    pub fn new(capacity: usize) -> DecisionLog {
        let reserve = capacity.min(1 << 16);
        let ring = Ring {
            records: VecDeque::with_capacity(reserve),
            first: 0,
            index: HashTable::with_capacity(reserve),
        };
        DecisionLog(Arc::new(Log { ring: Mutex::new(ring), capacity }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.0.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `record`, evicting the oldest past the capacity. A call without a CallSid cannot
    /// be looked up, so it is not kept.
    pub fn keep(&self, record: Record) {
        if record.ids.call_id().is_empty() || self.0.capacity == 0 {
            return;
        }
        let evicted = self.lock().push(record, self.0.capacity);
        // Freed after the lock is released.
        drop(evicted);
    }

    /// The record of a recent call.
    pub fn get(&self, call_id: &str) -> Option<Record> {
        let ring = self.lock();
        ring.find(call_id).map(|seq| ring.at(seq).1.clone())
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
            log.keep(Record::new(&call(sid), &verdict, SystemTime::UNIX_EPOCH));
        }
        let newest = kept(&log, "CA3");
        assert_eq!(newest.decision, Decision::NoGate);
        let json = serde_json::to_value(&newest).unwrap();
        assert_eq!(json["at"], "1970-01-01T00:00:00.000Z");
        assert!(log.get("CA2").is_some());
        assert!(log.get("CA1").is_none(), "the oldest is evicted");
        // A CallSid decided again is one entry, the newer; its older place in the order does
        // not evict it.
        log.keep(Record {
            decision: Decision::Accept,
            ..Record::new(&call("CA2"), &verdict, SystemTime::now())
        });
        log.keep(Record::new(&call("CA4"), &verdict, SystemTime::now()));
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
            log.keep(Record::new(&call(&sid), &verdict, at));
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
        assert!(std::mem::size_of::<(u64, Record)>() <= 88, "{}", std::mem::size_of::<(u64, Record)>());
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
