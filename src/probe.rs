//! `callgate probe`: grades a gate before it carries calls (SPEC §16). Realistic `call.inbound`
//! requests go through the very [`GateClient`] that decides calls, so every answer is read as
//! callgate reads it; latencies, a signature check and the certificate make up a verdict.

use std::collections::hash_map::RandomState;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;

use crate::gate::{FailureCause, GateClient, GateDecision, GateRequest, Signer, MAX_ANSWER_BYTES};
use crate::routes::{Gate, GateError, OnFailure, ValidateOptions};
use crate::settings::Secret;
use crate::tls::{self, TlsError};

/// A certificate with fewer whole days than this left earns a warning.
pub const CERT_WARN_DAYS: i64 = 14;

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
    FailOpen(FailureCause),
}

impl Answer {
    /// callgate's own reading of the gate, as a kind of answer.
    fn of(decision: GateDecision) -> Answer {
        match decision {
            GateDecision::Accept => Answer::Accept,
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

/// Answers counted by kind; fail-opens by cause, in [`FailureCause::ALL`]'s order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub accept: usize,
    pub reject: usize,
    fail_open: [usize; FailureCause::ALL.len()],
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
    pub fn fail_open(&self, cause: FailureCause) -> usize {
        self.fail_open[cause_index(cause)]
    }

    fn fail_open_total(&self) -> usize {
        self.fail_open.iter().sum()
    }

    /// The most frequent answer (ties: accept, reject, then causes in order); `None` if empty.
    fn most_common(&self) -> Option<Answer> {
        let kinds = [(Answer::Accept, self.accept), (Answer::Reject, self.reject)].into_iter();
        let causes = FailureCause::ALL.iter().map(|&c| (Answer::FailOpen(c), self.fail_open(c)));
        let mut best: Option<(Answer, usize)> = None;
        for (answer, n) in kinds.chain(causes) {
            if n > best.map_or(0, |(_, b)| b) {
                best = Some((answer, n));
            }
        }
        best.map(|(answer, _)| answer)
    }
}

fn cause_index(cause: FailureCause) -> usize {
    FailureCause::ALL.iter().position(|&c| c == cause).expect("ALL holds every cause")
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

/// What the TLS handshake showed of the gate's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certificate {
    /// An `http://` gate.
    NotHttps,
    /// Whole days until `notAfter` (negative once expired), and whether it verifies against
    /// the roots callgate trusts (the error otherwise).
    Read { days_left: i64, verified: Result<(), String> },
    /// No certificate was seen: the handshake failed first.
    Unreadable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One reason for the verdict: a warning or a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub level: Verdict,
    pub text: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.level.as_str(), self.text)
    }
}

