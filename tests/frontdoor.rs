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

// Item 12: framing.

#[tokio::test]
async fn an_http11_request_with_two_hosts_or_none_is_refused() {
    let (cg, _gate, engine) = rejecting(|_| {}).await;
    for head in [
        "GET /twilio/status HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET /twilio/status HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "GET /twilio/status HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(cg.addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
    }
    let form = ringing(TO);
    let two_hosts = form_post("/twilio/voice", &form, "Host: evil.example\r\n");
    let answer = exchange(cg.addr, &two_hosts).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(engine.count(), 0);
    // HTTP/1.0 has no Host requirement; one Host on HTTP/1.1 is the ordinary case.
    let answer = exchange(cg.addr, b"GET /twilio/status HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{answer}");
    let answer =
        exchange(cg.addr, b"GET /twilio/status HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(engine.count(), 2);
}

#[tokio::test]
async fn a_transfer_encoding_other_than_chunked_alone_is_refused() {
    let (cg, _gate, engine) = rejecting(|_| {}).await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (path, te) in [
        ("/twilio/status", "Transfer-Encoding: gzip, chunked\r\n"),
        ("/twilio/status", "Transfer-Encoding: chunked, chunked\r\n"),
        ("/twilio/status", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        ("/twilio/status", "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n"),
        ("/twilio/status", "Transfer-Encoding: gzip\r\n"),
        ("/twilio/voice", "Transfer-Encoding: deflate,chunked\r\n"),
    ] {
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{te}\r\n{body}");
        let answer = exchange(cg.addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501"), "{te:?}: {answer}");
    }
    assert_eq!(engine.count(), 0);
    let raw = format!("POST /twilio/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}");
    let answer = exchange(cg.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(engine.seen()[0].body, "hello");
}

#[tokio::test]
async fn connection_cannot_remove_host_content_type_or_the_signature() {
    let (cg, _gate, engine) = rejecting(|_| {}).await;
    let form = "CallSid=CA1&CallStatus=completed";
    let nominate = "Connection: host, content-type, x-twilio-signature, \
                    x-twilio-webhooks-signature-settings, x-forwarded-host, x-forwarded-proto, x-hop\r\n\
                    X-Twilio-Signature: sig\r\nX-Twilio-Webhooks-Signature-Settings: key=k\r\n\
                    X-Forwarded-Host: public.example\r\nX-Forwarded-Proto: https\r\nX-Hop: gone\r\n";
    for path in ["/twilio/voice", "/elsewhere"] {
        let answer = exchange(cg.addr, &form_post(path, form, nominate)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    let seen = engine.seen();
    assert_eq!(seen.len(), 2);
    for request in seen {
        let h = &request.headers;
        assert_eq!(h["host"], "cg.example", "{}", request.uri);
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(h["x-twilio-signature"], "sig");
        assert_eq!(h["x-twilio-webhooks-signature-settings"], "key=k");
        assert_eq!(h["x-forwarded-host"], "public.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-hop"), "other nominated headers still go");
        assert_eq!(request.body, form);
    }
}

#[tokio::test]
async fn the_403_does_not_say_which_shared_key_ids_exist() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| {
        s.twilio_shared_keys = vec![callgate::settings::SharedKey {
            id: "webhooks_sharedkey_A".into(),
            secret: Secret::new("secret-a"),
        }];
        s.twilio_signature = SignatureMode::Enforce;
    })
    .await;
    let form = ringing(TO);
    let mut bodies = Vec::new();
    for settings in [
        "key=webhooks_sharedkey_A,algorithm=HMAC_SHA256",
        "key=webhooks_sharedkey_Z,algorithm=HMAC_SHA256",
        "key=webhooks_sharedkey_A,algorithm=HMAC_SHA512",
    ] {
        let extra =
            format!("X-Twilio-Signature: bm9wZQ==\r\nX-Twilio-Webhooks-Signature-Settings: {settings}\r\n");
        let answer = exchange(cg.addr, &form_post("/twilio/voice", &form, &extra)).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap().to_owned();
        assert!(!body.contains("key"), "{body}");
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    // A missing signature answers the same too.
    let answer = exchange(cg.addr, &form_post("/twilio/voice", &form, "")).await;
    assert_eq!(answer.split("\r\n\r\n").nth(1).unwrap(), bodies[0]);
    assert_eq!(engine.count(), 0);
}

#[tokio::test]
async fn refused_signature_lines_are_rate_limited_with_a_count_of_those_left_out() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &["--twilio-auth-token", TOKEN]);
    let flood = 300;
    let client = client();
    let started = Instant::now();
    for _ in 0..flood {
        let request = http::Request::post(cg.url("/twilio/voice"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", "forged")
            .body(http_body_util::Full::new(bytes::Bytes::from(ringing(TO))))
            .unwrap();
        assert_eq!(send_with(&client, request).await.unwrap().status, 403);
    }
    let spent = started.elapsed();
    let message = "X-Twilio-Signature did not validate";
    let lines = cg.logs_with(message, 1);
    let allowed = 20 * (spent.as_secs() as usize + 2);
    assert!(lines.len() <= allowed, "{} lines for {flood} refusals in {spent:?}", lines.len());
    // The next window's first line reports how many were left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let request = http::Request::post(cg.url("/twilio/voice"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(ringing(TO))))
        .unwrap();
    assert_eq!(send_with(&client, request).await.unwrap().status, 403);
    let lines = cg.logs_with(message, lines.len() + 1);
    let left_out: u64 = lines.iter().filter_map(|l| l["left_out"].as_u64()).sum();
    assert_eq!(lines.len() as u64 + left_out, flood as u64 + 1, "every refusal logged or counted");
    assert_eq!(engine.count(), 0);
}

// Item 1: WebSocket relays hold their connection's permit, die when silent, and only
// `websocket` upgrades on GET are relayed.

async fn ws_connect(addr: std::net::SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/twilio/media?CallSid=CA1");
    let (ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn websocket_relays_hold_their_connection_permit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let engine = ws_echo("").await;
    let cg = Callgate::spawn_with("{}", &format!("http://{engine}"), |s| s.max_connections = 50).await;
    let upgraded = Arc::new(AtomicUsize::new(0));
    let (release, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut clients = Vec::new();
    for _ in 0..200 {
        let (addr, upgraded, mut released) = (cg.addr, Arc::clone(&upgraded), release.subscribe());
        clients.push(tokio::spawn(async move {
            let ws = ws_connect(addr).await;
            upgraded.fetch_add(1, Ordering::SeqCst);
            let _ = released.recv().await;
            drop(ws);
        }));
    }
    eventually(Duration::from_secs(10), || async { upgraded.load(Ordering::SeqCst) >= 50 }).await;
    // The rest wait in the kernel's queue for as long as the relays live.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upgraded.load(Ordering::SeqCst), 50, "relays beyond --max-connections");
    // Once relays end, their permits go to the connections waiting.
    let _ = release.send(());
    eventually(Duration::from_secs(20), || async { upgraded.load(Ordering::SeqCst) == 200 }).await;
    let _ = release.send(());
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
    }
}

#[tokio::test]
async fn a_silent_relay_is_closed_at_the_idle_timeout_and_a_busy_one_is_not() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let engine = ws_echo("").await;
    let cg = Callgate::spawn_with("{}", &format!("http://{engine}"), |s| {
        s.idle_timeout = Duration::from_millis(600);
    })
    .await;

    // Media every 100 ms for twice the idle timeout: kept.
    let mut busy = ws_connect(cg.addr).await;
    for i in 0..12 {
        busy.send(Message::Text(format!("media {i}"))).await.unwrap();
        assert_eq!(busy.next().await.unwrap().unwrap(), Message::Text(format!("media {i}")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Silent: closed once the idle timeout passes.
    let mut silent = ws_connect(cg.addr).await;
    silent.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(silent.next().await.unwrap().unwrap(), Message::Text("hello".into()));
    let quiet_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a silent relay is never closed");
    let quiet = quiet_from.elapsed();
    assert!(quiet >= Duration::from_millis(500), "closed after {quiet:?}, before the idle timeout");
}

/// An engine that answers 101 to whatever asks to upgrade (or to everything, with `always`)
/// and 200 otherwise; it records each request head.
async fn upgrading_engine(
    always: bool,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let upgrade = always || head.contains("\r\nupgrade:");
                seen.lock().unwrap().push(head);
                let answer: &[u8] = if upgrade {
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = stream.write_all(answer).await;
                // Hold the connection a while, as an upgraded one would be.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn only_websocket_upgrades_on_get_are_relayed() {
    let (engine, heads) = upgrading_engine(false).await;
    let cg = Callgate::spawn("{}", &format!("http://{engine}")).await;
    let ws = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for (method, upgrade) in [
        ("GET", "h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
        ("OPTIONS", "h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
        ("GET", "websocket, h2c"),
        ("GET", "TLS/1.0"),
        ("POST", "websocket"),
    ] {
        let raw = format!(
            "{method} /media HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\n{ws}Content-Length: 0\r\n\r\n"
        );
        let mut stream = TcpStream::connect(cg.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(!answer.starts_with("HTTP/1.1 101"), "{method} Upgrade: {upgrade}: {answer}");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 5);
    for head in heads {
        assert!(!head.contains("\r\nupgrade:"), "an Upgrade other than websocket on GET went on: {head}");
    }
}

#[tokio::test]
async fn an_engine_101_to_a_request_that_did_not_ask_is_never_passed_on() {
    let (engine, _) = upgrading_engine(true).await;
    let cg = Callgate::spawn("{}", &format!("http://{engine}")).await;
    let answer = exchange(cg.addr, b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

// Item 2: HTTP/2 on the public listener.

/// An HTTP/2 connection over `io` sending a PING every 100 ms, idle or not. Returns the
/// request sender and the connection task, which ends when the server closes the connection.
async fn h2_pinging<I>(
    io: I,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    hyper::Error,
>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((send, task))
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    url: &str,
) -> Result<http::StatusCode, hyper::Error> {
    send.ready().await?;
    let request = http::Request::get(url).body(http_body_util::Empty::new()).unwrap();
    Ok(send.send_request(request).await?.status())
}

#[tokio::test]
async fn prior_knowledge_http2_is_refused_on_cleartext_unless_allowed() {
    let engine = Stub::start(Reply::json("ok")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let tcp = TcpStream::connect(cg.addr).await.unwrap();
    let refused = match h2_pinging(tcp).await {
        Err(_) => true,
        Ok((mut send, _task)) => {
            tokio::time::timeout(Duration::from_secs(5), h2_get(&mut send, &cg.url("/status")))
                .await
                .unwrap()
                .is_err()
        }
    };
    assert!(refused, "cleartext HTTP/2 with prior knowledge was served");
    assert_eq!(engine.count(), 0);

    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| s.allow_h2c = true).await;
    let (mut send, _task) = h2_pinging(TcpStream::connect(cg.addr).await.unwrap()).await.unwrap();
    assert_eq!(h2_get(&mut send, &cg.url("/status")).await.unwrap(), 200);
}

/// callgate serving HTTPS with a fresh certificate, and a client config trusting it (ALPN h2).
async fn over_tls(
    engine: &Stub,
    tweak: impl FnOnce(&mut callgate::settings::Settings),
) -> (Callgate, std::sync::Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| {
        s.tls_cert = Some(cert_path);
        s.tls_key = Some(key_path);
        tweak(s);
    })
    .await;
    std::mem::forget(dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(callgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    (cg, std::sync::Arc::new(config))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn an_http2_connection_sending_only_pings_is_closed_at_the_idle_timeout() {
    let engine = Stub::start(Reply::json("ok")).await;
    let (cg, config) = over_tls(&engine, |s| s.idle_timeout = Duration::from_millis(700)).await;
    let url = format!("https://localhost:{}/status", cg.addr.port());

    // One request, then nothing but PINGs.
    let tls = tls_connect(cg.addr, config.clone()).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, task) = h2_pinging(tls).await.unwrap();
    assert_eq!(h2_get(&mut send, &url).await.unwrap(), 200);
    let quiet_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("PINGs kept the connection open")
        .unwrap();
    assert!(quiet_from.elapsed() >= Duration::from_millis(600), "closed after {:?}", quiet_from.elapsed());

    // No request at all: closed at the idle timeout too, well before the header timeout.
    let (_send, task) = h2_pinging(tls_connect(cg.addr, config).await).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("a request-less connection kept open")
        .unwrap();
}

// Item 8: a slow or vanishing client is the client's fault, not the engine's.

#[tokio::test]
async fn a_pass_through_body_trickled_past_the_header_timeout_gets_408_not_an_upstream_timeout() {
    let engine = Stub::start(Reply::json("ok")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &["--header-timeout", "500ms", "--upstream-timeout", "2s"]);
    let mut stream = TcpStream::connect(cg.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A byte every 100 ms: 10 s for the whole body, if it were allowed.
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b"x").await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Ok(_) => break,
                Err(_) => {}
            }
        }
        String::new()
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), trickle).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1900), "answered after {:?}", started.elapsed());
    for cause in ["timeout", "protocol", "connect"] {
        let series = format!("callgate_upstream_errors_total{{cause=\"{cause}\"}}");
        assert_eq!(cg.metric(&series).await, 0.0, "{series}");
    }
}

#[tokio::test]
async fn a_client_reset_mid_body_is_not_an_engine_protocol_error() {
    let engine = Stub::start(Reply::json("ok")).await;
    let cg = Binary::spawn("{}", &engine.url(""), &[]);
    for _ in 0..3 {
        let mut stream = TcpStream::connect(cg.addr).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial body")
            .await
            .unwrap();
        // Wait until the engine has the request, then reset the connection.
        let seen = engine.connections();
        eventually(Duration::from_secs(5), || async { engine.connections() > seen || engine.count() > 0 })
            .await;
        stream.set_zero_linger().unwrap();
        drop(stream);
    }
    // The engine sees its side end; callgate records the exchange's end.
    eventually(Duration::from_secs(5), || async { engine.count() >= 3 }).await;
    let requests = cg.metric("callgate_request_duration_seconds_count{route=\"proxy\"}").await;
    assert!(requests >= 1.0);
    assert_eq!(cg.metric("callgate_upstream_errors_total{cause=\"protocol\"}").await, 0.0);
}

// Item 3: open connections are exported.

#[tokio::test]
async fn open_connections_are_exported_upgraded_ones_included() {
    let engine = ws_echo("").await;
    let cg = Binary::spawn("{}", &format!("http://{engine}"), &[]);
    let series = "callgate_open_connections";
    assert_eq!(cg.metric(series).await, 0.0, "exported at 0 from start-up");
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(cg.addr).await.unwrap();
        stream.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        assert!(stream.read(&mut buf).await.unwrap() > 0);
        idle.push(stream);
    }
    let ws = ws_connect(cg.addr).await;
    // The metrics scrape is on the admin listener: it does not count itself.
    eventually(Duration::from_secs(5), || async { cg.metric(series).await == 6.0 }).await;
    drop(idle);
    eventually(Duration::from_secs(5), || async { cg.metric(series).await == 1.0 }).await;
    drop(ws);
    eventually(Duration::from_secs(5), || async { cg.metric(series).await == 0.0 }).await;
}

#[tokio::test]
async fn a_slow_engine_behind_a_pass_through_path_is_still_the_engines_timeout() {
    let engine = Stub::start(Reply::json("ok").delay(Duration::from_secs(5))).await;
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| {
        s.upstream_timeout = Duration::from_millis(300);
        s.header_timeout = Duration::from_secs(2);
    })
    .await;
    for raw in [
        &b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let started = Instant::now();
        let answer = exchange(cg.addr, raw).await;
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
        assert!(started.elapsed() < Duration::from_millis(1500), "answered after {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_relay_in_flight_is_drained_on_shutdown() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let engine = ws_echo("").await;
    let cg = Callgate::spawn_with("{}", &format!("http://{engine}"), |s| {
        s.shutdown_grace = Duration::from_secs(20);
    })
    .await;
    let mut ws = ws_connect(cg.addr).await;
    let stopping = tokio::spawn(cg.stop());
    // The drain waits for the relay, which keeps relaying meanwhile.
    for i in 0..10 {
        ws.send(Message::Text(format!("media {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text(format!("media {i}")));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stopping.is_finished(), "shutdown did not wait for the relay");
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained once the relay ended")
        .unwrap();
}
