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
use crate::protocol::{
    Applied, ApplyRequest, ErrorBody, FaultStatus, Health, OpenRequest, RenewRequest, Renewed,
    Reverted, RevertedAll,
};

/// How long one request may take. An apply allocates files or waits for processes to stop, so
/// this is generous; lease renewals are bounded separately by the run loop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
        let url = format!("{}{path}", self.address);
        let mut req = self.client.request(method, &url).bearer_auth(&self.token);
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
        let message = format!("agent `{}`: {message}", self.name);
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
        self.call(Method::PUT, &format!("/v1/faults/{id}"), Some(req))
            .await
    }

    /// Opens a run resource (a proxy); it is closed by [`RemoteAgent::revert`] like a fault.
    pub(crate) async fn open(&self, id: &str, req: &OpenRequest) -> Result<Applied, AgentError> {
        self.call(Method::PUT, &format!("/v1/resources/{id}"), Some(req))
            .await
    }

    pub(crate) async fn revert(&self, id: &str) -> Result<Reverted, AgentError> {
        self.call(Method::DELETE, &format!("/v1/faults/{id}"), None::<&()>)
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

    pub(crate) async fn health(&self) -> Result<Health, AgentError> {
        self.call(Method::GET, "/v1/health", None::<&()>).await
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