/// A probe's findings and the verdict drawn from them.
#[derive(Clone, Debug)]
pub struct Report {
    /// The gate as callgate logs it: no query, no user info.
    pub gate: String,
    pub timeout: Duration,
    pub answers: Answers,
    pub latency: Latency,
    /// `None` without a secret.
    pub signature: Option<SignatureCheck>,
    pub certificate: Certificate,
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
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
        Some("https") => inspect_certificate(&gate, roots, opts.timeout).await,
        _ => Certificate::NotHttps,
    };
    let mut calls = CallSids::new();
    let gate = &gate;
    let ask = move |client: GateClient, call_id: String| async move {
        let request = GateRequest {
            event: "call.inbound",
            from: &opts.from,
            to: &opts.to,
            call_id: &call_id,
            agent_id: None,
        };
        let started = Instant::now();
        let answer = Answer::of(client.check(gate, &request).await);
        progress.step();
        (answer, started.elapsed(), client)
    };

    let mut valid = client(opts.secret.as_ref().and_then(|s| signer(s.expose().as_bytes())));
    let mut answers = Answers::default();
    let mut samples = Vec::with_capacity(opts.n);
    for _ in 0..opts.n {
        let (answer, took, back) = ask(valid, calls.next()).await;
        valid = back;
        answers.add(answer);
        samples.push(took);
    }
    let signature = match &opts.secret {
        None => None,
        Some(secret) => {
            let (unsigned, _, _) = ask(client(None), calls.next()).await;
            // A well-formed signature made with another secret.
            let wrong = format!("{}-not-the-secret", secret.expose());
            let (wrongly_signed, _, _) = ask(client(signer(wrong.as_bytes())), calls.next()).await;
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

/// The gate as callgate would build it from a routes file, `http://` allowed; its deadline is
/// the probe client's (`--timeout`).
fn probe_gate(url: &str) -> Result<Gate, GateError> {
    Gate::new(url, None, OnFailure::Accept, &ValidateOptions { allow_insecure_gates: true })
}

impl Report {
    /// Draws the reasons and the verdict from the findings (SPEC §16).
    fn judge(&mut self) {
        let mut reasons = Vec::new();
        let mut fail = |text: String| reasons.push(Reason { level: Verdict::Fail, text });
        let total = self.requests();
        for cause in FailureCause::ALL {
            let n = self.answers.fail_open(cause);
            if n > 0 {
                fail(format!(
                    "{n} of {total} answers would fail open with cause {}: {}",
                    cause.as_str(),
                    self.explain(cause)
                ));
            }
        }
        if self.latency.p99 > self.timeout {
            fail(format!("p99 latency {} is over the {} timeout", ms(self.latency.p99), human(self.timeout)));
        }
        match &self.certificate {
            Certificate::Read { days_left, .. } if *days_left < 0 => {
                fail(format!("the certificate expired {} days ago", -days_left))
            }
            Certificate::Read { verified: Err(e), .. } => {
                fail(format!("the certificate does not verify: {e}"))
            }
            Certificate::Unreadable(e) => fail(format!("the certificate could not be read: {e}")),
            Certificate::Read { .. } | Certificate::NotHttps => {}
        }
        let mut warn = |text: String| reasons.push(Reason { level: Verdict::Warn, text });
        if self.latency.p99 <= self.timeout && self.latency.p99 * 2 > self.timeout {
            warn(format!(
                "p99 latency {} is over half the {} timeout: a slower moment (a cold start, a deploy) \
                 will fail calls open",
                ms(self.latency.p99),
                human(self.timeout)
            ));
        }
        match self.certificate {
            Certificate::Read { days_left, verified: Ok(()) } if (0..CERT_WARN_DAYS).contains(&days_left) => {
                warn(format!("the certificate expires in {days_left} days"))
            }
            Certificate::NotHttps => warn(
                "http:// gate: the call's numbers cross the network unencrypted, and callgate takes \
                 such a gate only with --allow-insecure-gates"
                    .into(),
            ),
            _ => {}
        }
        if let Some(check) = self.signature.filter(|c| c.checked() == Some(false)) {
            let which = match (check.unsigned == check.valid, check.wrongly_signed == check.valid) {
                (true, true) => "an unsigned and a wrongly signed request were",
                (true, false) => "an unsigned request was",
                _ => "a wrongly signed request was",
            };
            warn(format!(
                "gate does not check signatures: {which} answered like a valid one ({})",
                check.valid
            ));
        }
        self.verdict = reasons.iter().map(|r| r.level).max().unwrap_or(Verdict::Pass);
        self.reasons = reasons;
    }

    /// What a fail-open cause means for this gate.
    fn explain(&self, cause: FailureCause) -> String {
        match cause {
            FailureCause::Timeout => format!("no answer within the {} timeout", human(self.timeout)),
            FailureCause::Connect => "the connection was refused or reset, or DNS or TLS failed".into(),
            FailureCause::Status => "the answer's status was not 200 (callgate follows no redirect)".into(),
            FailureCause::Malformed => format!(
                "the 200 answer was not a JSON object whose \"action\" is \"accept\" or \"reject\", \
                 or was over {} KiB",
                MAX_ANSWER_BYTES / 1024
            ),
            FailureCause::Overload => "too many requests were already waiting on the gate".into(),
        }
    }

    /// The graded requests (the signature check's two are not among them).
    pub fn requests(&self) -> usize {
        self.answers.accept + self.answers.reject + self.answers.fail_open_total()
    }

    pub fn signature_checked(&self) -> Option<bool> {
        self.signature.and_then(|s| s.checked())
    }

    pub fn cert_days_left(&self) -> Option<i64> {
        match self.certificate {
            Certificate::Read { days_left, .. } => Some(days_left),
            Certificate::NotHttps | Certificate::Unreadable(_) => None,
        }
    }

    /// The `--json` object.
    pub fn to_json(&self) -> serde_json::Value {
        let fail_open: serde_json::Map<String, serde_json::Value> = FailureCause::ALL
            .iter()
            .map(|&c| (c.as_str().to_owned(), self.answers.fail_open(c).into()))
            .collect();
        json!({
            "verdict": self.verdict.as_str(),
            "reasons": self.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "latency_ms": {
                "p50": ms_f64(self.latency.p50),
                "p95": ms_f64(self.latency.p95),
                "p99": ms_f64(self.latency.p99),
                "max": ms_f64(self.latency.max),
            },
            "answers": { "accept": self.answers.accept, "reject": self.answers.reject, "fail_open": fail_open },
            "signature_checked": self.signature_checked(),
            "cert_days_left": self.cert_days_left(),
        })
    }

    /// The human report: findings, then the verdict and one line per reason.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let a = &self.answers;
        let mut fail_open = format!("{} fail_open", a.fail_open_total());
        let causes: Vec<String> = FailureCause::ALL
            .iter()
            .filter(|&&c| a.fail_open(c) > 0)
            .map(|&c| format!("{} {}", a.fail_open(c), c.as_str()))
            .collect();
        if !causes.is_empty() {
            let _ = write!(fail_open, " ({})", causes.join(", "));
        }
        let l = &self.latency;
        let signatures = match (&self.signature, self.signature_checked()) {
            (None, _) => "not tested (no --secret)".to_owned(),
            (Some(s), checked) => format!(
                "{}: unsigned -> {}, wrongly signed -> {}, valid -> {}",
                match checked {
                    Some(true) => "checked",
                    Some(false) => "NOT checked",
                    None => "cannot tell (valid requests got no decision)",
                },
                s.unsigned,
                s.wrongly_signed,
                s.valid
            ),
        };
        let certificate = match &self.certificate {
            Certificate::NotHttps => "none (http://)".to_owned(),
            Certificate::Read { days_left, verified: Ok(()) } => format!("verifies, {days_left} days left"),
            Certificate::Read { days_left, verified: Err(e) } => {
                format!("does not verify ({e}), {days_left} days left")
            }
            Certificate::Unreadable(e) => format!("not read ({e})"),
        };
        let _ = writeln!(
            out,
            "probe of {}: {} requests, timeout {}",
            self.gate,
            self.requests(),
            human(self.timeout)
        );
        let _ = writeln!(out, "answers:     {} accept, {} reject, {fail_open}", a.accept, a.reject);
        let _ = writeln!(
            out,
            "latency:     p50 {}, p95 {}, p99 {}, max {}",
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max)
        );
        let _ = writeln!(out, "signatures:  {signatures}");
        let _ = writeln!(out, "certificate: {certificate}");
        let _ = writeln!(out, "verdict: {}", self.verdict.as_str());
        for reason in &self.reasons {
            let _ = writeln!(out, "  {reason}");
        }
        out
    }
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

/// Milliseconds to one decimal, as the report shows them.
fn ms_f64(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", ms_f64(d))
}

/// A duration as it is written on the command line: `5s`, `300ms`.
fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// One TLS handshake of its own with the gate, to read its certificate: verified against the
/// roots callgate trusts, but read even when it does not verify, so an expired one can say so.
async fn inspect_certificate(gate: &Gate, roots: rustls::RootCertStore, timeout: Duration) -> Certificate {
    let uri = gate.uri();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Certificate::Unreadable("the host is not a valid TLS server name".into());
    };
    let inspect = match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider()).build()
    {
        Ok(inner) => Arc::new(Inspect { inner, seen: Mutex::new(None) }),
        Err(e) => return Certificate::Unreadable(e.to_string()),
    };
    let config = match rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&inspect) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth(),
        Err(e) => return Certificate::Unreadable(e.to_string()),
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    };
    let outcome = tokio::time::timeout(timeout, handshake).await;
    let seen = inspect.seen.lock().expect("never poisoned").take();
    match (seen, outcome) {
        (Some((der, verified)), _) => match days_left(&der) {
            Some(days_left) => Certificate::Read { days_left, verified },
            None => Certificate::Unreadable("the certificate is not valid X.509".into()),
        },
        (None, Err(_)) => Certificate::Unreadable(format!("no TLS handshake within {}", human(timeout))),
        (None, Ok(Err(e))) => Certificate::Unreadable(e.to_string()),
        (None, Ok(Ok(_))) => Certificate::Unreadable("the server showed no certificate".into()),
    }
}

