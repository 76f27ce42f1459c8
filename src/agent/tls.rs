//! Owns the agent daemon's transport: loading PEM files, the rustls server configuration (ring
//! provider, optional client-certificate verification) and the bounded accept loop that hands each
//! TLS connection to the HTTP service.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// At most this many connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not finished its TLS handshake by then is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Who sent a request, as far as the transport knows: put in every request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// The SHA-256 fingerprint (first 16 hex digits) of the client certificate, under mutual TLS.
    pub(crate) client_cert: Option<String>,
}

impl Peer {
    pub(crate) fn identity(&self) -> String {
        match &self.client_cert {
            Some(fp) => format!("{} (client certificate {fp})", self.addr),
            None => self.addr.to_string(),
        }
    }
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("failed to read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: our certificate and key, and (with `client_ca`) mandatory client certificates.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("failed to read the private key {}: {e}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("failed to set up TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| {
                    format!("invalid client CA certificate in {}: {e}", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| {
                    format!(
                        "failed to set up client certificate checks with {}: {e}",
                        ca.display()
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the certificate {} does not match its key: {e}",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TLS connections and serves `app` on each until `shutdown` completes. Connections are
/// bounded by a semaphore; each one runs in its own task so a slow client never blocks another.
pub(crate) async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!("failed to accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!("TLS handshake with {addr} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| {
                    let digest = Sha256::digest(c.as_ref());
                    crate::certs::hex(&digest[..8])
                });
            let peer = Peer { addr, client_cert };
            let service = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                tracing::debug!("connection from {addr} ended: {e}");
            }
        });
    }
}
