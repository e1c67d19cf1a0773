//! The URL a signature is checked against (`signature::signed_url`) from hostile headers:
//! never panics; a URL it builds from headers is `scheme://host` with the host exactly the
//! header's first value and nothing after it but the request target, so a header can never
//! move the signed URL to another path. The verifier never panics on it either.
#![no_main]

use callgate::webhook::signature::{signed_url, SignedBody, Verifier};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xFF: proto, forwarded host, host, target, signature.
    let mut fields = data.split(|&b| b == 0xFF);
    let mut next = || fields.next().unwrap_or(b"");
    let (proto, fwd_host, host, target, signature) = (next(), next(), next(), next(), next());
    let tls = data.first().is_some_and(|b| b & 1 == 1);
    let mut headers = HeaderMap::new();
    for (name, value) in [("x-forwarded-proto", proto), ("x-forwarded-host", fwd_host), ("host", host)] {
        if let (false, Ok(v)) = (value.is_empty(), HeaderValue::from_bytes(value)) {
            headers.insert(name, v);
        }
    }
    let Ok(target) = std::str::from_utf8(target) else { return };
    let target = if target.starts_with('/') { target.to_owned() } else { format!("/{target}") };
    let Ok(url) = signed_url(None, tls, &headers, &target) else { return };
    let (scheme, rest) = url.split_once("://").expect("scheme://");
    assert!(scheme == "http" || scheme == "https", "{url}");
    let authority = rest.strip_suffix(target.as_str()).expect("ends with the target");
    assert!(!authority.contains(['/', '?', '#', '@', ' ']), "{url}");
    let first =
        |v: &HeaderValue| v.to_str().ok().map(|s| s.split(',').next().unwrap_or("").trim().to_owned());
    let chosen = headers.get("x-forwarded-host").and_then(first).filter(|s| !s.is_empty());
    let chosen = chosen.or_else(|| headers.get("host").and_then(first)).unwrap_or_default();
    assert_eq!(authority, chosen, "{url}");
    let verifier = Verifier::new(vec!["token".into()], vec![("key".into(), "secret".into())]);
    let _ = verifier.verify(
        &url,
        SignedBody::Json(data),
        Some(signature),
        Some(b"key=key,algorithm=HMAC_SHA256"),
    );
    let _ = verifier.verify(&url, SignedBody::Nothing, Some(signature), None);
});
