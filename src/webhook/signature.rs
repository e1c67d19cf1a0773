//! X-Twilio-Signature: the string Twilio signs (URL, then the sorted form parameters), checked
//! with HMAC-SHA1 against every auth token (rotation) or, when the request names one, against a
//! single SharedKey, the way Twilio's own helper libraries check it. Constant-time comparisons.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::HOST;
use http::{HeaderMap, HeaderName};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::twilio::Params;
use crate::engine::{X_FORWARDED_HOST, X_FORWARDED_PROTO};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Longest X-Twilio-Signature worth decoding: base64 of an HMAC-SHA256.
const MAX_SIGNATURE_LEN: usize = 44;
/// Parameters sorted on the stack; a request with more borrows a heap vector.
const STACK_PARAMS: usize = 64;

/// What a request body contributes to the signed string.
pub enum SignedBody<'a> {
    /// A form POST: its decoded parameters are appended to the URL.
    Form(&'a Params<'a>),
    /// A GET (its parameters are in the URL) or a body that is not signed.
    Nothing,
    /// A JSON body: nothing is appended, the URL's `bodySHA256` must be its SHA-256.
    Json(&'a [u8]),
}

/// Why a request's signature does not validate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing x-twilio-signature")]
    Missing,
    #[error("signature does not match")]
    Invalid,
    #[error("signature settings name an unknown key")]
    UnknownKey,
    #[error("unreadable signature settings")]
    BadSettings,
    #[error("body does not match bodySHA256")]
    BodyHashMismatch,
    #[error("X-Forwarded-Proto, X-Forwarded-Host or Host is not a scheme (http, https) or a host")]
    UrlHeaders,
}

impl SignatureError {
    /// A short, stable name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Invalid => "invalid",
            SignatureError::UnknownKey => "unknown_key",
            SignatureError::BadSettings => "bad_settings",
            SignatureError::BodyHashMismatch => "body_hash",
            SignatureError::UrlHeaders => "url_headers",
        }
    }
}

/// A SharedKey, keyed for both algorithms a settings header may name.
#[derive(Clone)]
struct SharedKey {
    id: String,
    sha1: HmacSha1,
    sha256: HmacSha256,
}

/// Checks X-Twilio-Signature. Holds keyed HMAC states only, never the secrets as text; each check
/// clones a keyed state instead of re-keying.
#[derive(Clone)]
pub struct Verifier {
    tokens: Vec<HmacSha1>,
    shared: Vec<SharedKey>,
}

