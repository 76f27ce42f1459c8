//! Owns an agent's fault state: apply (journal first), revert (idempotent), leases and durations
//! enforced by the agent's own clock, and recovery of a journal left by a crash.
//!
//! The embedded agent and (later) the network daemon both wrap one `AgentCore`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::AgentError;
use super::envelope::Envelope;
use super::journal::{Entry, Journal};
use crate::fault::{Context, Undo};
use crate::process;
use crate::protocol::{
    Applied, ApplyRequest, FaultStatus, OpenRequest, Renewed, RevertCause, Reverted,
    validate_fault_id,
};

/// How often the agent checks durations and leases. Bounds how late an expired fault is reverted.
const REAP_EVERY: Duration = Duration::from_millis(50);
/// How long a revert waits for another apply or revert of the same fault to finish.
const BUSY_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Slot {
    /// Being prepared, injected and verified right now.
    Applying,
    Active(Active),
    /// Reverted; kept so that repeated reverts and re-applies of the same id answer consistently.
    Done(Reverted),
}

#[derive(Debug)]
struct Active {
    run_id: String,
    kind: &'static str,
    undo: Undo,
    targets: Vec<String>,
    injected_at: Timestamp,
    /// `None` for run resources, which last until reverted or until their lease lapses.
    ends_at: Option<Instant>,
    lease: Duration,
    lease_until: Instant,
    /// Set while a revert is running, so the reaper and a request do not undo twice at once.
    reverting: bool,
}

#[derive(Debug)]
pub(crate) struct AgentCore {
    journal: Journal,
    slots: Mutex<HashMap<String, Slot>>,
    halted: AtomicBool,
    /// Set once the agent is shutting down: like a halt, but not persisted.
    closing: AtomicBool,
    /// Identifies the journal entries this process writes.
    owner: process::ProcRef,
    envelope: Envelope,
    counters: Counters,
    /// The daemon's listening port, which network faults must never cut off; `None` embedded.
    control_port: Option<u16>,
}

/// Running totals for `GET /metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    pub(crate) reverted: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) lease_expiries: AtomicU64,
    pub(crate) refused: AtomicU64,
}

/// The file whose presence says "halted": it survives an agent restart, so a halted fleet stays
/// halted until someone runs `faultline resume`.
const HALTED_MARKER: &str = "HALTED";

/// What recovery found in the journal at start.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) reverted: Vec<String>,
    pub(crate) failed: Vec<String>,
}

impl AgentCore {
    /// Opens the journal and reverts every fault left behind by a writer that no longer runs.
    pub(crate) fn open(
        state_dir: &Path,
        envelope: Envelope,
        control_port: Option<u16>,
    ) -> Result<(Arc<AgentCore>, Recovery), String> {
        let journal = Journal::open(state_dir)?;
        let owner = process::read(std::process::id() as i32)
            .map(|p| p.to_ref())
            .ok_or("failed to read this process from /proc")?;
        let halted = AtomicBool::new(state_dir.join(HALTED_MARKER).exists());
        let core = Arc::new(AgentCore {
            journal,
            slots: Mutex::new(HashMap::new()),
            halted,
            closing: AtomicBool::new(false),
            owner,
            envelope,
            counters: Counters::default(),
            control_port,
        });
        let recovery = core.recover();
        Ok((core, recovery))
    }

    pub(crate) fn state_dir(&self) -> &Path {
        self.journal.dir()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Shutdown: refuse new faults and revert every active one, including one whose apply is
    /// still running (it is reverted as soon as it lands).
    pub(crate) fn close_blocking(&self) -> Vec<Result<Reverted, AgentError>> {
        self.closing.store(true, Ordering::SeqCst);
        self.revert_everything(RevertCause::Shutdown)
    }

    /// Reverts every active fault and every fault being applied right now (waiting for its apply
    /// to land; the apply then sees the halt or shutdown and reverts it). Call after setting
    /// `halted` or `closing`, so that nothing new starts meanwhile.
    fn revert_everything(&self, cause: RevertCause) -> Vec<Result<Reverted, AgentError>> {
        let in_flight: Vec<String> = {
            let slots = self.slots.lock().expect("agent state lock");
            slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Applying))
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut results = self.revert_all_blocking(cause);
        for id in in_flight {
            match self.revert_blocking(&id, cause) {
                // An instant fault that landed meanwhile: it held nothing, so nothing was undone.
                Ok(r) if r.cause == RevertCause::Requested => {}
                other => results.push(other),
            }
        }
        results
    }

