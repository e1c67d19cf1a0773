//! `callgate probe`: grades a gate before it carries calls (SPEC §16). Realistic `call.inbound`
//! requests go through the very [`GateClient`] that decides calls, so every answer is read as
//! callgate reads it; `report` draws the verdict, `cert` reads the gate's certificate.

mod cert;
mod report;

pub use cert::Certificate;
pub use report::{Reason, Report, Verdict, CERT_WARN_DAYS};

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderName;

use crate::decide::Cause;
use crate::gate::{GateClient, GateDecision, GateRequest, Signer};
use crate::routes::{Gate, GateError, OnFailure, ValidateOptions};
use crate::settings::Secret;
use crate::tls::{self, TlsError};

/// What to probe and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The gate URL; it may carry a secret query, so it is only ever shown as the gate's
    /// display form.
    pub url: String,
    /// Sign as `--gate-signing-secret` does; also enables the signature check.
    pub secret: Option<Secret>,
    pub header: HeaderName,
    /// Requests whose answers and latencies are graded.
    pub n: usize,
    pub timeout: Duration,
    pub to: String,
    pub from: String,
    /// Extra roots beside the bundled public ones, as `--gate-ca-file`.
    pub ca_file: Option<PathBuf>,
}

impl Options {
    /// The command line's defaults for `url`.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            secret: None,
            header: HeaderName::from_static("x-callgate-signature"),
            n: 20,
            timeout: Duration::from_secs(5),
            to: "+15005550006".into(),
            from: "+14155550100".into(),
            ca_file: None,
        }
    }
}

/// Why a probe could not start (a bad URL or CA file). Never shows the URL itself.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Url(#[from] GateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How callgate would treat one answer of the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Reject,
    FailOpen(Cause),
}

impl Answer {
    /// callgate's own reading of the gate, as a kind of answer.
    fn of(decision: GateDecision) -> Answer {
        match decision {
            GateDecision::Accept(_) => Answer::Accept,
            GateDecision::Reject { .. } => Answer::Reject,
            GateDecision::Failure(cause) => Answer::FailOpen(cause),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Accept => f.write_str("accept"),
            Answer::Reject => f.write_str("reject"),
            Answer::FailOpen(cause) => write!(f, "fail_open ({})", cause.as_str()),
        }
    }
}

/// Answers counted by kind; fail-opens by cause, in [`Cause::ALL`]'s order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub accept: usize,
    pub reject: usize,
    fail_open: [usize; Cause::ALL.len()],
}

impl Answers {
    fn add(&mut self, answer: Answer) {
        match answer {
            Answer::Accept => self.accept += 1,
            Answer::Reject => self.reject += 1,
            Answer::FailOpen(cause) => self.fail_open[cause_index(cause)] += 1,
        }
    }

    /// Fail-opens with `cause`.
    pub fn fail_open(&self, cause: Cause) -> usize {
        self.fail_open[cause_index(cause)]
    }

    fn fail_open_total(&self) -> usize {
        self.fail_open.iter().sum()
    }

    /// The most frequent answer (ties: accept, reject, then causes in order); `None` if empty.
    fn most_common(&self) -> Option<Answer> {
        let kinds = [(Answer::Accept, self.accept), (Answer::Reject, self.reject)].into_iter();
        let causes = Cause::ALL.iter().map(|&c| (Answer::FailOpen(c), self.fail_open(c)));
        let mut best: Option<(Answer, usize)> = None;
        for (answer, n) in kinds.chain(causes) {
            if n > best.map_or(0, |(_, b)| b) {
                best = Some((answer, n));
            }
        }
        best.map(|(answer, _)| answer)
    }
}

fn cause_index(cause: Cause) -> usize {
    Cause::ALL.iter().position(|&c| c == cause).expect("ALL holds every cause")
}

/// Nearest-rank latency percentiles over the graded requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let rank = |p: usize| samples[(p * samples.len()).div_ceil(100).clamp(1, samples.len()) - 1];
        Latency { p50: rank(50), p95: rank(95), p99: rank(99), max: rank(100) }
    }
}

/// The signature check: how the gate answered an unsigned and a wrongly signed request, and
/// what it answered valid ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    pub unsigned: Answer,
    pub wrongly_signed: Answer,
    /// The valid requests' most common answer.
    pub valid: Answer,
}

impl SignatureCheck {
    /// True when the gate answered both differently from a valid request; `None` when the
    /// valid requests got no decision (a fail-open) to compare with.
    pub fn checked(&self) -> Option<bool> {
        match self.valid {
            Answer::FailOpen(_) => None,
            valid => Some(self.unsigned != valid && self.wrongly_signed != valid),
        }
    }
}

/// Requests done out of the total, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicUsize,
    total: AtomicUsize,
}

