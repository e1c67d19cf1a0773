//! CallSid dedup across replicas (SPEC §13, §15): the first replica to see a CallSid claims it
//! in Redis while its gate is asked; the decision is then stored for the dedup window and
//! announced. A replica that sees the CallSid meanwhile waits for that announcement (or for the
//! claim to lapse, when the claiming replica died); one that sees it later replays it. Every
//! store operation gets at most [`OP_LIMIT`]; past it, or on an error, the call keeps to this
//! replica's own dedup.
//!
//! Keys, under `--store-prefix`: `call:{CallSid}` (a claim `pending:{token}`, or the decision
//! as JSON [`Kept`]) and the channel `call:decided` (the CallSid decided or released).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::chain::{CheckResult, CheckStatus};
use super::context::ContextUse;
use super::link::{Link, Listener, Topic, OP_LIMIT};
use super::{Cause, Decision, Enrichment, GateName, GateResult, GateRun, Verdict};
use crate::metrics::StoreOp;
use crate::routes::checks::CheckType;
use crate::routes::Source;

/// Claims the CallSid (`ARGV[1]`, for `ARGV[2]` ms) unless it is held: then answers what holds
/// it and for how long more (ms).
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Stores the decision for the window and announces it.
const SETTLE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
";

/// Drops the claim if it is still this one, and announces it, so that those waiting decide.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
";

/// Renews the claim (`ARGV[2]` ms more) if it is still this one (`ARGV[1]`).
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

const PENDING: &str = "pending:";

/// How long a claim holds unless renewed; the claiming replica renews it every 300 ms
/// while it decides, so a replica that dies leaves those waiting on it within this.
pub const CLAIM_HOLD: Duration = Duration::from_secs(1);
const RENEW_EVERY: Duration = Duration::from_millis(300);

static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));
static SETTLE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));
static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW));

/// What a claim in the store found.
pub enum Found {
    /// This replica holds the claim now.
    Claimed(Remote),
    /// Another replica is deciding it: wait for its decision, at most the claim's time left.
    Pending(Listener, Duration),
    /// Decided within the window.
    Decided(Box<Verdict>),
    /// The store did not answer (or held something unreadable): decide here.
    Unknown,
}

/// The store's side of dedup, shared by every replica.
pub struct SharedDedup {
    link: Arc<Link>,
    window: Duration,
    token: String,
    next: AtomicU64,
}

