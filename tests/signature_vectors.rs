//! X-Twilio-Signature against the published test vectors of Twilio's official helper libraries
//! (fixtures/signatures/vectors.json, each vector naming its repository, file and test), and
//! property tests of the form parser and the signer/verifier pair.

use std::collections::BTreeMap;

use callgate::webhook::signature::{
    sign_with_shared_key, sign_with_token, SignatureError, SignedBody, Verifier,
};
use callgate::webhook::twilio::parse_form;
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    library: String,
    source: String,
    test: String,
    token: String,
    url: String,
    params: Vec<(String, String)>,
    json_body: Option<String>,
    signature: Option<String>,
    expect: String,
    signed_url: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/signatures/vectors.json");
    let text = std::fs::read_to_string(path).expect("read vectors.json");
    serde_json::from_str::<Vectors>(&text).expect("parse vectors.json").vectors
}

fn form_body(pairs: &[(impl AsRef<str>, impl AsRef<str>)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        form.append_pair(name.as_ref(), value.as_ref());
    }
    form.finish()
}

fn outcome(result: Result<(), SignatureError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => e.as_str(),
    }
}

#[test]
fn published_vectors_of_every_helper_library() {
    let vectors = vectors();
    let mut per_library: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for v in &vectors {
        let verifier = Verifier::new(vec![v.token.clone()], vec![]);
        // Form parameters travel as a real body, through the real parser.
        let body = form_body(&v.params);
        let params = parse_form(body.as_bytes()).expect("vector params form-encode");
        let signed = match &v.json_body {
            Some(json) => SignedBody::Json(json.as_bytes()),
            None => SignedBody::Form(&params),
        };
        let got = outcome(verifier.verify(&v.url, signed, v.signature.as_deref().map(str::as_bytes), None));
        if got != v.expect {
            failures
                .push(format!("{} {} «{}»: expected {}, got {got}", v.library, v.source, v.test, v.expect));
        }
        let counts = per_library.entry(&v.library).or_default();
        if v.expect == "ok" {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    for (library, (accepted, rejected)) in &per_library {
        println!("{library}: {accepted} accepted, {rejected} rejected");
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    for library in ["twilio-python", "twilio-node", "twilio-java", "twilio-go", "twilio-csharp"] {
        let (accepted, rejected) = per_library.get(library).copied().unwrap_or_default();
        assert!(accepted > 0, "no accepted vector from {library}");
        assert!(library == "twilio-python" || rejected > 0, "no rejected vector from {library}");
    }
}

#[test]
fn reference_signer_reproduces_every_published_signature() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.expect == "ok") {
        let signed_url = v.signed_url.as_deref().expect("every ok vector names the URL it signs");
        let pairs: Vec<(&str, &str)> = match v.json_body {
            Some(_) => vec![],
            None => v.params.iter().map(|(n, value)| (n.as_str(), value.as_str())).collect(),
        };
        assert_eq!(
            sign_with_token(&v.token, signed_url, &pairs),
            v.signature.as_deref().unwrap(),
            "{} «{}»",
            v.source,
            v.test
        );
        checked += 1;
    }
    assert!(checked > 40, "only {checked} vectors checked");
}

#[test]
fn one_verifier_holds_rotated_tokens_and_shared_keys() {
    let verifier = Verifier::new(
        vec!["0ld-t0ken".into(), "12345".into()],
        vec![("webhooks_sharedkey_1".into(), "12345".into())],
    );
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params = parse_form(
        b"CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309",
    )
    .unwrap();
    let sig = b"RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    assert_eq!(verifier.verify(url, SignedBody::Form(&params), Some(sig), None), Ok(()));
    // The same secret as a SharedKey signs with HMAC-SHA256 once the settings header names it.
    let settings = b"key=webhooks_sharedkey_1,algorithm=HMAC_SHA256";
    assert_eq!(
        verifier.verify(url, SignedBody::Form(&params), Some(sig), Some(settings)),
        Err(SignatureError::Invalid)
    );
    let pairs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
    let sha256 = sign_with_shared_key("12345", url, &pairs);
    assert_eq!(
        verifier.verify(url, SignedBody::Form(&params), Some(sha256.as_bytes()), Some(settings)),
        Ok(())
    );
}

/// Bytes that are mostly the form syntax, so the parser's escape paths are exercised.
fn form_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        2 => prop::sample::select(b"%&=+".to_vec()),
        2 => prop::sample::select(b"0123456789abcdefABCDEFxyz".to_vec()),
    ];
    prop::collection::vec(byte, 0..300)
}

