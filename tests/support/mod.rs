//! Test support: the real callgate on 127.0.0.1:0, recording stub gates and engines on real
//! sockets, and a small HTTP client. Nothing here mocks the network.
#![allow(dead_code)]

pub mod redis;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use callgate::settings::{ApiKey, Settings};
use callgate::Listeners;

/// A request as a stub server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a stub answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: &str) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(body.to_owned()),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, status: u16) -> Reply {
        self.status = StatusCode::from_u16(status).unwrap();
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A recording HTTP server on 127.0.0.1:0 that answers every request with one [`Reply`].
pub struct Stub {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Stub {
    pub async fn start(reply: Reply) -> Stub {
        Stub::start_with(move |_| reply.clone()).await
    }

    /// A stub whose reply depends on the request.
    pub async fn start_with(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let task = {
            let seen = Arc::clone(&seen);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let seen = Arc::clone(&seen);
                    let reply = Arc::clone(&reply);
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            let reply = Arc::clone(&reply);
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                let request = Seen {
                                    method: parts.method,
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                let r = reply(&request);
                                seen.lock().unwrap().push(request);
                                tokio::time::sleep(r.delay).await;
                                let mut response = Response::new(Full::new(r.body));
                                *response.status_mut() = r.status;
                                for (name, value) in r.headers {
                                    response.headers_mut().append(name, value.parse().unwrap());
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Stub { addr, seen, connections, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nothing listens: connections are refused.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A gate that accepts connections and never answers; stops when dropped.
pub struct Silent {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let held = held.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    held.lock().unwrap().push(stream);
                }
            }
        });
        Silent { addr, held, task }
    }

    /// Connections accepted so far (all still held open).
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket engine that sends back every text and binary frame with `prefix` in front.
pub async fn ws_echo(prefix: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::Text(format!("{prefix}{t}")),
                        Message::Binary(b) => Message::Binary([prefix.as_bytes(), &b].concat()),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `n` numbers `+1555NNNNNNN`, each assigned to `agent`: a table that takes a moment to load.
pub fn many_numbers(n: usize, agent: &str) -> serde_json::Map<String, serde_json::Value> {
    (0..n).map(|i| (format!("+1555{i:07}"), serde_json::json!({ "agent_id": agent }))).collect()
}

/// An admin API call to `admin` with the test key; `body` is sent as JSON when given.
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", ADMIN_AUTH);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let answer = send(request.body(Full::new(body)).unwrap()).await.unwrap();
    let json = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    (answer.status, json)
}

/// The real callgate, served in this process by `callgate::run` on 127.0.0.1:0.
pub struct Callgate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub routes: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), callgate::StartError>>>,
}

impl Callgate {
    /// The decision record of `sid` (`GET /v1/calls/{sid}`), waiting up to 5 s for it.
    pub async fn record_of(&self, sid: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = self.admin("GET", &format!("/v1/calls/{sid}"), None).await;
            if status == StatusCode::OK {
                return body;
            }
            assert!(Instant::now() < deadline, "no record of {sid}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// callgate with `routes` (a routes-file JSON text) in front of the engine at `upstream`.
    pub async fn spawn(routes: &str, upstream: &str) -> Callgate {
        Callgate::spawn_with(routes, upstream, |_| {}).await
    }

    /// As [`Callgate::spawn`], with the settings adjusted by `tweak` first.
    pub async fn spawn_with(routes: &str, upstream: &str, tweak: impl FnOnce(&mut Settings)) -> Callgate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        std::fs::write(&path, routes).unwrap();
        let mut settings = Settings::local(upstream, path.clone()).unwrap();
        settings.api_keys = vec![ApiKey::new("kid", "ksecret")];
        // Tests reuse one CallSid and one dead gate across calls: the dedup window and the
        // breaker are off unless a test turns them on (tests/resilience.rs, tests/chaos.rs).
        settings.dedup_window = Duration::ZERO;
        settings.breaker_failures = 0;
        tweak(&mut settings);
        let listeners = Listeners::bind(settings.listen, settings.admin_listen).await.unwrap();
        let (addr, admin) = (listeners.public_addr(), listeners.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(callgate::run(settings, listeners, async {
            let _ = stopped.await;
        }));
        let gate = Callgate { addr, admin, routes: path, dir, stop: Some(stop), task: Some(task) };
        gate.wait_ready().await;
        gate
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = get(&format!("http://{}/readyz", self.admin)).await {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "callgate never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// An admin API call with the test key; `body` is sent as JSON when given.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        admin_call(self.admin, method, path, body).await
    }

    /// The table in force, as `GET /v1/routes` shows it.
    pub async fn table(&self) -> serde_json::Value {
        let (status, table) = self.admin("GET", "/v1/routes", None).await;
        assert_eq!(status, StatusCode::OK);
        table
    }

    /// Stops the server and waits for its drain to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Callgate {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive client: requests sent one after another through it share a connection.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends `request` on a connection of its own and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Result<Answer, hyper_util::client::legacy::Error> {
    send_with(&client(), request).await
}

/// Sends `request` through `client` and reads the whole answer.
pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

pub async fn get(url: &str) -> Result<Answer, hyper_util::client::legacy::Error> {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// POSTs a form body, as Twilio does.
pub async fn post_form(url: &str, body: &str) -> Answer {
    let request = Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(request).await.unwrap()
}

/// A Twilio inbound ringing-call form body to `to`.
pub fn ringing(to: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("AccountSid", "AC00000000000000000000000000000000");
    s.append_pair("CallSid", "CA11111111111111111111111111111111");
    s.append_pair("From", "+14155550100");
    s.append_pair("To", to);
    s.append_pair("Direction", "inbound");
    s.append_pair("CallStatus", "ringing");
    s.append_pair("ApiVersion", "2010-04-01");
    s.finish()
}

/// Waits for `check` to hold, polling, up to `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Authorization` header for the key every test callgate is given.
pub const ADMIN_AUTH: &str = "Bearer kid:ksecret";

pub const GOLDEN_REJECT: &[u8] = include_bytes!("../../fixtures/twiml/reject-busy.xml");

/// One routes file with one gate on number `to`.
pub fn number_gate(to: &str, url: &str) -> String {
    serde_json::json!({ "numbers": { to: { "gate": { "url": url } } } }).to_string()
}

/// The real `callgate` binary, started with JSON logs on 127.0.0.1:0; its log lines are
/// collected as they come.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<serde_json::Value>>>,
    pub dir: tempfile::TempDir,
}

impl Binary {
    /// An admin API call with the test key; `body` is sent as JSON when given.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        admin_call(self.admin, method, path, body).await
    }

    /// Starts callgate with `routes` in front of `upstream`, plus `args`; waits until it serves.
    pub fn spawn(routes: &str, upstream: &str, args: &[&str]) -> Binary {
        let binary = Binary::start(routes, upstream, args);
        binary.wait_for_log("callgate serving");
        binary
    }

    /// Starts callgate and returns once its admin listener is up (the table may still load).
    pub fn start(routes: &str, upstream: &str, args: &[&str]) -> Binary {
        Binary::start_via(&[], routes, upstream, args)
    }

    /// As [`Binary::start`], run through `wrapper` (a program and its arguments, the binary's
    /// path and arguments after them), which must end by exec'ing it: the child is callgate.
    pub fn start_via(wrapper: &[&str], routes: &str, upstream: &str, args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        std::fs::write(&path, routes).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_callgate"));
                c
            }
            None => std::process::Command::new(env!("CARGO_BIN_EXE_callgate")),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--upstream", upstream, "--allow-insecure-gates", "--api-key", "kid:ksecret"])
            .arg("--routes")
            .arg(&path)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            // As in `Callgate::spawn_with`: on only where a test asks (a flag overrides these).
            .env("CALLGATE_DEDUP_WINDOW", "0")
            .env("CALLGATE_BREAKER_FAILURES", "0")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
                    logs.lock().unwrap().push(value);
                }
            });
        }
        let mut binary =
            Binary { child, addr: ([0, 0, 0, 0], 0).into(), admin: ([0, 0, 0, 0], 0).into(), logs, dir };
        let up = binary.wait_for_log("listeners bound");
        binary.addr = up["listen"].as_str().unwrap().parse().unwrap();
        binary.admin = up["admin_listen"].as_str().unwrap().parse().unwrap();
        binary
    }

    /// Waits (up to 20 s) for a log line whose message is `message`, and returns it.
    pub fn wait_for_log(&self, message: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| l["message"] == message) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {message:?} log line: {:?}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every line with this message, once at least `at_least` have arrived and no more came
    /// in a further wait: callgate writes its log in batches (`callgate::logging`), so a line
    /// for a call already answered may still be on its way.
    pub fn logs_with(&self, message: &str, at_least: usize) -> Vec<serde_json::Value> {
        let matching = || -> Vec<serde_json::Value> {
            self.logs.lock().unwrap().iter().filter(|l| l["message"] == message).cloned().collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while matching().len() < at_least {
            assert!(std::time::Instant::now() < deadline, "fewer than {at_least} {message:?} lines");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(callgate::logging::FLUSH_INTERVAL * 4);
        matching()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The value of one series in `/metrics`, e.g. `callgate_inbound_calls_total{decision="accept"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics")).await.unwrap().text();
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "callgate did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` (name and labels exactly as exported) in a Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A TLS acceptor serving `cert` (a PEM chain) with `key` (PEM), for HTTPS stubs.
#[allow(dead_code)]
pub fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(callgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