/// The secrets one request is checked against, as its settings header chooses them.
enum Keys<'a> {
    Tokens(&'a [HmacSha1]),
    Sha1(&'a HmacSha1),
    Sha256(&'a HmacSha256),
}

impl Verifier {
    /// `auth_tokens` are tried in order (the current one first, for rotation); `shared_keys` are
    /// `(id, secret)` pairs, used only for requests whose settings header names the id.
    pub fn new(auth_tokens: Vec<String>, shared_keys: Vec<(String, String)>) -> Verifier {
        let tokens = auth_tokens.iter().map(|t| keyed(t)).collect();
        let shared = shared_keys
            .into_iter()
            .map(|(id, secret)| SharedKey { sha1: keyed(&secret), sha256: keyed(&secret), id })
            .collect();
        Verifier { tokens, shared }
    }

    /// No token and no key: nothing can validate.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.shared.is_empty()
    }

    /// `signature` is the X-Twilio-Signature header value, `settings` the
    /// X-Twilio-Webhooks-Signature-Settings value. `url` is the URL Twilio requested (see
    /// [`signed_url`]); it is also tried with its port removed, or with the default port added.
    pub fn verify(
        &self,
        url: &str,
        body: SignedBody<'_>,
        signature: Option<&[u8]>,
        settings: Option<&[u8]>,
    ) -> Result<(), SignatureError> {
        let signature = match signature {
            Some(s) if !s.is_empty() => s,
            _ => return Err(SignatureError::Missing),
        };
        let keys = self.keys_for(settings)?;
        let mut buf = [0u8; 33];
        let signature = decode_signature(signature, &mut buf).ok_or(SignatureError::Invalid)?;

        let (suffix, body_hash) = match body {
            SignedBody::Form(params) => (form_suffix(params), None),
            SignedBody::Nothing => (String::new(), None),
            SignedBody::Json(bytes) => {
                let wanted = query_value(url, "bodySHA256").ok_or(SignatureError::BodyHashMismatch)?;
                (String::new(), Some((bytes, wanted)))
            }
        };
        let url = UrlParts::split(url);
        let valid = match keys {
            Keys::Tokens(tokens) => tokens.iter().any(|t| url.any_variant(t, &suffix, signature)),
            Keys::Sha1(key) => url.any_variant(key, &suffix, signature),
            Keys::Sha256(key) => url.any_variant(key, &suffix, signature),
        };
        if !valid {
            return Err(SignatureError::Invalid);
        }
        match body_hash {
            Some((bytes, wanted)) if !body_hash_matches(bytes, wanted) => {
                Err(SignatureError::BodyHashMismatch)
            }
            _ => Ok(()),
        }
    }

    /// Reads the settings header the way twilio-python 9.13 does (`key=ID,algorithm=NAME`, parts
    /// split at `,` then at the first `=`, trimmed, unknown parts ignored, algorithm names
    /// case-insensitive, HMAC_SHA1 when none is named). A header naming a key selects that
    /// SharedKey alone, with the algorithm named. One naming no key (or an empty header) leaves
    /// the auth tokens, which sign only with HMAC_SHA1.
    fn keys_for(&self, settings: Option<&[u8]>) -> Result<Keys<'_>, SignatureError> {
        let Some(settings) = settings else { return Ok(Keys::Tokens(&self.tokens)) };
        let settings = std::str::from_utf8(settings).map_err(|_| SignatureError::BadSettings)?;
        let (mut key, mut algorithm) = (None, None);
        for part in settings.split(',') {
            let Some((name, value)) = part.split_once('=') else { continue };
            let value = value.trim();
            match name.trim() {
                "key" if key.is_none() => key = Some(value),
                "algorithm" if algorithm.is_none() && !value.is_empty() => algorithm = Some(value),
                _ => {}
            }
        }
        let sha256 = match algorithm {
            None => false,
            Some(a) if a.eq_ignore_ascii_case("HMAC_SHA1") => false,
            Some(a) if a.eq_ignore_ascii_case("HMAC_SHA256") => true,
            Some(_) => return Err(SignatureError::BadSettings),
        };
        match key {
            None if sha256 => Err(SignatureError::BadSettings),
            None => Ok(Keys::Tokens(&self.tokens)),
            Some("") => Err(SignatureError::BadSettings),
            Some(id) => {
                let shared = self.shared.iter().find(|k| k.id == id).ok_or(SignatureError::UnknownKey)?;
                Ok(if sha256 { Keys::Sha256(&shared.sha256) } else { Keys::Sha1(&shared.sha1) })
            }
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Masked<'a>(&'a [SharedKey]);
        impl fmt::Debug for Masked<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter().map(|k| (&k.id, "***"))).finish()
            }
        }
        f.debug_struct("Verifier")
            .field("auth_tokens", &vec!["***"; self.tokens.len()])
            .field("shared_keys", &Masked(&self.shared))
            .finish()
    }
}

fn keyed<M: Mac + hmac::digest::KeyInit>(secret: &str) -> M {
    <M as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length")
}

/// Decodes a padded, canonical standard-base64 signature, or `None`.
fn decode_signature<'b>(signature: &[u8], buf: &'b mut [u8; 33]) -> Option<&'b [u8]> {
    if signature.len() > MAX_SIGNATURE_LEN {
        return None;
    }
    let n = BASE64.decode_slice(signature, buf).ok()?;
    Some(&buf[..n])
}

