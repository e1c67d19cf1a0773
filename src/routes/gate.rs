//! A validated gate: its URL (parsed once, shown without secrets), deadline and failure
//! policy, and the checks a gate URL and timeout must pass wherever they come from.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Options that change what a routes file (or an admin write) may contain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Accept `http://` gate URLs as well as `https://` (`--allow-insecure-gates`).
    pub allow_insecure_gates: bool,
}

/// What a call gets when its gate gives no answer (timeout, connect error, bad reply...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail open: the call connects. The default.
    #[default]
    Accept,
    /// Fail closed: the call is rejected with a busy tone (compliance gates).
    Reject,
}

impl OnFailure {
    /// The routes-file spelling: `"accept"` or `"reject"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Accept => "accept",
            OnFailure::Reject => "reject",
        }
    }
}

impl FromStr for OnFailure {
    type Err = GateError;

    /// Exactly `accept` or `reject` (case matters, as everywhere in the file).
    fn from_str(s: &str) -> Result<OnFailure, GateError> {
        match s {
            "accept" => Ok(OnFailure::Accept),
            "reject" => Ok(OnFailure::Reject),
            _ => Err(GateError::InvalidOnFailure),
        }
    }
}

/// Whether a gate's decision is enforced or only observed (SPEC §3 `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The gate's decision stands. The default.
    #[default]
    Enforce,
    /// The gate is asked and its decision recorded, but the call is always forwarded
    /// (`shadow_reject` where it would have been blocked) and its enrichment is not forwarded.
    Shadow,
}

impl Mode {
    /// The routes-file spelling: `"enforce"` or `"shadow"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

impl FromStr for Mode {
    type Err = GateError;

    /// Exactly `enforce` or `shadow`.
    fn from_str(s: &str) -> Result<Mode, GateError> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "shadow" => Ok(Mode::Shadow),
            _ => Err(GateError::InvalidMode),
        }
    }
}

/// The `timeout_ms` a gate may carry.
pub const GATE_TIMEOUT_MS: RangeInclusive<u32> = 100..=30_000;

/// A validated gate: an `https://` URL with a host (or `http://` when insecure gates are
/// allowed), parsed once at load, with its optional timeout and failure policy.
///
/// The URL may hold secrets (a `?token=` query, `user:password@`), so `Debug` and `Display`
/// print only [`Gate::display`]. `Serialize` writes the routes-file form, secrets included.
#[derive(Clone)]
pub struct Gate {
    // Visible to the rest of `routes`, whose file parser builds gates field by field.
    pub(super) url: Box<str>,
    pub(super) uri: http::Uri,
    pub(super) display: Arc<str>,
    pub(super) timeout_ms: Option<u32>,
    pub(super) on_failure: OnFailure,
    pub(super) mode: Mode,
    /// `scheme://host:port` (the port always written): the circuit breaker's key, computed
    /// once here so that a call's lookup allocates nothing. Empty for a chain gate, which has
    /// no single origin.
    pub(super) origin: Arc<str>,
    /// A chain gate's checks (then `url` is empty and `display` names the chain).
    pub(super) chain: Option<Chain>,
}

/// What a chain gate runs: its own checks, or a named check set of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chain {
    Checks(Arc<[super::Check]>),
    Set(Arc<str>),
}

impl Gate {
    /// A chain gate (its checks already validated).
    pub fn chained(chain: Chain, timeout_ms: Option<u32>, on_failure: OnFailure, mode: Mode) -> Gate {
        let display = match &chain {
            Chain::Checks(_) => "checks".into(),
            Chain::Set(name) => format!("check_set {name}").into(),
        };
        Gate {
            url: "".into(),
            uri: http::Uri::default(),
            display,
            timeout_ms,
            on_failure,
            mode,
            origin: "".into(),
            chain: Some(chain),
        }
    }

