//! Process settings: the command line (clap, every flag with an environment fallback) and the
//! validated [`Settings`] the server runs with. Everything is checked once, at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::uri::{Authority, Scheme};
use sha2::{Digest, Sha256};

/// `callgate`: a pre-call gate for Twilio voice webhooks.
#[derive(Debug, Parser)]
#[command(name = "callgate", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a routes file: exit 0, or 1 with one line per problem.
    Check(CheckArgs),
    /// Serve the real thing on loopback with a demo voice engine and demo gates.
    Demo(DemoArgs),
    /// Grade a gate before it carries calls: exit 0 for pass or warn, 1 for fail.
    Probe(ProbeArgs),
    /// The shared store (SPEC §15): `callgate store import`.
    Store(StoreArgs),
}

/// `callgate store ...`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a routes file into the shared store: validated as at start-up; exit 0, or 1 with
    /// one line per problem and nothing written.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Routes file to load into the store.
    #[arg(long, env = "CALLGATE_ROUTES", default_value = "routes.json")]
    pub routes: PathBuf,
    /// redis://[:password@]host[:port][/db]
    #[arg(long, env = "CALLGATE_STORE", hide_env_values = true, value_parser = parse_store)]
    pub store: Store,
    /// Key prefix in Redis.
    #[arg(long, env = "CALLGATE_STORE_PREFIX", default_value = "callgate:")]
    pub store_prefix: String,
    /// Accept http:// gate URLs (validated as the replicas that serve the table are started).
    #[arg(long, env = "CALLGATE_ALLOW_INSECURE_GATES", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_gates: bool,
}

/// `callgate probe URL`: see SPEC §16. Flags shared with serving read the same variables.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The gate URL (https://, or http:// with a warning).
    pub url: String,
    /// Sign requests as --gate-signing-secret does, and check that the gate refuses unsigned ones.
    #[arg(long, env = "CALLGATE_GATE_SIGNING_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub secret: Option<Secret>,
    /// Header carrying the signature.
    #[arg(long, env = "CALLGATE_GATE_SIGNATURE_HEADER", default_value = "X-Callgate-Signature", value_parser = parse_header_name)]
    pub header: http::HeaderName,
    /// Requests whose answers and latencies are graded.
    #[arg(long, env = "CALLGATE_PROBE_N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub n: u32,
    /// The gate deadline to grade against.
    #[arg(long, env = "CALLGATE_GATE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The dialled number sent to the gate.
    #[arg(long, env = "CALLGATE_PROBE_TO", default_value = "+15005550006", value_parser = parse_e164)]
    pub to: String,
    /// The caller's number sent to the gate.
    #[arg(long, env = "CALLGATE_PROBE_FROM", default_value = "+14155550100", value_parser = parse_e164)]
    pub from: String,
    /// Extra roots for the gate's TLS (private CAs), beside the bundled public roots.
    #[arg(long, env = "CALLGATE_GATE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long, env = "CALLGATE_PROBE_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

