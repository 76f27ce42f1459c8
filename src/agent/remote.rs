//! Owns the coordinator's side of the agent API: an HTTPS client (rustls, trusting only the
//! inventory's CA) that speaks the wire types of `protocol.rs` and maps agent errors back onto
//! [`AgentError`], so the run loop cannot tell a remote agent from the embedded one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::AgentError;
use super::server::excerpt;
use crate::protocol::{
    Applied, ApplyRequest, ErrorBody, FaultStatus, Health, OpenRequest, PROTOCOL_VERSION,
    RenewRequest, Renewed, Reverted, RevertedAll,
};

/// How long one request may take. An apply allocates files or waits for processes to stop, so
/// this is generous; lease renewals are bounded separately by the run loop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest error message from an agent that is passed on (agents cut theirs to 400).
const MAX_ERROR_CHARS: usize = 600;
/// A pooled connection idle this long is dropped by the client. Shorter than the agent's own
/// idle limit (10 s, `tls::HEADER_TIMEOUT`), so a request is never written onto a connection the
/// agent is closing at that moment.
const POOL_IDLE: Duration = Duration::from_secs(8);
/// Idle connections kept per agent: a run has a few requests in flight per agent at most (an
/// apply or revert per fault on it, and one renewal), and an agent closes idle authenticated
/// connections beyond its limit anyway.
const POOL_PER_AGENT: usize = 8;
/// TLS sessions remembered for resumption, over all agents of all inventories in this process.
const SESSION_CACHE: usize = 4096;
/// Distinct credential sets (CA, client certificate) whose connections this process keeps.
const MAX_SHARED: usize = 8;

/// What the client needs to trust and authenticate to agents, shared by a whole inventory.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) token: String,
    /// Client certificate and key (PEM, concatenated) for agents that require mutual TLS.
    pub(crate) identity_pem: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct RemoteAgent {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) tags: BTreeMap<String, String>,
    client: reqwest::Client,
    token: String,
}

/// The HTTPS side shared by every agent reached with the same CA and client certificate: one
/// rustls configuration (so one TLS session cache: a reconnection resumes instead of doing a full
/// handshake) and one connection pool (so a run's preflight, applies, renewals and reverts to an
/// agent reuse one kept-alive connection: one round trip each). Kept for the life of the process,
/// so a coordinator that loads its inventory for every fire still finds its connections and
/// sessions from the last one.
struct Shared {
    /// SHA-256 of the CA and client identity PEM.
    key: [u8; 32],
    tls: rustls::ClientConfig,
    client: reqwest::Client,
}

static SHARED: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

impl Shared {
    /// The shared side for `creds`, made on first use; the least recently made one is dropped
    /// beyond [`MAX_SHARED`] (its agents keep their clients; only the sharing ends).
    fn get(creds: &Credentials) -> Result<Arc<Shared>, String> {
        let mut hash = Sha256::new();
        hash.update((creds.ca_pem.len() as u64).to_le_bytes());
        hash.update(&creds.ca_pem);
        if let Some(identity) = &creds.identity_pem {
            hash.update(identity);
        }
        let key: [u8; 32] = hash.finalize().into();
        let mut all = SHARED.lock().expect("shared clients lock");
        if let Some(shared) = all.iter().find(|s| s.key == key) {
            return Ok(Arc::clone(shared));
        }
        let tls = client_config(creds)?;
        let client = builder(&tls)
            .build()
            .map_err(|e| format!("failed to set up the HTTPS client: {e}"))?;
        let shared = Arc::new(Shared { key, tls, client });
        if all.len() >= MAX_SHARED {
            all.remove(0);
        }
        all.push(Arc::clone(&shared));
        Ok(shared)
    }
}

/// The rustls client configuration: trusts only the inventory's CA, presents the client
/// certificate when there is one, speaks HTTP/1.1, and remembers sessions for resumption.
fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&creds.ca_pem) {
        let cert = cert.map_err(|e| format!("invalid CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("invalid CA certificate: no PEM certificate found".to_owned());
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("failed to set up TLS: {e}"))?
    .with_root_certificates(roots);
    let mut config = match &creds.identity_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let invalid =
                |e: &dyn std::fmt::Display| format!("invalid client certificate or key: {e}");
            let chain = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&e))?;
            if chain.is_empty() {
                return Err(invalid(&"no PEM certificate found"));
            }
            let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(&e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSION_CACHE);
    Ok(config)
}

