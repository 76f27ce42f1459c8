//! Owns an agent's safety envelope (`agent.toml`): which fault kinds it accepts, how long and how
//! large they may be, and which processes no fault may ever signal — whatever a coordinator asks.
//!
//! The action kinds (`command`, `http`) run whatever programs and requests a coordinator sends,
//! so a network agent refuses them unless its `allowed_kinds` lists them by name — also when
//! `allowed_kinds` is absent. The embedded agent of `faultline run` ([`Envelope::embedded`]) acts
//! for the person running it, on their own host, and allows them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::fault::{FaultSpec, RunResource};
use crate::process::ProcRef;
use crate::protocol::ApplyRequest;
use crate::proxy::persistent::{self, PersistentProxy};
use crate::units::{Dur, Percent};

/// `agent.toml` exactly as written. Unknown keys are errors, so a typo never widens the envelope.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    allowed_kinds: Option<Vec<String>>,
    max_duration: Option<Dur>,
    max_disk_fill: Option<Percent>,
    #[serde(default)]
    protected_processes: Vec<String>,
    audit_log: Option<PathBuf>,
    /// Persistent named proxies the agent hosts for its whole life (`src/proxy/persistent.rs`).
    #[serde(default)]
    proxy: Vec<PersistentProxy>,
}

/// The kinds that run what the request says (programs, HTTP requests): a network agent takes them
/// only when `allowed_kinds` names them.
pub(crate) const ACTION_KINDS: [&str; 2] = ["command", "http"];

/// The validated envelope. The default (a network agent with no `agent.toml`) allows everything
/// the fault kinds allow, except the action kinds ([`ACTION_KINDS`]).
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    /// Set for the embedded agent only: it may run the action kinds without `allowed_kinds`.
    embedded: bool,
    allowed_kinds: Option<Vec<String>>,
    max_duration: Option<Duration>,
    max_disk_fill: Option<f64>,
    /// Matched against a victim's short name (`comm`) and its whole command line.
    protected: Vec<Regex>,
    pub(crate) audit_log: Option<PathBuf>,
    /// Opened by the daemon when it starts; faults act on them with `proxy = "NAME"`.
    pub(crate) proxies: Vec<PersistentProxy>,
}

impl Envelope {
    /// The envelope of `faultline run`'s embedded agent: no limits beyond the kinds' own, and the
    /// action kinds allowed (the person running it already runs programs on this host).
    pub(crate) fn embedded() -> Envelope {
        Envelope {
            embedded: true,
            ..Envelope::default()
        }
    }