/// The URL Twilio requested, split around its port so that each variant the helper libraries try
/// (as given; port removed; default port added) is fed to the HMAC in pieces, never rebuilt.
struct UrlParts<'a> {
    /// Up to the end of the host: `scheme://[userinfo@]host`.
    head: &'a str,
    /// `:port` when the URL has one.
    port: Option<&'a str>,
    /// The rest: path, query, fragment.
    tail: &'a str,
    /// `:443` for https, else `:80`, as the helper libraries choose it.
    default_port: &'static str,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> UrlParts<'a> {
        let whole = UrlParts { head: url, port: None, tail: "", default_port: "" };
        let Some(scheme_end) = url.find("://") else { return whole };
        let scheme = &url[..scheme_end];
        let is_scheme = |b: u8| b.is_ascii_alphanumeric() || b"+-.".contains(&b);
        if scheme.is_empty() || !scheme.bytes().all(is_scheme) {
            return whole;
        }
        let authority_start = scheme_end + 3;
        let authority_end =
            url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
        let authority = &url[authority_start..authority_end];
        // The host starts after the userinfo, which keeps its own `:` (user:password@).
        let host_start = authority.rfind('@').map_or(0, |i| i + 1);
        let host = &authority[host_start..];
        // An IPv6 literal's colons are inside its brackets.
        let after_brackets =
            if host.starts_with('[') { host.find(']').map_or(host.len(), |i| i + 1) } else { 0 };
        let port_start = host[after_brackets..]
            .rfind(':')
            .map(|i| after_brackets + i)
            .filter(|&i| host[i + 1..].bytes().all(|b| b.is_ascii_digit()))
            .map(|i| authority_start + host_start + i);
        let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
        match port_start {
            Some(p) => UrlParts {
                head: &url[..p],
                port: Some(&url[p..authority_end]),
                tail: &url[authority_end..],
                default_port,
            },
            None => UrlParts {
                head: &url[..authority_end],
                port: None,
                tail: &url[authority_end..],
                default_port,
            },
        }
    }

    /// True if `key` over any variant of the URL, then `suffix`, gives `signature`.
    fn any_variant<M: Mac + Clone>(&self, key: &M, suffix: &str, signature: &[u8]) -> bool {
        let as_given = self.port.unwrap_or("");
        let other = if self.port.is_some() { "" } else { self.default_port };
        // A URL that could not be split has no second variant.
        let splittable = !self.default_port.is_empty();
        std::iter::once(as_given).chain(splittable.then_some(other)).any(|port| {
            let mut mac = key.clone();
            mac.update(self.head.as_bytes());
            mac.update(port.as_bytes());
            mac.update(self.tail.as_bytes());
            mac.update(suffix.as_bytes());
            mac.verify_slice(signature).is_ok()
        })
    }
}

/// The decoded form parameters as Twilio appends them: sorted by name in byte order, the values
/// of one name deduplicated and sorted, each pair written name then value. Sorting the pairs as
/// pairs sorts by name first; it is not a sort of the concatenated `name + value` strings.
fn form_suffix(params: &Params<'_>) -> String {
    let mut on_stack = [("", ""); STACK_PARAMS];
    let mut on_heap = Vec::new();
    let pairs: &mut [(&str, &str)] = if params.len() <= STACK_PARAMS {
        for (slot, (name, value)) in on_stack.iter_mut().zip(params) {
            *slot = (name.as_ref(), value.as_ref());
        }
        &mut on_stack[..params.len()]
    } else {
        on_heap.extend(params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
        &mut on_heap
    };
    pairs.sort_unstable();
    let mut suffix = String::with_capacity(pairs.iter().map(|(n, v)| n.len() + v.len()).sum());
    let mut previous = None;
    for &pair in pairs.iter() {
        if previous != Some(pair) {
            suffix.push_str(pair.0);
            suffix.push_str(pair.1);
            previous = Some(pair);
        }
    }
    suffix
}

/// The first non-empty value of the query parameter `name` in `url`, still percent-encoded (as
/// the helper libraries do, empty values are skipped and the first one counts).
fn query_value<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let without_fragment = url.split_once('#').map_or(url, |(u, _)| u);
    let query = without_fragment.split_once('?')?.1;
    query.split('&').find_map(|piece| {
        let (n, v) = piece.split_once('=')?;
        let decoded_name = percent_encoding::percent_decode_str(n);
        (!v.is_empty() && decoded_name.eq(name.bytes())).then_some(v)
    })
}