fn parse_e164(s: &str) -> Result<String, String> {
    if !crate::routes::is_e164(s) {
        return Err("write an E.164 number: + then 2 to 15 digits".into());
    }
    Ok(s.to_owned())
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Routes file to validate.
    #[arg(long, env = "CALLGATE_ROUTES", default_value = "routes.json")]
    pub routes: PathBuf,
    /// Accept http:// gate URLs.
    #[arg(long, env = "CALLGATE_ALLOW_INSECURE_GATES", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_gates: bool,
    /// Gate timeout for gates without their own timeout_ms.
    #[arg(long, env = "CALLGATE_GATE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub gate_timeout: Duration,
    /// Engine timeout, added to each gate's timeout for the 15 s warning.
    #[arg(long, env = "CALLGATE_UPSTREAM_TIMEOUT", default_value = "9s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Credentials file: each credential_id the routes name must be in it.
    #[arg(long, env = "CALLGATE_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// The Twilio deadline, for the context-wait warning.
    #[arg(long, env = "CALLGATE_TWILIO_DEADLINE", default_value = "14s", value_parser = parse_duration)]
    pub twilio_deadline: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Twilio-facing listener.
    #[arg(long, env = "CALLGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener.
    #[arg(long, env = "CALLGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Log line format.
    #[arg(long, env = "CALLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The flags of `callgate` itself (serving). See SPEC §2.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Twilio-facing listener.
    #[arg(long, env = "CALLGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin API, metrics and probes.
    #[arg(long, env = "CALLGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Voice engine: scheme://host[:port][/prefix].
    #[arg(long, env = "CALLGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Routing table file, hot-reloaded.
    #[arg(long, env = "CALLGATE_ROUTES", default_value = "routes.json")]
    pub routes: PathBuf,
    /// Paths whose inbound-call webhooks are gated.
    #[arg(
        long = "voice-path",
        env = "CALLGATE_VOICE_PATHS",
        value_delimiter = ',',
        default_value = "/twilio/voice",
        value_parser = parse_list_item
    )]
    pub voice_paths: Vec<String>,
    /// Whole gate exchange: connect, TLS, request, response.
    #[arg(long, env = "CALLGATE_GATE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub gate_timeout: Duration,
    /// Until the engine's response head.
    #[arg(long, env = "CALLGATE_UPSTREAM_TIMEOUT", default_value = "9s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Requests that may wait on one gate at once; beyond it a call fails open with `overload`.
    #[arg(long, env = "CALLGATE_GATE_MAX_PENDING", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub gate_max_pending: u32,
    /// Accept http:// gate URLs (local gates, tests).
    #[arg(long, env = "CALLGATE_ALLOW_INSECURE_GATES", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_gates: bool,
    /// Serve cleartext HTTP/2 with prior knowledge on --listen (without TLS, HTTP/1.1 only).
    #[arg(long, env = "CALLGATE_ALLOW_H2C", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_h2c: bool,
    /// To receive a request head (and a TLS handshake).
    #[arg(long, env = "CALLGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Keep-alive connections idle longer are closed.
    #[arg(long, env = "CALLGATE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Open client connections; beyond it, accepting pauses. The default fits the shipped
    /// Deployment's memory limit (README "Security": ~93 KiB per slow 64 KiB voice request).
    #[arg(long, env = "CALLGATE_MAX_CONNECTIONS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Threads serving calls (default: the CPUs callgate may use, by its cgroup limit).
    #[arg(long, env = "CALLGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Log line format on stderr; RUST_LOG filters.
    #[arg(long, env = "CALLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Drain time after SIGTERM.
    #[arg(long, env = "CALLGATE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Further paths signature-checked but not gated (status callbacks, action URLs).
    #[arg(long = "signed-path", env = "CALLGATE_SIGNED_PATHS", value_delimiter = ',', value_parser = parse_list_item)]
    pub signed_paths: Vec<String>,
    /// Twilio auth tokens that may have signed a request (several while rotating).
    #[arg(long = "twilio-auth-token", env = "CALLGATE_TWILIO_AUTH_TOKENS", hide_env_values = true, value_delimiter = ',', value_parser = parse_secret)]
    pub twilio_auth_tokens: Vec<Secret>,
    /// Twilio SharedKey secrets, ID=SECRET.
    #[arg(long = "twilio-shared-key", env = "CALLGATE_TWILIO_SHARED_KEYS", hide_env_values = true, value_delimiter = ',', value_parser = parse_shared_key)]
    pub twilio_shared_keys: Vec<SharedKey>,
    /// enforce, report (count and log, let through) or off; default enforce with a token or key.
    #[arg(long, env = "CALLGATE_TWILIO_SIGNATURE", value_enum)]
    pub twilio_signature: Option<SignatureMode>,
    /// scheme://host[:port] that Twilio uses to reach callgate.
    #[arg(long, env = "CALLGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Sign every gate POST with this secret.
    #[arg(long, env = "CALLGATE_GATE_SIGNING_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub gate_signing_secret: Option<Secret>,
    /// Header carrying the gate request signature.
    #[arg(long, env = "CALLGATE_GATE_SIGNATURE_HEADER", default_value = "X-Callgate-Signature", value_parser = parse_header_name)]
    pub gate_signature_header: http::HeaderName,
    /// Extra roots for gate TLS (private CAs), beside the bundled public roots.
    #[arg(long, env = "CALLGATE_GATE_CA_FILE")]
    pub gate_ca_file: Option<PathBuf>,
    /// Serve HTTPS on --listen with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "CALLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, env = "CALLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Keys for the admin API, ID:SECRET; with none, the admin API answers 401.
    #[arg(long = "api-key", env = "CALLGATE_API_KEYS", hide_env_values = true, value_delimiter = ',', value_parser = parse_api_key)]
    pub api_keys: Vec<ApiKey>,
    /// Every gated webhook is answered within it; the engine's timeout is cut to what the gate left.
    #[arg(long, env = "CALLGATE_TWILIO_DEADLINE", default_value = "14s", value_parser = parse_duration)]
    pub twilio_deadline: Duration,
    /// Recent decisions kept for GET /v1/calls/{call_sid}.
    #[arg(long, env = "CALLGATE_DECISION_LOG_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(..=10_000_000))]
    pub decision_log_size: u32,
    /// Secrets for check placeholders, {"cred_id": {"key": "secret"}}; hot-reloaded.
    #[arg(long, env = "CALLGATE_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// Where decision events go (reject, fail_closed, fail_open); https://, or http:// with
    /// --allow-insecure-gates.
    #[arg(long, env = "CALLGATE_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Signs every decision event (X-Callgate-Signature); required with --events-url.
    #[arg(long, env = "CALLGATE_EVENTS_SIGNING_SECRET", value_parser = parse_secret)]
    pub events_signing_secret: Option<Secret>,
    /// Delays before each retry of an undelivered event, comma-separated.
    #[arg(
        long,
        env = "CALLGATE_EVENTS_RETRY_SCHEDULE",
        value_delimiter = ',',
        default_value = "1m,5m,30m,2h,12h",
        value_parser = parse_duration
    )]
    pub events_retry_schedule: Vec<Duration>,
    /// Events the outbox holds at most; past it the oldest is given up.
    #[arg(long, env = "CALLGATE_EVENTS_MAX_PENDING", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub events_max_pending: u32,
    /// Durable local state: the events outbox.
    #[arg(long, env = "CALLGATE_STATE_DIR", default_value = "callgate-state")]
    pub state_dir: PathBuf,
    /// A CallSid seen again within it gets the same decision without a second gate request; 0 turns it off.
    #[arg(long, env = "CALLGATE_DEDUP_WINDOW", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub dedup_window: Duration,
    /// Consecutive timeout, connect or 5xx failures of one gate origin that open its circuit; 0 turns it off.
    #[arg(long, env = "CALLGATE_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(..=1_000_000))]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one call probes it.
    #[arg(long, env = "CALLGATE_BREAKER_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// How long pushed caller context waits for its call.
    #[arg(long, env = "CALLGATE_CONTEXT_TTL", default_value = "5m", value_parser = parse_duration)]
    pub context_ttl: Duration,
    /// Pushed contexts held at once; beyond it the oldest go first.
    #[arg(long, env = "CALLGATE_CONTEXT_MAX_ENTRIES", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub context_max_entries: u32,
    /// Where the table lives: file (the routes file) or redis://[:password@]host[:port][/db].
    #[arg(long, env = "CALLGATE_STORE", hide_env_values = true, default_value = "file", value_parser = parse_store)]
    pub store: Store,
    /// Key prefix in Redis, so several deployments can share one.
    #[arg(long, env = "CALLGATE_STORE_PREFIX", default_value = "callgate:")]
    pub store_prefix: String,
}

