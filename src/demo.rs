//! `callgate demo`: the real server on loopback with a built-in demo voice engine and demo gates
//! (accept, enrich, reject, slow, dead), one `curl` line printed per decision and per admin
//! feature, and a `callgate probe` of the slow and dead gates.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::settings::Settings;
use crate::{Listeners, StartError};

/// The demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot bind {0}")]
    Bind(String, #[source] std::io::Error),
    #[error("cannot write the demo routes file {0}")]
    Routes(String, #[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The admin API key the demo serves with (printed in its curl lines).
pub const DEMO_KEY: &str = "demo:demo-secret";

/// The demo numbers: each one shows one decision.
pub const CASES: [(&str, &str, &str, &str); 10] = [
    (
        "accept",
        "+15005550001",
        CALLER,
        "the agent's gate says accept: forwarded to the engine, with the caller context a CRM pushed just before",
    ),
    (
        "accept",
        "+15005550006",
        CALLER,
        "the gate accepts, picks agent_vip and hands the engine variables (X-Callgate-Agent-Id, X-Callgate-Context)",
    ),
    (
        "reject",
        "+15005550002",
        CALLER,
        "the number's own gate says reject: busy TwiML, the engine never hears of it",
    ),
    ("fail_open", "+15005550003", CALLER, "the gate is slower than its 1 s timeout: fails open, forwarded"),
    ("fail_open", "+15005550004", CALLER, "the gate refuses connections: fails open, forwarded"),
    ("fail_closed", "+15005550005", CALLER, "a compliance gate (on_failure: reject) is down: busy TwiML"),
    ("no_gate", "+15005550009", CALLER, "a number with no gate: forwarded"),
    ("accept", "+15005550007", CALLER, "a check set (blocklist, then a DND API): every check proceeds"),
    (
        "reject",
        "+15005550007",
        BLOCKED,
        "the same check set: the caller is on its blocklist, the API is never asked",
    ),
    (
        "reject",
        "+15005550008",
        CALLER,
        "a chain of opening hours that never open: rejected by \"Opening hours\"",
    ),
];

/// The caller of most demo calls, and one on the demo blocklist.
const CALLER: &str = "+14155550100";
const BLOCKED: &str = "+447386172392";

/// The context the demo pushes for its accept call (seed 003's "Call Transfer with Context").
pub const PUSH: &str = r#"{"agentId":"agent_demo","phoneNumber":"+14155550100","customer_name":"Jane","issue":"billing_error","priority":"high"}"#;

/// Runs the demo until `shutdown` completes.
pub async fn run(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let engine = bind(loopback).await?;
    let gates = bind(loopback).await?;
    let dead = bind(loopback).await?;
    let engine_addr = engine.local_addr().expect("bound");
    let gates_addr = gates.local_addr().expect("bound");
    // A port that was just free and is now closed: connections to it are refused.
    let dead_addr = dead.local_addr().expect("bound");
    drop(dead);
    tokio::spawn(serve_forever(engine, demo_engine));
    tokio::spawn(serve_forever(gates, demo_gate));

    let routes = write_routes(gates_addr, dead_addr)?;
    let listeners = Listeners::bind(listen, admin_listen)
        .await
        .map_err(|e| DemoError::Bind(format!("{listen} / {admin_listen}"), e))?;
    let settings =
        Settings::local(&format!("http://{engine_addr}"), routes).expect("the demo engine URL is valid");
    let (key_id, key_secret) = DEMO_KEY.split_once(':').expect("id:secret");
    let api_keys = vec![crate::settings::ApiKey::new(key_id, key_secret)];
    let settings = Settings { listen, admin_listen, api_keys, ..settings };
    // A demo whose stdout has gone away (a closed pipe) keeps serving.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", instructions(listeners.public_addr(), listeners.admin_addr()));
    let _ = stdout.flush();
    drop(stdout);
    tokio::spawn(probe_demo_gates(gates_addr, dead_addr));
    crate::run(settings, listeners, shutdown).await?;
    Ok(())
}

/// Grades the demo's slow and dead gates with `callgate probe`, so a newcomer sees what a
/// failing gate looks like before a caller meets it.
async fn probe_demo_gates(gates: SocketAddr, dead: SocketAddr) {
    for url in [format!("http://{gates}/slow"), format!("http://{dead}/precall")] {
        let options = crate::probe::Options {
            n: 3,
            timeout: Duration::from_secs(1),
            ..crate::probe::Options::new(&url)
        };
        let text = match crate::probe::run(&options, &crate::probe::Progress::default()).await {
            Ok(report) => report.render_text(),
            Err(e) => format!("probe could not run: {e}\n"),
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "\n# callgate probe {url} --n 3 --timeout 1s\n{}", text.trim_end());
        let _ = stdout.flush();
    }
}

/// The banner and one curl line per decision, for a server on `public`.
pub fn instructions(public: SocketAddr, admin: SocketAddr) -> String {
    let mut out = format!(
        "callgate demo: listening on http://{public} (admin http://{admin}); Ctrl-C stops it.\n\
         Each /twilio/voice command below is a Twilio inbound-call webhook; the decision is logged on stderr.\n"
    );
    for (i, (decision, to, from, what)) in CASES.iter().enumerate() {
        out.push_str(&format!("\n# {decision}: {what}\n"));
        if i == 0 {
            // The seed's transfer with context: pushed on the admin API, taken by the call.
            out.push_str(&format!(
                "curl -s http://{admin}/v1/context -H 'Authorization: Bearer {DEMO_KEY}' \
                 -H 'Content-Type: application/json' -d '{PUSH}'\n"
            ));
        }
        out.push_str(&format!(
            "curl -s http://{public}/twilio/voice -d Direction=inbound -d CallStatus=ringing \
             -d CallSid=CA{:032x} --data-urlencode From={from} --data-urlencode To={to}\n",
            i + 1
        ));
    }
    let auth = format!("-H 'Authorization: Bearer {DEMO_KEY}'");
    out.push_str(&format!(
        "\n# the decision record of the enriched call above: why it was decided as it was\n\
         curl -s {auth} http://{admin}/v1/calls/CA{:032x}\n\
         \n# a test call: decided through the real gate, nothing forwarded, kept or counted\n\
         curl -s {auth} -H 'content-type: application/json' -d '{{\"to\":\"+15005550002\"}}' http://{admin}/v1/test-call\n",
        2
    ));
    out.push_str(&format!(
        "\n# metrics\ncurl -s http://{admin}/metrics | grep ^callgate_inbound_calls_total\n"
    ));
    out
}

fn write_routes(gates: SocketAddr, dead: SocketAddr) -> Result<PathBuf, DemoError> {
    let dir = std::env::temp_dir().join(format!("callgate-demo-{}", std::process::id()));
    let path = dir.join("routes.json");
    let routes = serde_json::json!({
        "agents": {
            "agent_demo": { "gate": { "url": format!("http://{gates}/accept") } },
            "agent_nogate": {}
        },
        "numbers": {
            "+15005550001": { "agent_id": "agent_demo" },
            "+15005550002": { "agent_id": "agent_demo", "gate": { "url": format!("http://{gates}/reject") } },
            "+15005550003": { "gate": { "url": format!("http://{gates}/slow"), "timeout_ms": 1000 } },
            "+15005550004": { "gate": { "url": format!("http://{dead}/precall") } },
            "+15005550005": { "gate": { "url": format!("http://{dead}/precall"), "on_failure": "reject" } },
            "+15005550006": { "agent_id": "agent_demo", "gate": { "url": format!("http://{gates}/enrich") } },
            "+15005550009": { "agent_id": "agent_nogate" },
            "+15005550007": { "gate": { "check_set": "screening" } },
            "+15005550008": { "gate": { "checks": [
                { "type": "schedule", "name": "Opening hours", "timezone": "Europe/London", "open": [] }
            ] } }
        },
        "check_sets": {
            "screening": [
                { "type": "caller_list", "name": "Blocklist", "deny": [BLOCKED, "+4487*"] },
                { "type": "external_api", "name": "DND Check",
                  "http_request": { "url": format!("http://{gates}/dnd?phone={{customer_mobile_number}}"), "timeout": 2 },
                  "response_config": { "response_field": "blocked", "response_field_value": false } }
            ]
        }
    });
    let text = serde_json::to_string_pretty(&routes).expect("a JSON value serialises");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|e| DemoError::Routes(path.display().to_string(), e))?;
    Ok(path)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr).await.map_err(|e| DemoError::Bind(addr.to_string(), e))
}

