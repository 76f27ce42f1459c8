//! Owns what surrounds the run loop on this host: the embedded agent (recovered from its journal
//! first), its reaper and the watchdog's heartbeat, the agents chosen for a run and the check that
//! they accept faults, and the backstop revert after a run. `faultline run` opens one session for
//! one run; the coordinator opens one for its whole life and runs many experiments through it, so
//! both share one run loop, one journal and one watchdog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::watchdog::Heartbeat;
use crate::agent::{Agent, AgentCore, Envelope};
use crate::inventory::{self, Selection};
use crate::model::{Experiment, LOCAL_GROUP};
use crate::progress::Progress;
use crate::protocol::RevertCause;
use crate::report::{FaultRecord, FaultState, Report};
use crate::run::{self, RunOptions, Targets};

/// Why a run could not start; nothing was injected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The inventory or the experiment's target groups are wrong (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// An agent refuses faults until `faultline resume`.
    #[error("{0}")]
    Halted(String),
    /// An agent could not be reached or answered an error.
    #[error("{0}")]
    Unreachable(String),
}

/// The embedded agent and its watchdog, open for as long as this value lives.
pub(crate) struct Session {
    core: Arc<AgentCore>,
    _heartbeat: Option<Heartbeat>,
    /// Faults an earlier crashed run left in the journal, reverted when the session opened.
    recovered: Vec<String>,
}

impl Session {
    /// Recovers the journal in `state_dir` (reverting what a crashed run left), starts the reaper
    /// and the watchdog's heartbeat. Fails when a left-over fault cannot be reverted.
    pub(crate) async fn open(
        state_dir: PathBuf,
        lease: Duration,
        progress: &Progress,
    ) -> anyhow::Result<Session> {
        Session::open_for(state_dir, lease, progress, None).await
    }

    /// As `open`, for one `faultline run` whose history row is `run`: the watchdog ends that row
    /// as `error` if the process dies before it could.
    pub(crate) async fn open_for(
        state_dir: PathBuf,
        lease: Duration,
        progress: &Progress,
        run: Option<&str>,
    ) -> anyhow::Result<Session> {
        let (core, recovery) = AgentCore::open_async(state_dir, Envelope::embedded(), None)
            .await
            .map_err(anyhow::Error::msg)?;
        for line in &recovery.reverted {
            progress.log(&format!(
                "reverted a fault left by an earlier crashed run: {line}"
            ));
        }
        if !recovery.failed.is_empty() {
            anyhow::bail!(
                "faults left by an earlier crashed run could not be reverted ({}); fix them before running again (journal: {})",
                recovery.failed.join("; "),
                core.state_dir().display()
            );
        }
        core.spawn_reaper();
        // Beats for as long as the session lives; the watchdog reverts its faults when it stops.
        let heartbeat = crate::agent::watchdog::spawn(core.state_dir(), lease, run)
            .map_err(anyhow::Error::msg)?;
        Ok(Session {
            core,
            _heartbeat: heartbeat,
            recovered: recovery.reverted,
        })
    }

    /// Faults reverted from the journal when the session opened (reported by its first run).
    pub(crate) fn take_recovered(&mut self) -> Vec<String> {
        std::mem::take(&mut self.recovered)
    }

