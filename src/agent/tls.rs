//! Owns the agent daemon's transport: loading PEM files, the rustls server configuration (ring
//! provider, optional client-certificate verification), the accept loop that hands each TLS
//! connection to the HTTP service, and the admission of connections that have not yet shown the
//! token, so that an unauthenticated peer cannot starve a token holder.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connections that have not yet sent a request with the right token ("unauthenticated"), from
/// all peers together. One more evicts an unauthenticated connection of the peer address that
/// holds the most, so a flood costs the flooding address its own connections first.
pub(crate) const MAX_UNAUTHENTICATED: usize = 128;
/// Unauthenticated connections from one peer address (an IPv4 address, or an IPv6 /64). One more
/// evicts one of that address's: the least advanced (see [`Stage`]), the oldest among those. So
/// a token holder's new connection always gets in, even from the address that floods, and once
/// its client has spoken, silent connections go before it.
pub(crate) const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 16;
/// Connections that have shown the token. Beyond this, requests get 503 (coordinators keep a
/// handful of connections per agent, so this is a leak, not a load).
pub(crate) const MAX_AUTHENTICATED: usize = 256;
/// A client that has not finished its TLS handshake by then is dropped (slowloris). A handshake
/// takes two round trips, so this is generous even across continents.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// An unauthenticated connection is closed this long after its handshake, whatever it sends.
pub(crate) const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this; an idle kept-alive connection is closed after it.
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

/// Accepts TLS connections and serves `app` on each until `shutdown` completes. Every connection
/// runs in its own task so a slow client never blocks another, and is admitted by [`Admission`]:
/// accepting never waits for a slot, so a token holder is never queued behind idle connections.
pub(crate) async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    app: Router,
    admission: Arc<Admission>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::pin!(shutdown);
    loop {
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
        let ticket = Arc::new(Admission::admit(&admission, addr));
        let id = ticket.id;
        let (acceptor, app) = (acceptor.clone(), app.clone());
        let task = tokio::spawn(connection(tcp, addr, acceptor, app, ticket));
        admission.started(id, task.abort_handle());
    }
}

/// Serves one connection: TLS handshake (bounded), then HTTP/1.1 until the client is done. The
/// ticket rides on every request so the token check can mark the connection authenticated.
async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    ticket: Arc<Ticket>,
) {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // A client that has sent something (its ClientHello) is worth more than one that is silent:
    // noting it protects a real client from a flood of silent connections from its address.
    // `peek`, not `readable`: readiness can be reported before a byte has arrived.
    match tokio::time::timeout_at(deadline, tcp.peek(&mut [0_u8; 1])).await {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => ticket.reached(Stage::Talking),
        Ok(Err(e)) => {
            tracing::debug!("connection from {addr} failed before its handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("{addr} sent nothing within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    }
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!("TLS handshake with {addr} failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                "TLS handshake with {addr} did not finish within {HANDSHAKE_TIMEOUT:?}"
            );
            return;
        }
    };
    ticket.reached(Stage::Handshaken);
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
    let on_requests = Arc::clone(&ticket);
    let service = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(Arc::clone(&on_requests));
        req
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(served);
    let served = tokio::select! {
        served = &mut served => served,
        () = tokio::time::sleep(UNAUTHENTICATED_LIFETIME) => {
            if !ticket.is_authenticated() {
                tracing::debug!("closing {addr}: no request with the token within {UNAUTHENTICATED_LIFETIME:?}");
                return;
            }
            served.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("connection from {addr} ended: {e}");
    }
}

/// Which connections are open, and which of them have shown the token. Unauthenticated ones are
/// kept in age order (ids only grow), so the oldest of an address is the first it meets.
#[derive(Default)]
pub(crate) struct Admission {
    table: Mutex<Table>,
    /// Unauthenticated connections closed to make room, since the start (for `/metrics`).
    evicted: AtomicU64,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Unauthenticated connections by id (= by age).
    waiting: BTreeMap<u64, Waiting>,
    /// How many of `waiting` each peer address holds.
    per_address: HashMap<IpAddr, usize>,
    authenticated: usize,
}

/// How far an unauthenticated connection got. Eviction takes the lowest stage first, the oldest
/// within it, so a flood of connections that send nothing never evicts one that is talking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Accepted; the client has sent nothing yet.
    Silent,
    /// The client has sent something: its TLS handshake is under way.
    Talking,
    /// The TLS handshake is done; no request with the token yet.
    Handshaken,
}