/// Where the routing table lives (`--store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// The routes file: one replica writes.
    File,
    /// A shared Redis (SPEC §15).
    Redis(RedisUrl),
}

/// A `redis://` URL; `Debug` and [`RedisUrl::shown`] leave out the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: String,
    shown: String,
}

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `redis://host:port/db`, without the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `file`, or `redis://[:password@]host[:port][/db]`. The value is never echoed: it may hold
/// the password.
pub fn parse_store(s: &str) -> Result<Store, String> {
    let s = s.trim();
    if s == "file" {
        return Ok(Store::File);
    }
    const SHAPE: &str = "write file or redis://[:password@]host[:port][/db]";
    if !s.starts_with("redis://") {
        return Err(SHAPE.into());
    }
    let url = url::Url::parse(s).map_err(|_| SHAPE.to_owned())?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| SHAPE.to_owned())?;
    let db = url.path().trim_start_matches('/');
    if url.query().is_some() || url.fragment().is_some() || !(db.is_empty() || db.parse::<u16>().is_ok()) {
        return Err(SHAPE.into());
    }
    let port = url.port().unwrap_or(6379);
    let shown = format!("redis://{host}:{port}/{}", if db.is_empty() { "0" } else { db });
    Ok(Store::Redis(RedisUrl { url: s.to_owned(), shown }))
}