/// A client builder with the shared TLS configuration and this module's limits. A clone of a
/// `ClientConfig` shares its session cache.
fn builder(tls: &rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .https_only(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_PER_AGENT)
        .no_proxy()
}

impl RemoteAgent {
    /// `resolve` pins the address's host name to one IP (DNS discovery): TLS still checks the
    /// certificate against the host name, while the connection goes to that one agent. Such an
    /// agent gets a client of its own (the pin is per client) that still shares the TLS session
    /// cache; every other agent shares one client and its connection pool.
    pub(crate) fn new(
        name: String,
        address: &str,
        tags: BTreeMap<String, String>,
        creds: &Credentials,
        resolve: Option<(String, SocketAddr)>,
    ) -> Result<RemoteAgent, String> {
        let shared = Shared::get(creds)?;
        let client = match resolve {
            None => shared.client.clone(),
            Some((host, addr)) => {
                builder(&shared.tls)
                    .resolve(&host, addr)
                    .build()
                    .map_err(|e| {
                        format!("failed to set up the HTTPS client for agent `{name}`: {e}")
                    })?
            }
        };
        Ok(RemoteAgent {
            name,
            address: address.trim_end_matches('/').to_owned(),
            tags,
            client,
            token: creds.token.clone(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, AgentError> {
        self.call_within(method, path, body, Duration::ZERO).await
    }

    /// [`RemoteAgent::call`], given `extra` time beyond [`REQUEST_TIMEOUT`]: what an action kind
    /// may spend running its programs or requests on the agent.
    async fn call_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        extra: Duration,
    ) -> Result<T, AgentError> {
        let url = format!("{}{path}", self.address);
        let mut req = self
            .client
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT + extra);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| AgentError::Internal(format!("failed to encode the request: {e}")))?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let unreachable = |e: reqwest::Error| {
            AgentError::Unreachable(format!(
                "agent `{}` at {url}: {}",
                self.name,
                error_chain(&e)
            ))
        };
        let response = req.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::Internal(format!(
                    "agent `{}` sent an answer this coordinator cannot read: {e}",
                    self.name
                ))
            });
        }
        let (kind, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.kind, body.error),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&bytes).trim().to_owned(),
            ),
        };
        // What an agent (or whatever answers at its address) says ends up on a terminal and in
        // reports: keep it short and printable.
        let message = format!(
            "agent `{}`: {}",
            self.name,
            excerpt(&message, MAX_ERROR_CHARS)
        );
        Err(match (status, kind.as_str()) {
            (StatusCode::UNAUTHORIZED, _) => {
                AgentError::Refused(format!("{message} (check the inventory's token_file)"))
            }
            (_, "bad_request") => AgentError::BadRequest(message),
            (_, "refused") => AgentError::Refused(message),
            (_, "conflict") => AgentError::Conflict(message),
            (_, "fault_failed") => AgentError::FaultFailed(message),
            (_, "revert_failed") => AgentError::RevertFailed(message),
            _ => AgentError::Internal(format!("{message} (HTTP {status})")),
        })
    }

    pub(crate) async fn apply(&self, id: &str, req: &ApplyRequest) -> Result<Applied, AgentError> {
        let extra = req.spec.apply_allowance();
        self.call_within(Method::PUT, &format!("/v1/faults/{id}"), Some(req), extra)
            .await
    }

    /// Opens a run resource (a proxy); it is closed by [`RemoteAgent::revert`] like a fault.
    pub(crate) async fn open(&self, id: &str, req: &OpenRequest) -> Result<Applied, AgentError> {
        self.call(Method::PUT, &format!("/v1/resources/{id}"), Some(req))
            .await
    }

    pub(crate) async fn revert(&self, id: &str) -> Result<Reverted, AgentError> {
        self.revert_within(id, Duration::ZERO).await
    }

    /// [`RemoteAgent::revert`] of a fault whose revert may take `extra` longer than usual.
    pub(crate) async fn revert_within(
        &self,
        id: &str,
        extra: Duration,
    ) -> Result<Reverted, AgentError> {
        self.call_within(
            Method::DELETE,
            &format!("/v1/faults/{id}"),
            None::<&()>,
            extra,
        )
        .await
    }

    pub(crate) async fn renew(&self, ids: Vec<String>) -> Result<Renewed, AgentError> {
        self.call(
            Method::POST,
            "/v1/leases/renew",
            Some(&RenewRequest { ids }),
        )
        .await
    }

    /// The agent's health, refused (as [`AgentError::Refused`]) when the agent speaks another
    /// major protocol version than this coordinator, or does not say which it speaks.
    pub(crate) async fn health(&self) -> Result<Health, AgentError> {
        let health: Health = self.call(Method::GET, "/v1/health", None::<&()>).await?;
        compatible(health.protocol.as_deref(), &health.version)
            .map_err(|e| AgentError::Refused(format!("agent `{}`: {e}", self.name)))?;
        Ok(health)
    }

    pub(crate) async fn list(&self) -> Result<Vec<FaultStatus>, AgentError> {
        self.call(Method::GET, "/v1/faults", None::<&()>).await
    }

    pub(crate) async fn halt(&self) -> Result<RevertedAll, AgentError> {
        self.call(Method::POST, "/v1/halt", None::<&()>).await
    }

    pub(crate) async fn resume(&self) -> Result<Health, AgentError> {
        self.call(Method::POST, "/v1/resume", None::<&()>).await
    }
}