/// A parameter name: Twilio-like, often repeated, sometimes any text.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["To", "From", "CallSid", "Digits", "Reason", "ReasonConferenceEnded", "a", "A", ""])
            .prop_map(String::from),
        2 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec!["", "+15005550006", "1234", "a b&c=d%e+f", "é", "🎉"]).prop_map(String::from),
        3 => any::<String>(),
    ]
}

/// A URL as Twilio might request it, and the URL it may have signed: the same, or with the port
/// removed or the default port added.
fn urls() -> impl Strategy<Value = (String, String)> {
    let host = prop::sample::select(vec!["example.com", "cg.example.org", "[::1]", "user:pw@h.example"]);
    let port = prop::option::of(prop::sample::select(vec![443u16, 80, 8443, 1234]));
    let path = "(/[a-zA-Z0-9._~%-]{0,12}){0,3}";
    let query = prop::option::of("[a-zA-Z0-9=&%+._~-]{0,30}");
    (prop::bool::ANY, host, port, path, query, prop::bool::ANY).prop_map(
        |(https, host, port, path, query, flip)| {
            let scheme = if https { "https" } else { "http" };
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let received = match port {
                Some(p) => format!("{scheme}://{host}:{p}{path}{query}"),
                None => format!("{scheme}://{host}{path}{query}"),
            };
            let signed = match (flip, port) {
                (false, _) => received.clone(),
                (true, Some(_)) => format!("{scheme}://{host}{path}{query}"),
                (true, None) => format!("{scheme}://{host}:{}{path}{query}", if https { 443 } else { 80 }),
            };
            (received, signed)
        },
    )
}

/// What the parameters add to the signed string: sorted, deduplicated pairs, concatenated.
fn signed_suffix(pairs: &[(String, String)]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.into_iter().map(|(n, v)| n + &v).collect()
}

proptest! {
    #[test]
    fn parse_form_never_panics(bytes in form_bytes()) {
        let _ = parse_form(&bytes);
    }

    #[test]
    fn parse_form_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_form(&bytes);
    }

    #[test]
    fn any_signed_params_validate(
        pairs in prop::collection::vec((name(), value()), 0..30),
        token in any::<String>(),
        (received, signed) in urls(),
    ) {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let body = form_body(&pairs);
        let params = parse_form(body.as_bytes()).unwrap();
        let verifier = Verifier::new(vec!["other".into(), token.clone()], vec![("k1".into(), token.clone())]);

        let sig = sign_with_token(&token, &signed, &refs);
        prop_assert_eq!(verifier.verify(&received, SignedBody::Form(&params), Some(sig.as_bytes()), None), Ok(()));

        let sig = sign_with_shared_key(&token, &signed, &refs);
        let settings = b"key=k1,algorithm=HMAC_SHA256";
        prop_assert_eq!(verifier.verify(&received, SignedBody::Form(&params), Some(sig.as_bytes()), Some(settings)), Ok(()));
    }

    #[test]
    fn a_changed_name_or_value_is_rejected(
        pairs in prop::collection::vec((name(), value()), 1..20),
        token in "[ -~]{1,40}",
        (received, signed) in urls(),
        pick in any::<prop::sample::Index>(),
        change_name in prop::bool::ANY,
    ) {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let sig = sign_with_token(&token, &signed, &refs);
        let mut tampered = pairs.clone();
        let victim = &mut tampered[pick.index(pairs.len())];
        if change_name { victim.0.push('x') } else { victim.1.push('x') }
        // Some changes sign the same string: a pair made equal to another is deduplicated, and
        // an empty name with an empty value adds nothing.
        prop_assume!(signed_suffix(&tampered) != signed_suffix(&pairs));
        let body = form_body(&tampered);
        let params = parse_form(body.as_bytes()).unwrap();
        let verifier = Verifier::new(vec![token.clone()], vec![]);
        prop_assert_eq!(
            verifier.verify(&received, SignedBody::Form(&params), Some(sig.as_bytes()), None),
            Err(SignatureError::Invalid)
        );
    }
}