impl SharedDedup {
    pub fn new(link: Arc<Link>, window: Duration) -> SharedDedup {
        // Tells this process's claims from another's; not a secret.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let token = format!("{:x}{:x}", std::process::id(), nanos.as_nanos() & 0xffff_ffff);
        SharedDedup { link, window, token, next: AtomicU64::new(0) }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Claims `call_id` in the store, or finds who has.
    pub async fn claim(&self, call_id: &str) -> Found {
        let key = self.link.key(&format!("call:{call_id}"));
        let token = format!("{PENDING}{}.{}", self.token, self.next.fetch_add(1, Ordering::Relaxed));
        // Listening before the claim, so a decision announced between the two still wakes it.
        let listener = self.link.listen(Topic::Call, call_id);
        let mut invocation = CLAIM_SCRIPT.key(&key);
        invocation.arg(&token).arg(CLAIM_HOLD.as_millis() as u64);
        let held: Option<Option<(String, i64)>> = self
            .link
            .run(StoreOp::Read, OP_LIMIT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        match held {
            None => Found::Unknown,
            Some(None) => {
                let renew = tokio::spawn(renew(Arc::clone(&self.link), key.clone(), token.clone()));
                Found::Claimed(Remote {
                    link: Arc::clone(&self.link),
                    key,
                    call_id: call_id.into(),
                    token,
                    window: self.window,
                    renew,
                })
            }
            Some(Some((value, ttl_ms))) if value.starts_with(PENDING) => {
                // A claim with no expiry (-1) cannot come from callgate; treat it as the hold.
                let left = u64::try_from(ttl_ms).map_or(CLAIM_HOLD, Duration::from_millis);
                Found::Pending(listener, left)
            }
            Some(Some((value, _))) => match serde_json::from_str::<Kept>(&value).ok().and_then(Kept::verdict)
            {
                Some(verdict) => Found::Decided(Box::new(verdict)),
                None => Found::Unknown,
            },
        }
    }
}

/// Keeps a claim alive while its call is decided; aborted when the claim is settled or released.
async fn renew(link: Arc<Link>, key: String, token: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let mut invocation = RENEW_SCRIPT.key(&key);
        invocation.arg(&token).arg(CLAIM_HOLD.as_millis() as u64);
        let _: Option<i64> = link
            .run(StoreOp::Write, OP_LIMIT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
    }
}

/// This replica's claim in the store: settled with the decision, or released if the call went
/// away undecided. Both are sent in the background: the call does not wait on them.
pub struct Remote {
    link: Arc<Link>,
    key: String,
    call_id: String,
    token: String,
    window: Duration,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl Remote {
    pub fn settle(&self, kept: &Verdict) {
        let json = serde_json::to_string(&Kept::of(kept)).expect("a decision serialises");
        let mut invocation = SETTLE_SCRIPT.key(&self.key);
        invocation
            .key(self.link.channel(Topic::Call))
            .arg(json)
            .arg(self.window.as_millis().max(1) as u64)
            .arg(&self.call_id);
        fire(&self.link, invocation);
    }

    pub fn release(&self) {
        let mut invocation = RELEASE_SCRIPT.key(&self.key);
        invocation.key(self.link.channel(Topic::Call)).arg(&self.token).arg(&self.call_id);
        fire(&self.link, invocation);
    }
}

/// Waits on another replica's claim until it is decided (its decision) or gone (`None`: the
/// claim was released, or lapsed with its replica; the store did not answer; or `within`
/// passed): then this replica decides.
pub async fn wait(
    link: &Link,
    listener: &Listener,
    call_id: &str,
    mut hold: Duration,
    within: Duration,
) -> Option<Verdict> {
    let started = Instant::now();
    let key = link.key(&format!("call:{call_id}"));
    loop {
        let left = within.saturating_sub(started.elapsed());
        if left.is_zero() {
            return None;
        }
        // Woken by the announcement, or at the latest when the claim lapses.
        let until = left.min(hold + Duration::from_millis(10));
        let _ = listener.woken(until).await;
        let key = key.clone();
        let value: Option<(Option<String>, i64)> = link
            .run(StoreOp::Read, OP_LIMIT, |mut conn| async move {
                redis::pipe().get(&key).pttl(&key).query_async(&mut conn).await
            })
            .await;
        match value {
            Some((Some(v), ttl_ms)) if v.starts_with(PENDING) => {
                hold = u64::try_from(ttl_ms).map_or(hold, Duration::from_millis);
            }
            Some((Some(v), _)) => return serde_json::from_str::<Kept>(&v).ok().and_then(Kept::verdict),
            Some((None, _)) | None => return None,
        }
    }
}

/// The part of a verdict a replay needs, as stored: what the webhook answers, forwards, logs
/// and counts. The sealed `X-Callgate-Context` is kept as sealed; the gate's variables and
/// metadata and the pushed context themselves are not.
#[derive(Serialize, Deserialize)]
pub struct Kept {
    decision: String,
    cause: Option<String>,
    reason: Option<String>,
    source: String,
    number_agent_id: Option<String>,
    override_agent_id: Option<String>,
    dropped_invalid: u32,
    /// The gate's result and its time in microseconds.
    gate: Option<(String, u64)>,
    gate_display: Option<String>,
    context_header: Option<String>,
    context_too_large: bool,
    forward_enrichment: bool,
    checks: Vec<KeptCheck>,
    shadow: bool,
    context: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct KeptCheck {
    name: String,
    check_type: String,
    status: String,
    reason: Option<String>,
}

impl Kept {
    pub fn of(v: &Verdict) -> Kept {
        Kept {
            decision: v.decision.as_str().into(),
            cause: v.cause.map(|c| c.as_str().into()),
            reason: v.reason.clone(),
            source: v.source.as_str().into(),
            number_agent_id: v.number_agent_id.as_deref().map(Into::into),
            override_agent_id: v.enrichment.agent_id.clone(),
            dropped_invalid: v.enrichment.dropped_invalid,
            gate: v.gate.map(|g| (g.result.as_str().into(), g.elapsed.as_micros() as u64)),
            gate_display: v.gate_display.as_ref().map(|g| g.as_str().into()),
            context_header: v.context_header.as_ref().and_then(|h| h.to_str().ok()).map(Into::into),
            context_too_large: v.context_too_large,
            forward_enrichment: v.forward_enrichment,
            checks: v
                .checks
                .iter()
                .map(|c| KeptCheck {
                    name: c.name.to_string(),
                    check_type: c.check_type.as_str().into(),
                    status: c.status.as_str().into(),
                    reason: c.reason.map(|r| r.as_str().into()),
                })
                .collect(),
            shadow: v.shadow,
            context: v.context.map(|c| c.as_str().into()),
        }
    }

    /// The verdict again; `None` if a field is not one this build knows (written by another
    /// version): the call is then decided here.
    pub fn verdict(self) -> Option<Verdict> {
        let source = match self.source.as_str() {
            "number" => Source::Number,
            "agent" => Source::Agent,
            "none" => Source::None,
            _ => return None,
        };
        let mut v = Verdict::without_gate(source, self.number_agent_id.map(Into::into));
        v.decision = named(&Decision::ALL, Decision::as_str, &self.decision)?;
        v.cause = match self.cause {
            Some(c) => Some(named(&Cause::ALL, Cause::as_str, &c)?),
            None => None,
        };
        v.reason = self.reason;
        v.enrichment = Enrichment {
            agent_id: self.override_agent_id,
            dropped_invalid: self.dropped_invalid,
            ..Enrichment::default()
        };
        v.gate = match self.gate {
            Some((result, us)) => Some(GateRun {
                result: named(&GateResult::ALL, GateResult::as_str, &result)?,
                elapsed: Duration::from_micros(us),
            }),
            None => None,
        };
        v.gate_display = self.gate_display.map(|name| GateName::Recorded(name.into()));
        v.context_header = match self.context_header {
            Some(h) => Some(HeaderValue::try_from(h).ok()?),
            None => None,
        };
        v.context_too_large = self.context_too_large;
        v.forward_enrichment = self.forward_enrichment;
        v.shadow = self.shadow;
        v.context = match self.context.as_deref() {
            Some("hit") => Some(ContextUse::Hit),
            Some("waited") => Some(ContextUse::Waited),
            Some("miss") => Some(ContextUse::Miss),
            Some(_) => return None,
            None => None,
        };
        for c in self.checks {
            let status = match c.status.as_str() {
                "proceed" => CheckStatus::Proceed,
                "skip" => CheckStatus::Skip,
                "failed" => CheckStatus::Failed,
                "disabled" => CheckStatus::Disabled,
                _ => return None,
            };
            let reason = match c.reason {
                Some(r) => Some(named(&Cause::ALL, Cause::as_str, &r)?),
                None => None,
            };
            let check_type = named(&CheckType::ALL, CheckType::as_str, &c.check_type)?;
            v.checks.push(CheckResult { name: c.name.into(), check_type, status, reason });
        }
        Some(v)
    }
}

/// The value of `all` spelled `name`.
fn named<T: Copy>(all: &[T], spelling: fn(T) -> &'static str, name: &str) -> Option<T> {
    all.iter().copied().find(|t| spelling(*t) == name)
}

/// Runs `invocation` in the background within [`OP_LIMIT`]: the call that settles or releases a
/// claim never waits for Redis (a failure is counted by the link).
fn fire(link: &Arc<Link>, invocation: redis::ScriptInvocation<'static>) {
    let link = Arc::clone(link);
    tokio::spawn(async move {
        let _: Option<i64> = link
            .run(StoreOp::Write, OP_LIMIT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_verdict_comes_back_as_it_was_replayed() {
        let mut v = Verdict::without_gate(Source::Agent, Some("agent_a".into()));
        v.decision = Decision::FailClosed;
        v.cause = Some(Cause::Timeout);
        v.reason = Some("r".into());
        v.enrichment.agent_id = Some("agent_b".into());
        v.gate = Some(GateRun { result: GateResult::Failure, elapsed: Duration::from_micros(1234) });
        v.gate_display = Some(GateName::Recorded("http://gate/x".into()));
        v.context = Some(ContextUse::Waited);
        v.shadow = true;
        v.checks.push(CheckResult {
            name: "c1".into(),
            check_type: CheckType::Schedule,
            status: CheckStatus::Failed,
            reason: Some(Cause::Config),
        });
        v.enrichment.dynamic_variables = Some(serde_json::Map::new());
        v.seal();
        let json = serde_json::to_string(&Kept::of(&v)).unwrap();
        let back = serde_json::from_str::<Kept>(&json).unwrap().verdict().unwrap();
        assert_eq!((back.decision, back.cause, back.reason.as_deref()), (v.decision, v.cause, Some("r")));
        assert_eq!((back.source, back.agent_id(), back.gate), (v.source, v.agent_id(), v.gate));
        assert_eq!(back.context_header, v.context_header);
        assert!(back.context_header.is_some());
        assert_eq!((back.context, back.shadow, back.checks), (v.context, true, v.checks));
        assert_eq!(back.gate_display.as_ref().map(GateName::as_str), Some("http://gate/x"));
        let unknown = json.replace("fail_closed", "maybe");
        assert!(serde_json::from_str::<Kept>(&unknown).unwrap().verdict().is_none());
    }
}