struct Waiting {
    address: IpAddr,
    stage: Stage,
    /// When it was accepted, for the log.
    since: std::time::Instant,
    /// Set as soon as the connection's task is spawned; evicting aborts the task.
    task: Option<AbortHandle>,
}

/// The peer address connections are counted by: an IPv4 address, or the /64 of an IPv6 one (a
/// host gets a whole /64, so counting single IPv6 addresses would count nothing).
fn address_key(addr: SocketAddr) -> IpAddr {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

impl Admission {
    /// Counts a new connection as unauthenticated, first evicting an older unauthenticated
    /// connection if the new one would exceed a limit: the same address's oldest, or else the
    /// oldest of the address that holds the most.
    pub(crate) fn admit(this: &Arc<Admission>, addr: SocketAddr) -> Ticket {
        let address = address_key(addr);
        let mut evicted = Vec::new();
        let id = {
            let mut t = this.table.lock().expect("admission lock");
            let here = t.per_address.get(&address).copied().unwrap_or(0);
            let victim = if here >= MAX_UNAUTHENTICATED_PER_ADDRESS {
                Some(address)
            } else if t.waiting.len() >= MAX_UNAUTHENTICATED {
                t.per_address
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(a, _)| *a)
            } else {
                None
            };
            if let Some(victim) = victim {
                let oldest = t
                    .waiting
                    .iter()
                    .filter(|(_, w)| w.address == victim)
                    .min_by_key(|(id, w)| (w.stage, **id))
                    .map(|(id, _)| *id);
                if let Some(w) = oldest.and_then(|id| t.forget(id)) {
                    evicted.push(w);
                }
            }
            let id = t.next_id;
            t.next_id += 1;
            t.waiting.insert(
                id,
                Waiting {
                    address,
                    stage: Stage::Silent,
                    since: std::time::Instant::now(),
                    task: None,
                },
            );
            *t.per_address.entry(address).or_default() += 1;
            id
        };
        // Aborting outside the lock: a task dropped right away would take the lock for its ticket.
        this.evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        for w in evicted {
            tracing::debug!(
                "evicting an unauthenticated connection from {} ({:?} for {:?})",
                w.address,
                w.stage,
                w.since.elapsed()
            );
            if let Some(task) = w.task {
                task.abort();
            }
        }
        Ticket {
            admission: Arc::clone(this),
            id,
            authenticated: AtomicBool::new(false),
        }
    }

    /// Records the task serving connection `id`, so that it can be evicted.
    fn started(&self, id: u64, task: AbortHandle) {
        let mut t = self.table.lock().expect("admission lock");
        if let Some(w) = t.waiting.get_mut(&id) {
            w.task = Some(task);
        }
    }

    /// How many connections are unauthenticated and authenticated right now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table.lock().expect("admission lock");
        (t.waiting.len(), t.authenticated)
    }

    /// Unauthenticated connections closed to make room since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Table {
    fn forget(&mut self, id: u64) -> Option<Waiting> {
        let w = self.waiting.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&w.address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&w.address);
            }
        }
        Some(w)
    }
}

/// One connection's place in [`Admission`]; its drop (when the connection ends) frees the place.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    authenticated: AtomicBool,
}

/// Why a request with the right token cannot be served on its connection.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmissionError {
    #[error("this connection was closed to make room for newer ones")]
    Evicted,
    #[error("too many authenticated connections (at most {MAX_AUTHENTICATED})")]
    Full,
}