impl Progress {
    pub fn get(&self) -> (usize, usize) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }

    fn step(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Probes the gate at `opts.url`; `progress` counts requests as they complete.
pub async fn run(opts: &Options, progress: &Progress) -> Result<Report, ProbeError> {
    let gate = probe_gate(&opts.url)?;
    let client_tls = tls::gate_client_config(opts.ca_file.as_deref())?;
    let roots = tls::gate_roots(opts.ca_file.as_deref())?;
    let client = |signer: Option<Signer>| GateClient::new(client_tls.clone(), opts.timeout, 1, signer, 1);
    let signer = |secret: &[u8]| Some(Signer::new(secret, opts.header.clone()));
    progress.total.store(opts.n + if opts.secret.is_some() { 2 } else { 0 }, Ordering::Relaxed);

    let certificate = match gate.uri().scheme_str() {
        Some("https") => cert::inspect(&gate, roots, opts.timeout).await,
        _ => Certificate::NotHttps,
    };
    let mut calls = CallSids::new();
    let valid = client(opts.secret.as_ref().and_then(|s| signer(s.expose().as_bytes())));
    let mut answers = Answers::default();
    let mut samples = Vec::with_capacity(opts.n);
    for _ in 0..opts.n {
        let started = Instant::now();
        answers.add(ask(&valid, &gate, opts, &calls.next()).await);
        samples.push(started.elapsed());
        progress.step();
    }
    let signature = match &opts.secret {
        None => None,
        Some(secret) => {
            let unsigned = ask(&client(None), &gate, opts, &calls.next()).await;
            progress.step();
            // A well-formed signature made with another secret.
            let wrong = format!("{}-not-the-secret", secret.expose());
            let wrongly_signed = ask(&client(signer(wrong.as_bytes())), &gate, opts, &calls.next()).await;
            progress.step();
            let valid = answers.most_common().expect("at least one request");
            Some(SignatureCheck { unsigned, wrongly_signed, valid })
        }
    };
    let mut report = Report {
        gate: gate.display().to_owned(),
        timeout: opts.timeout,
        answers,
        latency: Latency::of(samples),
        signature,
        certificate,
        verdict: Verdict::Pass,
        reasons: Vec::new(),
    };
    report.judge();
    Ok(report)
}

/// One `call.inbound` request, the body callgate sends, read as callgate reads the answer.
async fn ask(client: &GateClient, gate: &Gate, opts: &Options, call_id: &str) -> Answer {
    let request = GateRequest {
        event: "call.inbound",
        from: &opts.from,
        to: &opts.to,
        call_id,
        agent_id: None,
        test: false,
        context: None,
    };
    Answer::of(client.check(gate, &request).await)
}

/// The gate as callgate would build it from a routes file, `http://` allowed; its deadline is
/// the probe client's (`--timeout`).
fn probe_gate(url: &str) -> Result<Gate, GateError> {
    Gate::new(url, None, OnFailure::Accept, &ValidateOptions { allow_insecure_gates: true })
}

/// Unique CallSids for one run: `CA` and 32 hex digits, a random half for the run and a count.
struct CallSids {
    run: u64,
    count: u64,
}

impl CallSids {
    fn new() -> CallSids {
        CallSids { run: RandomState::new().hash_one(SystemTime::now()), count: 0 }
    }

    fn next(&mut self) -> String {
        self.count += 1;
        format!("CA{:016x}{:016x}", self.run, self.count)
    }
}

/// Draws `probing GATE: done/total` on a terminal's stderr, once the probe has run a second;
/// [`Ticker::stop`] clears the line.
pub struct Ticker {
    task: tokio::task::JoinHandle<()>,
    drawn: Arc<AtomicBool>,
}

impl Ticker {
    pub fn start(progress: Arc<Progress>, opts: &Options) -> Ticker {
        let label = probe_gate(&opts.url).map_or_else(|_| "the gate".to_owned(), |g| g.display().to_owned());
        let drawn = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let drawn = Arc::clone(&drawn);
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let started = Instant::now() - Duration::from_secs(1);
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    every.tick().await;
                    let (done, total) = progress.get();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2Kprobing {label}: {done}/{total} requests, {}s",
                        started.elapsed().as_secs()
                    );
                    let _ = err.flush();
                    drawn.store(true, Ordering::Relaxed);
                }
            }
        });
        Ticker { task, drawn }
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        if self.drawn.load(Ordering::Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of(ms_list(&(1..=20).rev().collect::<Vec<_>>()));
        assert_eq!(
            (l.p50, l.p95, l.p99, l.max),
            (ms_list(&[10])[0], ms_list(&[19])[0], ms_list(&[20])[0], ms_list(&[20])[0])
        );
        let l = Latency::of(ms_list(&[7]));
        assert_eq!(
            (l.p50, l.p99, l.max),
            (Duration::from_millis(7), Duration::from_millis(7), Duration::from_millis(7))
        );
        let l = Latency::of(ms_list(&(1..=200).collect::<Vec<_>>()));
        assert_eq!(
            (l.p50, l.p95, l.p99),
            (Duration::from_millis(100), Duration::from_millis(190), Duration::from_millis(198))
        );
    }

    #[test]
    fn signatures_are_checked_when_both_bad_requests_are_answered_otherwise() {
        let status = Answer::FailOpen(Cause::Status);
        let check = |unsigned, wrongly_signed, valid| SignatureCheck { unsigned, wrongly_signed, valid };
        assert_eq!(check(status, status, Answer::Accept).checked(), Some(true));
        assert_eq!(check(Answer::Accept, status, Answer::Accept).checked(), Some(false));
        assert_eq!(check(status, Answer::Reject, Answer::Reject).checked(), Some(false));
        assert_eq!(check(status, status, status).checked(), None, "nothing to compare with");
    }

    #[test]
    fn the_most_common_answer_decides_what_valid_means() {
        let mut a = Answers::default();
        assert_eq!(a.most_common(), None);
        [Answer::FailOpen(Cause::Timeout), Answer::Reject, Answer::FailOpen(Cause::Timeout)]
            .into_iter()
            .for_each(|x| a.add(x));
        assert_eq!(a.most_common(), Some(Answer::FailOpen(Cause::Timeout)));
        a.add(Answer::Reject);
        assert_eq!(a.most_common(), Some(Answer::Reject), "a tie goes to the decision");
    }
}
