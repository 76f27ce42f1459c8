//! Owns the agent daemon's transport: loading PEM files, the rustls server configuration (ring
//! provider, optional client-certificate verification, stateless session tickets, a count of full
//! and resumed handshakes for `/metrics`), the accept loop that hands each TLS
//! connection to the HTTP service, and the admission of connections that have not yet shown the
//! token, so that an unauthenticated peer cannot starve a token holder.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connections that have not yet sent a request with the right token ("unauthenticated"), from
/// all peers together. One more evicts an unauthenticated connection (see [`Admission::admit`]).
pub(crate) const MAX_UNAUTHENTICATED: usize = 128;
/// Unauthenticated connections from one peer address (an IPv4 address, or an IPv6 /64) that is
/// not known (see [`MAX_KNOWN`]). One more evicts one of that address's that is silent or past
/// [`GRACE`]: the least advanced (see [`Stage`]), the oldest among those.
pub(crate) const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 16;
/// Connections that have shown the token. One more closes the oldest of them that is between
/// requests (coordinators keep a handful of connections per agent, so idle ones beyond this are a
/// leak); only when every one is serving a request does a request get 503.
pub(crate) const MAX_AUTHENTICATED: usize = 256;
/// An unauthenticated connection younger than this that has sent something (see
/// [`Stage::Talking`]) is not evicted for a stranger's: long enough to finish a handshake and
/// send a request, so a flood that reconnects at once cannot push a real
/// client out mid-handshake. When every candidate is younger, the new connection is closed
/// instead, so the flood competes with itself.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// A connection that has finished its handshake but not sent a request by then is closed: an
/// idle handshaken connection only holds a slot.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Peer addresses that presented the token within [`KNOWN_FOR`] are "known": their connections
/// are never evicted by a stranger's, and evict a stranger's (at any stage and age) when over
/// the global limit. At most this many are remembered; the least recent is forgotten first.
pub(crate) const MAX_KNOWN: usize = 1024;
pub(crate) const KNOWN_FOR: Duration = Duration::from_secs(15 * 60);
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
    // Stateless TLS 1.3 session tickets, so a coordinator that reconnects (an idle connection
    // closed, a coordinator daemon between fires) resumes in one round trip without a
    // certificate signature and check, and the agent keeps no per-client session state: the
    // ticket key lives in memory, so a restarted agent simply does full handshakes again.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| format!("failed to set up TLS session tickets: {e}"))?;
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
        let Some(ticket) = Admission::admit(&admission, addr) else {
            drop(tcp);
            continue;
        };
        let ticket = Arc::new(ticket);
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
    ticket.admission.handshook(tls.get_ref().1.handshake_kind());
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
        on_requests.requested.store(true, Ordering::SeqCst);
        req.extensions_mut().insert(Arc::clone(&on_requests));
        req
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(served);
    // A handshaken connection that sends no request soon only holds a slot: close it.
    let served = tokio::select! {
        served = &mut served => served,
        () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => {
            if !ticket.requested.load(Ordering::SeqCst) {
                tracing::debug!("closing {addr}: no request within {FIRST_REQUEST_TIMEOUT:?} of its handshake");
                return;
            }
            tokio::select! {
                served = &mut served => served,
                () = tokio::time::sleep(UNAUTHENTICATED_LIFETIME.saturating_sub(FIRST_REQUEST_TIMEOUT)) => {
                    if !ticket.is_authenticated() {
                        tracing::debug!("closing {addr}: no request with the token within {UNAUTHENTICATED_LIFETIME:?}");
                        return;
                    }
                    served.await
                }
            }
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
    /// Connections closed to make room, or refused because every candidate was in its grace
    /// period, since the start (for `/metrics`).
    evicted: AtomicU64,
    /// TLS handshakes completed since the start: full ones (certificate signed and checked), and
    /// resumed ones (a session ticket from an earlier connection), for `/metrics`.
    handshakes_full: AtomicU64,
    handshakes_resumed: AtomicU64,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Unauthenticated connections by id (= by age).
    waiting: BTreeMap<u64, Waiting>,
    /// How many of `waiting` each peer address holds.
    per_address: HashMap<IpAddr, usize>,
    /// Authenticated connections by id (= by age).
    authenticated: BTreeMap<u64, Authenticated>,
    /// Peer addresses that showed the token, and when they last did.
    known: HashMap<IpAddr, Instant>,
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
    /// Whether its address was known when it was accepted.
    known: bool,
    since: Instant,
    /// Set as soon as the connection's task is spawned; evicting aborts the task.
    task: Option<AbortHandle>,
}

struct Authenticated {
    /// Requests being served on it right now: a busy connection is never closed to make room.
    busy: usize,
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
    /// Counts a new connection as unauthenticated, first making room if it would exceed a limit;
    /// `None` when there is no room to make (the caller closes the connection).
    ///
    /// Over its address's limit (strangers only), it evicts that address's least advanced, oldest
    /// connection that is silent or past [`GRACE`]. Over the global limit, a connection from a
    /// known address evicts a stranger's connection (any stage, any age) from the stranger
    /// address that holds the most; a stranger's evicts, from the stranger address that holds the
    /// most, a connection that is silent or past [`GRACE`]. Known addresses' connections are never evicted by a stranger's.
    pub(crate) fn admit(this: &Arc<Admission>, addr: SocketAddr) -> Option<Ticket> {
        Self::admit_at(this, addr, Instant::now())
    }

    fn admit_at(this: &Arc<Admission>, addr: SocketAddr, now: Instant) -> Option<Ticket> {
        let address = address_key(addr);
        let (id, evicted) = {
            let mut t = this.table.lock().expect("admission lock");
            let known = t.is_known(address, now);
            let here = t.per_address.get(&address).copied().unwrap_or(0);
            // A known address is not held to the per-address share: a flood from the address a
            // coordinator shares (its own host, a NAT) must not keep the coordinator out.
            let room = if !known && here >= MAX_UNAUTHENTICATED_PER_ADDRESS {
                t.victim(now, |w| w.address == address, true)
                    .map(|id| t.forget(id))
            } else if t.waiting.len() >= MAX_UNAUTHENTICATED {
                // A known address takes a stranger's place at any stage and age; only if there
                // are no strangers does it compete with other known addresses, by the grace rule.
                let stranger = if known {
                    t.victim(now, |w| !w.known, false)
                } else {
                    t.victim(now, |w| !w.known, true)
                };
                let victim = match stranger {
                    Some(id) => Some(id),
                    None if known => t.victim(now, |_| true, true),
                    None => None,
                };
                victim.map(|id| t.forget(id))
            } else {
                Some(None)
            };
            let Some(evicted) = room else {
                drop(t);
                this.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "closing a new connection from {address}: every connection it could replace is younger than {GRACE:?}"
                );
                return None;
            };
            let id = t.next_id;
            t.next_id += 1;
            t.waiting.insert(
                id,
                Waiting {
                    address,
                    stage: Stage::Silent,
                    known,
                    since: now,
                    task: None,
                },
            );
            *t.per_address.entry(address).or_default() += 1;
            (id, evicted)
        };
        // Aborting outside the lock: a task dropped right away would take the lock for its ticket.
        if let Some(w) = evicted {
            this.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "evicting an unauthenticated connection from {} ({:?} for {:?})",
                w.address,
                w.stage,
                now.saturating_duration_since(w.since)
            );
            if let Some(task) = w.task {
                task.abort();
            }
        }
        Some(Ticket {
            admission: Arc::clone(this),
            id,
            authenticated: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            address,
        })
    }

    /// Records the task serving connection `id`, so that it can be evicted.
    fn started(&self, id: u64, task: AbortHandle) {
        let mut t = self.table.lock().expect("admission lock");
        if let Some(w) = t.waiting.get_mut(&id) {
            w.task = Some(task);
        } else if let Some(a) = t.authenticated.get_mut(&id) {
            a.task = Some(task);
        }
    }

    /// How many connections are unauthenticated and authenticated right now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table.lock().expect("admission lock");
        (t.waiting.len(), t.authenticated.len())
    }

    /// Connections closed to make room, or refused for want of it, since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Counts one finished TLS handshake of `kind` (rustls reports it once the handshake is done).
    fn handshook(&self, kind: Option<HandshakeKind>) {
        let counter = match kind {
            Some(HandshakeKind::Resumed) => &self.handshakes_resumed,
            Some(HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest) | None => {
                &self.handshakes_full
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Finished TLS handshakes since the start: (full, resumed).
    pub(crate) fn handshakes(&self) -> (u64, u64) {
        (
            self.handshakes_full.load(Ordering::Relaxed),
            self.handshakes_resumed.load(Ordering::Relaxed),
        )
    }
}

impl Table {
    fn is_known(&self, address: IpAddr, now: Instant) -> bool {
        self.known
            .get(&address)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR)
    }

    /// Remembers that `address` showed the token, forgetting the least recent address when full.
    fn remember(&mut self, address: IpAddr, now: Instant) {
        if !self.known.contains_key(&address) && self.known.len() >= MAX_KNOWN {
            self.known
                .retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN
                && let Some(oldest) = self
                    .known
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(a, _)| *a)
            {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(address, now);
    }

    /// The connection to evict among those `eligible`: from the address that holds the most of
    /// them, the least advanced, then the oldest. With `grace`, connections younger than
    /// [`GRACE`] are not candidates unless they are still silent: a real client sends its
    /// ClientHello at once, so only a flood stays silent, and silent ones go first anyway.
    fn victim(
        &self,
        now: Instant,
        eligible: impl Fn(&Waiting) -> bool,
        grace: bool,
    ) -> Option<u64> {
        let candidates = || {
            self.waiting.iter().filter(|(_, w)| {
                eligible(w)
                    && (!grace
                        || w.stage == Stage::Silent
                        || now.saturating_duration_since(w.since) >= GRACE)
            })
        };
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for (_, w) in candidates() {
            *held.entry(w.address).or_default() += 1;
        }
        let (&most, _) = held.iter().max_by_key(|(_, n)| **n)?;
        candidates()
            .filter(|(_, w)| w.address == most)
            .min_by_key(|(id, w)| (w.stage, **id))
            .map(|(id, _)| *id)
    }

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
    /// Whether a request (its headers) has arrived on the connection.
    requested: AtomicBool,
    address: IpAddr,
}

/// Why a request with the right token cannot be served on its connection.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmissionError {
    #[error("this connection was closed to make room for newer ones")]
    Evicted,
    #[error(
        "too many authenticated connections (at most {MAX_AUTHENTICATED}, all serving a request)"
    )]
    Full,
}

