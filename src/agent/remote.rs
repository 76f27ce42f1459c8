//! Owns the coordinator's side of the agent API: an HTTPS client (rustls, trusting only the
//! inventory's CA) that speaks the wire types of `protocol.rs` and maps agent errors back onto
//! [`AgentError`], so the run loop cannot tell a remote agent from the embedded one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

impl RemoteAgent {
    /// `resolve` pins the address's host name to one IP (DNS discovery): TLS still checks the
    /// certificate against the host name, while the connection goes to that one agent.
    pub(crate) fn new(
        name: String,
        address: &str,
        tags: BTreeMap<String, String>,
        creds: &Credentials,
        resolve: Option<(String, SocketAddr)>,
    ) -> Result<RemoteAgent, String> {
        let ca = reqwest::Certificate::from_pem(&creds.ca_pem)
            .map_err(|e| format!("invalid CA certificate: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .https_only(true)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy();
        if let Some(pem) = &creds.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("invalid client certificate or key: {e}"))?;
            builder = builder.identity(identity);
        }
        if let Some((host, addr)) = resolve {
            builder = builder.resolve(&host, addr);
        }
        let client = builder
            .build()
            .map_err(|e| format!("failed to set up the HTTPS client for agent `{name}`: {e}"))?;
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
    use super::{compatible, excerpt};
    use crate::protocol::PROTOCOL_VERSION;

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
