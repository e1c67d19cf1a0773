//! Conformance with Twilio's own Python library: replays the requests that
//! `.ci/twilio-conformance.py` had `twilio.request_validator.RequestValidator` sign (and tamper
//! with), read from the file named by `CALLGATE_TWILIO_VECTORS`. Without the variable the test
//! says it was skipped and passes, so `cargo test` needs nothing but Rust.
//!
//! ```sh
//! pip install 'twilio>=9.13' && python3 .ci/twilio-conformance.py OUT.json \
//!   && CALLGATE_TWILIO_VECTORS=OUT.json cargo test --test twilio_conformance
//! ```

use std::collections::BTreeMap;

use callgate::webhook::signature::{signed_url, SignedBody, Verifier};
use callgate::webhook::twilio::parse_form;
use http::{HeaderMap, HeaderValue};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    generator: serde_json::Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: usize,
    mode: String,
    kind: String,
    tamper: Option<String>,
    url: String,
    body: String,
    signature: String,
    settings: Option<String>,
    auth_tokens: Vec<String>,
    shared_keys: Vec<(String, String)>,
    expect: String,
}

/// The URL callgate rebuilds for a request to `url`, by one of its three routes (public URL;
/// X-Forwarded-Proto and X-Forwarded-Host; Host and TLS), chosen by the case id.
fn rebuilt(id: usize, url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("absolute URL");
    let target_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(target_start);
    let mut headers = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).expect("visible ASCII authority");
    match id % 3 {
        0 => signed_url(Some(&format!("{scheme}://{authority}")), false, &headers, target).unwrap(),
        1 => {
            headers.insert("host", value("10.0.0.7:8080"));
            headers.insert("x-forwarded-proto", value(&format!("{scheme}, http")));
            headers.insert("x-forwarded-host", value(authority));
            signed_url(None, false, &headers, target).unwrap()
        }
        _ => {
            headers.insert("host", value(authority));
            signed_url(None, scheme == "https", &headers, target).unwrap()
        }
    }
}

#[test]
fn callgate_agrees_with_twilio_python() {
    let Ok(path) = std::env::var("CALLGATE_TWILIO_VECTORS") else {
        println!("skipped: set CALLGATE_TWILIO_VECTORS to a file from .ci/twilio-conformance.py");
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let file: File = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
    println!("vectors from {}", file.generator);

    // (mode, kind, tamper) -> (cases, disagreements)
    let mut tally: BTreeMap<(String, String, String), (usize, usize)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for case in &file.cases {
        let verifier = Verifier::new(case.auth_tokens.clone(), case.shared_keys.clone());
        let url = rebuilt(case.id, &case.url);
        assert_eq!(url, case.url, "case {}: signed_url rebuilt another URL", case.id);
        let params;
        let body = match case.kind.as_str() {
            "form" => {
                params = parse_form(case.body.as_bytes())
                    .unwrap_or_else(|e| panic!("case {}: form body does not parse: {e}", case.id));
                SignedBody::Form(&params)
            }
            "get" => SignedBody::Nothing,
            "json" => SignedBody::Json(case.body.as_bytes()),
            other => panic!("case {}: unknown kind {other}", case.id),
        };
        let result = verifier.verify(
            &url,
            body,
            Some(case.signature.as_bytes()),
            case.settings.as_deref().map(str::as_bytes),
        );
        let agrees = match case.expect.as_str() {
            "ok" => result.is_ok(),
            "reject" => result.is_err(),
            other => panic!("case {}: unknown expectation {other}", case.id),
        };
        let tamper = case.tamper.clone().unwrap_or_else(|| "genuine".into());
        let entry = tally.entry((case.mode.clone(), case.kind.clone(), tamper)).or_default();
        entry.0 += 1;
        if !agrees {
            entry.1 += 1;
            disagreements.push(format!(
                "case {} ({} {} {:?}): twilio-python says {}, callgate {:?}\n  url {:?}\n  body {:?}",
                case.id, case.mode, case.kind, case.tamper, case.expect, result, case.url, case.body
            ));
        }
    }
    for ((mode, kind, tamper), (n, bad)) in &tally {
        println!("{mode:6} {kind:4} {tamper:9} {n:4} cases, {bad} disagreements");
    }
    let genuine = file.cases.iter().filter(|c| c.expect == "ok").count();
    let tampered = file.cases.len() - genuine;
    println!("{} cases: {genuine} genuine, {tampered} tampered", file.cases.len());
    assert!(genuine > 0 && tampered > 0, "the vectors file has no genuine or no tampered case");
    for mode in ["token", "shared"] {
        assert!(file.cases.iter().any(|c| c.mode == mode && c.expect == "ok"), "no genuine {mode} case");
    }
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
}