    fn refusing(&self) -> bool {
        self.halted.load(Ordering::SeqCst) || self.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// The kill switch: refuse new faults from now on (also after a restart), then revert every
    /// active one. A fault being applied right now is reverted as soon as it lands.
    pub(crate) fn halt_blocking(&self) -> Vec<Result<Reverted, AgentError>> {
        self.halted.store(true, Ordering::SeqCst);
        let marker = self.state_dir().join(HALTED_MARKER);
        if let Err(e) = super::journal::write_private(
            &marker,
            b"halted by `faultline halt`; `faultline resume` clears this\n",
        ) {
            tracing::error!("failed to persist the halt in {}: {e}", marker.display());
        }
        self.revert_everything(RevertCause::Halted)
    }

    /// Accepts new faults again.
    pub(crate) fn resume(&self) -> Result<(), String> {
        let marker = self.state_dir().join(HALTED_MARKER);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "failed to clear the halt marker {}: {e}",
                    marker.display()
                ));
            }
        }
        self.halted.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn recover(&self) -> Recovery {
        let mut recovery = Recovery::default();
        for entry in self.journal.entries() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    recovery.failed.push(e);
                    continue;
                }
            };
            if entry.owner.is_alive() {
                continue;
            }
            match entry.undo.revert() {
                Ok(detail) => {
                    let _ = self.journal.remove(&entry.id);
                    recovery.reverted.push(format!(
                        "{} ({}, run {}): {detail}",
                        entry.id, entry.kind, entry.run_id
                    ));
                }
                Err(e) => recovery
                    .failed
                    .push(format!("{} ({}): {e}", entry.id, entry.kind)),
            }
        }
        recovery
    }

    /// Starts the task that reverts faults whose duration ended or whose lease lapsed. It stops by
    /// itself when the last handle to the core is dropped.
    pub(crate) fn spawn_reaper(self: &Arc<Self>) {
        let weak: Weak<AgentCore> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { return };
                for (id, cause) in core.expired(Instant::now()) {
                    let core = Arc::clone(&core);
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = core.revert_blocking(&id, cause) {
                            tracing::error!("failed to revert expired fault {id}: {e}");
                        }
                    });
                }
            }
        });
    }

    fn expired(&self, now: Instant) -> Vec<(String, RevertCause)> {
        let slots = self.slots.lock().expect("agent state lock");
        slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Active(a) if !a.reverting && a.ends_at.is_some_and(|end| now >= end) => {
                    Some((id.clone(), RevertCause::DurationEnded))
                }
                Slot::Active(a) if !a.reverting && now >= a.lease_until => {
                    Some((id.clone(), RevertCause::LeaseExpired))
                }
                _ => None,
            })
            .collect()
    }

    /// Applies a fault: prepare, journal, inject, verify. Blocking; call from a blocking thread.
    pub(crate) fn apply_blocking(
        &self,
        id: &str,
        req: &ApplyRequest,
    ) -> Result<Applied, AgentError> {
        let result = self.apply_inner(id, req);
        let counter = match &result {
            Ok(_) => &self.counters.applied,
            Err(AgentError::Refused(_)) => &self.counters.refused,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn apply_inner(&self, id: &str, req: &ApplyRequest) -> Result<Applied, AgentError> {
        validate_fault_id(id).map_err(AgentError::BadRequest)?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Refused("the agent is shutting down".to_owned()));
        }
        if self.halted.load(Ordering::SeqCst) {
            return Err(AgentError::Refused(
                "the agent is halted; run `faultline resume` first".to_owned(),
            ));
        }
        let req = &self.envelope.admit(req).map_err(AgentError::Refused)?;
        let instant = req.spec.is_instant();
        let duration = match (instant, req.duration_ms) {
            (true, _) => Duration::ZERO,
            (false, Some(ms)) if ms > 0 => Duration::from_millis(ms),
            (false, _) => {
                return Err(AgentError::BadRequest(format!(
                    "a {} fault needs a duration",
                    req.spec.kind()
                )));
            }
        };
        if req.lease_ms == 0 {
            return Err(AgentError::BadRequest(
                "the lease must be longer than zero".to_owned(),
            ));
        }
        if let Some(applied) = self.claim(id, "fault", "already applied")? {
            return Ok(applied);
        }
        let result = self.inject(id, req, duration);
        let mut slots = self.slots.lock().expect("agent state lock");
        match result {
            Ok((applied, active)) => {
                let halted_meanwhile = active.is_some() && self.refusing();
                match active {
                    Some(active) => slots.insert(id.to_owned(), Slot::Active(active)),
                    None => slots.insert(
                        id.to_owned(),
                        Slot::Done(Reverted {
                            id: id.to_owned(),
                            detail: "instant fault: nothing to revert".to_owned(),
                            at: applied.injected_at,
                            cause: RevertCause::Requested,
                        }),
                    ),
                };
                drop(slots);
                if halted_meanwhile {
                    // The halt's (or shutdown's) revert-all ran before this fault landed: undo it here.
                    let undone = match self.revert_blocking(id, RevertCause::Halted) {
                        Ok(r) => format!("reverted it: {}", r.detail),
                        Err(e) => format!("and reverting it FAILED: {e}"),
                    };
                    return Err(AgentError::Refused(format!(
                        "the agent was halted or shut down while this fault was being applied; {undone}"
                    )));
                }
                Ok(applied)
            }
            Err(e) => {
                slots.remove(id);
                Err(e)
            }
        }
    }

    fn inject(
        &self,
        id: &str,
        req: &ApplyRequest,
        duration: Duration,
    ) -> Result<(Applied, Option<Active>), AgentError> {
        let prepared = req
            .spec
            .prepare(&Context {
                fault_id: id,
                seed: req.seed,
                control_port: self.control_port,
            })
            .map_err(AgentError::FaultFailed)?;
        self.envelope
            .check_victims(prepared.processes())
            .map_err(AgentError::Refused)?;
        let undo = prepared.undo();
        let entry = Entry {
            id: id.to_owned(),
            run_id: req.run_id.clone(),
            kind: req.spec.kind().to_owned(),
            undo: undo.clone(),
            owner: self.owner.clone(),
            written_at: Timestamp::now(),
        };
        self.journal
            .record(&entry)
            .map_err(AgentError::FaultFailed)?;
        let injected_at = Timestamp::now();
        let started = Instant::now();
        let outcome = prepared
            .inject()
            .and_then(|done| prepared.verify().map(|seen| format!("{done}; {seen}")));
        let detail = match outcome {
            Ok(detail) => detail,
            Err(e) => {
                // Undo whatever part of the fault did land; the journal entry stays if that fails.
                let undo_note = match undo.revert() {
                    Ok(_) => self
                        .journal
                        .remove(id)
                        .err()
                        .map_or_else(String::new, |e| format!("; {e}")),
                    Err(undo_err) => {
                        format!("; and the partial change could NOT be undone: {undo_err}")
                    }
                };
                return Err(AgentError::FaultFailed(format!("{e}{undo_note}")));
            }
        };
        let applied = Applied {
            id: id.to_owned(),
            targets: prepared.targets(),
            detail,
            injected_at,
            instant: req.spec.is_instant(),
        };
        if req.spec.is_instant() {
            self.journal.remove(id).map_err(AgentError::FaultFailed)?;
            return Ok((applied, None));
        }
        let lease = Duration::from_millis(req.lease_ms);
        let active = Active {
            run_id: req.run_id.clone(),
            kind: req.spec.kind(),
            undo,
            targets: applied.targets.clone(),
            injected_at,
            ends_at: Some(started + duration),
            lease,
            lease_until: Instant::now() + lease,
            reverting: false,
        };
        Ok((applied, Some(active)))
    }

    /// Opens a run resource: journal first, then open. Blocking; call from a blocking thread of
    /// the runtime (proxies are spawned onto it).
    /// Claims `id` for an apply or an open. `Ok(Some(_))` means it is already active: the request
    /// is a repeat, answered with what is in force (idempotence). Otherwise the slot is marked
    /// as being applied, and the caller must fill or free it.
    fn claim(&self, id: &str, noun: &str, already: &str) -> Result<Option<Applied>, AgentError> {
        let mut slots = self.slots.lock().expect("agent state lock");
        match slots.get(id) {
            Some(Slot::Active(a)) => Ok(Some(Applied {
                id: id.to_owned(),
                targets: a.targets.clone(),
                detail: already.to_owned(),
                injected_at: a.injected_at,
                instant: false,
            })),
            Some(Slot::Applying) => Err(AgentError::Conflict(format!(
                "{noun} {id} is being applied right now"
            ))),
            Some(Slot::Done(_)) => Err(AgentError::Conflict(format!(
                "{noun} {id} already ran and was reverted"
            ))),
            None => {
                slots.insert(id.to_owned(), Slot::Applying);
                Ok(None)
            }
        }
    }

    pub(crate) fn open_blocking(&self, id: &str, req: &OpenRequest) -> Result<Applied, AgentError> {
        validate_fault_id(id).map_err(AgentError::BadRequest)?;
        if self.halted.load(Ordering::SeqCst) {
            return Err(AgentError::Refused(
                "the agent is halted; run `faultline resume` first".to_owned(),
            ));
        }
        if req.lease_ms == 0 {
            return Err(AgentError::BadRequest(
                "the lease must be longer than zero".to_owned(),
            ));
        }
        self.envelope
            .admit_resource(&req.resource)
            .map_err(AgentError::Refused)?;
        if let Some(applied) = self.claim(id, "resource", "already open")? {
            return Ok(applied);
        }
        let undo = req.resource.undo();
        let entry = Entry {
            id: id.to_owned(),
            run_id: req.run_id.clone(),
            kind: req.resource.kind().to_owned(),
            undo: undo.clone(),
            owner: self.owner.clone(),
            written_at: Timestamp::now(),
        };
        let opened = self.journal.record(&entry).and_then(|()| {
            req.resource.open().map_err(|e| {
                match undo.revert().and_then(|_| self.journal.remove(id)) {
                    Ok(()) => e,
                    Err(undo_err) => format!("{e}; and cleaning up failed: {undo_err}"),
                }
            })
        });
        let mut slots = self.slots.lock().expect("agent state lock");
        match opened {
            Ok(detail) => {
                let injected_at = Timestamp::now();
                let lease = Duration::from_millis(req.lease_ms);
                let targets = vec![req.resource.describe()];
                slots.insert(
                    id.to_owned(),
                    Slot::Active(Active {
                        run_id: req.run_id.clone(),
                        kind: req.resource.kind(),
                        undo,
                        targets: targets.clone(),
                        injected_at,
                        ends_at: None,
                        lease,
                        lease_until: Instant::now() + lease,
                        reverting: false,
                    }),
                );
                Ok(Applied {
                    id: id.to_owned(),
                    targets,
                    detail,
                    injected_at,
                    instant: false,
                })
            }
            Err(e) => {
                slots.remove(id);
                Err(AgentError::FaultFailed(e))
            }
        }
    }

    /// Reverts a fault. Idempotent: reverting an unknown or already reverted id succeeds.
    pub(crate) fn revert_blocking(
        &self,
        id: &str,
        cause: RevertCause,
    ) -> Result<Reverted, AgentError> {
        validate_fault_id(id).map_err(AgentError::BadRequest)?;
        // The reaper (duration end, lease) and a request can ask at the same moment: the second
        // waits for the first to finish and then answers with its result.
        let deadline = Instant::now() + BUSY_WAIT;
        let undo = loop {
            let mut slots = self.slots.lock().expect("agent state lock");
            match slots.get_mut(id) {
                Some(Slot::Done(r)) => return Ok(r.clone()),
                Some(
                    Slot::Applying
                    | Slot::Active(Active {
                        reverting: true, ..
                    }),
                ) => {
                    drop(slots);
                    if Instant::now() >= deadline {
                        return Err(AgentError::Conflict(format!(
                            "fault {id} stayed busy for {} s",
                            BUSY_WAIT.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Some(Slot::Active(a)) => {
                    a.reverting = true;
                    break a.undo.clone();
                }
                None => {
                    return Ok(Reverted {
                        id: id.to_owned(),
                        detail: "not active on this agent".to_owned(),
                        at: Timestamp::now(),
                        cause,
                    });
                }
            }
        };
        let result = undo
            .revert()
            .and_then(|detail| self.journal.remove(id).map(|()| detail));
        let mut slots = self.slots.lock().expect("agent state lock");
        match result {
            Ok(detail) => {
                self.counters.reverted.fetch_add(1, Ordering::Relaxed);
                if cause == RevertCause::LeaseExpired {
                    self.counters.lease_expiries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "fault {id}: the lease lapsed, so the coordinator is gone or cut off; reverted it"
                    );
                }
                let reverted = Reverted {
                    id: id.to_owned(),
                    detail,
                    at: Timestamp::now(),
                    cause,
                };
                slots.insert(id.to_owned(), Slot::Done(reverted.clone()));
                Ok(reverted)
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(Slot::Active(a)) = slots.get_mut(id) {
                    a.reverting = false;
                    // Retry no sooner than a second from now, not on every reaper tick.
                    a.lease_until = Instant::now() + Duration::from_secs(1);
                }
                Err(AgentError::RevertFailed(e))
            }
        }
    }

    /// Extends the leases of the given faults by their lease length, and names the ids that are
    /// not active here (so the coordinator learns of a fault that ended without it).
    pub(crate) fn renew(&self, ids: &[String]) -> Renewed {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("agent state lock");
        let mut answer = Renewed {
            renewed: Vec::new(),
            unknown: Vec::new(),
        };
        for id in ids {
            match slots.get_mut(id) {
                Some(Slot::Active(a)) => {
                    a.lease_until = now + a.lease;
                    answer.renewed.push(id.clone());
                }
                // Still being applied: its lease starts when the apply ends.
                Some(Slot::Applying) => answer.renewed.push(id.clone()),
                _ => answer.unknown.push(id.clone()),
            }
        }
        answer
    }

    pub(crate) fn active(&self) -> Vec<FaultStatus> {
        let slots = self.slots.lock().expect("agent state lock");
        let mut list: Vec<FaultStatus> = slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Active(a) => Some(FaultStatus {
                    id: id.clone(),
                    run_id: a.run_id.clone(),
                    kind: a.kind.to_owned(),
                    targets: a.targets.clone(),
                    injected_at: a.injected_at,
                }),
                _ => None,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Reverts every active fault, for shutdown and halt.
    pub(crate) fn revert_all_blocking(
        &self,
        cause: RevertCause,
    ) -> Vec<Result<Reverted, AgentError>> {
        self.active()
            .into_iter()
            .map(|f| self.revert_blocking(&f.id, cause))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fault::{FaultSpec, ProcessPause};
    use crate::process::Selector;

    #[test]
    fn a_claimed_id_refuses_an_overlapping_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        assert!(
            core.claim("claim-0", "resource", "already open")
                .unwrap()
                .is_none()
        );
        let err = core
            .claim("claim-0", "resource", "already open")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflict: resource claim-0 is being applied right now"
        );
    }

    #[test]
    fn concurrent_reverts_of_one_fault_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (core, _) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        let req = ApplyRequest {
            run_id: "r".to_owned(),
            spec: FaultSpec::ProcessPause(ProcessPause {
                select: Selector::Pid(victim.id() as i32),
                pick: None,
            }),
            duration_ms: Some(3_600_000),
            lease_ms: 3_600_000,
            seed: 1,
        };
        core.apply_blocking("race-0", &req).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let core = Arc::clone(&core);
                std::thread::spawn(move || core.revert_blocking("race-0", RevertCause::Requested))
            })
            .collect();
        for h in handles {
            let reverted = h.join().unwrap().expect("every concurrent revert succeeds");
            assert!(reverted.detail.contains("continued"), "{}", reverted.detail);
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", victim.id())).unwrap();
        assert!(
            !stat.contains(") T "),
            "the victim is still stopped: {stat}"
        );
        assert!(
            core.journal.entries().is_empty(),
            "the journal entry outlived the revert"
        );
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
}