/// True if `wanted` (percent-encoded) decodes to the lowercase hex SHA-256 of `body`.
fn body_hash_matches(body: &[u8], wanted: &str) -> bool {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(body), &mut hex).expect("64 hex digits for 32 bytes");
    percent_encoding::percent_decode_str(wanted).eq(hex.iter().copied())
}

/// The URL Twilio signed. `path_and_query` is the raw request target as received. With
/// `public_url` (`scheme://host[:port]`), that and the target; else the scheme is the first
/// `X-Forwarded-Proto` value (lower-cased), or https on a TLS connection, or http; the host is
/// the first `X-Forwarded-Host` value, or `Host`. A scheme other than http or https, or a host
/// that is not `host[:port]` (a path, a query, user info), is an error: a "host" carrying a path
/// would let a signature made for one URL be replayed to another.
pub fn signed_url(
    public_url: Option<&str>,
    tls: bool,
    headers: &http::HeaderMap,
    path_and_query: &str,
) -> Result<String, SignatureError> {
    if let Some(base) = public_url {
        let base = base.strip_suffix('/').unwrap_or(base);
        let mut url = String::with_capacity(base.len() + path_and_query.len());
        url.push_str(base);
        url.push_str(path_and_query);
        return Ok(url);
    }
    let scheme = first_value(headers, &X_FORWARDED_PROTO).unwrap_or(if tls { "https" } else { "http" });
    let host = first_value(headers, &X_FORWARDED_HOST).or_else(|| first_value(headers, &HOST)).unwrap_or("");
    let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    // No host at all (HTTP/1.0) builds a URL that no signature matches, as before.
    if !scheme_ok || !(host.is_empty() || is_host(host)) {
        return Err(SignatureError::UrlHeaders);
    }
    let mut url = String::with_capacity(scheme.len() + 3 + host.len() + path_and_query.len());
    url.extend(scheme.chars().map(|c| c.to_ascii_lowercase()));
    url.push_str("://");
    url.push_str(host);
    url.push_str(path_and_query);
    Ok(url)
}

/// `host[:port]`: a name or IPv4 address (letters, digits, `-`, `.`, `_`) or a bracketed IPv6
/// address, and a port of 1 to 65535. Nothing else: no path, query, fragment or user info.
fn is_host(s: &str) -> bool {
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let Some((ip, after)) = rest.split_once(']') else { return false };
            let ip_ok = !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            match after {
                "" => (ip_ok, None),
                _ => (ip_ok, Some(after.strip_prefix(':').unwrap_or("x"))),
            }
        }
        None => {
            let (host, port) = match s.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            };
            let ok =
                !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            (ok, port)
        }
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    host_ok && port_ok
}

/// The first comma-separated value of the first `name` header, trimmed; `None` if absent, empty
/// or not visible ASCII.
fn first_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next().unwrap_or("").trim();
    (!first.is_empty()).then_some(first)
}

/// Reference signer: the X-Twilio-Signature Twilio sends for `url` (exactly as given) and the
/// decoded form `params`, signed with an auth token (HMAC-SHA1).
pub fn sign_with_token(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    sign::<HmacSha1>(token, url, params)
}

/// Reference signer for a SharedKey secret (HMAC-SHA256), as with
/// `X-Twilio-Webhooks-Signature-Settings: key=ID,algorithm=HMAC_SHA256`.
pub fn sign_with_shared_key(secret: &str, url: &str, params: &[(&str, &str)]) -> String {
    sign::<HmacSha256>(secret, url, params)
}

