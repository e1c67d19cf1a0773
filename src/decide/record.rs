//! The decision record (SPEC §10): what was decided about a call and why, kept for the last
//! `--decision-log-size` calls and served at `GET /v1/calls/{call_sid}`. A call puts its record in
//! the bounded map itself: a sharded map insert and a push onto the eviction order, under locks
//! held for a few instructions, never across an await, and shared with nothing else on the call's
//! path. (Handing records to a keeper task instead woke another thread for every call, which cost
//! a quarter of the throughput at 32 connections.) Records hold no caller context, variables or
//! metadata.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use super::{Call, Verdict};

/// One decided call, as `GET /v1/calls/{call_sid}` answers it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub call_id: String,
    pub to: String,
    pub from: String,
    /// The agent that handles the call: the gate's override, else the number's.
    pub agent_id: Option<String>,
    /// The gate's override only.
    pub override_agent_id: Option<String>,
    pub source: &'static str,
    pub decision: &'static str,
    pub cause: Option<&'static str>,
    pub reason: Option<String>,
    pub gate_ms: Option<f64>,
    /// Each check's name, status and reason (check chains; empty for a webhook gate).
    pub checks: Option<serde_json::Value>,
    /// hit, waited or miss (pushed caller context).
    pub context: Option<&'static str>,
    /// replayed or joined (CallSid dedup).
    pub dedup: Option<&'static str>,
    /// RFC 3339, UTC.
    pub at: String,
}

impl Record {
    pub fn new(call: &Call, verdict: &Verdict, at: SystemTime) -> Record {
        Record {
            call_id: call.call_id.clone(),
            to: call.to.clone(),
            from: call.from.clone(),
            agent_id: verdict.agent_id().map(Into::into),
            override_agent_id: verdict.override_agent_id().map(Into::into),
            source: verdict.source.as_str(),
            decision: verdict.decision.as_str(),
            cause: verdict.cause.map(|c| c.as_str()),
            reason: verdict.reason.clone(),
            gate_ms: verdict.gate_ms(),
            checks: (!verdict.checks.is_empty()).then(|| verdict.checks_json()),
            context: verdict.context.map(|c| c.as_str()),
            dedup: verdict.dedup.map(|d| d.as_str()),
            at: humantime::format_rfc3339_millis(at).to_string(),
        }
    }
}

type Kept = DashMap<Arc<str>, (u64, Arc<Record>), FxBuildHasher>;

/// The last `capacity` records by CallSid. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog(Arc<Log>);

struct Log {
    kept: Kept,
    /// Insertion order, for eviction; each entry's sequence tells whether the map's record for
    /// that CallSid is still this one (a later call may have replaced it).
    order: Mutex<VecDeque<(Arc<str>, u64)>>,
    seq: AtomicU64,
    capacity: usize,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> DecisionLog {
        DecisionLog(Arc::new(Log {
            kept: Kept::default(),
            order: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            seq: AtomicU64::new(0),
            capacity,
        }))
    }

    /// Keeps `record`, evicting the oldest past the capacity. A call without a CallSid cannot
    /// be looked up, so it is not kept.
    pub fn keep(&self, record: Record) {
        let log = &*self.0;
        if record.call_id.is_empty() || log.capacity == 0 {
            return;
        }
        let seq = log.seq.fetch_add(1, Ordering::Relaxed);
        let sid: Arc<str> = record.call_id.as_str().into();
        log.kept.insert(Arc::clone(&sid), (seq, Arc::new(record)));
        let evicted = {
            let mut order = log.order.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            order.push_back((sid, seq));
            (order.len() > log.capacity).then(|| order.pop_front()).flatten()
        };
        if let Some((old, old_seq)) = evicted {
            log.kept.remove_if(&old, |_, (s, _)| *s == old_seq);
        }
    }

    /// The record of a recent call.
    pub fn get(&self, call_id: &str) -> Option<Arc<Record>> {
        self.0.kept.get(call_id).map(|entry| Arc::clone(&entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Verdict;
    use crate::routes::Source;

    fn call(sid: &str) -> Call {
        Call { call_id: sid.into(), from: "+15550001111".into(), to: "+15550002222".into(), test: false }
    }

    fn kept(log: &DecisionLog, sid: &str) -> Arc<Record> {
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
        assert_eq!(newest.decision, "no_gate");
        assert_eq!(newest.at, "1970-01-01T00:00:00.000Z");
        assert!(log.get("CA2").is_some());
        assert!(log.get("CA1").is_none(), "the oldest is evicted");
        // A CallSid decided again is one entry, the newer; its older place in the order does
        // not evict it.
        log.keep(Record { decision: "accept", ..Record::new(&call("CA2"), &verdict, SystemTime::now()) });
        log.keep(Record::new(&call("CA4"), &verdict, SystemTime::now()));
        kept(&log, "CA4");
        assert_eq!(log.get("CA2").unwrap().decision, "accept");
        assert!(log.get("CA3").is_none());
    }
}