    /// Runs one experiment against the chosen agents and the embedded one, then reverts anything
    /// of this run the embedded agent still holds (a revert that timed out); what it finds is
    /// reported as a leftover.
    pub(crate) async fn run(
        &self,
        exp: &Experiment,
        selection: &Selection,
        opts: RunOptions,
        progress: &Progress,
    ) -> Report {
        let mut targets: Targets = selection
            .groups
            .iter()
            .map(|(name, choice)| {
                (
                    name.clone(),
                    choice
                        .chosen
                        .iter()
                        .map(|a| Agent::Remote(a.clone()))
                        .collect(),
                )
            })
            .collect();
        targets.insert(
            LOCAL_GROUP.to_owned(),
            vec![Agent::Embedded(self.core.clone())],
        );
        for (name, choice) in &selection.groups {
            let names: Vec<&str> = choice.chosen.iter().map(|a| a.name.as_str()).collect();
            progress.log(&format!(
                "target group `{name}`: {} of {} matching agent(s): {}",
                names.len(),
                choice.matching.len(),
                names.join(", ")
            ));
        }
        let mut report = run::run(exp, &targets, opts, progress).await;
        let core = self.core.clone();
        let run_id = report.run_id.clone();
        let leftovers = tokio::task::spawn_blocking(move || {
            core.active()
                .into_iter()
                .filter(|f| f.run_id == run_id)
                .map(|f| core.revert_blocking(&f.id, RevertCause::Shutdown))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for left in leftovers {
            let line = match left {
                Ok(r) => format!(
                    "fault {} was still active at the end of the run and was reverted now: {}",
                    r.id, r.detail
                ),
                Err(e) => format!(
                    "a fault was still active at the end of the run and could NOT be reverted: {e}"
                ),
            };
            progress.log(&line);
            report.note_leftover(&line);
        }
        report
    }
}

/// Loads the inventory (if any) and resolves every target group for this seed.
pub(crate) async fn resolve(
    exp: &Experiment,
    agents: Option<&Path>,
    seed: u64,
) -> Result<Selection, StartError> {
    let inventory = match agents {
        Some(path) => Some(inventory::load(path).await.map_err(StartError::Invalid)?),
        None => None,
    };
    inventory::select(exp, inventory.as_ref(), seed).map_err(StartError::Invalid)
}

/// Asks every chosen agent whether it is reachable and accepting faults, all at once, so a run
/// against a halted or unreachable agent stops before the baseline instead of in the middle.
pub(crate) async fn preflight(selection: &Selection) -> Result<(), StartError> {
    let mut agents: Vec<_> = selection
        .groups
        .values()
        .flat_map(|g| g.chosen.iter().cloned())
        .collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    agents.dedup_by(|a, b| a.name == b.name);
    let checks: Vec<_> = agents
        .into_iter()
        .map(|a| tokio::spawn(async move { (a.name.clone(), a.health().await) }))
        .collect();
    let mut halted = Vec::new();
    let mut problems = Vec::new();
    for check in checks {
        match check.await {
            Ok((_, Ok(h))) if !h.halted => {}
            Ok((name, Ok(_))) => halted.push(format!(
                "agent `{name}` is halted (run `faultline resume --agents ...` first)"
            )),
            Ok((_, Err(e))) => problems.push(e.to_string()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        problems.extend(halted);
        return Err(StartError::Unreachable(problems.join("; ")));
    }
    if !halted.is_empty() {
        return Err(StartError::Halted(halted.join("; ")));
    }
    Ok(())
}

/// The fault records a run of `exp` would have made, all `skipped`, in the run loop's order (each
/// step once per agent its group resolved to), for the report of a run that ended before its
/// baseline. Without a selection (the inventory was invalid), the steps on `local` only.
pub(crate) fn planned_faults(exp: &Experiment, selection: Option<&Selection>) -> Vec<FaultRecord> {
    let mut records = Vec::new();
    for step in &exp.faults {
        let agents: Vec<&str> = if step.on == LOCAL_GROUP {
            vec![LOCAL_GROUP]
        } else {
            selection
                .and_then(|s| s.groups.get(&step.on))
                .map(|g| g.chosen.iter().map(|a| a.name.as_str()).collect())
                .unwrap_or_default()
        };
        records.extend(agents.into_iter().map(|agent| FaultRecord {
            name: step.name.clone(),
            kind: step.spec.kind().to_owned(),
            agent: agent.to_owned(),
            targets: Vec::new(),
            injected_at: None,
            reverted_at: None,
            status: FaultState::Skipped,
            detail: String::new(),
            actions: Vec::new(),
        }));
    }
    records
}