    pub(crate) fn load(path: &Path) -> Result<Envelope, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("failed to read agent config {}: {e}", path.display()))?;
        Envelope::parse(&text).map_err(|e| format!("invalid agent config {}: {e}", path.display()))
    }

    pub(super) fn parse(text: &str) -> Result<Envelope, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let protected = raw
            .protected_processes
            .iter()
            .map(|p| {
                Regex::new(p)
                    .map_err(|e| format!("invalid `protected_processes` pattern /{p}/: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        persistent::check(&raw.proxy)?;
        Ok(Envelope {
            embedded: false,
            allowed_kinds: raw.allowed_kinds,
            max_duration: raw.max_duration.map(|d| d.0),
            max_disk_fill: raw.max_disk_fill.map(|p| p.0),
            protected,
            audit_log: raw.audit_log,
            proxies: raw.proxy,
        })
    }

    /// Checks a run resource against the envelope: a proxy is only for `latency` faults.
    pub(crate) fn admit_resource(&self, resource: &RunResource) -> Result<(), String> {
        let kind = match resource {
            RunResource::Proxy { .. } => "latency",
        };
        match &self.allowed_kinds {
            Some(allowed) if !allowed.iter().any(|k| k == kind) => Err(format!(
                "this agent does not allow `{kind}` faults, so it opens no {} (allowed: {})",
                resource.describe(),
                allowed.join(", ")
            )),
            _ => Ok(()),
        }
    }

    /// Checks a request against the envelope. Returns the request as it will run: a disk fill's
    /// guard is lowered to the envelope's maximum, so no amount can push the disk past it.
    pub(crate) fn admit(&self, req: &ApplyRequest) -> Result<ApplyRequest, String> {
        let kind = req.spec.kind();
        let listed = self
            .allowed_kinds
            .as_ref()
            .is_some_and(|allowed| allowed.iter().any(|k| k == kind));
        if ACTION_KINDS.contains(&kind) && !self.embedded && !listed {
            return Err(format!(
                "this agent does not allow `{kind}` faults: a network agent runs programs and HTTP requests from a coordinator only when its agent.toml lists the kind in `allowed_kinds` (e.g. allowed_kinds = [\"{kind}\"]){}",
                self.allowed_kinds
                    .as_ref()
                    .map_or_else(String::new, |a| format!("; allowed: {}", a.join(", ")))
            ));
        }
        if let Some(allowed) = &self.allowed_kinds {
            if !allowed.iter().any(|k| k == kind) {
                return Err(format!(
                    "this agent does not allow `{kind}` faults (allowed: {})",
                    allowed.join(", ")
                ));
            }
        }
        if let (Some(max), Some(ms)) = (self.max_duration, req.duration_ms) {
            if Duration::from_millis(ms) > max {
                return Err(format!(
                    "a duration of {} is above this agent's maximum of {}",
                    Dur(Duration::from_millis(ms)),
                    Dur(max)
                ));
            }
        }
        let mut admitted = req.clone();
        if let (Some(max), FaultSpec::DiskFill(fill)) = (self.max_disk_fill, &mut admitted.spec) {
            if let crate::fault::FillAmount::FillTo(p) = fill.amount {
                if p > max {
                    return Err(format!(
                        "filling to {} is above this agent's maximum disk fill of {}",
                        Percent(p),
                        Percent(max)
                    ));
                }
            }
            fill.guard = fill.guard.min(max);
        }
        Ok(admitted)
    }

    /// Refuses a fault that would signal a protected process.
    pub(crate) fn check_victims(&self, victims: &[ProcRef]) -> Result<(), String> {
        if self.protected.is_empty() {
            return Ok(());
        }
        for victim in victims {
            let cmdline = crate::process::read(victim.pid)
                .map(|p| p.cmdline)
                .unwrap_or_default();
            if let Some(re) = self
                .protected
                .iter()
                .find(|re| re.is_match(&victim.comm) || re.is_match(&cmdline))
            {
                return Err(format!(
                    "{victim} is protected on this agent (matches /{re}/)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Envelope;

    #[test]
    fn the_example_agent_toml_is_valid() {
        let e = Envelope::parse(include_str!("../../agents/agent.toml")).unwrap();
        assert_eq!(e.max_disk_fill, Some(0.9));
        assert!(!e.protected.is_empty());
    }

    fn apply(kind: &str) -> crate::protocol::ApplyRequest {
        let spec = match kind {
            "command" => {
                serde_json::json!({"kind": "command", "run": ["true"], "revert": ["true"], "timeout_ms": 1000})
            }
            _ => serde_json::json!({"kind": "http",
                "request": {"method": "PUT", "url": "http://127.0.0.1:1/on", "timeout_ms": 1000},
                "revert": {"method": "PUT", "url": "http://127.0.0.1:1/off", "timeout_ms": 1000}}),
        };
        serde_json::from_value(serde_json::json!({
            "run_id": "r", "spec": spec, "duration_ms": 1000, "lease_ms": 5000, "seed": 1,
        }))
        .unwrap()
    }

    #[test]
    fn a_network_agent_runs_actions_only_when_allowed_kinds_lists_them() {
        for kind in ["command", "http"] {
            let req = apply(kind);
            let refused = Envelope::default().admit(&req).unwrap_err();
            assert_eq!(
                refused,
                format!(
                    "this agent does not allow `{kind}` faults: a network agent runs programs and HTTP requests from a coordinator only when its agent.toml lists the kind in `allowed_kinds` (e.g. allowed_kinds = [\"{kind}\"])"
                )
            );
            let others = Envelope::parse("allowed_kinds = [\"process-kill\"]").unwrap();
            assert!(
                others
                    .admit(&req)
                    .unwrap_err()
                    .ends_with("; allowed: process-kill")
            );
            let listed = Envelope::parse(&format!("allowed_kinds = [\"{kind}\"]")).unwrap();
            assert!(listed.admit(&req).is_ok(), "{kind} listed");
            assert!(Envelope::embedded().admit(&req).is_ok(), "{kind} embedded");
        }
    }

    #[test]
    fn unknown_keys_and_bad_patterns_are_errors() {
        assert!(
            Envelope::parse("max_durations = \"1m\"")
                .unwrap_err()
                .contains("max_durations")
        );
        assert!(
            Envelope::parse("protected_processes = [\"(\"]")
                .unwrap_err()
                .contains("invalid `protected_processes`")
        );
        assert!(Envelope::parse("allowed_kinds = [\"process-pause\"]\nmax_duration = \"1m\"\nmax_disk_fill = \"80%\"").is_ok());
    }
}