/// The demo voice engine: answers every request with TwiML naming callgate's decision, the
/// agent and the decoded `X-Callgate-Context`.
async fn demo_engine(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let decision = header("x-callgate-decision").unwrap_or_else(|| "none".into());
    let mut said = format!("callgate decision: {decision}.");
    if let Some(agent) = header("x-callgate-agent-id") {
        said.push_str(&format!(" Agent: {agent}."));
    }
    if let Some(context) = header("x-callgate-context") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(context).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        let escaped = quick_xml::escape::escape(text.as_ref());
        said.push_str(&format!(" Context: {escaped}."));
    }
    said.push_str(&pushed_context(request.headers()));
    let twiml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Connected by the demo voice engine. \
         {said}</Say></Response>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(twiml)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

/// The pushed caller context in `X-Callgate-Context`, as the demo engine says it: ` Caller
/// context: name=value, ...` (XML-escaped), or nothing.
fn pushed_context(headers: &http::HeaderMap) -> String {
    use base64::Engine as _;
    let Some(header) = headers.get("x-callgate-context").and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return String::new();
    };
    let Ok(serde_json::Value::Object(carried)) = serde_json::from_slice(&json) else { return String::new() };
    let Some(serde_json::Value::Object(context)) = carried.get("context") else { return String::new() };
    let fields: Vec<String> = context
        .iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => format!("{name}={s}"),
            other => format!("{name}={other}"),
        })
        .collect();
    format!(" Caller context: {}.", quick_xml::escape::escape(fields.join(", ")))
}

/// The demo gates: `/accept`, `/reject`, `/enrich`, `/slow` (answers accept after 3 s), and
/// `/dnd`, a DND API that finds nobody blocked.
async fn demo_gate(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body: &'static str = match request.uri().path() {
        "/dnd" => r#"{"blocked":false}"#,
        "/reject" => r#"{"action":"reject","reason":"demo: out of credit"}"#,
        "/enrich" => {
            r#"{"call_inbound":{"override_agent_id":"agent_vip","dynamic_variables":{"customer_name":"Ada","tier":3},"metadata":{"crm_id":"C-1042"}}}"#
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            r#"{"action":"accept"}"#
        }
        _ => r#"{"action":"accept"}"#,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn serve_forever<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service = service_fn(move |r| {
                let response = handler(r);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