/// Whole days from now until the certificate's `notAfter`; negative once it has passed.
fn days_left(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    Some((cert.validity().not_after.timestamp() - now).div_euclid(86_400))
}

/// A verifier that keeps the end-entity certificate and the real verifier's verdict on it,
/// and lets the handshake go on either way. Only for reading the certificate: nothing is sent
/// over such a connection.
#[derive(Debug)]
struct Inspect {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<(Vec<u8>, Result<(), String>)>>,
}

impl ServerCertVerifier for Inspect {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        *self.seen.lock().expect("never poisoned") = Some((end_entity.to_vec(), verified));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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

    fn report(
        answers: &[Answer],
        p99: u64,
        signature: Option<SignatureCheck>,
        certificate: Certificate,
    ) -> Report {
        let mut counted = Answers::default();
        answers.iter().for_each(|&a| counted.add(a));
        let latency = Duration::from_millis(p99);
        let mut r = Report {
            gate: "https://gate.example/p".into(),
            timeout: Duration::from_millis(1000),
            answers: counted,
            latency: Latency { p50: latency, p95: latency, p99: latency, max: latency },
            signature,
            certificate,
            verdict: Verdict::Pass,
            reasons: Vec::new(),
        };
        r.judge();
        r
    }

    const FRESH: Certificate = Certificate::Read { days_left: 90, verified: Ok(()) };

