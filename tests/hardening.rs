//! Hardening on real sockets: slow and idle clients, oversized bodies and heads refused early,
//! and the connection cap.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TO: &str = "+447700900123";

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into_owned(), Some(Instant::now()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
    }
}

async fn spawn(tweak: impl FnOnce(&mut callgate::settings::Settings)) -> (Callgate, Stub) {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn_with("{}", &engine.url(""), tweak).await;
    (cg, engine)
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_at_the_header_timeout() {
    let (cg, engine) = spawn(|s| s.header_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(cg.addr).await.unwrap();
    let started = Instant::now();
    // One header byte every 100 ms: always busy, never done.
    let writer = async {
        for b in b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if stream.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "cut off, not served: {took:?}");
    let (_, closed) = until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the connection is closed");
    assert_eq!(engine.count(), 0);

    // A client that connects and says nothing is cut off too.
    let mut silent = TcpStream::connect(cg.addr).await.unwrap();
    let (_, closed) = until_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(closed.is_some());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lives_until_the_idle_timeout_not_the_header_timeout() {
    let (cg, engine) = spawn(|s| {
        s.header_timeout = Duration::from_millis(300);
        s.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut stream = TcpStream::connect(cg.addr).await.unwrap();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request("/one").as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Idle for longer than the header timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stream.write_all(request("/two").as_bytes()).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "kept alive past the header timeout"
    );
    let idle_from = Instant::now();
    let (_, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
    let idle = closed.expect("closed once idle too long") - idle_from;
    assert!(idle >= Duration::from_millis(1400) && idle < Duration::from_secs(4), "closed after {idle:?}");
    assert_eq!(engine.count(), 2);
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_sent() {
    let (cg, engine) = spawn(|_| {}).await;
    for (path, length) in [("/twilio/voice", 10 * 1024 * 1024), ("/twilio/status", 10 * 1024 * 1024 + 1)] {
        let mut stream = TcpStream::connect(cg.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Not one byte of the body is sent: the answer must not wait for it.
        let (answer, _) = until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    assert_eq!(engine.count(), 0);
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let (cg, engine) = spawn(|_| {}).await;
    let mut stream = TcpStream::connect(cg.addr).await.unwrap();
    let head = format!("GET /twilio/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let _ = stream.write_all(head.as_bytes()).await;
    let (answer, closed) = until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(closed.is_some());
    assert_eq!(engine.count(), 0);
}

#[tokio::test]
async fn beyond_max_connections_accepting_pauses_until_one_closes() {
    let (cg, _engine) = spawn(|s| s.max_connections = 2).await;
    let first = TcpStream::connect(cg.addr).await.unwrap();
    let _second = TcpStream::connect(cg.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third connection waits in the kernel's queue: its request is not served...
    let url = cg.url("/twilio/status");
    let third = tokio::spawn(async move { get(&url).await.map(|a| a.status) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "served beyond the cap");
    // ...until a connection closes.
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap().unwrap();
    assert_eq!(status, 200);
    let _ = TO;
}

#[tokio::test]
async fn a_body_trickled_past_the_header_timeout_is_refused_with_408() {
    let (cg, engine) = spawn(|s| s.header_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(cg.addr).await.unwrap();
    let body = ringing(TO);
    let head = format!(
        "POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed.is_some() && started.elapsed() < Duration::from_secs(3));
    assert_eq!(engine.count(), 0);
}
