//! The probe's verdict: the reasons drawn from its findings (SPEC §16), and the report as text
//! and as the `--json` object.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde_json::json;

use super::{Answers, Certificate, Latency, SignatureCheck};
use crate::decide::Cause;
use crate::gate::MAX_ANSWER_BYTES;

/// A certificate with fewer whole days than this left earns a warning.
pub const CERT_WARN_DAYS: i64 = 14;

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

impl Report {
    /// Draws the reasons and the verdict from the findings (SPEC §16).
    pub(super) fn judge(&mut self) {
        let mut reasons = Vec::new();
        let mut fail = |text: String| reasons.push(Reason { level: Verdict::Fail, text });
        let total = self.requests();
        for cause in Cause::ALL {
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
                fail("the certificate has expired".into())
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
                warn(format!("the certificate expires in {}", days(days_left)))
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
    fn explain(&self, cause: Cause) -> String {
        match cause {
            Cause::Timeout => format!("no answer within the {} timeout", human(self.timeout)),
            Cause::Connect => "the connection was refused or reset, or DNS or TLS failed".into(),
            Cause::Status => "the answer's status was not 200 (callgate follows no redirect)".into(),
            Cause::Malformed => format!(
                "the 200 answer was not a JSON object whose \"action\" is \"accept\" or \"reject\" \
                 (nor a \"call_inbound\" object), or was over {} KiB",
                MAX_ANSWER_BYTES / 1024
            ),
            Cause::Overload => "too many requests were already waiting on the gate".into(),
            Cause::CircuitOpen => {
                "the gate's origin kept failing, so callgate stopped asking it for a while".into()
            }
            Cause::Config => "the gate's configuration could not be used for the call".into(),
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
        let fail_open: serde_json::Map<String, serde_json::Value> =
            Cause::ALL.iter().map(|&c| (c.as_str().to_owned(), self.answers.fail_open(c).into())).collect();
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
        let causes: Vec<String> = Cause::ALL
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
            Certificate::Read { days_left, verified: Ok(()) } => {
                format!("verifies, {} left", days(*days_left))
            }
            Certificate::Read { days_left, verified: Err(e) } => {
                format!("does not verify ({e}), {} left", days(*days_left))
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

fn days(n: i64) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
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
pub(super) fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::super::Answer;
    use super::*;

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

        let failing = report(&[Answer::Accept, Answer::FailOpen(Cause::Status)], 10, None, FRESH);
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
        assert_eq!(
            expired.reasons[0].to_string(),
            "fail: the certificate has expired",
            "not also \"does not verify\""
        );
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
    fn a_gate_that_does_not_check_signatures_earns_a_warning() {
        let status = Answer::FailOpen(Cause::Status);
        let check = |unsigned, wrongly_signed, valid| SignatureCheck { unsigned, wrongly_signed, valid };
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
}