/// What callgate does with a request whose `X-Twilio-Signature` does not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignatureMode {
    /// Answer 403; the request goes nowhere.
    Enforce,
    /// Count and log it, and let it through.
    Report,
    /// Do not check.
    Off,
}

impl SignatureMode {
    pub const ALL: [SignatureMode; 3] = [SignatureMode::Enforce, SignatureMode::Report, SignatureMode::Off];

    /// The flag's spelling, and the `mode` label of `callgate_twilio_signature_mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMode::Enforce => "enforce",
            SignatureMode::Report => "report",
            SignatureMode::Off => "off",
        }
    }
}

/// A secret from the command line or environment; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A Twilio SharedKey: the id Twilio names in `X-Twilio-Webhooks-Signature-Settings`, and its
/// secret.
#[derive(Clone, Debug)]
pub struct SharedKey {
    pub id: String,
    pub secret: Secret,
}

/// Flags whose value is, or holds, a secret: a bad value of one is never echoed.
const SECRET_FLAGS: [&str; 5] =
    ["--twilio-auth-token", "--twilio-shared-key", "--api-key", "--gate-signing-secret", "--store"];

/// A command-line error as one line, with nothing that may be a secret: clap quotes the bad
/// value, and the value of a secret flag is the secret (or a mistyped one, nearly the secret);
/// a stray argument may be half of a secret list split at an unquoted space.
pub fn error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.as_str(),
        _ => "",
    };
    let flag = arg.split([' ', '=']).next().unwrap_or("");
    let bad_value = matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue);
    if bad_value && SECRET_FLAGS.contains(&flag) {
        let why = std::error::Error::source(e).map(|why| format!(": {why}")).unwrap_or_default();
        return format!("error: invalid value for '{arg}' (not shown: it holds a secret){why}");
    }
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or("invalid arguments");
    if bad_value {
        return line.to_owned();
    }
    // Every quoted word that is not a flag (a stray argument) is left out; a flag is cut at `=`.
    line.split('\'')
        .enumerate()
        .map(|(i, part)| match i % 2 {
            0 => part.to_owned(),
            _ if part.starts_with('-') => format!("'{}'", part.split('=').next().unwrap_or(part)),
            _ => "'...'".to_owned(),
        })
        .collect()
}

/// A list item as written, without the spaces around it (`old, new`).
fn parse_list_item(s: &str) -> Result<String, String> {
    Ok(s.trim().to_owned())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Secret::new(s))
}

fn parse_shared_key(s: &str) -> Result<SharedKey, String> {
    match s.split_once('=').map(|(id, secret)| (id.trim(), secret.trim())) {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(SharedKey { id: id.into(), secret: Secret::new(secret) })
        }
        _ => Err("write ID=SECRET".into()),
    }
}

fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::try_from(s).map_err(|_| "not a valid header name".into())
}

/// One key for the admin API: `Authorization: Bearer ID:SECRET`. `Debug` masks the secret.
#[derive(Clone)]
pub struct ApiKey {
    pub id: String,
    /// SHA-256 of the secret: only digests are compared, so the time a compare takes says
    /// nothing about the secret's length (comparing the bytes stops at a length mismatch).
    digest: [u8; 32],
}

impl ApiKey {
    pub fn new(id: impl Into<String>, secret: impl AsRef<[u8]>) -> ApiKey {
        ApiKey { id: id.into(), digest: Sha256::digest(secret.as_ref()).into() }
    }

    /// Whether `secret` is this key's, in time that depends only on `secret`'s own length.
    pub fn matches(&self, secret: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(secret).into();
        bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &self.digest[..]))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:***", self.id)
    }
}

