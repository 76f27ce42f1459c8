//! Owns an agent's safety envelope (`agent.toml`): which fault kinds it accepts, how long and how
//! large they may be, and which processes no fault may ever signal — whatever a coordinator asks.

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

/// The validated envelope. The default (no `agent.toml`) allows everything the fault kinds allow.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
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
