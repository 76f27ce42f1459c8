//! Owns the wire types between the coordinator and an agent: what a fault request, its answer and
//! an agent's view of its faults look like. The embedded agent exchanges the same types in-process.
//!
//! Architecture invariant: the coordinator only talks to agents in these types, so it cannot tell
//! whether an agent is embedded or remote.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fault::{FaultSpec, RunResource};

/// Apply a fault. The id (chosen by the coordinator) makes the request idempotent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRequest {
    pub(crate) run_id: String,
    pub(crate) spec: FaultSpec,
    /// How long the fault is held; `None` only for instant faults.
    pub(crate) duration_ms: Option<u64>,
    /// The agent reverts the fault on its own if the lease is not renewed within this time.
    pub(crate) lease_ms: u64,
    /// Seeds the agent's random choices (which processes of the matches), for reproducible runs.
    pub(crate) seed: u64,
}

/// Open a run resource (a proxy) for the whole run. Answered with [`Applied`]; closed by the same
/// revert as a fault, and held by the same lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenRequest {
    pub(crate) run_id: String,
    pub(crate) resource: RunResource,
    pub(crate) lease_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) id: String,
    pub(crate) targets: Vec<String>,
    pub(crate) detail: String,
    pub(crate) injected_at: Timestamp,
    /// True for instant faults: nothing is held, nothing will be reverted.
    pub(crate) instant: bool,
}

/// Why a fault was reverted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RevertCause {
    /// The coordinator asked.
    Requested,
    /// The fault's duration ended on the agent's clock.
    DurationEnded,
    /// The coordinator stopped renewing the lease: the dead-man switch.
    LeaseExpired,
    /// The agent was shutting down.
    Shutdown,
    /// Found in the journal after a crash.
    Recovered,
    /// `faultline halt`: the kill switch.
    Halted,
}

impl RevertCause {
    /// Why the agent reverted on its own, for reports; `None` when the coordinator asked.
    pub(crate) fn on_its_own(self) -> Option<&'static str> {
        match self {
            RevertCause::Requested => None,
            RevertCause::DurationEnded => Some("its duration ended on the agent's clock"),
            RevertCause::LeaseExpired => Some("its lease lapsed (the dead-man switch)"),
            RevertCause::Shutdown => Some("the agent shut down"),
            RevertCause::Recovered => Some("the agent recovered it from its journal"),
            RevertCause::Halted => Some("`faultline halt`"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reverted {
    pub(crate) id: String,
    pub(crate) detail: String,
    pub(crate) at: Timestamp,
    pub(crate) cause: RevertCause,
}

/// One fault as an agent lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FaultStatus {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) kind: String,
    pub(crate) targets: Vec<String>,
    pub(crate) injected_at: Timestamp,
}

/// Renew the leases of these faults (one call per agent covers all of a run's faults there).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewRequest {
    pub(crate) ids: Vec<String>,
}

/// What renewing found: ids the agent no longer holds (reverted, or never applied) are listed, so
/// the coordinator learns that a fault ended without it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Renewed {
    pub(crate) renewed: Vec<String>,
    pub(crate) unknown: Vec<String>,
}

/// The version of these wire types, `MAJOR.MINOR`. MINOR grows with additive changes (a new
/// optional field) that both sides can ignore; MAJOR with anything else, and a coordinator refuses
/// an agent whose MAJOR differs from its own.
pub(crate) const PROTOCOL_VERSION: &str = "1.0";

/// An agent's answer to `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Health {
    pub(crate) ok: bool,
    pub(crate) halted: bool,
    pub(crate) active: usize,
    /// The agent's build (`CARGO_PKG_VERSION`), for people.
    pub(crate) version: String,
    /// The agent's [`PROTOCOL_VERSION`], for the coordinator's compatibility check. Agents built
    /// before it existed do not send it.
    #[serde(default)]
    pub(crate) protocol: Option<String>,
}

/// What `halt` (or a bulk revert) undid on one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RevertedAll {
    pub(crate) reverted: Vec<Reverted>,
    pub(crate) failed: Vec<String>,
}

/// An error as an agent sends it: `kind` maps back onto the coordinator's error type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) kind: String,
    pub(crate) error: String,
}

/// Checks a coordinator-chosen fault id: it names a journal file, so it must be a plain token.
pub(crate) fn validate_fault_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid fault id `{id}`: use 1 to 128 of [A-Za-z0-9._-], not starting with `.`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_fault_id;

    #[test]
    fn fault_ids_cannot_escape_the_journal_directory() {
        assert!(validate_fault_id("20261126T141500Z-ab12-0").is_ok());
        assert!(validate_fault_id("../etc/passwd").is_err());
        assert!(validate_fault_id(".hidden").is_err());
        assert!(validate_fault_id("").is_err());
        assert!(validate_fault_id("a b").is_err());
    }
}