fn parse_api_key(s: &str) -> Result<ApiKey, String> {
    match s.split_once(':').map(|(id, secret)| (id.trim(), secret.trim())) {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => Ok(ApiKey::new(id, secret)),
        _ => Err("write ID:SECRET".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration where `0` means off.
fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (write a duration such as 60s, or 0 for off)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (write a duration such as 5s or 500ms)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Where the voice engine lives: requests go to `scheme://authority` + `prefix` + path and query.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, SettingsError> {
        let bad = |why: &str| SettingsError::Upstream(format!("{s:?}: {why}"));
        let uri: http::Uri = s.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("needs http://"))?;
        if scheme != Scheme::HTTP {
            return Err(bad("only http:// engines are supported (the engine is a local sidecar)"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed; give scheme://host[:port][/prefix]"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream { scheme, authority, prefix })
    }
}

/// Validated settings for serving.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    pub routes: PathBuf,
    pub voice_paths: Vec<String>,
    pub gate_timeout: Duration,
    pub upstream_timeout: Duration,
    pub gate_max_pending: u32,
    pub allow_insecure_gates: bool,
    /// Cleartext HTTP/2 with prior knowledge on the listeners (`--allow-h2c`).
    pub allow_h2c: bool,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// Call workers: `--worker-threads`, else one per CPU callgate may use.
    pub workers: usize,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub api_keys: Vec<ApiKey>,
    pub signed_paths: Vec<String>,
    pub twilio_auth_tokens: Vec<Secret>,
    pub twilio_shared_keys: Vec<SharedKey>,
    pub twilio_signature: SignatureMode,
    /// `scheme://host[:port]`, without a trailing slash.
    pub public_url: Option<String>,
    pub gate_signing_secret: Option<Secret>,
    pub gate_signature_header: http::HeaderName,
    pub gate_ca_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub twilio_deadline: Duration,
    pub decision_log_size: usize,
    pub credentials: Option<PathBuf>,
    /// `--events-url`; with it, `events_signing_secret` is set.
    pub events_url: Option<EventsUrl>,
    pub events_signing_secret: Option<Secret>,
    pub events_retry_schedule: Vec<Duration>,
    pub events_max_pending: u32,
    /// How long one event delivery attempt may take: 10 s (SPEC §14). Not a flag; tests
    /// shorten it.
    pub events_attempt_timeout: Duration,
    pub state_dir: PathBuf,
    /// Zero: off.
    pub dedup_window: Duration,
    /// Zero: off.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub context_ttl: Duration,
    pub context_max_entries: usize,
    /// `--store`: the routes file, or a shared Redis.
    pub store: Store,
    pub store_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--upstream (CALLGATE_UPSTREAM) is required to serve, e.g. --upstream http://127.0.0.1:3000")]
    MissingUpstream,
    #[error("invalid --upstream {0}")]
    Upstream(String),
    #[error("invalid path {0:?}: a path starts with / and has no query")]
    Path(String),
    #[error("--twilio-signature enforce needs --twilio-auth-token or --twilio-shared-key")]
    EnforceWithoutKeys,
    #[error("--tls-cert and --tls-key go together")]
    TlsPair,
    #[error("invalid --public-url {0:?}: write scheme://host[:port] (http or https, no path)")]
    PublicUrl(String),
    // The URL is not repeated: its query may hold a token.
    #[error(
        "invalid --events-url: write https://host[:port]/path (http:// only with --allow-insecure-gates)"
    )]
    EventsUrl,
    #[error("--events-url needs --events-signing-secret (CALLGATE_EVENTS_SIGNING_SECRET)")]
    EventsWithoutSecret,
}

impl Settings {
    /// One line for stderr at start-up when signatures are not fully in force: off, only
    /// reported, or enforced against a URL rebuilt from request headers.
    pub fn signature_warning(&self) -> Option<&'static str> {
        match (self.twilio_signature, &self.public_url) {
            (SignatureMode::Off, _) => Some(
                "--twilio-signature off: X-Twilio-Signature is not checked, so anyone who finds the voice URL \
                 can place gated calls and reach the engine; set CALLGATE_TWILIO_AUTH_TOKENS",
            ),
            (SignatureMode::Report, _) => Some(
                "--twilio-signature report: requests with a bad X-Twilio-Signature are counted and logged but \
                 let through; switch to enforce once callgate_twilio_signature_failures_total stays at 0",
            ),
            (SignatureMode::Enforce, None) => Some(
                "--twilio-signature enforce without --public-url: the signed URL is rebuilt from the Host and \
                 X-Forwarded-* headers; set --public-url to the scheme://host[:port] configured in Twilio",
            ),
            (SignatureMode::Enforce, Some(_)) => None,
        }
    }

    /// How routes are validated under these settings.
    pub fn validate_options(&self) -> crate::routes::ValidateOptions {
        crate::routes::ValidateOptions { allow_insecure_gates: self.allow_insecure_gates }
    }

    pub fn from_args(args: ServeArgs) -> Result<Settings, SettingsError> {
        let upstream = args.upstream.as_deref().ok_or(SettingsError::MissingUpstream)?;
        let upstream = Upstream::parse(upstream)?;
        for p in args.voice_paths.iter().chain(&args.signed_paths) {
            if !p.starts_with('/') || p.contains('?') || p.contains('#') {
                return Err(SettingsError::Path(p.clone()));
            }
        }
        let has_keys = !args.twilio_auth_tokens.is_empty() || !args.twilio_shared_keys.is_empty();
        let twilio_signature = match args.twilio_signature {
            Some(SignatureMode::Enforce) if !has_keys => return Err(SettingsError::EnforceWithoutKeys),
            Some(mode) => mode,
            None if has_keys => SignatureMode::Enforce,
            None => SignatureMode::Off,
        };
        if args.tls_cert.is_some() != args.tls_key.is_some() {
            return Err(SettingsError::TlsPair);
        }
        let public_url = args.public_url.map(|u| check_public_url(&u)).transpose()?;
        let events_url =
            args.events_url.map(|u| check_events_url(&u, args.allow_insecure_gates)).transpose()?;
        if events_url.is_some() && args.events_signing_secret.is_none() {
            return Err(SettingsError::EventsWithoutSecret);
        }
        Ok(Settings {
            listen: args.listen,
            admin_listen: args.admin_listen,
            upstream,
            routes: args.routes,
            voice_paths: args.voice_paths,
            gate_timeout: args.gate_timeout,
            upstream_timeout: args.upstream_timeout,
            gate_max_pending: args.gate_max_pending,
            allow_insecure_gates: args.allow_insecure_gates,
            allow_h2c: args.allow_h2c,
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
            // Resolved here, so the start-up line shows the count in force.
            workers: args.worker_threads.map_or_else(crate::workers::default_count, usize::from),
            log_format: args.log_format,
            shutdown_grace: args.shutdown_grace,
            api_keys: args.api_keys,
            signed_paths: args.signed_paths,
            twilio_auth_tokens: args.twilio_auth_tokens,
            twilio_shared_keys: args.twilio_shared_keys,
            twilio_signature,
            public_url,
            gate_signing_secret: args.gate_signing_secret,
            gate_signature_header: args.gate_signature_header,
            gate_ca_file: args.gate_ca_file,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            twilio_deadline: args.twilio_deadline,
            decision_log_size: args.decision_log_size as usize,
            credentials: args.credentials,
            events_url,
            events_signing_secret: args.events_signing_secret,
            events_retry_schedule: args.events_retry_schedule,
            events_max_pending: args.events_max_pending,
            events_attempt_timeout: Duration::from_secs(10),
            state_dir: args.state_dir,
            dedup_window: args.dedup_window,
            breaker_failures: args.breaker_failures,
            breaker_cooldown: args.breaker_cooldown,
            context_ttl: args.context_ttl,
            context_max_entries: args.context_max_entries as usize,
            store: args.store,
            store_prefix: args.store_prefix,
        })
    }

    /// Settings for tests and the demo: defaults, both listeners on loopback port 0, and
    /// http:// gates allowed.
    pub fn local(upstream: &str, routes: PathBuf) -> Result<Settings, SettingsError> {
        let args = ServeArgs::parse_from_defaults();
        // Serving secrets, TLS and checks from the environment never reach a local server.
        let mut s = Settings::from_args(ServeArgs {
            upstream: Some(upstream.to_owned()),
            routes,
            twilio_auth_tokens: Vec::new(),
            twilio_shared_keys: Vec::new(),
            twilio_signature: Some(SignatureMode::Off),
            public_url: None,
            gate_signing_secret: None,
            tls_cert: None,
            tls_key: None,
            signed_paths: Vec::new(),
            credentials: None,
            events_url: None,
            events_signing_secret: None,
            ..args
        })?;
        s.listen = ([127, 0, 0, 1], 0).into();
        s.admin_listen = ([127, 0, 0, 1], 0).into();
        s.allow_insecure_gates = true;
        Ok(s)
    }
}