fn sign<M: Mac + hmac::digest::KeyInit>(secret: &str, url: &str, params: &[(&str, &str)]) -> String {
    let params: Params<'_> = params.iter().map(|&(n, v)| (n.into(), v.into())).collect();
    let mut mac: M = keyed(secret);
    mac.update(url.as_bytes());
    mac.update(form_suffix(&params).as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    /// HMAC-SHA1 of exactly `s`, base64: what a signature over a hand-built string looks like.
    fn hmac_sha1(token: &str, s: &str) -> String {
        let mut mac: HmacSha1 = keyed(token);
        mac.update(s.as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
    }

    fn params<'a>(pairs: &[(&'a str, &'a str)]) -> Params<'a> {
        pairs.iter().map(|&(n, v)| (n.into(), v.into())).collect()
    }

    fn tokens(t: &[&str]) -> Verifier {
        Verifier::new(t.iter().map(|s| s.to_string()).collect(), vec![])
    }

    fn check(v: &Verifier, url: &str, pairs: &[(&str, &str)], sig: &str) -> Result<(), SignatureError> {
        v.verify(url, SignedBody::Form(&params(pairs)), Some(sig.as_bytes()), None)
    }

    #[test]
    fn sorts_by_name_in_byte_order_not_by_name_plus_value() {
        // By name: "Reason" < "ReasonConferenceEnded". By name + value, "ReasonC..." sorts before
        // "ReasonP...", so the two orders sign different strings.
        let pairs = [("ReasonConferenceEnded", "test"), ("Reason", "Participant"), ("a", "1"), ("B", "2")];
        let by_name = format!("{URL}B2ReasonParticipantReasonConferenceEndedtesta1");
        let by_concat = format!("{URL}B2ReasonConferenceEndedtestReasonParticipanta1");
        assert_eq!(sign_with_token("12345", URL, &pairs), hmac_sha1("12345", &by_name));
        let v = tokens(&["12345"]);
        assert_eq!(check(&v, URL, &pairs, &hmac_sha1("12345", &by_name)), Ok(()));
        assert_eq!(check(&v, URL, &pairs, &hmac_sha1("12345", &by_concat)), Err(SignatureError::Invalid));
    }

    #[test]
    fn repeated_values_are_deduplicated_and_sorted() {
        let pairs = [
            ("Sid", "CA123"),
            ("Digits", "5678"),
            ("SidAccount", "AC123"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ];
        let signed = format!("{URL}Digits1234Digits5678SidCA123SidAccountAC123");
        assert_eq!(sign_with_token("12345", URL, &pairs), hmac_sha1("12345", &signed));
        // Twilio's own published vector for these parameters.
        assert_eq!(sign_with_token("12345", URL, &pairs), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        assert_eq!(check(&tokens(&["12345"]), URL, &pairs, "IK+Dwps556ElfBT0I3Rgjkr1wJU="), Ok(()));
    }

    #[test]
    fn byte_order_puts_upper_case_before_lower_case_and_ascii_before_unicode() {
        let pairs = [("é", "1"), ("a", "2"), ("Z", "3"), ("a", "")];
        assert_eq!(form_suffix(&params(&pairs)), "Z3aa2é1");
    }

    #[test]
    fn get_signs_the_url_alone() {
        let url = "https://example.com/voice?CallSid=CA1&To=%2B1555";
        let v = tokens(&["tok"]);
        let sig = hmac_sha1("tok", url);
        assert_eq!(v.verify(url, SignedBody::Nothing, Some(sig.as_bytes()), None), Ok(()));
        // The same signature does not cover a body that was not signed.
        assert_eq!(check(&v, url, &[("To", "+1555")], &sig), Err(SignatureError::Invalid));
    }

    #[test]
    fn tries_the_port_removed_or_the_default_port_added() {
        let v = tokens(&["tok"]);
        let p = [("To", "+1")];
        for (received, signed, ok) in [
            ("https://h.example:8443/v?q=1", "https://h.example/v?q=1", true),
            ("https://h.example:8443/v?q=1", "https://h.example:8443/v?q=1", true),
            ("https://h.example/v", "https://h.example:443/v", true),
            ("http://h.example/v", "http://h.example:80/v", true),
            ("http://h.example:1234/v", "http://h.example/v", true),
            ("https://h.example", "https://h.example:443", true),
            ("https://u:p@h.example/v", "https://u:p@h.example:443/v", true),
            ("https://u:p@h.example:99/v", "https://u:p@h.example/v", true),
            ("https://[::1]:8443/v", "https://[::1]/v", true),
            ("https://[::1]/v", "https://[::1]:443/v", true),
            ("HTTPS://h.example/v", "HTTPS://h.example:443/v", true),
            // Only the port changes: never another port, scheme, or default for the other scheme.
            ("https://h.example/v", "https://h.example:80/v", false),
            ("https://h.example:8443/v", "https://h.example:443/v", false),
            ("https://h.example/v", "http://h.example/v", false),
            ("https://h.example/v?x=1:443", "https://h.example/v?x=1", false),
        ] {
            let sig = sign_with_token("tok", signed, &p);
            let expected = if ok { Ok(()) } else { Err(SignatureError::Invalid) };
            assert_eq!(check(&v, received, &p, &sig), expected, "{received} signed as {signed}");
        }
    }

    #[test]
    fn url_parts_keep_userinfo_path_and_query() {
        let u = UrlParts::split("https://user:pw@host.example:8443/p:1?q=a:b@c#f");
        assert_eq!(
            (u.head, u.port, u.tail),
            ("https://user:pw@host.example", Some(":8443"), "/p:1?q=a:b@c#f")
        );
        let u = UrlParts::split("http://host.example?q=1:2");
        assert_eq!((u.head, u.port, u.tail, u.default_port), ("http://host.example", None, "?q=1:2", ":80"));
        let u = UrlParts::split("not a url");
        assert_eq!((u.head, u.port, u.tail, u.default_port), ("not a url", None, "", ""));
    }

    #[test]
    fn any_auth_token_may_have_signed_for_rotation() {
        let v = tokens(&["old-token", "new-token"]);
        let p = [("CallSid", "CA1")];
        for token in ["old-token", "new-token"] {
            assert_eq!(check(&v, URL, &p, &sign_with_token(token, URL, &p)), Ok(()));
        }
        assert_eq!(check(&v, URL, &p, &sign_with_token("other", URL, &p)), Err(SignatureError::Invalid));
        assert_eq!(
            check(&tokens(&[]), URL, &p, &sign_with_token("old-token", URL, &p)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn shared_key_named_by_the_settings_header_is_the_only_secret_tried() {
        let v = Verifier::new(
            vec!["auth-token".into()],
            vec![
                ("webhooks_sharedkey_A".into(), "secret-a".into()),
                ("webhooks_sharedkey_B".into(), "secret-b".into()),
            ],
        );
        let p = [("CallSid", "CA1"), ("To", "+15005550006")];
        let form = params(&p);
        let verify = |sig: &str, settings: &str| {
            v.verify(URL, SignedBody::Form(&form), Some(sig.as_bytes()), Some(settings.as_bytes()))
        };
        let by_b = sign_with_shared_key("secret-b", URL, &p);
        assert_eq!(verify(&by_b, "key=webhooks_sharedkey_B,algorithm=HMAC_SHA256"), Ok(()));
        assert_eq!(verify(&by_b, " algorithm = hmac_sha256 , key = webhooks_sharedkey_B "), Ok(()));
        assert_eq!(
            verify(&by_b, "key=webhooks_sharedkey_A,algorithm=HMAC_SHA256"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(&by_b, "key=webhooks_sharedkey_C,algorithm=HMAC_SHA256"),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            verify(&by_b, "key=webhooks_sharedkey_B,algorithm=HMAC_SHA512"),
            Err(SignatureError::BadSettings)
        );
        assert_eq!(verify(&by_b, "key=,algorithm=HMAC_SHA256"), Err(SignatureError::BadSettings));
        assert_eq!(verify(&by_b, "algorithm=HMAC_SHA256"), Err(SignatureError::BadSettings));
        // The auth token does not validate a request that names a key, whatever the algorithm.
        let by_token = sign_with_token("auth-token", URL, &p);
        assert_eq!(
            verify(&by_token, "key=webhooks_sharedkey_B,algorithm=HMAC_SHA256"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(&by_token, "key=webhooks_sharedkey_B,algorithm=HMAC_SHA1"),
            Err(SignatureError::Invalid)
        );
        // A named key with HMAC_SHA1 (or no algorithm, twilio-python's default) signs with SHA-1.
        let b_sha1 = sign_with_token("secret-b", URL, &p);
        assert_eq!(verify(&b_sha1, "key=webhooks_sharedkey_B,algorithm=HMAC_SHA1"), Ok(()));
        assert_eq!(verify(&b_sha1, "key=webhooks_sharedkey_B"), Ok(()));
        // Without the header, SharedKey secrets are not tried.
        assert_eq!(
            v.verify(URL, SignedBody::Form(&form), Some(by_b.as_bytes()), None),
            Err(SignatureError::Invalid)
        );
        assert_eq!(v.verify(URL, SignedBody::Form(&form), Some(by_token.as_bytes()), None), Ok(()));
        assert_eq!(
            v.verify(URL, SignedBody::Form(&form), Some(by_b.as_bytes()), Some(b"key=\xff")),
            Err(SignatureError::BadSettings)
        );
    }

    #[test]
    fn missing_or_malformed_signature() {
        let v = tokens(&["tok"]);
        let form = params(&[("a", "b")]);
        assert_eq!(v.verify(URL, SignedBody::Form(&form), None, None), Err(SignatureError::Missing));
        assert_eq!(v.verify(URL, SignedBody::Form(&form), Some(b""), None), Err(SignatureError::Missing));
        let good = sign_with_token("tok", URL, &[("a", "b")]);
        for bad in [
            "not base64 at all!",
            &good[..27],                    // unpadded
            &format!("{good}="),            // over-padded
            &format!("{good}{good}{good}"), // too long
            "NOTRSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "\u{fffd}",
        ] {
            assert_eq!(
                v.verify(URL, SignedBody::Form(&form), Some(bad.as_bytes()), None),
                Err(SignatureError::Invalid),
                "{bad}"
            );
        }
        assert_eq!(v.verify(URL, SignedBody::Form(&form), Some(good.as_bytes()), None), Ok(()));
    }

    #[test]
    fn json_body_must_match_body_sha256() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let v = tokens(&["12345"]);
        let url = format!("{URL}&bodySHA256={hash}");
        let sig = hmac_sha1("12345", &url);
        assert_eq!(sig, "a9nBmqA0ju/hNViExpshrM61xv4=");
        let verify = |url: &str, body: &[u8], sig: &str| {
            v.verify(url, SignedBody::Json(body), Some(sig.as_bytes()), None)
        };
        assert_eq!(verify(&url, body, &sig), Ok(()));
        assert_eq!(verify(&url, b"{}", &sig), Err(SignatureError::BodyHashMismatch));
        assert_eq!(verify(URL, body, &hmac_sha1("12345", URL)), Err(SignatureError::BodyHashMismatch));
        let upper = format!("{URL}&bodySHA256={}", hash.to_uppercase());
        assert_eq!(verify(&upper, body, &hmac_sha1("12345", &upper)), Err(SignatureError::BodyHashMismatch));
        // An empty bodySHA256 is skipped for a later one; the first non-empty one counts.
        let twice = format!("{URL}&bodySHA256=&bodySHA256={hash}&bodySHA256=00");
        assert_eq!(verify(&twice, body, &hmac_sha1("12345", &twice)), Ok(()));
        // A valid hash does not rescue a wrong signature.
        assert_eq!(verify(&url, body, &hmac_sha1("12345", URL)), Err(SignatureError::Invalid));
    }

    #[test]
    fn query_value_decodes_names_and_values() {
        assert_eq!(query_value("https://h/p?a=1&bodySHA256=ab#bodySHA256=cd", "bodySHA256"), Some("ab"));
        assert_eq!(query_value("https://h/p?body%53HA256=%61b", "bodySHA256"), Some("%61b"));
        assert_eq!(query_value("https://h/p#?bodySHA256=ab", "bodySHA256"), None);
        assert_eq!(query_value("https://h/p?bodysha256=ab", "bodySHA256"), None);
        assert!(body_hash_matches(b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        assert!(body_hash_matches(
            b"",
            "%65%33b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn signed_url_from_public_url_forwarded_headers_host_or_tls() {
        let target = "/twilio/voice?x=%2B1&y";
        let h = headers(&[
            ("host", "internal:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "pub.example"),
        ]);
        assert_eq!(
            signed_url(Some("https://gate.example"), false, &h, target).unwrap(),
            "https://gate.example/twilio/voice?x=%2B1&y"
        );
        assert_eq!(
            signed_url(Some("https://gate.example:8443/"), false, &h, target).unwrap(),
            "https://gate.example:8443/twilio/voice?x=%2B1&y"
        );
        assert_eq!(signed_url(None, false, &h, target).unwrap(), "https://pub.example/twilio/voice?x=%2B1&y");
        let h = headers(&[
            ("host", "internal:8080"),
            ("x-forwarded-proto", " HTTPS , http"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "a.example:443, b.example"),
        ]);
        assert_eq!(signed_url(None, false, &h, "/v").unwrap(), "https://a.example:443/v");
        let h = headers(&[("host", "callgate.example:8443")]);
        assert_eq!(signed_url(None, true, &h, "/v").unwrap(), "https://callgate.example:8443/v");
        assert_eq!(signed_url(None, false, &h, "/v").unwrap(), "http://callgate.example:8443/v");
        let h = headers(&[("host", "h.example"), ("x-forwarded-proto", ""), ("x-forwarded-host", " ")]);
        assert_eq!(signed_url(None, true, &h, "/v").unwrap(), "https://h.example/v");
    }

    #[test]
    fn url_headers_must_be_a_scheme_and_a_host() {
        let url = |pairs: &[(&'static str, &'static str)]| signed_url(None, false, &headers(pairs), "/v");
        for bad in [
            "a.example/x",
            "a.example/x?",
            "a.example#",
            "u@a.example",
            "a.example:",
            "a.example:0",
            "a.example:65536",
            "a.example:8o",
            "[::1",
            "[::1]x",
            "[]",
            ":80",
            "a b",
            "a.example\\",
        ] {
            assert_eq!(url(&[("x-forwarded-host", bad)]), Err(SignatureError::UrlHeaders), "{bad}");
            assert_eq!(url(&[("host", bad)]), Err(SignatureError::UrlHeaders), "Host {bad}");
        }
        for bad in ["ftp", "javascript", "https://a.example/x", "http:"] {
            let h = [("host", "a.example"), ("x-forwarded-proto", bad)];
            assert_eq!(url(&h), Err(SignatureError::UrlHeaders), "{bad}");
        }
        for (host, want) in [
            ("a.example", "http://a.example/v"),
            ("A-1.example_x:65535", "http://A-1.example_x:65535/v"),
            ("10.0.0.1:80", "http://10.0.0.1:80/v"),
            ("[2001:db8::1]:8443", "http://[2001:db8::1]:8443/v"),
            ("[::ffff:10.0.0.1]", "http://[::ffff:10.0.0.1]/v"),
        ] {
            assert_eq!(url(&[("host", host)]).unwrap(), want);
        }
        // A bad forwarded header is no matter when --public-url says where Twilio calls.
        let h = headers(&[("x-forwarded-host", "a.example/x"), ("x-forwarded-proto", "ftp")]);
        assert_eq!(signed_url(Some("https://p.example"), false, &h, "/v").unwrap(), "https://p.example/v");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let v = Verifier::new(
            vec!["tok-secret-1".into(), "tok-secret-2".into()],
            vec![("webhooks_sharedkey_A".into(), "shared-secret".into())],
        );
        let shown = format!("{v:?} {v:#?}");
        for secret in ["tok-secret", "shared-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("***") && shown.contains("webhooks_sharedkey_A"), "{shown}");
        assert!(!v.is_empty() && tokens(&[]).is_empty());
    }

    #[test]
    fn errors_have_stable_names_and_short_messages() {
        for (e, name) in [
            (SignatureError::Missing, "missing"),
            (SignatureError::Invalid, "invalid"),
            (SignatureError::UnknownKey, "unknown_key"),
            (SignatureError::BadSettings, "bad_settings"),
            (SignatureError::BodyHashMismatch, "body_hash"),
        ] {
            assert_eq!(e.as_str(), name);
            let message = e.to_string();
            assert!(message.len() < 50 && !message.is_empty(), "{message}");
        }
    }
}