/// Whether a coordinator speaking [`PROTOCOL_VERSION`] may drive an agent that reports protocol
/// `theirs` (and build `build`): only when the major versions are equal. A newer minor version on
/// either side only adds what the other side can ignore.
fn compatible(theirs: Option<&str>, build: &str) -> Result<(), String> {
    fn major(version: &str) -> Option<u32> {
        let (major, minor) = version.split_once('.')?;
        minor.parse::<u32>().ok()?;
        major.parse().ok()
    }
    let ours = major(PROTOCOL_VERSION).expect("PROTOCOL_VERSION is MAJOR.MINOR");
    // What an agent sends is quoted back to people: keep it short and printable.
    let quote = |text: &str| excerpt(text, 32);
    let build = quote(build);
    let Some(theirs) = theirs else {
        return Err(format!(
            "the agent (faultline {build}) does not say which protocol it speaks, so it predates protocol {PROTOCOL_VERSION}, which this coordinator speaks; upgrade the agent"
        ));
    };
    match major(theirs) {
        Some(m) if m == ours => Ok(()),
        Some(m) => Err(format!(
            "the agent (faultline {build}) speaks protocol {}, this coordinator speaks {PROTOCOL_VERSION}: major versions {m} and {ours} differ; upgrade the {} side",
            quote(theirs),
            if m < ours { "agent's" } else { "coordinator's" },
        )),
        None => Err(format!(
            "the agent (faultline {build}) sent protocol version `{}`, which is not MAJOR.MINOR (this coordinator speaks {PROTOCOL_VERSION})",
            quote(theirs)
        )),
    }
}