/// `scheme://host[:port]`: http or https, a host, nothing else.
fn check_public_url(s: &str) -> Result<String, SettingsError> {
    let bad = || SettingsError::PublicUrl(s.to_owned());
    let uri: http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = matches!(uri.path(), "" | "/");
    if !scheme_ok || uri.authority().is_none() || !path_ok || uri.query().is_some() || s.contains('@') {
        return Err(bad());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// The events receiver's URL; `Debug` shows scheme, host and path only (a query may hold a token).
#[derive(Clone)]
pub struct EventsUrl(pub http::Uri);

impl std::fmt::Debug for EventsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = &self.0;
        // User info is refused at start-up, so the authority is host and port.
        let authority = u.authority().map_or("", |a| a.as_str());
        write!(f, "{}://{}{}", u.scheme_str().unwrap_or(""), authority, u.path())
    }
}

/// An events receiver: `https://` (or `http://` when insecure URLs are allowed) with a host.
fn check_events_url(s: &str, allow_insecure: bool) -> Result<EventsUrl, SettingsError> {
    let uri: http::Uri = s.parse().map_err(|_| SettingsError::EventsUrl)?;
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => allow_insecure,
        _ => false,
    };
    let host_ok = uri.authority().is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
    if !scheme_ok || !host_ok {
        return Err(SettingsError::EventsUrl);
    }
    Ok(EventsUrl(uri))
}

