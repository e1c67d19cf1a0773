//! The decision record (SPEC §10): what was decided about a call and why, kept for the last
//! `--decision-log-size` calls and served at `GET /v1/calls/{call_sid}`. A call hands its record
//! to a channel and never waits; a keeper task on the control runtime holds the bounded map.
//! Records hold no caller context, variables or metadata.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Call, Verdict};

/// Records waiting for the keeper; past it a record is not kept (the call goes on).
const QUEUE: usize = 4096;

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

type Kept = DashMap<Box<str>, (u64, Arc<Record>), FxBuildHasher>;

/// The last `capacity` records by CallSid. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    queue: mpsc::Sender<Record>,
    kept: Arc<Kept>,
}

impl DecisionLog {
    /// Starts the keeper on the current runtime; it ends when every handle is dropped.
    pub fn start(capacity: usize) -> DecisionLog {
        let (queue, mut incoming) = mpsc::channel::<Record>(QUEUE);
        let kept: Arc<Kept> = Arc::default();
        let map = Arc::clone(&kept);
        tokio::spawn(async move {
            // Insertion order, for eviction; each entry's sequence tells whether the map's
            // record for that CallSid is still this one (a later call may have replaced it).
            let mut order: VecDeque<(Box<str>, u64)> = VecDeque::with_capacity(capacity.min(1 << 16));
            let mut seq = 0u64;
            while let Some(record) = incoming.recv().await {
                if capacity == 0 {
                    continue;
                }
                seq += 1;
                let sid: Box<str> = record.call_id.as_str().into();
                map.insert(sid.clone(), (seq, Arc::new(record)));
                order.push_back((sid, seq));
                while order.len() > capacity {
                    let (old, old_seq) = order.pop_front().expect("longer than capacity");
                    map.remove_if(&old, |_, (s, _)| *s == old_seq);
                }
            }
        });
        DecisionLog { queue, kept }
    }

    /// Hands a record to the keeper without waiting. A call without a CallSid cannot be looked
    /// up, so it is not kept.
    pub fn keep(&self, record: Record) {
        if record.call_id.is_empty() {
            return;
        }
        if self.queue.try_send(record).is_err() {
            tracing::debug!("decision record queue full; a record was not kept");
        }
    }

    /// The record of a recent call.
    pub fn get(&self, call_id: &str) -> Option<Arc<Record>> {
        self.kept.get(call_id).map(|entry| Arc::clone(&entry.1))
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

    async fn until_kept(log: &DecisionLog, sid: &str) -> Arc<Record> {
        for _ in 0..1000 {
            if let Some(r) = log.get(sid) {
                return r;
            }
            tokio::task::yield_now().await;
        }
        panic!("{sid} was never kept");
    }

    #[tokio::test]
    async fn keeps_the_last_n_and_evicts_the_oldest() {
        let log = DecisionLog::start(2);
        let verdict = Verdict::without_gate(Source::None, None);
        for sid in ["CA1", "CA2", "CA3"] {
            log.keep(Record::new(&call(sid), &verdict, SystemTime::UNIX_EPOCH));
        }
        let newest = until_kept(&log, "CA3").await;
        assert_eq!(newest.decision, "no_gate");
        assert_eq!(newest.at, "1970-01-01T00:00:00.000Z");
        assert!(log.get("CA2").is_some());
        assert!(log.get("CA1").is_none(), "the oldest is evicted");
        // A CallSid decided again is one entry, the newer; its older place in the order does
        // not evict it.
        log.keep(Record { decision: "accept", ..Record::new(&call("CA2"), &verdict, SystemTime::now()) });
        log.keep(Record::new(&call("CA4"), &verdict, SystemTime::now()));
        until_kept(&log, "CA4").await;
        assert_eq!(log.get("CA2").unwrap().decision, "accept");
        assert!(log.get("CA3").is_none());
    }
}
