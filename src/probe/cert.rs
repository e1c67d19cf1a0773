//! The gate's certificate, read over a TLS handshake of its own: its days to expiry and whether
//! it verifies against the roots callgate trusts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::report::human;
use crate::routes::Gate;
use crate::tls;

/// What the TLS handshake showed of the gate's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certificate {
    /// An `http://` gate.
    NotHttps,
    /// Whole days until `notAfter` (negative once expired), and whether it verifies against
    /// the roots callgate trusts (the error otherwise).
    Read { days_left: i64, verified: Result<(), String> },
    /// No certificate could be read: the handshake failed before one was shown, or it is not
    /// valid X.509.
    Unreadable(String),
}

/// One TLS handshake of its own with the gate, to read its certificate: verified against the
/// roots callgate trusts, but read even when it does not verify, so an expired one can say so.
pub(super) async fn inspect(gate: &Gate, roots: rustls::RootCertStore, timeout: Duration) -> Certificate {
    let uri = gate.uri();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Certificate::Unreadable("the host is not a valid TLS server name".into());
    };
    let inspect = match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider()).build()
    {
        Ok(inner) => Arc::new(Inspect { inner, seen: Mutex::new(None) }),
        Err(e) => return Certificate::Unreadable(e.to_string()),
    };
    let config = match rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&inspect) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth(),
        Err(e) => return Certificate::Unreadable(e.to_string()),
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    };
    let outcome = tokio::time::timeout(timeout, handshake).await;
    let seen = inspect.seen.lock().expect("never poisoned").take();
    match (seen, outcome) {
        (Some(certificate), _) => certificate,
        (None, Err(_)) => Certificate::Unreadable(format!("no TLS handshake within {}", human(timeout))),
        (None, Ok(Err(e))) => Certificate::Unreadable(e.to_string()),
        (None, Ok(Ok(_))) => Certificate::Unreadable("the server showed no certificate".into()),
    }
}

/// Whole days from now until the certificate's `notAfter`; negative once it has passed.
fn days_left(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    Some((cert.validity().not_after.timestamp() - now).div_euclid(86_400))
}

/// A verifier that reads the end-entity certificate, keeps it with the real verifier's verdict
/// on it, and lets the handshake go on either way. Only for reading the certificate: nothing is
/// sent over such a connection.
#[derive(Debug)]
struct Inspect {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Certificate>>,
}

impl ServerCertVerifier for Inspect {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let certificate = match days_left(end_entity) {
            Some(days_left) => Certificate::Read { days_left, verified },
            None => Certificate::Unreadable("the certificate is not valid X.509".into()),
        };
        *self.seen.lock().expect("never poisoned") = Some(certificate);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_are_whole_days_until_not_after() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        for (offset, days) in
            [(5 * 86_400 - 60, 4), (5 * 86_400 + 3_600, 5), (-3_600, -1), (-2 * 86_400 - 60, -3)]
        {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(now + offset).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(days_left(cert.der()), Some(days), "{offset} s");
        }
        assert_eq!(days_left(b"not DER"), None);
    }
}