    #[test]
    fn verdicts_and_their_reasons() {
        let good = report(&[Answer::Accept; 5], 10, None, FRESH);
        assert_eq!((good.verdict, good.reasons.len()), (Verdict::Pass, 0), "{:?}", good.reasons);

        let failing = report(&[Answer::Accept, Answer::FailOpen(FailureCause::Status)], 10, None, FRESH);
        assert_eq!(failing.verdict, Verdict::Fail);
        assert!(failing.reasons[0].text.contains("1 of 2 answers would fail open with cause status"));

        let slow = report(&[Answer::Accept; 3], 1001, None, FRESH);
        assert_eq!(slow.verdict, Verdict::Fail);
        let tight = report(&[Answer::Accept; 3], 600, None, FRESH);
        assert_eq!(tight.verdict, Verdict::Warn, "{:?}", tight.reasons);

        let soon = report(&[Answer::Accept], 1, None, Certificate::Read { days_left: 13, verified: Ok(()) });
        assert_eq!(soon.verdict, Verdict::Warn);
        assert_eq!(soon.reasons[0].to_string(), "warn: the certificate expires in 13 days");
        let expired = report(
            &[Answer::Accept],
            1,
            None,
            Certificate::Read { days_left: -2, verified: Err("x".into()) },
        );
        assert_eq!(expired.verdict, Verdict::Fail);
        assert!(expired.reasons[0].text.contains("expired 2 days ago"), "{:?}", expired.reasons);
        let untrusted = report(
            &[Answer::Accept],
            1,
            None,
            Certificate::Read { days_left: 30, verified: Err("UnknownIssuer".into()) },
        );
        assert_eq!(untrusted.reasons[0].to_string(), "fail: the certificate does not verify: UnknownIssuer");

        let plain = report(&[Answer::Accept], 1, None, Certificate::NotHttps);
        assert_eq!(plain.verdict, Verdict::Warn);
        assert!(plain.reasons[0].text.starts_with("http:// gate"));
    }

    #[test]
    fn signatures_are_checked_when_both_bad_requests_are_answered_otherwise() {
        let status = Answer::FailOpen(FailureCause::Status);
        let check = |unsigned, wrongly_signed, valid| SignatureCheck { unsigned, wrongly_signed, valid };
        assert_eq!(check(status, status, Answer::Accept).checked(), Some(true));
        assert_eq!(check(Answer::Accept, status, Answer::Accept).checked(), Some(false));
        assert_eq!(check(status, Answer::Reject, Answer::Reject).checked(), Some(false));
        assert_eq!(check(status, status, status).checked(), None, "nothing to compare with");

        let lax = report(
            &[Answer::Accept; 3],
            1,
            Some(check(Answer::Accept, Answer::Accept, Answer::Accept)),
            FRESH,
        );
        assert_eq!(lax.verdict, Verdict::Warn);
        assert_eq!(
            lax.reasons[0].text,
            "gate does not check signatures: an unsigned and a wrongly signed request were answered like a valid one (accept)"
        );
        assert_eq!(lax.to_json()["signature_checked"], false);
        let strict = report(&[Answer::Accept; 3], 1, Some(check(status, status, Answer::Accept)), FRESH);
        assert_eq!(
            (strict.verdict, strict.to_json()["signature_checked"].clone()),
            (Verdict::Pass, json!(true))
        );
        assert_eq!(report(&[Answer::Accept], 1, None, FRESH).to_json()["signature_checked"], json!(null));
    }

    #[test]
    fn days_left_are_whole_days_until_not_after() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        for (offset, days) in
            [(5 * 86_400 - 60, 4), (5 * 86_400 + 3_600, 5), (-3_600, -1), (-2 * 86_400 - 60, -3)]
        {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(now + offset).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(days_left(cert.der()), Some(days), "{offset} s");
        }
        assert_eq!(days_left(b"not DER"), None);
    }

    #[test]
    fn the_most_common_answer_decides_what_valid_means() {
        let mut a = Answers::default();
        assert_eq!(a.most_common(), None);
        [Answer::FailOpen(FailureCause::Timeout), Answer::Reject, Answer::FailOpen(FailureCause::Timeout)]
            .into_iter()
            .for_each(|x| a.add(x));
        assert_eq!(a.most_common(), Some(Answer::FailOpen(FailureCause::Timeout)));
        a.add(Answer::Reject);
        assert_eq!(a.most_common(), Some(Answer::Reject), "a tie goes to the decision");
    }
}
