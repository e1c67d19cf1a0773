//! The front door under attack (issue 18): path spellings, bodies on signed GETs, framing
//! tricks, upgrades and HTTP/2 on the public listener, and faults blamed on the right side.
//! Everything over real loopback sockets, most of it as raw bytes.

mod support;

use std::time::{Duration, Instant};

use callgate::settings::{Secret, SignatureMode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TO: &str = "+447700900123";
const TOKEN: &str = "12345678901234567890123456789012";

/// Reads until the server closes the connection or `within` passes; returns what it sent and
/// whether it closed.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Sends `raw` on a new connection and returns everything answered until the server closes
/// it (or 5 s pass).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    until_closed(&mut stream, Duration::from_secs(5)).await.0
}

/// A form POST to `path` as raw bytes, with `Connection: close`.
fn form_post(path: &str, form: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: cg.example\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{form}",
        form.len()
    )
    .into_bytes()
}

/// callgate in front of a recording engine, with a gate that rejects every call to `TO`.
async fn rejecting(tweak: impl FnOnce(&mut callgate::settings::Settings)) -> (Callgate, Stub, Stub) {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let cg = Callgate::spawn_with(&number_gate(TO, &gate.url("/g")), &engine.url(""), tweak).await;
    (cg, gate, engine)
}

fn enforce(s: &mut callgate::settings::Settings) {
    s.twilio_auth_tokens = vec![Secret::new(TOKEN)];
    s.twilio_signature = SignatureMode::Enforce;
    s.signed_paths = vec!["/twilio/status".into()];
}

// Item 6: a voice or signed path spelled with dot-segments or `;` parameters is that path.

#[tokio::test]
async fn dot_segment_and_parameter_spellings_of_the_voice_path_are_gated() {
    let (cg, gate, engine) = rejecting(|_| {}).await;
    for path in [
        "/twilio/./voice",
        "/twilio/a/../voice",
        "/twilio/voice;x=1",
        "/twilio;p/voice",
        "/x/../twilio/%2e/voice/.",
        "/twilio/voice/a/..",
    ] {
        let answer = exchange(cg.addr, &form_post(path, &ringing(TO), "")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.contains("<Reject reason=\"busy\"/>"), "{path} not gated: {answer}");
    }
    assert_eq!(gate.count(), 6);
    assert_eq!(engine.count(), 0, "a rejected call never reaches the engine");
}

#[tokio::test]
async fn dot_segment_and_parameter_spellings_of_signed_paths_are_signature_checked() {
    let (cg, gate, engine) = rejecting(enforce).await;
    for path in [
        "/twilio/./voice",
        "/twilio/a/../voice",
        "/twilio/voice;x=1",
        "/twilio/status;x",
        "/a/../twilio/status",
    ] {
        let answer =
            exchange(cg.addr, &form_post(path, &ringing(TO), "X-Twilio-Signature: forged\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
    }
    assert_eq!((gate.count(), engine.count()), (0, 0));
}

// Item 7: the signature of a GET covers its URL only; a body on it is never forwarded.

fn signed_get(path_and_query: &str, extra: &str, body: &str) -> Vec<u8> {
    let url = format!("http://cg.example{path_and_query}");
    let signature = callgate::webhook::signature::sign_with_token(TOKEN, &url, &[]);
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: cg.example\r\nX-Twilio-Signature: {signature}\r\n\
         Connection: close\r\n{extra}\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_signed_get_with_a_body_is_refused_and_reaches_nobody() {
    let (cg, gate, engine) = rejecting(enforce).await;
    let query = "/twilio/status?CallSid=CA1&CallStatus=completed";
    // The same signed URL without a body passes: the signature is good.
    let answer = exchange(cg.addr, &signed_get(query, "", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(engine.count(), 1);

    let smuggled = "Digits=1234&SpeechResult=transfer";
    let length =
        format!("Content-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n", smuggled.len());
    let chunked = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    for (path, extra, body) in [
        (query, length.as_str(), smuggled.to_owned()),
        (query, "Transfer-Encoding: chunked\r\n", chunked.clone()),
        ("/twilio/voice?CallSid=CA1&CallStatus=in-progress", length.as_str(), smuggled.to_owned()),
    ] {
        let answer = exchange(cg.addr, &signed_get(path, extra, &body)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path} {extra}: {answer}");
    }
    let head = signed_get(query, &length, smuggled);
    let head = String::from_utf8(head).unwrap().replacen("GET", "HEAD", 1);
    let answer = exchange(cg.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "HEAD: {answer}");
    assert_eq!(engine.count(), 1, "no body on a GET or HEAD reached the engine");
    assert_eq!(gate.count(), 0);
}
