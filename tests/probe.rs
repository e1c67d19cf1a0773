//! `callgate probe`, the real binary against stub gates on real sockets: a good gate passes;
//! each answer callgate would fail open on fails the probe with callgate's own cause word; the
//! signature check; `--json`; certificates (near expiry, untrusted); no secret in the output.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_callgate");
const SECRET: &str = "whsec_probe_test";

/// What one run of `callgate probe` printed, and its exit status.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", self.stdout))
    }

    /// The lines after the verdict line.
    fn reasons(&self) -> Vec<&str> {
        self.stdout.lines().skip_while(|l| !l.starts_with("verdict: ")).skip(1).map(str::trim).collect()
    }

    fn verdict(&self) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("verdict: "))
            .unwrap_or_else(|| panic!("{}", self.stdout))
    }
}

/// Runs `callgate probe URL ARGS` with a clean environment, off the test's runtime so that the
/// stub gates keep answering.
async fn probe(url: &str, args: &[&str]) -> Run {
    let mut command = std::process::Command::new(BIN);
    command.arg("probe").arg(url).args(args).env_clear();
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// True when `headers` carry a valid SPEC §5 signature of `body` under `name`.
fn signed(headers: &HeaderMap, name: &str, body: &[u8]) -> bool {
    let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else { return false };
    let Some((t, v1)) = value.strip_prefix("t=").and_then(|v| v.split_once(",v1=")) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::decode(v1).is_ok_and(|v1| mac.verify_slice(&v1).is_ok())
}

/// A gate that accepts validly signed requests and answers anything else 401.
fn strict(seen: &Seen) -> Reply {
    if signed(&seen.headers, "x-callgate-signature", &seen.body) {
        Reply::json(r#"{"action":"accept"}"#)
    } else {
        Reply::json(r#"{"error":"bad signature"}"#).status(401)
    }
}

#[tokio::test]
async fn sends_n_realistic_signed_requests_and_two_for_the_signature_check() {
    let gate = Stub::start_with(strict).await;
    let run = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "7", "--to", "+447700900123"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let seen = gate.seen();
    assert_eq!(seen.len(), 9, "--n requests, then an unsigned and a wrongly signed one");
    let mut call_ids = std::collections::HashSet::new();
    for (i, request) in seen.iter().enumerate() {
        assert_eq!(request.method, "POST");
        assert_eq!(request.headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["event"], "call.inbound");
        assert_eq!(body["to"], "+447700900123");
        assert_eq!(body["from"], "+14155550100");
        let call_id = body["call_id"].as_str().unwrap();
        assert!(
            call_id.len() == 34
                && call_id.starts_with("CA")
                && call_id[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{call_id}"
        );
        assert!(call_ids.insert(call_id.to_owned()), "CallSids are unique: {call_id}");
        let valid = signed(&request.headers, "x-callgate-signature", &request.body);
        assert_eq!(valid, i < 7, "request {i}");
    }
    assert!(!seen[7].headers.contains_key("x-callgate-signature"), "the unsigned one");
    assert!(
        seen[8].headers.contains_key("x-callgate-signature"),
        "the wrongly signed one carries a signature"
    );
}

#[tokio::test]
async fn signs_under_the_header_given() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let run =
        probe(&gate.url("/precall"), &["--secret", SECRET, "--header", "X-Nixflex-Signature", "--n", "2"])
            .await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let first = &gate.seen()[0];
    assert!(signed(&first.headers, "x-nixflex-signature", &first.body));
    assert!(!first.headers.contains_key("x-callgate-signature"));
}

#[tokio::test]
async fn a_good_http_gate_exits_0_warning_only_of_http() {
    let gate = Stub::start_with(strict).await;
    let run = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "5"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.verdict(), "warn");
    assert_eq!(run.reasons().len(), 1, "{}", run.stdout);
    assert!(run.reasons()[0].starts_with("warn: http:// gate"), "{}", run.stdout);
    assert!(run.stdout.contains("answers:     5 accept, 0 reject, 0 fail_open"), "{}", run.stdout);
    assert_eq!(run.stderr, "", "nothing but the report when stderr is not a terminal");
}

/// Probes a gate that answers every request with `reply` and checks that the probe fails
/// naming `cause`.
async fn fails_with(reply: Reply, args: &[&str], cause: &str) -> Run {
    let gate = Stub::start(reply).await;
    failing(&gate.url("/precall"), args, cause).await
}

async fn failing(url: &str, args: &[&str], cause: &str) -> Run {
    let run = probe(url, &[&["--n", "3"], args].concat()).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.verdict(), "fail");
    let reason = format!("fail: 3 of 3 answers would fail open with cause {cause}:");
    assert!(run.reasons().iter().any(|r| r.starts_with(&reason)), "{reason:?} in {}", run.stdout);
    let json = probe(url, &[&["--n", "3", "--json"], args].concat()).await.json();
    assert_eq!(json["verdict"], "fail");
    assert_eq!(json["answers"]["fail_open"][cause], 3, "{json}");
    assert_eq!(json["answers"]["accept"], 0);
    run
}

#[tokio::test]
async fn an_upper_case_reject_fails_as_malformed() {
    fails_with(Reply::json(r#"{"action":"REJECT"}"#), &[], "malformed").await;
}

#[tokio::test]
async fn a_201_fails_as_status() {
    fails_with(Reply::json(r#"{"action":"accept"}"#).status(201), &[], "status").await;
}

#[tokio::test]
async fn a_redirect_fails_as_status() {
    let target = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let redirect = Reply::json("").status(302).header("location", &target.url("/precall"));
    let run = fails_with(redirect, &[], "status").await;
    assert!(run.stdout.contains("follows no redirect"), "{}", run.stdout);
    assert_eq!(target.count(), 0, "the redirect is not followed");
}

#[tokio::test]
async fn a_70_kib_answer_fails_as_malformed() {
    let padding = "x".repeat(70 * 1024);
    fails_with(Reply::json(&format!(r#"{{"action":"accept","pad":"{padding}"}}"#)), &[], "malformed").await;
}

#[tokio::test]
async fn a_gate_slower_than_the_timeout_fails_as_timeout() {
    let slow = Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_secs(2));
    let run = fails_with(slow, &["--timeout", "200ms"], "timeout").await;
    assert!(run.stdout.contains("no answer within the 200ms timeout"), "{}", run.stdout);
}

#[tokio::test]
async fn a_refused_port_fails_as_connect() {
    let dead = dead_addr().await;
    failing(&format!("http://{dead}/precall"), &[], "connect").await;
}

#[tokio::test]
async fn a_gate_that_accepts_unsigned_requests_earns_a_warning() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let run = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "3"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.verdict(), "warn");
    assert!(
        run.reasons().contains(
            &"warn: gate does not check signatures: an unsigned and a wrongly signed request were answered like a valid one (accept)"
        ),
        "{}",
        run.stdout
    );
    let json = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "3", "--json"]).await.json();
    assert_eq!(json["signature_checked"], false);
}

#[tokio::test]
async fn a_gate_that_answers_unsigned_requests_401_earns_no_warning() {
    let gate = Stub::start_with(strict).await;
    let run = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "3"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(!run.stdout.contains("does not check signatures"), "{}", run.stdout);
    assert!(run.stdout.contains("signatures:  checked"), "{}", run.stdout);
    let json = probe(&gate.url("/precall"), &["--secret", SECRET, "--n", "3", "--json"]).await.json();
    assert_eq!(json["signature_checked"], true);
    assert_eq!(json["answers"]["accept"], 3, "the two signature requests are not counted: {json}");
}

#[tokio::test]
async fn json_is_one_object_with_every_figure() {
    let gate = Stub::start_with(|seen: &Seen| {
        // Every third call id (by its last hex digit) is slow, so the percentiles differ.
        let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        let slow = body["call_id"].as_str().unwrap().ends_with(['3', '6', '9']);
        let delay = Duration::from_millis(if slow { 300 } else { 0 });
        Reply::json(r#"{"action":"reject","reason":"test"}"#).delay(delay)
    })
    .await;
    let run = probe(&gate.url("/precall"), &["--n", "10", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.stdout.trim().lines().count(), 1, "one object on one line: {}", run.stdout);
    let json = run.json();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{json}");
    assert_eq!(json["verdict"], "warn", "http:// only: {json}");
    assert_eq!(json["reasons"].as_array().unwrap().len(), 1, "{json}");
    let latency = &json["latency_ms"];
    let figure = |p: &str| latency[p].as_f64().unwrap_or_else(|| panic!("latency_ms.{p} in {json}"));
    let (p50, p95, p99, max) = (figure("p50"), figure("p95"), figure("p99"), figure("max"));
    assert!(p50 < 300.0 && p95 >= 300.0 && p95 <= p99 && p99 <= max, "{latency}");
    assert_eq!(json["answers"]["accept"], 0);
    assert_eq!(json["answers"]["reject"], 10);
    for cause in ["timeout", "connect", "status", "malformed", "overload"] {
        assert_eq!(json["answers"]["fail_open"][cause], 0, "{cause} in {json}");
    }
    assert_eq!(json["signature_checked"], serde_json::Value::Null, "no --secret");
    assert_eq!(json["cert_days_left"], serde_json::Value::Null, "http://");
}

#[tokio::test]
async fn the_url_query_never_appears() {
    let gate = Stub::start(Reply::json(r#"{"action":"REJECT"}"#)).await;
    for args in [&["--n", "2"][..], &["--n", "2", "--json"]] {
        let run = probe(&gate.url("/precall?token=S3CRET"), args).await;
        assert_eq!(run.code, 1);
        assert!(
            !run.stdout.contains("S3CRET") && !run.stderr.contains("S3CRET"),
            "{}{}",
            run.stdout,
            run.stderr
        );
    }
    assert!(gate.seen()[0].uri.ends_with("?token=S3CRET"), "the gate gets its query");
    let run = probe(&gate.url("/precall?token=S3CRET"), &[]).await;
    assert!(run.stdout.contains(&format!("probe of {}:", gate.url("/precall"))), "{}", run.stdout);
}

#[tokio::test]
async fn bad_input_is_one_line_and_exit_2() {
    for (url, args) in [
        ("ftp://gate.example/precall", &[][..]),
        ("not a url", &[]),
        ("https://user:pw@gate.example/precall", &[]),
        ("https://gate.example/precall", &["--to", "0044"]),
        ("https://gate.example/precall", &["--n", "0"]),
        ("https://gate.example/precall", &["--timeout", "soon"]),
        ("https://gate.example/precall", &["--ca-file", "/nonexistent/ca.pem"]),
    ] {
        let run = probe(url, args).await;
        assert_eq!(run.code, 2, "{url} {args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stdout, "");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!run.stderr.contains("pw@"), "{}", run.stderr);
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "callgate probe test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf certificate for localhost that expires `days` from now: (cert PEM, key PEM).
    fn leaf(&self, days: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(now + days * 86_400).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn file(&self) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), self.cert.pem()).unwrap();
        file
    }
}

/// An HTTPS gate on 127.0.0.1:0 that accepts validly signed requests and answers others 401.
async fn tls_gate(cert: &str, key: &str) -> SocketAddr {
    let acceptor = tls_acceptor(cert, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service =
                    hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (status, answer) = if signed(&parts.headers, "x-callgate-signature", &body) {
                            (StatusCode::OK, r#"{"action":"accept"}"#)
                        } else {
                            (StatusCode::UNAUTHORIZED, "{}")
                        };
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_good_https_gate_passes() {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(90);
    let gate = tls_gate(&cert, &key).await;
    let ca_file = ca.file();
    let url = format!("https://localhost:{}/precall", gate.port());
    let ca_path = ca_file.path().to_str().unwrap();
    let run = probe(&url, &["--secret", SECRET, "--ca-file", ca_path, "--n", "5"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.verdict(), "pass", "{}", run.stdout);
    assert!(run.reasons().is_empty(), "{}", run.stdout);
    let json = probe(&url, &["--secret", SECRET, "--ca-file", ca_path, "--n", "5", "--json"]).await.json();
    assert_eq!(json["verdict"], "pass");
    assert_eq!(json["reasons"], serde_json::json!([]));
    assert_eq!(json["answers"]["accept"], 5);
    assert_eq!(json["signature_checked"], true);
    assert!(matches!(json["cert_days_left"].as_i64(), Some(89..=90)), "{json}");
}

#[tokio::test]
async fn a_certificate_expiring_in_5_days_earns_a_warning() {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(5);
    let gate = tls_gate(&cert, &key).await;
    let ca_file = ca.file();
    let url = format!("https://localhost:{}/precall", gate.port());
    let ca_path = ca_file.path().to_str().unwrap();
    let run = probe(&url, &["--secret", SECRET, "--ca-file", ca_path, "--n", "3"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.verdict(), "warn");
    assert_eq!(run.reasons().len(), 1, "{}", run.stdout);
    // Whole days, rounded down: 5 only within the second the certificate was made.
    let reason = run.reasons()[0];
    assert!(
        ["4", "5"].map(|d| format!("warn: the certificate expires in {d} days")).contains(&reason.to_owned()),
        "{}",
        run.stdout
    );
    let json = probe(&url, &["--secret", SECRET, "--ca-file", ca_path, "--n", "3", "--json"]).await.json();
    assert_eq!(json["verdict"], "warn");
    assert!(matches!(json["cert_days_left"].as_i64(), Some(4..=5)), "{json}");
}

#[tokio::test]
async fn an_untrusted_certificate_fails() {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(90);
    let gate = tls_gate(&cert, &key).await;
    let url = format!("https://localhost:{}/precall", gate.port());
    let run = failing(&url, &["--secret", SECRET], "connect").await;
    assert!(
        run.reasons().iter().any(|r| r.starts_with("fail: the certificate does not verify")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("89 days left") || run.stdout.contains("90 days left"),
        "read all the same: {}",
        run.stdout
    );
}

#[tokio::test]
async fn an_expired_certificate_fails() {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(-2);
    let gate = tls_gate(&cert, &key).await;
    let ca_file = ca.file();
    let url = format!("https://localhost:{}/precall", gate.port());
    let run = failing(&url, &["--ca-file", ca_file.path().to_str().unwrap()], "connect").await;
    assert!(run.reasons().contains(&"fail: the certificate has expired"), "{}", run.stdout);
    let json = probe(&url, &["--ca-file", ca_file.path().to_str().unwrap(), "--json"]).await.json();
    assert!(matches!(json["cert_days_left"].as_i64(), Some(-3..=-2)), "{json}");
}

/// A pseudo-terminal: (the side a terminal reads, the side given to the child as its stderr).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at most
    // `name.len()` bytes.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap();
        (std::fs::File::from_raw_fd(master), slave)
    }
}

#[tokio::test]
async fn progress_is_drawn_on_a_terminal_for_a_run_over_a_second() {
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_millis(250))).await;
    let (terminal, stderr) = pty();
    let mut command = std::process::Command::new(BIN);
    command.args(["probe", &gate.url("/precall?token=S3CRET"), "--n", "6"]).env_clear().stderr(stderr);
    let drawn = std::thread::spawn(move || {
        use std::io::Read;
        let mut drawn = Vec::new();
        // Ends with EIO once the child has exited and the terminal's other side is closed.
        let _ = (&terminal).read_to_end(&mut drawn);
        String::from_utf8_lossy(&drawn).into_owned()
    });
    let out = tokio::task::spawn_blocking(move || {
        let out = command.output().unwrap();
        drop(command); // closes this process's copy of the terminal's other side
        out
    })
    .await
    .unwrap();
    let drawn = drawn.join().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = format!("probing {}: ", gate.url("/precall"));
    assert!(drawn.contains(&line) && drawn.contains("/6 requests"), "{drawn:?}");
    assert!(drawn.ends_with("\r\x1b[2K"), "the line is cleared at the end: {drawn:?}");
    assert!(!drawn.contains("S3CRET"), "{drawn:?}");
    assert!(stdout.starts_with("probe of ") && !stdout.contains("probing"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_cause_is_the_one_callgate_logs_for_the_same_gate() {
    let target = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let padding = "x".repeat(70 * 1024);
    let gates = [
        Stub::start(Reply::json(r#"{"action":"REJECT"}"#)).await,
        Stub::start(Reply::json(r#"{"action":"accept"}"#).status(201)).await,
        Stub::start(Reply::json("").status(302).header("location", &target.url("/precall"))).await,
        Stub::start(Reply::json(&format!(r#"{{"action":"accept","pad":"{padding}"}}"#))).await,
        Stub::start(Reply::json(r#"{"action":"accept"}"#).delay(Duration::from_secs(2))).await,
    ];
    let dead = dead_addr().await;
    let urls: Vec<String> =
        gates.iter().map(|g| g.url("/precall")).chain([format!("http://{dead}/precall")]).collect();
    let number = |i: usize| format!("+1500555010{i}");
    let numbers: serde_json::Map<_, _> =
        (0..urls.len()).map(|i| (number(i), serde_json::json!({ "gate": { "url": urls[i] } }))).collect();
    let routes = serde_json::json!({ "numbers": numbers }).to_string();
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let callgate = Binary::spawn(&routes, &engine.url(""), &["--gate-timeout", "300ms"]);
    for i in 0..urls.len() {
        post_form(&callgate.url("/twilio/voice"), &ringing(&number(i))).await;
    }
    let lines = callgate.logs_with("call decided", urls.len());
    for (i, url) in urls.iter().enumerate() {
        let logged = lines.iter().find(|l| l["to"] == number(i)).unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(logged["decision"], "fail_open");
        let json = probe(url, &["--n", "1", "--timeout", "300ms", "--json"]).await.json();
        let causes = json["answers"]["fail_open"].as_object().unwrap();
        let probed: Vec<&String> = causes.iter().filter(|(_, n)| *n != 0).map(|(cause, _)| cause).collect();
        assert_eq!(probed, [logged["cause"].as_str().unwrap()], "{url}: {json}");
    }
}