    /// The chain, for a chain gate (`None` for a webhook gate).
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref()
    }

    /// Validates `url` and `timeout_ms` (see [`GATE_TIMEOUT_MS`]) into a gate; the first problem
    /// found is the error (`callgate probe` builds its one gate so).
    /// [`GateSpec::validate`](crate::routes::GateSpec::validate) reports every problem instead.
    pub fn new(
        url: &str,
        timeout_ms: Option<u32>,
        on_failure: OnFailure,
        opts: &ValidateOptions,
    ) -> Result<Gate, GateError> {
        let (uri, display, origin) = check_url(url, opts)?;
        let timeout_ms = timeout_ms.map(|ms| check_timeout(ms.into())).transpose()?;
        Ok(Gate {
            url: url.into(),
            uri,
            display,
            timeout_ms,
            on_failure,
            mode: Mode::Enforce,
            origin,
            chain: None,
        })
    }

    /// The URL exactly as configured (empty for a chain gate). May contain a secret query or
    /// userinfo: never log it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL parsed for sending: normalised, without fragment, userinfo kept if configured.
    /// Its `Debug` and `Display` print the query and userinfo: never log it.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// `scheme://host[:port]/path`: no userinfo, query or fragment. Safe for logs and errors.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The gate's own deadline, when it has one (else the process-wide `--gate-timeout`).
    pub fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `scheme://host:port` of the URL: gates that share it share a circuit. Holds no secret
    /// (no path, query or userinfo), but logs name the host only.
    pub fn origin(&self) -> &Arc<str> {
        &self.origin
    }
}

// `uri` and `display` are derived from `url`, so they need no comparing.
impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        self.url == other.url
            && self.timeout_ms == other.timeout_ms
            && self.on_failure == other.on_failure
            && self.chain == other.chain
            && self.mode == other.mode
    }
}

impl Eq for Gate {}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("url", &self.display)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_failure", &self.on_failure)
            .field("mode", &self.mode)
            .finish()
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Why a gate is invalid. Each message starts with the field it is about and never contains
/// the URL itself (its query or userinfo may be secret).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("url: not a valid URL ({0})")]
    InvalidUrl(url::ParseError),
    #[error("url: contains whitespace or control characters")]
    UrlWhitespace,
    #[error("url: {}", if *allow_insecure { "must be https:// or http://" } else { "must be https:// (or http:// with --allow-insecure-gates)" })]
    Scheme { allow_insecure: bool },
    #[error("url: has no host")]
    MissingHost,
    #[error("url: the host is not a DNS name or an IP address")]
    BadHost,
    #[error("url: write it as scheme://host/path, with forward slashes")]
    NotWrittenOut,
    #[error("url: user info (user:password@) is not sent to gates; put a token in the query instead")]
    UserInfo,
    #[error("url: not usable as a request URI ({0})")]
    InvalidUri(http::uri::InvalidUri),
    #[error("timeout_ms: must be 100 to 30000 (got {0})")]
    InvalidTimeout(u64),
    #[error("on_failure: must be \"accept\" or \"reject\"")]
    InvalidOnFailure,
    #[error("needs exactly one of `url`, `checks` or `check_set`")]
    Kind,
    /// A problem with a check, its path starting `checks`.
    #[error("{0}")]
    Check(String),
    #[error("check_set: {0}")]
    CheckSet(&'static str),
    #[error("mode: must be \"enforce\" or \"shadow\"")]
    InvalidMode,
}

impl GateError {
    /// The gate field at fault: `url`, `timeout_ms`, `on_failure` or `mode`.
    pub fn field(&self) -> &'static str {
        match self {
            GateError::InvalidUrl(_)
            | GateError::UserInfo
            | GateError::UrlWhitespace
            | GateError::Scheme { .. }
            | GateError::MissingHost
            | GateError::BadHost
            | GateError::NotWrittenOut
            | GateError::InvalidUri(_) => "url",
            GateError::InvalidTimeout(_) => "timeout_ms",
            GateError::InvalidOnFailure => "on_failure",
            GateError::Kind => "gate",
            GateError::Check(_) => "checks",
            GateError::CheckSet(_) => "check_set",
            GateError::InvalidMode => "mode",
        }
    }
}

