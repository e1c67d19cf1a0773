//! The stub gate, stub engine and dead gate the load bench runs against, all on 127.0.0.1: each
//! answers at once (or, for the dead gate, never) and counts what it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What the stub engine answers to every request.
pub const ENGINE_TWIML: &[u8] =
    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Hello from the engine</Say></Response>";
const ACCEPT: &[u8] = br#"{"action":"accept"}"#;
const REJECT: &[u8] = br#"{"action":"reject","reason":"bench"}"#;

/// Requests each stub has answered, and connections the dead gate holds.
#[derive(Default)]
pub struct Counts {
    pub gate: AtomicU64,
    pub engine: AtomicU64,
    pub dead_accepted: AtomicU64,
}

/// The three stubs, bound and serving on the current runtime.
pub struct Stubs {
    pub gate: SocketAddr,
    pub engine: SocketAddr,
    pub dead: SocketAddr,
    pub counts: Arc<Counts>,
}

impl Stubs {
    /// Binds each stub at its address (port 0 for any) and serves until the runtime stops.
    pub async fn start(gate: SocketAddr, engine: SocketAddr, dead: SocketAddr) -> std::io::Result<Stubs> {
        let counts = Arc::new(Counts::default());
        let gate_listener = TcpListener::bind(gate).await?;
        let engine_listener = TcpListener::bind(engine).await?;
        let dead_listener = TcpListener::bind(dead).await?;
        let stubs = Stubs {
            gate: gate_listener.local_addr()?,
            engine: engine_listener.local_addr()?,
            dead: dead_listener.local_addr()?,
            counts: Arc::clone(&counts),
        };
        tokio::spawn(serve(gate_listener, Arc::clone(&counts), Role::Gate));
        tokio::spawn(serve(engine_listener, Arc::clone(&counts), Role::Engine));
        tokio::spawn(hold(dead_listener, counts));
        Ok(stubs)
    }
}

#[derive(Clone, Copy)]
enum Role {
    Gate,
    Engine,
}

async fn serve(listener: TcpListener, counts: Arc<Counts>, role: Role) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, role, Arc::clone(&counts)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    role: Role,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_says_reject = request.uri().path().ends_with("/reject");
    // Read the whole body, as a real server would, so the connection stays reusable.
    let _ = request.into_body().collect().await;
    let (body, content_type) = match role {
        Role::Gate => {
            counts.gate.fetch_add(1, Ordering::Relaxed);
            (if path_says_reject { REJECT } else { ACCEPT }, "application/json")
        }
        Role::Engine => {
            counts.engine.fetch_add(1, Ordering::Relaxed);
            (ENGINE_TWIML, "text/xml")
        }
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    Ok(response)
}

/// A gate that never answers: accepts every connection and holds it open, reading nothing.
async fn hold(listener: TcpListener, counts: Arc<Counts>) {
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        counts.dead_accepted.fetch_add(1, Ordering::Relaxed);
        let mut held = held.lock().expect("never poisoned");
        // Keep the newest few thousand; closing the oldest keeps the bench under its fd limit.
        if held.len() >= 4096 {
            held.remove(0);
        }
        held.push(stream);
    }
}