/// reqwest's top-level message ("error sending request") hides the cause; show the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;

    use super::{Credentials, RemoteAgent, compatible, excerpt};
    use crate::agent::tls::{self, Admission};
    use crate::protocol::PROTOCOL_VERSION;

    /// A real TLS server (the agent's own configuration and accept loop) on a loopback port,
    /// answering `GET /ping`, and the credentials to reach it; stops when the handle is dropped.
    async fn server() -> (
        tempfile::TempDir,
        String,
        Credentials,
        Arc<Admission>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::generate(dir.path(), &["127.0.0.1".to_owned()]).unwrap();
        let config = tls::server_config(
            &dir.path().join("agent.pem"),
            &dir.path().join("agent-key.pem"),
            None,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        let admission = Arc::new(Admission::default());
        let app = Router::new().route("/ping", get(|| async { "pong" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tls::serve(
            listener,
            config,
            app,
            Arc::clone(&admission),
            async move {
                let _ = stopped.await;
            },
        ));
        let creds = Credentials {
            ca_pem: std::fs::read(dir.path().join("ca.pem")).unwrap(),
            token: "unused".to_owned(),
            identity_pem: None,
        };
        (dir, address, creds, admission, stop)
    }

    async fn ping(agent: &RemoteAgent, close: bool) {
        let mut req = agent.client.get(format!("{}/ping", agent.address));
        if close {
            req = req.header(reqwest::header::CONNECTION, "close");
        }
        let text = req.send().await.unwrap().text().await.unwrap();
        assert_eq!(text, "pong");
    }

    /// The fan-out's cost per request: a second request to an agent rides the kept-alive
    /// connection (no handshake at all), a reconnection resumes the TLS session (no certificate
    /// signature), and another agent object for the same inventory shares both.
    #[tokio::test]
    async fn requests_to_an_agent_reuse_the_connection_and_a_reconnection_resumes_tls() {
        let (_dir, address, creds, admission, _stop) = server().await;
        let agent = RemoteAgent::new("a".into(), &address, BTreeMap::new(), &creds, None).unwrap();
        ping(&agent, false).await;
        assert_eq!(admission.handshakes(), (1, 0));
        ping(&agent, false).await;
        ping(&agent, false).await;
        assert_eq!(
            admission.handshakes(),
            (1, 0),
            "kept-alive requests need no handshake"
        );
        // The server closes this connection after answering, so the next request reconnects.
        ping(&agent, true).await;
        let again = RemoteAgent::new("a".into(), &address, BTreeMap::new(), &creds, None).unwrap();
        ping(&again, false).await;
        assert_eq!(
            admission.handshakes(),
            (1, 1),
            "a reconnection resumes the session"
        );
        ping(&agent, false).await;
        assert_eq!(
            admission.handshakes(),
            (1, 1),
            "both agent objects share one pool"
        );
    }

    #[test]
    fn an_inventory_ca_that_holds_no_certificate_is_refused_at_load() {
        let creds = Credentials {
            ca_pem: b"not a certificate".to_vec(),
            token: "t".to_owned(),
            identity_pem: None,
        };
        let err = RemoteAgent::new(
            "a".into(),
            "https://127.0.0.1:1",
            BTreeMap::new(),
            &creds,
            None,
        )
        .unwrap_err();
        assert_eq!(err, "invalid CA certificate: no PEM certificate found");
    }

    #[test]
    fn an_agent_of_the_same_major_protocol_version_is_accepted() {
        assert_eq!(compatible(Some(PROTOCOL_VERSION), "0.1.0"), Ok(()));
        assert_eq!(compatible(Some("1.0"), "0.1.0"), Ok(()));
        assert_eq!(compatible(Some("1.7"), "0.9.0"), Ok(()));
    }

    #[test]
    fn an_agent_of_another_major_protocol_version_is_refused_naming_both() {
        assert_eq!(
            compatible(Some("2.3"), "0.4.0"),
            Err("the agent (faultline 0.4.0) speaks protocol 2.3, this coordinator speaks 1.0: major versions 2 and 1 differ; upgrade the coordinator's side".to_owned())
        );
        assert_eq!(
            compatible(Some("0.9"), "0.0.1"),
            Err("the agent (faultline 0.0.1) speaks protocol 0.9, this coordinator speaks 1.0: major versions 0 and 1 differ; upgrade the agent's side".to_owned())
        );
    }

    #[test]
    fn what_an_agent_says_is_passed_on_short_and_excerpt() {
        assert_eq!(excerpt("fine", 10), "fine");
        assert_eq!(excerpt("a\r\nb\x1b[0m", 10), "a  b [0m");
        assert_eq!(excerpt(&"x".repeat(5000), 600).chars().count(), 600);
    }

    #[test]
    fn an_agent_without_a_protocol_version_is_refused_as_too_old() {
        assert_eq!(
            compatible(None, "0.1.0"),
            Err("the agent (faultline 0.1.0) does not say which protocol it speaks, so it predates protocol 1.0, which this coordinator speaks; upgrade the agent".to_owned())
        );
    }

    #[test]
    fn a_malformed_protocol_version_is_refused_and_quoted_short() {
        let long = format!("1\n{}", "x".repeat(100));
        let err = compatible(Some(&long), "0.1.0").unwrap_err();
        assert!(err.contains("is not MAJOR.MINOR"), "{err}");
        assert!(!err.contains(&"x".repeat(40)), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(compatible(Some("1"), "0.1.0").is_err());
        assert!(compatible(Some("1.x"), "0.1.0").is_err());
    }
}
