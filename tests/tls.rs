//! TLS on real sockets: serving HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a renewed certificate
//! picked up without a restart, and gates behind TLS: a self-signed gate fails open, a private
//! CA given with --gate-ca-file is trusted. Certificates are generated here with rcgen.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;

const TO: &str = "+447700900123";

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf certificate for localhost and 127.0.0.1: (cert PEM, key PEM, cert DER).
    fn leaf(&self) -> (String, String, CertificateDer<'static>) {
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }
}

fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(callgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One TLS connection to `addr`: the certificate the server showed and the negotiated ALPN.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn https_post(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    h2: bool,
    body: String,
) -> (StatusCode, Bytes) {
    let request = Request::post("https://localhost/twilio/voice")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(request).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().insert("host", "localhost".parse().unwrap());
        send.send_request(request).await.unwrap()
    };
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
}

#[tokio::test]
async fn serves_https_and_picks_up_a_renewed_certificate_without_dropping_calls() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("callgate test CA");
    let (cert, key, first_der) = ca.leaf();
    write_pair(certs.path(), &cert, &key);
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| {
        s.tls_cert = Some(certs.path().join("tls.crt"));
        s.tls_key = Some(certs.path().join("tls.key"));
    })
    .await;

    for (alpn, h2) in [(&[&b"http/1.1"[..]][..], false), (&[&b"h2"[..]][..], true)] {
        let tls = handshake(cg.addr, client_config(&ca, alpn)).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn[0]));
        assert_eq!(peer_cert(&tls), first_der);
        let (status, _) = https_post(tls, h2, ringing(TO)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let seen = engine.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.headers["x-forwarded-proto"] == "https"));

    // A connection open across the renewal keeps working.
    let open = handshake(cg.addr, client_config(&ca, &[b"http/1.1"])).await;

    // A half-written pair (new certificate, old key) is refused; the old pair keeps serving.
    let (new_cert, new_key, new_der) = ca.leaf();
    std::fs::write(certs.path().join("tls.crt"), &new_cert).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tls = handshake(cg.addr, client_config(&ca, &[b"http/1.1"])).await;
    assert_eq!(peer_cert(&tls), first_der, "a mismatched pair never replaces a good one");

    std::fs::write(certs.path().join("tls.key"), &new_key).unwrap();
    eventually(Duration::from_secs(5), || {
        let ca = &ca;
        let new_der = new_der.clone();
        async move { peer_cert(&handshake(cg.addr, client_config(ca, &[b"http/1.1"])).await) == new_der }
    })
    .await;
    let (status, _) = https_post(open, false, ringing(TO)).await;
    assert_eq!(status, StatusCode::OK, "the connection made before the renewal still serves");
}

/// An HTTPS gate on 127.0.0.1:0 with the given certificate, answering `answer`.
async fn tls_gate(cert: &str, key: &str, answer: &'static str) -> SocketAddr {
    let acceptor = tls_acceptor(cert, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_r| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        answer.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_gate_with_an_untrusted_certificate_fails_open_and_a_private_ca_is_trusted() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let private = Ca::new("private gate CA");
    let (cert, key, _) = private.leaf();
    let gate = tls_gate(&cert, &key, r#"{"action":"reject"}"#).await;
    let routes = number_gate(TO, &format!("https://localhost:{}/precall", gate.port()));

    let cg = Callgate::spawn_with(&routes, &engine.url(""), |s| s.allow_insecure_gates = false).await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        engine.seen()[0].headers["x-callgate-decision"],
        "fail_open",
        "an untrusted certificate is a connect failure"
    );

    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), private.cert.pem()).unwrap();
    let path = ca_file.path().to_owned();
    let cg = Callgate::spawn_with(&routes, &engine.url(""), |s| {
        s.allow_insecure_gates = false;
        s.gate_ca_file = Some(path);
    })
    .await;
    let answer = post_form(&cg.url("/twilio/voice"), &ringing(TO)).await;
    assert_eq!(
        &answer.body[..],
        GOLDEN_REJECT.trim_ascii_end(),
        "trusted through --gate-ca-file, the gate decides"
    );
}