impl Ticket {
    /// Called when a request on this connection showed the right token: the connection leaves
    /// the unauthenticated pool for good, so no flood can evict it any more.
    pub(crate) fn authenticate(&self) -> Result<(), AdmissionError> {
        if self.authenticated.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut t = self.admission.table.lock().expect("admission lock");
        if !t.waiting.contains_key(&self.id) {
            return Err(AdmissionError::Evicted);
        }
        if t.authenticated >= MAX_AUTHENTICATED {
            return Err(AdmissionError::Full);
        }
        t.forget(self.id);
        t.authenticated += 1;
        self.authenticated.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Records how far the connection got, for eviction.
    fn reached(&self, stage: Stage) {
        let mut t = self.admission.table.lock().expect("admission lock");
        if let Some(w) = t.waiting.get_mut(&self.id) {
            w.stage = stage;
        }
    }

    fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::SeqCst)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.admission.table.lock().expect("admission lock");
        if self.is_authenticated() {
            t.authenticated -= 1;
        } else {
            t.forget(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    #[test]
    fn one_address_never_holds_more_than_its_share_and_its_newest_connection_gets_in() {
        let admission = Arc::new(Admission::default());
        let flood: Vec<Ticket> = (0..300)
            .map(|p| Admission::admit(&admission, at("10.0.0.1", p)))
            .collect();
        assert_eq!(admission.counts(), (MAX_UNAUTHENTICATED_PER_ADDRESS, 0));
        // The oldest were evicted, the newest remain.
        assert_eq!(flood[0].authenticate(), Err(AdmissionError::Evicted));
        let holder = Admission::admit(&admission, at("10.0.0.1", 999));
        assert_eq!(holder.authenticate(), Ok(()));
        assert_eq!(admission.counts(), (MAX_UNAUTHENTICATED_PER_ADDRESS - 1, 1));
        // A burst from the same address cannot take an authenticated connection away.
        let more: Vec<Ticket> = (0..100)
            .map(|p| Admission::admit(&admission, at("10.0.0.1", p)))
            .collect();
        assert_eq!(holder.authenticate(), Ok(()));
        drop((flood, more, holder));
        assert_eq!(admission.counts(), (0, 0));
    }

    #[test]
    fn a_flood_of_silent_connections_never_evicts_one_that_talks() {
        let admission = Arc::new(Admission::default());
        let _early: Vec<Ticket> = (0..10)
            .map(|p| Admission::admit(&admission, at("10.0.0.1", p)))
            .collect();
        let talking = Admission::admit(&admission, at("10.0.0.1", 100));
        talking.reached(Stage::Talking);
        let handshaken = Admission::admit(&admission, at("10.0.0.1", 101));
        handshaken.reached(Stage::Handshaken);
        let _flood: Vec<Ticket> = (0..1000)
            .map(|p| Admission::admit(&admission, at("10.0.0.1", p)))
            .collect();
        assert_eq!(talking.authenticate(), Ok(()));
        assert_eq!(handshaken.authenticate(), Ok(()));
    }

    #[test]
    fn talking_connections_go_before_handshaken_ones_and_the_oldest_first() {
        let admission = Arc::new(Admission::default());
        let all: Vec<Ticket> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|p| {
                let t = Admission::admit(&admission, at("10.0.0.1", p as u16));
                t.reached(if p < 2 {
                    Stage::Handshaken
                } else {
                    Stage::Talking
                });
                t
            })
            .collect();
        let _new = Admission::admit(&admission, at("10.0.0.1", 999));
        assert_eq!(all[2].authenticate(), Err(AdmissionError::Evicted));
        assert_eq!(all[0].authenticate(), Ok(()));
        assert_eq!(all[3].authenticate(), Ok(()));
    }

    #[test]
    fn a_full_pool_evicts_from_the_address_that_holds_the_most() {
        let admission = Arc::new(Admission::default());
        let quiet = Admission::admit(&admission, at("192.0.2.1", 1));
        // Many addresses, each at its limit, fill the pool; the quiet peer's one connection stays.
        let flood: Vec<Ticket> = (0..MAX_UNAUTHENTICATED * 2)
            .map(|i| {
                let ip = format!("10.0.{}.1", i % 12);
                Admission::admit(&admission, at(&ip, i as u16))
            })
            .collect();
        assert_eq!(admission.counts().0, MAX_UNAUTHENTICATED);
        assert_eq!(quiet.authenticate(), Ok(()));
        drop(flood);
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64_prefix() {
        assert_eq!(
            address_key(at("2001:db8:1:2:aaaa::1", 1)),
            address_key(at("2001:db8:1:2:bbbb::2", 1))
        );
        assert_ne!(
            address_key(at("2001:db8:1:2::1", 1)),
            address_key(at("2001:db8:1:3::1", 1))
        );
        assert_eq!(
            address_key(at("::ffff:10.0.0.1", 1)),
            address_key(at("10.0.0.1", 1))
        );
    }
}
