//! Owns the agent boundary: the one interface through which the coordinator applies, renews and
//! reverts faults, whether the agent is embedded in this process or a remote daemon.

mod core;
mod envelope;
pub(crate) mod journal;
mod remote;
pub(crate) mod server;
mod tls;
pub(crate) mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use self::core::AgentCore;
pub(crate) use self::envelope::Envelope;
pub(crate) use self::remote::{Credentials, RemoteAgent};
use crate::protocol::{Applied, ApplyRequest, OpenRequest, Renewed, RevertCause, Reverted};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    FaultFailed(String),
    #[error("revert failed: {0}")]
    RevertFailed(String),
    #[error("agent failed: {0}")]
    Internal(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// An agent the coordinator can drive. A closed set: the coordinator matches on nothing here.
#[derive(Clone, Debug)]
pub(crate) enum Agent {
    /// Faults act on this host, in this process.
    Embedded(Arc<AgentCore>),
    /// A `faultline agent` daemon, over HTTPS.
    Remote(Arc<RemoteAgent>),
}

impl Agent {
    pub(crate) fn name(&self) -> &str {
        match self {
            Agent::Embedded(_) => "local",
            Agent::Remote(remote) => &remote.name,
        }
    }

    pub(crate) async fn apply(&self, id: &str, req: ApplyRequest) -> Result<Applied, AgentError> {
        match self {
            Agent::Embedded(core) => {
                let core = Arc::clone(core);
                let id = id.to_owned();
                tokio::task::spawn_blocking(move || core.apply_blocking(&id, &req))
                    .await
                    .map_err(|e| AgentError::Internal(e.to_string()))?
            }
            Agent::Remote(remote) => remote.apply(id, &req).await,
        }
    }

    /// Opens a run resource; it stays until reverted like a fault (or its lease lapses).
    pub(crate) async fn open(&self, id: &str, req: OpenRequest) -> Result<Applied, AgentError> {
        match self {
            Agent::Embedded(core) => {
                let core = Arc::clone(core);
                let id = id.to_owned();
                tokio::task::spawn_blocking(move || core.open_blocking(&id, &req))
                    .await
                    .map_err(|e| AgentError::Internal(e.to_string()))?
            }
            Agent::Remote(remote) => remote.open(id, &req).await,
        }
    }

    pub(crate) async fn revert(&self, id: &str) -> Result<Reverted, AgentError> {
        self.revert_within(id, std::time::Duration::ZERO).await
    }

    /// [`Agent::revert`] of a fault whose revert may take `extra` longer than usual (an action
    /// kind's revert program or request).
    pub(crate) async fn revert_within(
        &self,
        id: &str,
        extra: std::time::Duration,
    ) -> Result<Reverted, AgentError> {
        match self {
            Agent::Embedded(core) => {
                let core = Arc::clone(core);
                let id = id.to_owned();
                tokio::task::spawn_blocking(move || {
                    core.revert_blocking(&id, RevertCause::Requested)
                })
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
            }
            Agent::Remote(remote) => remote.revert_within(id, extra).await,
        }
    }

    /// Renews the leases of every listed fault on this agent in one call.
    pub(crate) async fn renew(&self, ids: Vec<String>) -> Result<Renewed, AgentError> {
        match self {
            Agent::Embedded(core) => Ok(core.renew(&ids)),
            Agent::Remote(remote) => remote.renew(ids).await,
        }
    }
}

/// Where the embedded agent keeps its journal: `$FAULTLINE_STATE_DIR`, else a system directory for
/// root and the XDG state directory for everyone else.
pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAULTLINE_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/faultline/embedded");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    base.unwrap_or_else(std::env::temp_dir).join("faultline")
}
