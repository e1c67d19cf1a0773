//! The real binary: `check`, start-up refusals (exit 2), and the demo answering every line it
//! prints.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_callgate");

fn fixture(name: &str) -> String {
    format!("{}/fixtures/routes/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("check").args(args).env_clear().output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_accepts_the_example() {
    let (code, out) = check(&["--routes", &fixture("example.json")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 1 agents"), "{out}");
}

#[test]
fn check_reports_a_duplicate_key_and_an_empty_file() {
    let (code, out) = check(&["--routes", &fixture("invalid-duplicate-key.json")]);
    assert_eq!(code, 1);
    assert!(out.contains("duplicate"), "{out}");
    let (code, out) = check(&["--routes", &fixture("invalid-empty.json")]);
    assert_eq!(code, 1);
    assert!(out.contains("empty"), "{out}");
}

#[test]
fn check_reports_every_problem_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(
        &path,
        r#"{"numbers": {"+4": {"agent_id": "a"}, "+15005550006": {"gate": {"url": "http://x.example/p", "timeout_ms": 5}}}}"#,
    )
    .unwrap();
    let (code, out) = check(&["--routes", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.lines().count() >= 3, "one line per problem: {out}");
    assert!(out.contains("\"+4\""), "{out}");
    assert!(out.contains("timeout_ms"), "{out}");
    assert!(out.contains("https"), "{out}");

    let (code, out) = check(&["--routes", path.to_str().unwrap(), "--allow-insecure-gates"]);
    assert_eq!(code, 1, "the http gate is fine now, but the rest is not: {out}");
    assert!(!out.contains("https"), "{out}");
}

/// Issue 18 item 14: a structural problem (an unknown top-level field, a value of the wrong
/// type, a duplicate key) no longer hides the problems after it.
#[test]
fn check_lists_structural_and_value_problems_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(
        &path,
        r#"{
  "agent": {},
  "agents": {"a1": {"gate": {"url": "ftp://x.example/?token=S3CRET", "timeout_ms": "fast"}},
             "a1": {}},
  "numbers": {"+4": {"agent_id": "a1"}, "+15005550006": {"gate": {"url": "https://x.example/", "timeout_ms": 5, "retries": 3}}}
}"#,
    )
    .unwrap();
    let (code, out) = check(&["--routes", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let want = [
        "unknown field `agent`",
        "agents.a1.gate.timeout_ms: invalid type: string",
        "agents.a1.gate.url: must be https://",
        "agents.a1: duplicate key",
        "numbers.\"+4\": not an E.164",
        "numbers.\"+15005550006\".gate: unknown field `retries`",
        "numbers.\"+15005550006\".gate.timeout_ms: must be 100 to 30000",
    ];
    for line in want {
        assert!(out.contains(line), "lacks {line}: {out}");
    }
    assert_eq!(out.lines().count(), want.len(), "one line per problem: {out}");
    assert!(!out.contains("S3CRET"), "{out}");
}

#[test]
fn boolean_variables_take_1_and_yes_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(&path, r#"{"numbers": {"+15005550006": {"gate": {"url": "http://gate.local/p"}}}}"#)
        .unwrap();
    for value in ["1", "yes", "true", "on"] {
        let out = Command::new(BIN)
            .args(["check", "--routes", path.to_str().unwrap()])
            .env_clear()
            .env("CALLGATE_ALLOW_INSECURE_GATES", value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{value}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn check_warns_when_a_gate_and_the_engine_reach_twilios_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(
        &path,
        r#"{"numbers": {"+15005550006": {"gate": {"url": "https://x.example/p", "timeout_ms": 8000}}}}"#,
    )
    .unwrap();
    let (code, out) = check(&["--routes", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning") && out.contains("15 s"), "{out}");
}

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn start_up_refuses_an_invalid_routes_file_with_one_line_and_status_2() {
    let out =
        serve(&["--upstream", "http://127.0.0.1:1", "--routes", &fixture("invalid-duplicate-key.json")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("callgate:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("duplicate"), "{err}");
}

#[test]
fn start_up_refuses_bad_flags_with_one_line_and_status_2() {
    for args in [
        &["--routes", "x.json"][..],
        &["--upstream", "ftp://engine"],
        &["--upstream", "http://e", "--gate-timeout", "soon"],
        &["--upstream", "http://e", "--no-such-flag"],
        &["--upstream", "http://e", "--log-format", "xml"],
        &["--upstream", "http://e", "--worker-threads", "0"],
    ] {
        let out = serve(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

/// Issue 18 item 10: clap's own message quotes a bad value, and the value of a secret flag is
/// the secret (or a mistyped one, which is nearly the secret). Nothing of it reaches stderr.
#[test]
fn a_bad_secret_value_is_refused_without_being_echoed() {
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
    let cases: [Case; 7] = [
        (&["--api-key", "S3CRETX"], None),
        (&["--twilio-shared-key", "S3CRETX"], None),
        (&["--twilio-shared-key=S3CRETX"], None),
        (&[], Some(("CALLGATE_API_KEYS", "kid:fine,S3CRETX"))),
        (&[], Some(("CALLGATE_TWILIO_SHARED_KEYS", "S3CRETX"))),
        // An unquoted space splits a token list into a flag's value and a stray argument.
        (&["--twilio-auth-token", "old", "S3CRETX"], None),
        (&["--api-kye=kid:S3CRETX"], None),
    ];
    for (args, env) in cases {
        let mut command = Command::new(BIN);
        command.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream", "http://e"]);
        command.args(args).env_clear();
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?} {env:?}: {err}");
        assert!(!err.contains("S3CRETX"), "{args:?} {env:?}: {err}");
    }
    // The flag is still named, and what is wrong with the value said.
    let out = serve(&["--upstream", "http://e", "--api-key", "S3CRETX"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key") && err.contains("ID:SECRET"), "{err}");
    // A value that is no secret is still shown, as it helps.
    let out = serve(&["--upstream", "http://e", "--gate-timeout", "soon"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("'soon'"));
}

/// One curl line of the demo, as a request: URL and form pairs.
fn parse_curl(line: &str) -> (String, String) {
    let mut words = line.split_whitespace().skip(1);
    let mut url = String::new();
    let mut form = form_urlencoded::Serializer::new(String::new());
    while let Some(word) = words.next() {
        match word {
            "-s" => {}
            "-d" | "--data-urlencode" => {
                let pair = words.next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if word == "-d" {
                    let value: String =
                        form_urlencoded::parse(format!("v={value}").as_bytes()).next().unwrap().1.into();
                    form.append_pair(name, &value);
                } else {
                    form.append_pair(name, value);
                }
            }
            w if w.starts_with("http") => url = w.to_owned(),
            other => panic!("unexpected curl word {other}"),
        }
    }
    (url, form.finish())
}

#[tokio::test]
async fn the_demo_answers_every_line_it_prints() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 {
            let done = line.starts_with("curl -s http") && line.contains("/metrics");
            lines.push(std::mem::take(&mut line));
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();

    let mut expected = None;
    let mut decided = Vec::new();
    let mut pushed = false;
    let mut engine_saw_context = 0;
    for line in &lines {
        if let Some(comment) = line.strip_prefix("# ") {
            expected = comment.split(':').next().map(str::to_owned);
        } else if line.starts_with("curl") && line.contains("/v1/context") {
            // The pushed context: the next call from that caller to that agent takes it.
            let url = line.split_whitespace().find(|w| w.starts_with("http")).unwrap();
            let auth = line.split('\'').nth(1).unwrap();
            let body = line.rsplit("-d '").next().unwrap().trim_end().trim_end_matches('\'');
            let request = http::Request::post(url)
                .header(auth.split_once(": ").unwrap().0, auth.split_once(": ").unwrap().1)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
                .unwrap();
            let answer = send(request).await.unwrap();
            assert_eq!(answer.status, 202, "{line}: {}", answer.text());
            pushed = true;
        } else if line.starts_with("curl") && line.contains("/twilio/voice") {
            let (url, form) = parse_curl(line);
            let answer =
                tokio::time::timeout(Duration::from_secs(10), async { post_form(&url, &form).await })
                    .await
                    .expect("the demo answers within its gate timeouts");
            assert_eq!(answer.status, 200, "{line}");
            let expected = expected.clone().unwrap();
            match expected.as_str() {
                "reject" | "fail_closed" => {
                    assert_eq!(&answer.body[..], GOLDEN_REJECT.trim_ascii_end(), "{line}")
                }
                decision => assert!(
                    answer.text().contains(&format!("callgate decision: {decision}.")),
                    "{line}: {}",
                    answer.text()
                ),
            }
            if std::mem::take(&mut pushed) {
                assert!(
                    answer
                        .text()
                        .contains("Caller context: customer_name=Jane, issue=billing_error, priority=high."),
                    "the engine received the pushed context: {}",
                    answer.text()
                );
                engine_saw_context += 1;
            }
            decided.push(expected);
        }
    }
    assert_eq!(
        decided,
        [
            "accept",
            "accept",
            "reject",
            "fail_open",
            "fail_open",
            "fail_closed",
            "no_gate",
            "accept",
            "reject",
            "reject"
        ]
    );
    assert_eq!(engine_saw_context, 1, "the demo pushes a context for its first call");
    let enriched = lines.iter().position(|l| l.contains("To=+15005550006")).expect("the enriched call");
    let (url, form) = parse_curl(&lines[enriched]);
    let answer = post_form(&url, &form).await.text();
    assert!(answer.contains("Agent: agent_vip.") && answer.contains("customer_name"), "{answer}");
    // The admin lines carry the demo's key and answer.
    let record = lines.iter().find(|l| l.contains("/v1/calls/")).expect("a decision record line");
    let record_url = record.split_whitespace().find(|w| w.starts_with("http")).unwrap();
    let auth = callgate::demo::DEMO_KEY;
    let request = http::Request::get(record_url)
        .header("authorization", format!("Bearer {auth}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = send(request).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("\"override_agent_id\":\"agent_vip\""), "{}", answer.text());

    let metrics_line = lines.iter().find(|l| l.contains("/metrics")).unwrap();
    let metrics_url = metrics_line.split_whitespace().find(|w| w.starts_with("http")).unwrap();
    let metrics = get(metrics_url).await.unwrap().text();
    assert!(metrics.contains("callgate_inbound_calls_total{decision=\"fail_open\"} 2"), "{metrics}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn help_never_shows_a_secret_taken_from_the_environment() {
    for args in [&["--help"][..], &["probe", "--help"]] {
        let out = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("CALLGATE_GATE_SIGNING_SECRET", "s1cret")
            .env("CALLGATE_TWILIO_AUTH_TOKENS", "t0ken")
            .env("CALLGATE_TWILIO_SHARED_KEYS", "KS1=sh4red")
            .env("CALLGATE_API_KEYS", "kid:apis3cret")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("CALLGATE_GATE_SIGNING_SECRET"), "{help}");
        for secret in ["s1cret", "t0ken", "sh4red", "apis3cret"] {
            assert!(!help.contains(secret), "{args:?} shows {secret}: {help}");
        }
    }
}
