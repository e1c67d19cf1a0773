//! TLS: the public listener's certificate (rustls, HTTP/1.1 and HTTP/2 by ALPN, swapped in
//! whole when cert-manager renews the files) and the gate client's roots (bundled public roots
//! plus a private CA file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// How often the certificate and key files are checked for a renewal.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: no usable PEM private key")]
    NoKey { path: String },
    #[error("{cert} and {key} do not belong together")]
    Mismatch { cert: String, key: String },
}

/// The rustls provider used everywhere: ring, so that only one provider is ever compiled in.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configuration for gates: the bundled Mozilla roots (a distroless image has no system
/// store), plus every certificate in `ca_file` (private CAs).
pub fn gate_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(gate_roots(ca_file)?)
        .with_no_client_auth())
}

/// The roots a gate's certificate is verified against: the bundled Mozilla roots plus every
/// certificate in `ca_file`.
pub fn gate_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, and checks that they belong together (a pair caught
/// half-written during a renewal does not).
fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert)?;
    let pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| TlsError::NoKey { path: key.display().to_string() })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| TlsError::NoKey { path: key.display().to_string() })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// The serving certificate, swapped whole on renewal; handshakes read whichever is in force.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The public listener's TLS: the acceptor and the files it reloads from.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
}

impl ServerTls {
    /// Loads `cert` and `key`; a bad pair stops start-up.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let store = Arc::new(CertStore { current: ArcSwap::new(load_pair(cert, key)?) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            store,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Polls the files and swaps in a renewed pair; a pair that does not load (half-written,
    /// mismatched) keeps the old one serving and is retried on the next change.
    pub fn watch(&self, metrics: &'static Metrics) -> tokio::task::JoinHandle<()> {
        let (store, cert, key) = (Arc::clone(&self.store), self.cert.clone(), self.key.clone());
        tokio::spawn(async move {
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen: (Option<SystemTime>, Option<SystemTime>) = (stamp(&cert), stamp(&key));
            let mut poll = tokio::time::interval(RELOAD_POLL);
            loop {
                poll.tick().await;
                let now = (stamp(&cert), stamp(&key));
                if now == seen {
                    continue;
                }
                seen = now;
                let (c, k) = (cert.clone(), key.clone());
                match tokio::task::spawn_blocking(move || load_pair(&c, &k)).await {
                    Ok(Ok(pair)) => {
                        store.current.store(pair);
                        metrics.record_tls_reload(true);
                        tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    }
                    Ok(Err(e)) => {
                        metrics.record_tls_reload(false);
                        tracing::error!(error = %e, "TLS certificate reload failed; the old certificate keeps serving");
                    }
                    Err(_) => metrics.record_tls_reload(false),
                }
            }
        })
    }
}