/// Marks an authenticated connection busy while a request is served on it; see
/// [`Ticket::authenticate`].
pub(crate) struct Busy {
    admission: Arc<Admission>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut t = self.admission.table.lock().expect("admission lock");
        if let Some(a) = t.authenticated.get_mut(&self.id) {
            a.busy = a.busy.saturating_sub(1);
        }
    }
}

impl Ticket {
    /// Called when a request on this connection showed the right token: the connection leaves
    /// the unauthenticated pool for good, so no flood can evict it any more, and its address is
    /// known from now on. When the authenticated connections are at their limit, the oldest one
    /// that is between requests is closed to make room. The returned guard marks the connection
    /// busy until the request is answered.
    pub(crate) fn authenticate(&self) -> Result<Busy, AdmissionError> {
        self.authenticate_at(Instant::now())
    }

    fn authenticate_at(&self, now: Instant) -> Result<Busy, AdmissionError> {
        let mut closed = None;
        {
            let mut t = self.admission.table.lock().expect("admission lock");
            if !self.authenticated.load(Ordering::SeqCst) {
                if !t.waiting.contains_key(&self.id) {
                    return Err(AdmissionError::Evicted);
                }
                if t.authenticated.len() >= MAX_AUTHENTICATED {
                    let idle = t
                        .authenticated
                        .iter()
                        .find(|(_, a)| a.busy == 0)
                        .map(|(id, _)| *id)
                        .ok_or(AdmissionError::Full)?;
                    closed = t.authenticated.remove(&idle);
                }
                let task = t.forget(self.id).and_then(|w| w.task);
                t.authenticated
                    .insert(self.id, Authenticated { busy: 0, task });
                self.authenticated.store(true, Ordering::SeqCst);
            }
            t.remember(self.address, now);
            match t.authenticated.get_mut(&self.id) {
                Some(a) => a.busy += 1,
                // Closed to make room between two of its requests.
                None => return Err(AdmissionError::Evicted),
            }
        }
        if let Some(task) = closed.and_then(|a| a.task) {
            tracing::debug!("closing the oldest idle authenticated connection to make room");
            task.abort();
        }
        Ok(Busy {
            admission: Arc::clone(&self.admission),
            id: self.id,
        })
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
            t.authenticated.remove(&self.id);
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

    /// A connection admitted at `now`; panics if it was refused.
    fn admit(admission: &Arc<Admission>, ip: &str, port: u16, now: Instant) -> Ticket {
        Admission::admit_at(admission, at(ip, port), now).expect("admitted")
    }

    /// `authenticate` with its busy guard dropped at once (the request was answered).
    fn auth(ticket: &Ticket, now: Instant) -> Result<(), AdmissionError> {
        ticket.authenticate_at(now).map(drop)
    }

    /// The `i`th of many distinct IPv4 addresses.
    fn nth(i: usize) -> String {
        format!("10.{}.{}.1", i / 256, i % 256)
    }

    #[test]
    fn one_address_never_holds_more_than_its_share_and_its_newest_connection_gets_in() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let flood: Vec<Ticket> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|p| {
                let t = admit(&admission, "10.0.0.1", p as u16, t0);
                t.reached(Stage::Handshaken);
                t
            })
            .collect();
        // Within the grace period nothing of the address's is evicted: the new ones are refused.
        let refused = (0..300)
            .filter(|p| Admission::admit_at(&admission, at("10.0.0.1", *p), t0).is_none())
            .count();
        assert_eq!(refused, 300);
        assert_eq!(admission.counts(), (MAX_UNAUTHENTICATED_PER_ADDRESS, 0));
        // Past it, a new connection takes the oldest's place.
        let later = t0 + GRACE;
        let holder = admit(&admission, "10.0.0.1", 999, later);
        assert_eq!(auth(&flood[0], later), Err(AdmissionError::Evicted));
        assert_eq!(auth(&holder, later), Ok(()));
        assert_eq!(admission.counts(), (MAX_UNAUTHENTICATED_PER_ADDRESS - 1, 1));
        // A burst from the same address cannot take an authenticated connection away.
        let more: Vec<Option<Ticket>> = (0..100)
            .map(|p| Admission::admit_at(&admission, at("10.0.0.1", p), later + GRACE))
            .collect();
        assert_eq!(auth(&holder, later + GRACE), Ok(()));
        drop((flood, more, holder));
        assert_eq!(admission.counts(), (0, 0));
    }

    #[test]
    fn a_flood_of_silent_connections_never_evicts_one_that_talks() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let _early: Vec<Ticket> = (0..10)
            .map(|p| admit(&admission, "10.0.0.1", p, t0))
            .collect();
        let talking = admit(&admission, "10.0.0.1", 100, t0);
        talking.reached(Stage::Talking);
        let handshaken = admit(&admission, "10.0.0.1", 101, t0);
        handshaken.reached(Stage::Handshaken);
        // Silent connections are not protected by the grace period: the flood replaces itself.
        let later = t0 + GRACE * 2;
        let flood: Vec<Option<Ticket>> = (0..1000)
            .map(|p| Admission::admit_at(&admission, at("10.0.0.1", p), later))
            .collect();
        assert!(flood.iter().all(Option::is_some));
        assert_eq!(auth(&talking, later), Ok(()));
        assert_eq!(auth(&handshaken, later), Ok(()));
    }

    #[test]
    fn talking_connections_go_before_handshaken_ones_and_the_oldest_first() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let all: Vec<Ticket> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|p| {
                let t = admit(&admission, "10.0.0.1", p as u16, t0);
                t.reached(if p < 2 {
                    Stage::Handshaken
                } else {
                    Stage::Talking
                });
                t
            })
            .collect();
        let later = t0 + GRACE;
        let _new = admit(&admission, "10.0.0.1", 999, later);
        assert_eq!(auth(&all[2], later), Err(AdmissionError::Evicted));
        assert_eq!(auth(&all[0], later), Ok(()));
        assert_eq!(auth(&all[3], later), Ok(()));
    }

    #[test]
    fn a_full_pool_evicts_from_the_address_that_holds_the_most() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let quiet = admit(&admission, "192.0.2.1", 1, t0);
        // Many addresses, each at its limit, fill the pool; the quiet peer's one connection stays.
        let flood: Vec<Option<Ticket>> = (0..MAX_UNAUTHENTICATED * 2)
            .map(|i| {
                let ip = format!("10.0.{}.1", i % 12);
                let now = t0 + GRACE * (1 + u32::try_from(i).unwrap());
                Admission::admit_at(&admission, at(&ip, i as u16), now)
            })
            .collect();
        assert_eq!(admission.counts().0, MAX_UNAUTHENTICATED);
        assert_eq!(auth(&quiet, t0 + GRACE * 1000), Ok(()));
        drop(flood);
    }

    /// The reviewer's flood: one handshaken connection on each of 400 addresses, reconnecting as
    /// soon as it is evicted. A client on a new address that got in is not pushed out while it
    /// finishes its handshake, even though its address holds as many as each flooding one.
    #[test]
    fn a_new_client_is_not_evicted_during_its_grace_by_a_flood_from_many_addresses() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let mut flood: Vec<Ticket> = (0..MAX_UNAUTHENTICATED - 1)
            .map(|i| {
                let t = admit(&admission, &nth(i), 1, t0);
                t.reached(Stage::Handshaken);
                t
            })
            .collect();
        let client_at = t0 + GRACE * 2;
        let client = admit(&admission, "192.0.2.1", 1, client_at);
        client.reached(Stage::Talking);
        let mut refused = 0;
        for i in 0..400 {
            let now = client_at + GRACE / 2;
            match Admission::admit_at(&admission, at(&nth(1000 + i), 1), now) {
                Some(t) => {
                    t.reached(Stage::Handshaken);
                    flood.push(t);
                }
                None => refused += 1,
            }
        }
        // The old connections made room for the first ones; then only young ones were left.
        assert_eq!(refused, 400 - (MAX_UNAUTHENTICATED - 1));
        assert_eq!(auth(&client, client_at + GRACE / 2), Ok(()));
    }

    #[test]
    fn a_known_address_takes_a_strangers_place_at_any_age_and_keeps_its_own() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let first = admit(&admission, "192.0.2.1", 1, t0);
        assert_eq!(auth(&first, t0), Ok(()));
        drop(first);
        let t1 = t0 + Duration::from_secs(60);
        let flood: Vec<Ticket> = (0..MAX_UNAUTHENTICATED)
            .map(|i| admit(&admission, &nth(i), 1, t1))
            .collect();
        // Every stranger's connection is in its grace period, yet the known address gets in.
        let client = admit(&admission, "192.0.2.1", 2, t1);
        assert_eq!(
            flood
                .iter()
                .filter(|t| auth(t, t1) == Err(AdmissionError::Evicted))
                .count(),
            1
        );
        // Strangers' new connections, long after, never evict the known address's.
        let later = t1 + Duration::from_secs(5);
        let more: Vec<Option<Ticket>> = (0..1000)
            .map(|i| Admission::admit_at(&admission, at(&nth(2000 + i), 1), later))
            .collect();
        assert_eq!(auth(&client, later), Ok(()));
        drop((flood, more));
    }

    #[test]
    fn a_known_address_is_not_held_to_the_per_address_share() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let first = admit(&admission, "127.0.0.1", 1, t0);
        assert_eq!(auth(&first, t0), Ok(()));
        // A flood from the coordinator's own address, every connection young and handshaken.
        let flood: Vec<Ticket> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS * 2)
            .map(|p| {
                let t = admit(&admission, "127.0.0.1", 100 + p as u16, t0);
                t.reached(Stage::Handshaken);
                t
            })
            .collect();
        let client = admit(&admission, "127.0.0.1", 2, t0);
        assert_eq!(auth(&client, t0), Ok(()));
        drop((first, flood));
    }

    #[test]
    fn an_address_is_known_for_a_while_and_the_known_table_is_bounded() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        for i in 0..MAX_KNOWN + 100 {
            let t = admit(&admission, &nth(i), 1, t0 + Duration::from_millis(i as u64));
            assert_eq!(auth(&t, t0 + Duration::from_millis(i as u64)), Ok(()));
        }
        let t = admission.table.lock().unwrap();
        assert_eq!(t.known.len(), MAX_KNOWN);
        let last = address_key(at(&nth(MAX_KNOWN + 99), 1));
        let now = t0 + Duration::from_secs(1);
        assert!(!t.is_known(address_key(at(&nth(0), 1)), now));
        assert!(t.is_known(last, now));
        assert!(!t.is_known(last, t0 + Duration::from_secs(2) + KNOWN_FOR));
    }

    #[test]
    fn a_token_holder_over_the_authenticated_limit_closes_the_oldest_idle_connection() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let held: Vec<Ticket> = (0..MAX_AUTHENTICATED)
            .map(|i| {
                let t = admit(&admission, &nth(i), 1, t0);
                assert_eq!(auth(&t, t0), Ok(()));
                t
            })
            .collect();
        // The oldest is serving a request: the second oldest, idle, makes room.
        let busy = held[0].authenticate_at(t0).unwrap();
        let halt = admit(&admission, "192.0.2.1", 1, t0);
        assert_eq!(auth(&halt, t0), Ok(()));
        assert_eq!(auth(&held[1], t0), Err(AdmissionError::Evicted));
        assert_eq!(admission.counts(), (0, MAX_AUTHENTICATED));
        drop(busy);
        // When every authenticated connection is serving a request, there is no room to make.
        let all_busy: Vec<Busy> = held
            .iter()
            .skip(2)
            .chain([&held[0], &halt])
            .map(|t| t.authenticate_at(t0).unwrap())
            .collect();
        let late = admit(&admission, "192.0.2.2", 1, t0);
        assert_eq!(auth(&late, t0), Err(AdmissionError::Full));
        drop((all_busy, held, halt, late));
        assert_eq!(admission.counts(), (0, 0));
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