/// Checks a gate URL; returns it parsed for sending, in its loggable form, and its origin.
pub(super) fn check_url(
    raw: &str,
    opts: &ValidateOptions,
) -> Result<(http::Uri, Arc<str>, Arc<str>), GateError> {
    // The url crate would quietly trim or drop these; a URL holding them is a typo.
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(GateError::UrlWhitespace);
    }
    let url = url::Url::parse(raw).map_err(GateError::InvalidUrl)?;
    match url.scheme() {
        "https" => {}
        "http" if opts.allow_insecure_gates => {}
        _ => return Err(GateError::Scheme { allow_insecure: opts.allow_insecure_gates }),
    }
    // The URL parser forgives `https:host`, `https:/host` and backslashes for slashes, as
    // browsers do; in a config file each is a typo, and what is stored is the text as written.
    let written_out =
        raw.split_once("://").is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(url.scheme()));
    if !written_out || raw.contains('\\') {
        return Err(GateError::NotWrittenOut);
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or(GateError::MissingHost)?;
    // The parser takes any host without a forbidden character (`api.example.com*`, `a!b`): one
    // that no resolver can find would fail every call open, so only DNS names (letters,
    // digits, `-`, `_`, after IDNA) and IP addresses are gates.
    if let Some(url::Host::Domain(name)) = url.host() {
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name.strip_suffix('.').unwrap_or(name).split('.').all(label_ok) {
            return Err(GateError::BadHost);
        }
    }
    // The HTTP client would drop credentials in the authority without a word, and the gate would
    // answer 401 to every call: refuse them here instead.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(GateError::UserInfo);
    }
    let display = match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    };
    // The normalised form is plain ASCII (IDNA, percent-encoding), which http::Uri accepts.
    let uri = http::Uri::try_from(&url[..url::Position::AfterQuery]).map_err(GateError::InvalidUri)?;
    let port = url.port_or_known_default().unwrap_or_default();
    let origin: Arc<str> = format!("{}://{host}:{port}", url.scheme()).into();
    Ok((uri, display.into(), origin))
}

pub(super) fn check_timeout(ms: u64) -> Result<u32, GateError> {
    u32::try_from(ms).ok().filter(|ms| GATE_TIMEOUT_MS.contains(ms)).ok_or(GateError::InvalidTimeout(ms))
}

#[cfg(test)]
mod url_tests {
    use super::*;

    const INSECURE: ValidateOptions = ValidateOptions { allow_insecure_gates: true };

    fn check(raw: &str) -> Result<(), String> {
        check_url(raw, &INSECURE).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Found by schemathesis: `http://0*` was taken as a gate, and GET /v1/routes then answered
    /// a URL no resolver can find (every call to it would fail open).
    #[test]
    fn a_host_that_is_no_dns_name_or_ip_is_refused() {
        for raw in [
            "http://0*",
            "https://api.example.com*/precall",
            "https://a!b/",
            "https://a..b/",
            "https://x%2A/",
        ] {
            assert_eq!(check(raw), Err("url: the host is not a DNS name or an IP address".into()), "{raw}");
        }
    }

    #[test]
    fn a_url_not_written_out_with_slashes_is_refused() {
        for raw in [
            "https:api.example.com/precall",
            "https:/api.example.com/",
            "https:\\\\api.example.com\\p",
            "https://api.example.com\\p",
        ] {
            assert_eq!(
                check(raw),
                Err("url: write it as scheme://host/path, with forward slashes".into()),
                "{raw}"
            );
        }
    }

    #[test]
    fn names_addresses_and_idn_hosts_are_gates() {
        for raw in [
            "https://api.example.com/precall?token=S3CRET",
            "HTTPS://API.Example.com/",
            "http://127.0.0.1:9/precall",
            "http://[::1]:8080/",
            "https://precall-svc_internal.default.svc.cluster.local./x",
            "https://b\u{fc}cher.example/",
            "https://api.example.com/precall#frag",
        ] {
            assert_eq!(check(raw), Ok(()), "{raw}");
        }
    }
}