impl ServeArgs {
    /// Every flag at its default, or its environment variable where one is set.
    fn parse_from_defaults() -> ServeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Only::parse_from(["callgate"]).serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The median time of `runs` calls of `f`.
    fn median(runs: usize, mut f: impl FnMut()) -> std::time::Duration {
        let mut times: Vec<_> = (0..runs)
            .map(|_| {
                let start = std::time::Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        times.sort();
        times[runs / 2]
    }

    #[test]
    fn list_values_are_trimmed() {
        let cli = Cli::try_parse_from([
            "callgate",
            "--upstream",
            "http://e",
            "--twilio-auth-token",
            "old, new",
            "--twilio-shared-key",
            "k1=s1 , k2= s2",
            "--api-key",
            "a:x,\tb:y",
            "--signed-path",
            "/status, /action",
            "--voice-path",
            " /voice",
        ])
        .unwrap();
        let s = Settings::from_args(cli.serve).unwrap();
        assert_eq!(s.twilio_auth_tokens.iter().map(Secret::expose).collect::<Vec<_>>(), ["old", "new"]);
        let shared: Vec<_> = s.twilio_shared_keys.iter().map(|k| (&*k.id, k.secret.expose())).collect();
        assert_eq!(shared, [("k1", "s1"), ("k2", "s2")]);
        assert_eq!(s.api_keys.iter().map(|k| &*k.id).collect::<Vec<_>>(), ["a", "b"]);
        assert!(s.api_keys[0].matches(b"x") && s.api_keys[1].matches(b"y"));
        assert_eq!(s.signed_paths, ["/status", "/action"]);
        assert_eq!(s.voice_paths, ["/voice"]);
    }

    #[test]
    fn an_api_key_compare_takes_as_long_whatever_the_secrets_length() {
        const LEN: usize = 1 << 20;
        let key = ApiKey::new("kid", vec![b'a'; LEN]);
        assert!(key.matches(&vec![b'a'; LEN]));
        assert!(!key.matches(&vec![b'a'; LEN + 1]) && !key.matches(b"a") && !key.matches(b""));
        // A guess of the secret's length and one a byte longer cost the same: a compare that
        // stops at a length mismatch answers the second a thousand times sooner.
        let same = vec![b'b'; LEN];
        let longer = vec![b'b'; LEN + 1];
        let (a, b) =
            (median(9, || assert!(!key.matches(&same))), median(9, || assert!(!key.matches(&longer))));
        let ratio = a.max(b).as_secs_f64() / a.min(b).as_secs_f64().max(1e-9);
        assert!(ratio < 4.0, "same length {a:?}, one longer {b:?}");
    }
}
