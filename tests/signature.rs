//! `X-Twilio-Signature` on real sockets (SPEC §4.1) and signed gate requests (SPEC §5).

mod support;

use bytes::Bytes;
use callgate::settings::{Secret, SharedKey, SignatureMode};
use callgate::webhook::signature::{sign_with_shared_key, sign_with_token};
use hmac::{Hmac, Mac};
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const TO: &str = "+447700900123";
const TOKEN: &str = "12345678901234567890123456789012";

fn pairs(form: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(form.as_bytes()).into_owned().collect()
}

fn sign(token: &str, url: &str, form: &str) -> String {
    let pairs = pairs(form);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    sign_with_token(token, url, &refs)
}

async fn signed_post(url: &str, form: &str, signature: &str, extra: &[(&str, &str)]) -> Answer {
    let mut request = Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::from(form.to_owned()))).unwrap()).await.unwrap()
}

async fn enforcing(
    tokens: &[&str],
    tweak: impl FnOnce(&mut callgate::settings::Settings),
) -> (Callgate, Stub, Stub) {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let tokens: Vec<Secret> = tokens.iter().map(|t| Secret::new(*t)).collect();
    let cg = Callgate::spawn_with(&number_gate(TO, &gate.url("/g")), &engine.url(""), |s| {
        s.twilio_auth_tokens = tokens;
        s.twilio_signature = SignatureMode::Enforce;
        s.signed_paths = vec!["/twilio/status".into()];
        tweak(s);
    })
    .await;
    (cg, gate, engine)
}

#[tokio::test]
async fn a_valid_signature_passes_and_a_forged_one_reaches_nobody() {
    let (cg, gate, engine) = enforcing(&[TOKEN], |_| {}).await;
    let url = cg.url("/twilio/voice");
    let form = ringing(TO);
    let good = sign(TOKEN, &url, &form);
    assert_eq!(signed_post(&url, &form, &good, &[]).await.status, StatusCode::OK);
    assert_eq!((gate.count(), engine.count()), (1, 1));

    let tampered_value = form.replace("From=%2B14155550100", "From=%2B14155550199");
    let tampered_name = form.replace("ApiVersion=", "ApiVersiom=");
    let wrong_token = sign("another-token-entirely", &url, &form);
    for (what, form, signature) in [
        ("a tampered value", tampered_value.as_str(), good.as_str()),
        ("a tampered name", tampered_name.as_str(), good.as_str()),
        ("another token", form.as_str(), wrong_token.as_str()),
        ("garbage", form.as_str(), "not base64!"),
    ] {
        let answer = signed_post(&url, form, signature, &[]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}");
    }
    let missing = post_form(&url, &form).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "no header at all");
    let tampered_url = signed_post(&cg.url("/twilio/voice?x=1"), &form, &good, &[]).await;
    assert_eq!(tampered_url.status, StatusCode::FORBIDDEN, "a tampered URL");
    assert_eq!((gate.count(), engine.count()), (1, 1), "no forged request reached the gate or the engine");
}

#[tokio::test]
async fn re_encoding_that_leaves_the_decoded_parameters_equal_still_validates() {
    let (cg, _gate, engine) = enforcing(&[TOKEN], |_| {}).await;
    let url = cg.url("/twilio/voice");
    let form = ringing(TO);
    let good = sign(TOKEN, &url, &form);
    let reencoded = form.replace("%2B", "%2b").replace("From=", "%46rom=");
    assert_eq!(signed_post(&url, &reencoded, &good, &[]).await.status, StatusCode::OK);
    assert_eq!(engine.count(), 1);
}

#[tokio::test]
async fn tokens_rotate_and_shared_keys_are_checked_only_against_their_id() {
    let (cg, _gate, engine) = enforcing(&["old-token", "new-token"], |s| {
        s.twilio_shared_keys = vec![SharedKey { id: "KS1".into(), secret: Secret::new("shared-secret") }];
    })
    .await;
    let url = cg.url("/twilio/voice");
    let form = ringing(TO);
    for token in ["old-token", "new-token"] {
        assert_eq!(
            signed_post(&url, &form, &sign(token, &url, &form), &[]).await.status,
            StatusCode::OK,
            "{token}"
        );
    }
    let refs: Vec<(String, String)> = pairs(&form);
    let refs: Vec<(&str, &str)> = refs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let shared = sign_with_shared_key("shared-secret", &url, &refs);
    let settings = ("x-twilio-webhooks-signature-settings", "key=KS1,algorithm=HMAC_SHA256");
    assert_eq!(signed_post(&url, &form, &shared, &[settings]).await.status, StatusCode::OK);
    let unknown = ("x-twilio-webhooks-signature-settings", "key=KS2,algorithm=HMAC_SHA256");
    assert_eq!(signed_post(&url, &form, &shared, &[unknown]).await.status, StatusCode::FORBIDDEN);
    // A token signature is not accepted when the settings name a shared key.
    let by_token = sign("new-token", &url, &form);
    assert_eq!(signed_post(&url, &form, &by_token, &[settings]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(engine.count(), 3);
}

#[tokio::test]
async fn the_public_url_and_forwarded_headers_rebuild_what_twilio_signed() {
    let (cg, _gate, engine) =
        enforcing(&[TOKEN], |s| s.public_url = Some("https://voice.example.com".into())).await;
    let form = ringing(TO);
    let path = "/twilio/voice?tenant=acme";
    for signed_as in [
        "https://voice.example.com/twilio/voice?tenant=acme",
        "https://voice.example.com:443/twilio/voice?tenant=acme",
    ] {
        let signature = sign(TOKEN, signed_as, &form);
        assert_eq!(
            signed_post(&cg.url(path), &form, &signature, &[]).await.status,
            StatusCode::OK,
            "{signed_as}"
        );
    }
    let wrong_host = sign(TOKEN, "https://attacker.example/twilio/voice?tenant=acme", &form);
    assert_eq!(signed_post(&cg.url(path), &form, &wrong_host, &[]).await.status, StatusCode::FORBIDDEN);

    let (cg, _gate, _engine) = enforcing(&[TOKEN], |_| {}).await;
    let behind_lb = sign(TOKEN, "https://voice.example.com/twilio/voice", &form);
    let headers = [("x-forwarded-proto", "https"), ("x-forwarded-host", "voice.example.com")];
    assert_eq!(
        signed_post(&cg.url("/twilio/voice"), &form, &behind_lb, &headers).await.status,
        StatusCode::OK
    );
    assert_eq!(engine.count(), 2);
}

/// Issue 18 item 4: X-Forwarded-Host and -Proto rebuild the signed URL only when they are a
/// host and a scheme. A "host" carrying a path let a signature made for one URL (a status
/// callback's) be replayed to the voice path: the forwarded-host path trick.
#[tokio::test]
async fn forwarded_headers_that_are_not_a_host_and_a_scheme_are_refused() {
    let (cg, gate, engine) = enforcing(&[TOKEN], |_| {}).await;
    let form = ringing(TO);
    for (proto, host) in [
        ("https", "voice.example.com/twilio/status?"),
        ("https", "voice.example.com/twilio/status#"),
        ("https", "user@voice.example.com"),
        ("https", "voice.example.com:99999"),
        ("https", "voice.example.com:"),
        ("https", "[::1"),
        ("ftp", "voice.example.com"),
        ("javascript", "voice.example.com"),
        ("https://voice.example.com/twilio/status?x", "voice.example.com"),
    ] {
        let signed_as = format!("{proto}://{host}/twilio/voice");
        let signature = sign(TOKEN, &signed_as, &form);
        let headers = [("x-forwarded-proto", proto), ("x-forwarded-host", host)];
        let answer = signed_post(&cg.url("/twilio/voice"), &form, &signature, &headers).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{proto} {host}");
    }
    assert_eq!((gate.count(), engine.count()), (0, 0), "no refused request reached the gate or the engine");
    for (proto, host, signed_as) in [
        ("HTTPS", "voice.example.com:8443", "https://voice.example.com:8443/twilio/voice"),
        ("http", "[::1]:8080", "http://[::1]:8080/twilio/voice"),
        ("https", "10.0.0.1", "https://10.0.0.1/twilio/voice"),
        ("https", "voice-1.example.com, proxy.internal", "https://voice-1.example.com/twilio/voice"),
    ] {
        let signature = sign(TOKEN, signed_as, &form);
        let headers = [("x-forwarded-proto", proto), ("x-forwarded-host", host)];
        let answer = signed_post(&cg.url("/twilio/voice"), &form, &signature, &headers).await;
        assert_eq!(answer.status, StatusCode::OK, "{proto} {host}");
    }
}

#[tokio::test]
async fn get_webhooks_sign_the_url_alone() {
    let (cg, gate, _engine) = enforcing(&[TOKEN], |_| {}).await;
    let url = cg.url(&format!("/twilio/voice?{}", ringing(TO)));
    let signature = sign(TOKEN, &url, "");
    let request =
        Request::get(&url).header("x-twilio-signature", &signature).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(request).await.unwrap().status, StatusCode::OK);
    assert_eq!(gate.count(), 1);
    let tampered = url.replace("From=%2B14155550100", "From=%2B14155550199");
    let request = Request::get(&tampered)
        .header("x-twilio-signature", &signature)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(request).await.unwrap().status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn signed_paths_are_checked_but_not_gated_and_other_paths_are_not_checked() {
    let (cg, gate, engine) = enforcing(&[TOKEN], |_| {}).await;
    let url = cg.url("/twilio/status");
    let form = "CallSid=CA1&CallStatus=completed";
    assert_eq!(signed_post(&url, form, &sign(TOKEN, &url, form), &[]).await.status, StatusCode::OK);
    assert_eq!(post_form(&url, form).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        post_form(&cg.url("/twilio/other"), form).await.status,
        StatusCode::OK,
        "an unsigned path passes"
    );
    assert_eq!(gate.count(), 0);
    let uris: Vec<_> = engine.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/twilio/status", "/twilio/other"]);
}

#[tokio::test]
async fn report_mode_lets_a_bad_signature_through_and_off_does_not_check() {
    for mode in [SignatureMode::Report, SignatureMode::Off] {
        let (cg, gate, engine) = enforcing(&[TOKEN], |s| s.twilio_signature = mode).await;
        let answer = signed_post(&cg.url("/twilio/voice"), &ringing(TO), "forged", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{mode:?}");
        assert_eq!((gate.count(), engine.count()), (1, 1), "{mode:?}");
    }
}

#[tokio::test]
async fn gate_requests_are_signed_with_a_timestamp_and_the_raw_body() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let gate = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let cg = Callgate::spawn_with(&number_gate(TO, &gate.url("/g")), &engine.url(""), |s| {
        s.gate_signing_secret = Some(Secret::new("whsec_gate"));
        s.gate_signature_header = http::HeaderName::from_static("x-nixflex-signature");
    })
    .await;
    post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    let seen = &gate.seen()[0];
    let header = seen.headers["x-nixflex-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) < 60, "a current timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"whsec_gate").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&seen.body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
}

#[tokio::test]
async fn near_miss_spellings_of_a_voice_path_are_checked_and_gated_too() {
    let (cg, gate, engine) = enforcing(&[TOKEN], |_| {}).await;
    for path in ["/Twilio/Voice", "/twilio/voice/", "//twilio/voice", "/twilio/%76oice"] {
        let answer = post_form(&cg.url(path), &ringing(TO)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path} is the voice path to an engine");
    }
    assert_eq!(gate.count() + engine.count(), 0);
    let url = cg.url("/Twilio/Voice/");
    let form = ringing(TO);
    let answer = signed_post(&url, &form, &sign(TOKEN, &url, &form), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(gate.count(), 1, "and gated");
    assert_eq!(engine.seen()[0].uri, "/Twilio/Voice/", "forwarded as received");
}
