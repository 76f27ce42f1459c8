//! Owns an agent's fault state: apply (journal first), revert (idempotent), leases and durations
//! enforced by the agent's own clock, and recovery of a journal left by a crash.
//!
//! The embedded agent and the network daemon both wrap one `AgentCore`.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::AgentError;
use super::envelope::Envelope;
use super::journal::{self, Entry, Forget, Journal};
use crate::fault::{Context, FaultSpec, RunResource, Undo};
use crate::process;
use crate::protocol::{
    Applied, ApplyRequest, FaultStatus, OpenRequest, Renewed, RevertCause, Reverted,
    validate_fault_id,
};
use crate::proxy::persistent::{self, RunNameError};

/// How often the agent checks durations and leases. Bounds how late an expired fault is reverted.
const REAP_EVERY: Duration = Duration::from_millis(50);
/// How long a revert waits for another apply or revert of the same fault to finish.
const BUSY_WAIT: Duration = Duration::from_secs(30);
/// How many finished ids the agent remembers, so that repeated reverts and re-applies of recent
/// ids answer consistently and renewals learn how a fault ended. Older ones are forgotten: the
/// agent's memory stays bounded however long it runs.
const HISTORY: usize = 1024;

/// A fault that is not finished.
#[derive(Debug)]
enum Slot {
    /// Being prepared, injected and verified right now, for this request.
    Applying(Requested),
    Active(Active),
}

/// What an id was claimed for: a repeat of the same request is answered with what is in force,
/// anything else under the same id is a conflict, never "already applied".
#[derive(Clone, Debug, PartialEq)]
struct Requested {
    run_id: String,
    what: Asked,
}

#[derive(Clone, Debug, PartialEq)]
enum Asked {
    Fault(FaultSpec),
    Resource(RunResource),
}

impl Requested {
    fn noun(&self) -> &'static str {
        match self.what {
            Asked::Fault(_) => "fault",
            Asked::Resource(_) => "resource",
        }
    }

    fn describe(&self) -> String {
        match &self.what {
            Asked::Fault(spec) => spec.describe(),
            Asked::Resource(resource) => resource.describe(),
        }
    }

    /// The registry name of the proxy this request opens, if it opens one.
    fn proxy_name(&self) -> Option<&str> {
        match &self.what {
            Asked::Resource(RunResource::Proxy { name, .. }) => Some(name),
            Asked::Fault(_) => None,
        }
    }

    /// Why `self` (in force or being applied under `id`) is not the request `asked`, or `None`
    /// when they are the same.
    fn differs(&self, id: &str, asked: &Requested) -> Option<String> {
        let noun = self.noun();
        if self.run_id != asked.run_id {
            return Some(format!(
                "{noun} {id} belongs to run_id `{}`, not `{}`",
                self.run_id, asked.run_id
            ));
        }
        if self.what != asked.what {
            let field = match self.what {
                Asked::Fault(_) => "spec",
                Asked::Resource(_) => "resource",
            };
            return Some(format!(
                "{noun} {id} is in force with a different {field}: {}; this request asks for {}",
                self.describe(),
                asked.describe()
            ));
        }
        None
    }
}

/// What the agent holds, split so that periodic work (reaper, health, metrics) is O(active).
#[derive(Debug)]
struct State {
    /// Faults being applied or in force.
    live: HashMap<String, Slot>,
    /// The last [`HISTORY`] finished faults: when and why each ended.
    finished: History,
}

/// Finished faults by id, forgetting the oldest beyond `bound` ([`HISTORY`]).
#[derive(Debug)]
struct History {
    bound: usize,
    by_id: HashMap<String, Reverted>,
    /// Ids in the order they finished, oldest first.
    order: VecDeque<String>,
}

impl History {
    fn new(bound: usize) -> History {
        History {
            bound,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &str) -> Option<&Reverted> {
        self.by_id.get(id)
    }

    fn insert(&mut self, reverted: Reverted) {
        let id = reverted.id.clone();
        if self.by_id.insert(id.clone(), reverted).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.bound {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[derive(Debug)]
struct Active {
    run_id: String,
    /// The request that put it in force, to tell a repeat from a conflicting request.
    requested: Requested,
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
    state: Mutex<State>,
    /// Signalled whenever a fault stops being applied or reverted, for a revert waiting on it.
    changed: Condvar,
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
    /// Microseconds spent writing journal entries durably, and removing them: with the two
    /// below, what a round of applies and reverts spends on disk against the whole.
    pub(crate) journal_record_us: AtomicU64,
    pub(crate) journal_remove_us: AtomicU64,
    /// Microseconds from an apply (a revert) starting on its blocking thread to its answer.
    pub(crate) apply_us: AtomicU64,
    pub(crate) revert_us: AtomicU64,
}

/// Adds the time since `since` to `counter`, in microseconds.
fn add_elapsed(counter: &AtomicU64, since: Instant) {
    let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
    counter.fetch_add(us, Ordering::Relaxed);
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
        crate::fault::forbid_fills_in(state_dir);
        let owner = process::read(std::process::id() as i32)
            .map(|p| p.to_ref())
            .ok_or("failed to read this process from /proc")?;
        let halted = AtomicBool::new(state_dir.join(HALTED_MARKER).exists());
        let core = Arc::new(AgentCore {
            journal,
            state: Mutex::new(State {
                live: HashMap::new(),
                finished: History::new(HISTORY),
            }),
            changed: Condvar::new(),
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

    /// The agent's state. A panic never happens while the lock is held (fault code runs outside it), so
    /// a poisoned lock still guards consistent data: recover it rather than wedge every request.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`AgentCore::open`] for async callers: recovery runs undo commands (`nft`, `tc`) and waits
    /// for processes to die, so it runs on a blocking thread, never on the runtime's own.
    pub(crate) async fn open_async(
        state_dir: PathBuf,
        envelope: Envelope,
        control_port: Option<u16>,
    ) -> Result<(Arc<AgentCore>, Recovery), String> {
        tokio::task::spawn_blocking(move || AgentCore::open(&state_dir, envelope, control_port))
            .await
            .map_err(|e| format!("failed to open the agent's journal in a blocking task: {e}"))?
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
            let state = self.state();
            state
                .live
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Applying(_)))
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
        #[cfg(test)]
        hooks::recovering(self.state_dir());
        let mut recovery = Recovery::default();
        for path in self.journal.discard_torn() {
            recovery.reverted.push(format!(
                "{}: discarded a journal entry a crash of the host cut short while it was being \
                 written (its fault was never made)",
                path.display()
            ));
        }
        for entry in self.journal.entries() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    recovery.failed.push(e);
                    continue;
                }
            };
            let rebooted = entry.written_before_a_restart();
            // The writer of an entry from an earlier boot is gone, whatever process now holds
            // its pid and start time.
            if !rebooted && entry.owner.is_alive() {
                continue;
            }
            let undone = if rebooted && !outlives_a_restart(&entry.undo) {
                // What it would undo went with the restart; running it could only meet an
                // unrelated process, cgroup or table that happens to match.
                self.journal.remove(&entry.id, Forget::Durably).map(|()| {
                    "the host restarted since the fault was made, which undid it: nothing \
                         left to undo"
                        .to_owned()
                })
            } else {
                entry.undo.revert().inspect(|_| {
                    let _ = self.forget_entry(&entry.id, &entry.undo);
                })
            };
            match undone {
                Ok(detail) => {
                    recovery.reverted.push(
                        crate::secrets::redact(&format!(
                            "{} ({}, run {}): {detail}",
                            entry.id, entry.kind, entry.run_id
                        ))
                        .into_owned(),
                    );
                    // A coordinator still renewing this fault learns it was cut short, and when.
                    self.state().finished.insert(Reverted {
                        id: entry.id.clone(),
                        detail,
                        at: Timestamp::now(),
                        cause: RevertCause::Recovered,
                        actions: Vec::new(),
                    });
                }
                Err(e) => recovery.failed.push(
                    crate::secrets::redact(&format!("{} ({}): {e}", entry.id, entry.kind))
                        .into_owned(),
                ),
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
        let state = self.state();
        state
            .live
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
        let started = Instant::now();
        let result = self.apply_inner(id, req);
        add_elapsed(&self.counters.apply_us, started);
        let counter = match &result {
            Ok(_) => &self.counters.applied,
            Err(AgentError::Refused(_)) => &self.counters.refused,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Journals `entry` durably (timed for `/metrics`).
    fn record_entry(&self, entry: &Entry) -> Result<(), String> {
        let started = Instant::now();
        let result = self.journal.record(entry);
        add_elapsed(&self.counters.journal_record_us, started);
        result
    }

    /// Forgets the entry of an undo that has run, as [`forget`] says (timed for `/metrics`).
    fn forget_entry(&self, id: &str, undo: &Undo) -> Result<(), String> {
        let started = Instant::now();
        let result = self.journal.remove(id, forget(undo));
        add_elapsed(&self.counters.journal_remove_us, started);
        result
    }

    fn apply_inner(&self, id: &str, req: &ApplyRequest) -> Result<Applied, AgentError> {
        crate::protocol::check_apply(req).map_err(|e| AgentError::BadRequest(e.to_string()))?;
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
        let requested = Requested {
            run_id: req.run_id.clone(),
            what: Asked::Fault(req.spec.clone()),
        };
        let claim = match self.claim(id, requested, "already applied")? {
            Claimed::Repeat(applied) => return Ok(applied),
            Claimed::New(claim) => claim,
        };
        // What this apply has journaled and not yet undone, so that a panic anywhere in the fault
        // code still reverts it: the slot is freed by the claim's drop, the host by this.
        let mut journaled: Option<Undo> = None;
        let result = match unpanic(|| self.inject(id, req, duration, &mut journaled)) {
            Ok(result) => result,
            Err(panic) => Err(self.after_panic(id, "applying", &panic, journaled.take())),
        };
        match result {
            Ok((applied, active)) => {
                let halted_meanwhile = active.is_some() && self.refusing();
                match active {
                    Some(active) => claim.fill(active),
                    None => claim.finish(Reverted {
                        id: id.to_owned(),
                        detail: "instant fault: nothing to revert".to_owned(),
                        at: applied.injected_at,
                        cause: RevertCause::Requested,
                        actions: Vec::new(),
                    }),
                }
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
            // Dropping the claim frees the slot.
            Err(e) => Err(e),
        }
    }

    /// Answers a panic in fault code: reverts what was journaled (the panic may have struck after
    /// the change landed) and says what happened. The caller's claim frees the slot.
    fn after_panic(
        &self,
        id: &str,
        doing: &str,
        panic: &str,
        journaled: Option<Undo>,
    ) -> AgentError {
        tracing::error!("{doing} fault {id} panicked: {panic}");
        let undo_note = match journaled {
            None => String::new(),
            Some(undo) => match unpanic(|| undo.revert()) {
                Ok(Ok(detail)) => match self.forget_entry(id, &undo) {
                    Ok(()) => format!("; reverted what was journaled: {detail}"),
                    Err(e) => format!("; reverted what was journaled ({detail}), but {e}"),
                },
                Ok(Err(e)) => format!("; and reverting what was journaled FAILED: {e}"),
                Err(again) => format!("; and reverting what was journaled panicked too: {again}"),
            },
        };
        AgentError::Internal(format!("{doing} fault {id} panicked: {panic}{undo_note}"))
    }

    fn inject(
        &self,
        id: &str,
        req: &ApplyRequest,
        duration: Duration,
        journaled: &mut Option<Undo>,
    ) -> Result<(Applied, Option<Active>), AgentError> {
        #[cfg(test)]
        hooks::at(id, hooks::Stage::Prepare);
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
            secrets: Entry::secrets_in(&undo),
            undo: undo.clone(),
            owner: self.owner.clone(),
            written_at: Timestamp::now(),
            // An action kind's `run` may take up to its allowance before the duration counts:
            // the watchdog must not revert while `run` is still running.
            deadline: (!req.spec.is_instant())
                .then(|| {
                    Timestamp::now()
                        .checked_add(duration + req.spec.apply_allowance())
                        .ok()
                })
                .flatten(),
            boot: journal::boot_id(),
        };
        self.record_entry(&entry).map_err(AgentError::FaultFailed)?;
        *journaled = Some(undo.clone());
        let injected_at = Timestamp::now();
        let started = Instant::now();
        let outcome = prepared.inject().and_then(|done| {
            #[cfg(test)]
            hooks::at(id, hooks::Stage::Verify);
            prepared.verify().map(|seen| format!("{done}; {seen}"))
        });
        let detail = match outcome {
            Ok(detail) => detail,
            Err(e) => {
                // Undo whatever part of the fault did land; the journal entry stays if that fails.
                // `journaled` is cleared only once the undo has returned: if it panics, the panic
                // handler still knows what to revert.
                let reverted = undo.revert();
                *journaled = None;
                let undo_note = match reverted {
                    Ok(_) => self
                        .forget_entry(id, &undo)
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
            actions: prepared.actions(),
        };
        if req.spec.is_instant() {
            self.forget_entry(id, &undo)
                .map_err(AgentError::FaultFailed)?;
            *journaled = None;
            return Ok((applied, None));
        }
        let lease = Duration::from_millis(req.lease_ms);
        let active = Active {
            run_id: req.run_id.clone(),
            requested: Requested {
                run_id: req.run_id.clone(),
                what: Asked::Fault(req.spec.clone()),
            },
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

    /// Claims `id` for an apply or an open. `Repeat` means the same request is already in
    /// force: it is answered with what is in force (idempotence). A different request under the
    /// same id, or a resource whose proxy name another id holds, is a conflict. Otherwise the slot
    /// is marked as being applied until the returned claim is filled or dropped.
    fn claim(
        &self,
        id: &str,
        requested: Requested,
        already: &str,
    ) -> Result<Claimed<'_>, AgentError> {
        let noun = requested.noun();
        let mut state = self.state();
        if state.finished.get(id).is_some() {
            return Err(AgentError::Conflict(format!(
                "{noun} {id} already ran and was reverted"
            )));
        }
        match state.live.get(id) {
            Some(Slot::Active(a)) => match a.requested.differs(id, &requested) {
                Some(why) => Err(AgentError::Conflict(why)),
                None => Ok(Claimed::Repeat(Applied {
                    id: id.to_owned(),
                    targets: a.targets.clone(),
                    detail: already.to_owned(),
                    injected_at: a.injected_at,
                    instant: false,
                    actions: Vec::new(),
                })),
            },
            Some(Slot::Applying(_)) => Err(AgentError::Conflict(format!(
                "{noun} {id} is being applied right now"
            ))),
            None => {
                if let Some(name) = requested.proxy_name() {
                    let holder = state.live.iter().find(|(_, slot)| {
                        let other = match slot {
                            Slot::Applying(r) => r,
                            Slot::Active(a) => &a.requested,
                        };
                        other.proxy_name() == Some(name)
                    });
                    if let Some((other, _)) = holder {
                        // Two ids on one proxy would let one id's revert close the other's port
                        // while the other is still listed as open.
                        return Err(AgentError::Conflict(format!(
                            "resource {other} already holds the proxy `{name}`"
                        )));
                    }
                }
                state.live.insert(id.to_owned(), Slot::Applying(requested));
                Ok(Claimed::New(Claim {
                    core: self,
                    id: id.to_owned(),
                    filled: false,
                }))
            }
        }
    }

    /// Opens a run resource: journal first, then open. Blocking; call from a blocking thread of
    /// the runtime (proxies are spawned onto it).
    pub(crate) fn open_blocking(&self, id: &str, req: &OpenRequest) -> Result<Applied, AgentError> {
        crate::protocol::check_open(req).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        validate_fault_id(id).map_err(AgentError::BadRequest)?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Refused("the agent is shutting down".to_owned()));
        }
        if self.halted.load(Ordering::SeqCst) {
            return Err(AgentError::Refused(
                "the agent is halted; run `faultline resume` first".to_owned(),
            ));
        }
        self.envelope
            .admit_resource(&req.resource)
            .map_err(AgentError::Refused)?;
        let RunResource::Proxy { name, .. } = &req.resource;
        persistent::check_run_name(name, &self.envelope.proxies).map_err(|e| match e {
            RunNameError::Persistent(_) => AgentError::Conflict(e.to_string()),
            RunNameError::NotARunName { .. } => AgentError::BadRequest(e.to_string()),
        })?;
        let requested = Requested {
            run_id: req.run_id.clone(),
            what: Asked::Resource(req.resource.clone()),
        };
        let claim = match self.claim(id, requested.clone(), "already open")? {
            Claimed::Repeat(applied) => return Ok(applied),
            Claimed::New(claim) => claim,
        };
        let undo = req.resource.undo();
        let entry = Entry {
            id: id.to_owned(),
            run_id: req.run_id.clone(),
            kind: req.resource.kind().to_owned(),
            undo: undo.clone(),
            owner: self.owner.clone(),
            written_at: Timestamp::now(),
            deadline: None,
            secrets: Vec::new(),
            boot: journal::boot_id(),
        };
        self.record_entry(&entry).map_err(AgentError::FaultFailed)?;
        let opened = match unpanic(|| {
            #[cfg(test)]
            hooks::at(id, hooks::Stage::Open);
            req.resource.open()
        }) {
            Ok(opened) => opened,
            Err(panic) => return Err(self.after_panic(id, "opening", &panic, Some(undo))),
        };
        match opened {
            Ok(detail) => {
                let injected_at = Timestamp::now();
                let lease = Duration::from_millis(req.lease_ms);
                let targets = vec![req.resource.describe()];
                claim.fill(Active {
                    run_id: req.run_id.clone(),
                    requested,
                    kind: req.resource.kind(),
                    undo,
                    targets: targets.clone(),
                    injected_at,
                    ends_at: None,
                    lease,
                    lease_until: Instant::now() + lease,
                    reverting: false,
                });
                if self.refusing() {
                    // A halt's (or shutdown's) revert-all ran while the proxy was opening: close it
                    // here, as an apply does, so nothing outlives the halt.
                    let undone = match self.revert_blocking(id, RevertCause::Halted) {
                        Ok(r) => format!("closed it: {}", r.detail),
                        Err(e) => format!("and closing it FAILED: {e}"),
                    };
                    return Err(AgentError::Refused(format!(
                        "the agent was halted or shut down while this resource was being opened; {undone}"
                    )));
                }
                Ok(Applied {
                    id: id.to_owned(),
                    targets,
                    detail,
                    injected_at,
                    instant: false,
                    actions: Vec::new(),
                })
            }
            Err(e) => {
                let e = match undo.revert().and_then(|_| self.forget_entry(id, &undo)) {
                    Ok(()) => e,
                    Err(undo_err) => format!("{e}; and cleaning up failed: {undo_err}"),
                };
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
        let started = Instant::now();
        let result = self.revert_inner(id, cause);
        add_elapsed(&self.counters.revert_us, started);
        result
    }

    fn revert_inner(&self, id: &str, cause: RevertCause) -> Result<Reverted, AgentError> {
        validate_fault_id(id).map_err(AgentError::BadRequest)?;
        // The reaper (duration end, lease) and a request can ask at the same moment: the second
        // waits for the first to finish (woken by `changed`) and then answers with its result.
        let deadline = Instant::now() + BUSY_WAIT;
        let mut state = self.state();
        let undo = loop {
            if let Some(r) = state.finished.get(id) {
                return Ok(r.clone());
            }
            match state.live.get_mut(id) {
                Some(
                    Slot::Applying(_)
                    | Slot::Active(Active {
                        reverting: true, ..
                    }),
                ) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(AgentError::Conflict(format!(
                            "fault {id} stayed busy for {} s",
                            BUSY_WAIT.as_secs()
                        )));
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
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
                        actions: Vec::new(),
                    });
                }
            }
        };
        drop(state);
        // A panicking undo is a failed revert like any other: the slot stays active and the reaper
        // tries again, instead of the id staying "reverting" for ever.
        let (result, actions) = unpanic(|| {
            #[cfg(test)]
            hooks::at(id, hooks::Stage::Revert);
            undo.revert_reported()
        })
        .unwrap_or_else(|panic| (Err(format!("reverting panicked: {panic}")), Vec::new()));
        let result = result.and_then(|detail| self.forget_entry(id, &undo).map(|()| detail));
        let mut state = self.state();
        let answer = match result {
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
                    actions,
                };
                state.live.remove(id);
                state.finished.insert(reverted.clone());
                Ok(reverted)
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(Slot::Active(a)) = state.live.get_mut(id) {
                    a.reverting = false;
                    // Retry no sooner than a second from now, not on every reaper tick.
                    a.lease_until = Instant::now() + Duration::from_secs(1);
                }
                Err(AgentError::RevertFailed(e))
            }
        };
        drop(state);
        self.changed.notify_all();
        answer
    }

    /// Extends the leases of the given faults by their lease length. Ids no longer active are
    /// answered in `ended` with when and why they ended, if the agent still remembers them (the
    /// cause is `requested` when the coordinator's own revert raced this renewal, and for an
    /// instant fault); ids it never held, or held before it restarted, are `unknown`.
    pub(crate) fn renew(&self, ids: &[String]) -> Renewed {
        let now = Instant::now();
        let mut state = self.state();
        let mut answer = Renewed {
            renewed: Vec::new(),
            unknown: Vec::new(),
            ended: Vec::new(),
        };
        for id in ids {
            match state.live.get_mut(id) {
                // Lapsed: the dead-man switch has fired, whether or not the reaper has reverted
                // it yet, and another process (an embedded run's watchdog) may have undone it
                // already. Renewing it now would let a run that was stopped past its lease carry
                // on and call a fault held that was not: the reaper reverts it, and the next
                // renewal hears when and why.
                Some(Slot::Active(a)) if now >= a.lease_until => {}
                Some(Slot::Active(a)) => {
                    a.lease_until = now + a.lease;
                    answer.renewed.push(id.clone());
                }
                // Still being applied: its lease starts when the apply ends.
                Some(Slot::Applying(_)) => answer.renewed.push(id.clone()),
                None => match state.finished.get(id) {
                    Some(reverted) => answer.ended.push(reverted.clone()),
                    None => answer.unknown.push(id.clone()),
                },
            }
        }
        answer
    }

    pub(crate) fn active(&self) -> Vec<FaultStatus> {
        let state = self.state();
        let mut list: Vec<FaultStatus> = state
            .live
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Active(a) => Some(FaultStatus {
                    id: id.clone(),
                    run_id: a.run_id.clone(),
                    kind: a.kind.to_owned(),
                    targets: a.targets.clone(),
                    injected_at: a.injected_at,
                }),
                Slot::Applying(_) => None,
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

/// What claiming an id found.
enum Claimed<'a> {
    /// Already active: the request repeats one that is in force.
    Repeat(Applied),
    New(Claim<'a>),
}

/// A slot marked `Applying`. Filled when the apply lands; if it is dropped unfilled — the apply
/// failed, returned early or panicked — the slot is freed, so no id is ever left "being applied"
/// with nobody applying it.
struct Claim<'a> {
    core: &'a AgentCore,
    id: String,
    filled: bool,
}

impl Claim<'_> {
    /// The fault is in force.
    fn fill(mut self, active: Active) {
        self.core
            .state()
            .live
            .insert(self.id.clone(), Slot::Active(active));
        self.filled = true;
        self.core.changed.notify_all();
    }

    /// The fault is over as soon as it landed (an instant fault).
    fn finish(mut self, reverted: Reverted) {
        let mut state = self.core.state();
        state.live.remove(&self.id);
        state.finished.insert(reverted);
        drop(state);
        self.filled = true;
        self.core.changed.notify_all();
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.filled {
            let mut state = self.core.state();
            if matches!(state.live.get(&self.id), Some(Slot::Applying(_))) {
                state.live.remove(&self.id);
            }
            drop(state);
            self.core.changed.notify_all();
        }
    }
}

/// Runs fault code, turning a panic into an error carrying the panic's message: a bug in one
/// fault kind (a division by zero on a bad request) must not wedge the agent's bookkeeping.
fn unpanic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Test-only points inside apply and open where a test can make fault code panic (or wait
/// first), to prove the core survives a bug in any fault kind without relying on one existing.
#[cfg(test)]
pub(super) mod hooks {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc::Receiver;
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Stage {
        Prepare,
        Verify,
        Open,
        Revert,
    }

    /// The stage at which to panic, and a gate to wait on before panicking.
    type Plan = (Stage, Option<Receiver<()>>);

    /// Fault id -> its planned panic.
    static PLAN: Mutex<Option<HashMap<String, Plan>>> = Mutex::new(None);

    pub(crate) fn panic_at(id: &str, stage: Stage, gate: Option<Receiver<()>>) {
        PLAN.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(id.to_owned(), (stage, gate));
    }

    /// State dir -> a gate recovery waits on (at most 10 s) before it starts.
    static RECOVERY_GATES: Mutex<Option<HashMap<PathBuf, Receiver<()>>>> = Mutex::new(None);

    pub(crate) fn gate_recovery(state_dir: &Path, gate: Receiver<()>) {
        RECOVERY_GATES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(state_dir.to_owned(), gate);
    }

    pub(crate) fn recovering(state_dir: &Path) {
        let gate = RECOVERY_GATES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .remove(state_dir);
        if let Some(gate) = gate {
            let _ = gate.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Fault id -> a stage at which it waits on a gate (and then carries on, no panic).
    static WAITS: Mutex<Option<HashMap<String, Plan>>> = Mutex::new(None);

    pub(crate) fn wait_at(id: &str, stage: Stage, gate: Receiver<()>) {
        WAITS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(id.to_owned(), (stage, Some(gate)));
    }

    pub(crate) fn at(id: &str, stage: Stage) {
        let wait = {
            let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
            let map = waits.get_or_insert_with(HashMap::new);
            match map.get(id) {
                Some((s, _)) if *s == stage => map.remove(id),
                _ => None,
            }
        };
        if let Some((_, Some(gate))) = wait {
            let _ = gate.recv_timeout(Duration::from_secs(10));
        }
        let planned = {
            let mut plan = PLAN.lock().unwrap_or_else(PoisonError::into_inner);
            let map = plan.get_or_insert_with(HashMap::new);
            match map.get(id) {
                Some((s, _)) if *s == stage => map.remove(id),
                _ => None,
            }
        };
        if let Some((_, gate)) = planned {
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            panic!("test hook: {stage:?} of {id} panics");
        }
    }
}

/// How to forget the journal entry of an undo that has just run (see [`Forget`]).
///
/// Forgetting lazily saves a directory fsync on every revert, and only a crash of the whole host
/// in the next seconds can bring the entry back; the next start then finds it. After a reboot
/// that is harmless for every undo of the host's own state: what a fault made in the kernel (a
/// stopped process, an nft table, a qdisc, a frozen cgroup, stress workers, a proxy of the
/// crashed process) is gone with the reboot, and recovery forgets such an entry from an earlier
/// boot without running its undo ([`outlives_a_restart`]), so a process that now has the same
/// pid and start time is never touched; each of these undos also succeeds when what it would
/// undo is gone (`already gone`, `not running`). A
/// fill file lives on disk, and its undo deletes it only if it still carries the fault's marker
/// under the fault's random name: running it again is right, since a lost entry removal may have
/// lost the fill file's deletion too. A `command` or `http` revert is the operator's program or
/// request, which faultline cannot know is safe to run twice: its entry is forgotten durably.
pub(super) fn forget(undo: &Undo) -> Forget {
    if journal::boot_id().is_none() {
        // Without a boot id an entry brought back by a host crash cannot be told from one of
        // this boot, and would have its undo replayed against whatever now has its names.
        return Forget::Durably;
    }
    match undo {
        Undo::Nothing
        | Undo::Resume { .. }
        | Undo::RemoveFile { .. }
        | Undo::KillWorkers { .. }
        | Undo::DeleteNftTable { .. }
        | Undo::DeleteRootQdisc { .. }
        | Undo::ClearToxics { .. }
        | Undo::CloseProxy { .. }
        | Undo::Thaw { .. } => Forget::Lazily,
        Undo::Command(_) | Undo::Http(_) => Forget::Durably,
    }
}

/// Whether what `undo` undoes outlives a restart of the host, so that an entry from an earlier
/// boot still needs it run. Only a fill file lives on disk, and only the operator knows what a
/// `command` or `http` revert restores (a setting on disk, a remote service's state). A stopped
/// process, stress workers, an nft table, a qdisc, a frozen cgroup and a proxy live in the kernel
/// or in a process, and the restart ended them.
pub(super) fn outlives_a_restart(undo: &Undo) -> bool {
    match undo {
        Undo::RemoveFile { .. } | Undo::Command(_) | Undo::Http(_) => true,
        Undo::Nothing
        | Undo::Resume { .. }
        | Undo::KillWorkers { .. }
        | Undo::DeleteNftTable { .. }
        | Undo::DeleteRootQdisc { .. }
        | Undo::ClearToxics { .. }
        | Undo::CloseProxy { .. }
        | Undo::Thaw { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fault::{FaultSpec, ProcessPause};
    use crate::process::Selector;

    /// A request to open the run proxy on `listen`.
    fn proxy_request(listen: &str) -> Requested {
        Requested {
            run_id: "r".to_owned(),
            what: Asked::Resource(RunResource::Proxy {
                name: format!("listen-{listen}"),
                listen: listen.parse().unwrap(),
                upstream: "127.0.0.1:2".to_owned(),
            }),
        }
    }

    #[test]
    fn a_claimed_id_refuses_an_overlapping_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        let asked = || proxy_request("127.0.0.1:1");
        let first = core.claim("claim-0", asked(), "already open").unwrap();
        assert!(matches!(first, Claimed::New(_)));
        let Err(err) = core.claim("claim-0", asked(), "already open") else {
            panic!("a second claim of claim-0 was granted");
        };
        assert_eq!(
            err.to_string(),
            "conflict: resource claim-0 is being applied right now"
        );
        drop(first);
        assert!(
            matches!(
                core.claim("claim-0", asked(), "already open"),
                Ok(Claimed::New(_))
            ),
            "a dropped claim still holds its slot"
        );
    }

    fn open_core() -> (tempfile::TempDir, Arc<AgentCore>) {
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        (dir, core)
    }

    /// A `sleep` to pause, killed and reaped when the test ends however it ends.
    struct Victim(std::process::Child);

    impl Victim {
        fn spawn() -> Victim {
            Victim(
                std::process::Command::new("sleep")
                    .arg("300")
                    .spawn()
                    .unwrap(),
            )
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        fn stopped(&self) -> bool {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
            stat.rsplit_once(") ").unwrap().1.starts_with('T')
        }
    }

    impl Drop for Victim {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn pause(pid: i32) -> ApplyRequest {
        ApplyRequest {
            run_id: "r".to_owned(),
            spec: FaultSpec::ProcessPause(ProcessPause {
                select: Selector::pid(pid),
                pick: None,
            }),
            duration_ms: Some(3_600_000),
            lease_ms: 3_600_000,
            seed: 1,
        }
    }

    #[test]
    fn a_panic_while_preparing_frees_the_id_and_answers_an_internal_error() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        hooks::panic_at("panic-prepare-0", hooks::Stage::Prepare, None);
        let err = core
            .apply_blocking("panic-prepare-0", &pause(victim.pid()))
            .unwrap_err();
        assert!(matches!(err, AgentError::Internal(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("applying fault panic-prepare-0 panicked: test hook: Prepare"),
            "{err}"
        );
        // Nothing holds the id: revert and halt answer at once, and the id can be applied again.
        let reverted = core
            .revert_blocking("panic-prepare-0", RevertCause::Requested)
            .unwrap();
        assert_eq!(reverted.detail, "not active on this agent");
        assert!(core.halt_blocking().is_empty());
        core.resume().unwrap();
        core.apply_blocking("panic-prepare-0", &pause(victim.pid()))
            .expect("the id is free again after the panic");
        core.revert_blocking("panic-prepare-0", RevertCause::Requested)
            .unwrap();
        assert!(!victim.stopped());
    }

    #[test]
    fn a_panic_after_the_change_landed_reverts_it_and_frees_the_id() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        hooks::panic_at("panic-verify-0", hooks::Stage::Verify, None);
        let err = core
            .apply_blocking("panic-verify-0", &pause(victim.pid()))
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AgentError::Internal(_)), "{err:?}");
        assert!(
            text.contains("test hook: Verify of panic-verify-0 panics"),
            "{text}"
        );
        assert!(text.contains("reverted what was journaled"), "{text}");
        assert!(
            !victim.stopped(),
            "the victim stayed stopped after the panic"
        );
        assert!(
            core.journal.entries().is_empty(),
            "the journal kept the entry"
        );
        assert!(core.active().is_empty());
        assert!(core.close_blocking().is_empty());
    }

    #[test]
    fn a_panicking_revert_fails_that_revert_and_the_next_one_undoes_the_fault() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        core.apply_blocking("panic-revert-0", &pause(victim.pid()))
            .unwrap();
        hooks::panic_at("panic-revert-0", hooks::Stage::Revert, None);
        let err = core
            .revert_blocking("panic-revert-0", RevertCause::Requested)
            .unwrap_err();
        assert!(matches!(err, AgentError::RevertFailed(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("reverting panicked: test hook: Revert of panic-revert-0 panics"),
            "{err}"
        );
        // The fault is still held and not stuck "reverting": the next revert answers at once.
        assert_eq!(core.active().len(), 1);
        core.revert_blocking("panic-revert-0", RevertCause::Requested)
            .unwrap();
        assert!(!victim.stopped(), "the victim stayed stopped");
        assert!(core.journal.entries().is_empty());
    }

    #[test]
    fn a_revert_waiting_on_an_apply_that_panics_answers_when_the_apply_ends() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        let (release, gate) = std::sync::mpsc::channel();
        hooks::panic_at("panic-verify-1", hooks::Stage::Verify, Some(gate));
        let applying = {
            let core = Arc::clone(&core);
            let req = pause(victim.pid());
            std::thread::spawn(move || core.apply_blocking("panic-verify-1", &req))
        };
        while core
            .renew(&["panic-verify-1".to_owned()])
            .renewed
            .is_empty()
        {
            std::thread::yield_now();
        }
        let reverting = {
            let core = Arc::clone(&core);
            std::thread::spawn(move || {
                core.revert_blocking("panic-verify-1", RevertCause::Requested)
            })
        };
        release.send(()).unwrap();
        assert!(matches!(
            applying.join().unwrap(),
            Err(AgentError::Internal(_))
        ));
        let reverted = reverting
            .join()
            .unwrap()
            .expect("the revert waits for the apply and then succeeds");
        assert_eq!(reverted.detail, "not active on this agent");
        assert!(!victim.stopped());
    }

    #[test]
    fn a_panic_while_opening_a_resource_frees_the_id_and_closes_what_was_journaled() {
        let (_dir, core) = open_core();
        hooks::panic_at("panic-open-0", hooks::Stage::Open, None);
        let req = OpenRequest {
            run_id: "r".to_owned(),
            resource: RunResource::Proxy {
                name: "listen-127.0.0.1:1".to_owned(),
                listen: "127.0.0.1:1".parse().unwrap(),
                upstream: "127.0.0.1:2".to_owned(),
            },
            lease_ms: 60_000,
        };
        let err = core.open_blocking("panic-open-0", &req).unwrap_err();
        assert!(matches!(err, AgentError::Internal(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("opening fault panic-open-0 panicked"),
            "{err}"
        );
        assert!(
            core.journal.entries().is_empty(),
            "the journal kept the entry"
        );
        assert!(core.halt_blocking().is_empty());
    }

    #[test]
    fn a_resource_is_not_opened_while_the_agent_shuts_down() {
        let (_dir, core) = open_core();
        assert!(core.close_blocking().is_empty());
        let listen = "127.0.0.1:3";
        let req = OpenRequest {
            run_id: "r".to_owned(),
            resource: RunResource::Proxy {
                name: format!("listen-{listen}"),
                listen: listen.parse().unwrap(),
                upstream: "127.0.0.1:2".to_owned(),
            },
            lease_ms: 60_000,
        };
        let err = core.open_blocking("closing-open-0", &req).unwrap_err();
        assert!(matches!(err, AgentError::Refused(_)), "{err:?}");
        assert_eq!(err.to_string(), "refused: the agent is shutting down");
        assert!(
            crate::proxy::registry()
                .listen_of(&format!("listen-{listen}"))
                .is_none()
        );
        assert!(core.active().is_empty());
        assert!(core.journal.entries().is_empty());
    }

    #[test]
    fn a_resource_opened_while_the_agent_halts_is_closed_and_refused() {
        let (_dir, core) = open_core();
        let listen = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        );
        let name = format!("listen-{listen}");
        let req = OpenRequest {
            run_id: "r".to_owned(),
            resource: RunResource::Proxy {
                name: name.clone(),
                listen: listen.parse().unwrap(),
                upstream: "127.0.0.1:2".to_owned(),
            },
            lease_ms: 60_000,
        };
        let (release, gate) = std::sync::mpsc::channel();
        hooks::wait_at("halt-open-0", hooks::Stage::Open, gate);
        let opening = {
            let core = Arc::clone(&core);
            std::thread::spawn(move || core.open_blocking("halt-open-0", &req))
        };
        // The open has claimed its id and waits at the hook: halt now.
        while !matches!(
            core.state().live.get("halt-open-0"),
            Some(Slot::Applying(_))
        ) {
            std::thread::yield_now();
        }
        let halting = {
            let core = Arc::clone(&core);
            std::thread::spawn(move || core.halt_blocking())
        };
        while !core.is_halted() {
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        let err = opening
            .join()
            .unwrap()
            .expect_err("a resource opened during a halt was answered as open");
        assert!(matches!(err, AgentError::Refused(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("halted or shut down while this resource was being opened"),
            "{err}"
        );
        halting.join().unwrap();
        assert!(
            crate::proxy::registry().listen_of(&name).is_none(),
            "the proxy stayed open"
        );
        assert!(core.active().is_empty());
        assert!(core.journal.entries().is_empty());
    }

    #[test]
    fn a_second_id_for_a_proxy_that_another_id_holds_is_a_conflict() {
        let (_dir, core) = open_core();
        let first = core
            .claim("hold-0", proxy_request("127.0.0.1:4"), "already open")
            .unwrap();
        let Err(err) = core.claim("hold-1", proxy_request("127.0.0.1:4"), "already open") else {
            panic!("a second id was granted the proxy that hold-0 holds");
        };
        assert_eq!(
            err.to_string(),
            "conflict: resource hold-0 already holds the proxy `listen-127.0.0.1:4`"
        );
        drop(first);
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
                select: Selector::pid(victim.id() as i32),
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

    fn kill_with(pid: i32, signal: &str) -> ApplyRequest {
        ApplyRequest {
            run_id: "r".to_owned(),
            spec: FaultSpec::ProcessKill(crate::fault::ProcessKill {
                select: Selector::pid(pid),
                signal: signal.to_owned(),
                pick: None,
            }),
            duration_ms: None,
            lease_ms: 60_000,
            seed: 1,
        }
    }

    #[test]
    fn finished_faults_are_remembered_up_to_a_bound_and_recent_repeats_still_answer() {
        const BOUND: usize = 32;
        let (_dir, core) = open_core();
        // The agent's bound is HISTORY; a smaller one keeps this test quick, same code.
        core.state().finished.bound = BOUND;
        let victim = Victim::spawn();
        // Instant faults finish as they land; a held fault finishes when reverted. Both kinds
        // pass the bound, in this order: the held ones first, so they are the ones forgotten.
        for i in 0..3 {
            let id = format!("held-{i}");
            core.apply_blocking(&id, &pause(victim.pid())).unwrap();
            core.revert_blocking(&id, RevertCause::Requested).unwrap();
        }
        for i in 0..BOUND + 10 {
            core.apply_blocking(&format!("kick-{i}"), &kill_with(victim.pid(), "SIGWINCH"))
                .unwrap();
        }
        let state = core.state();
        assert!(state.live.is_empty(), "finished faults stayed live");
        assert_eq!(state.finished.len(), BOUND);
        assert_eq!(state.finished.order.len(), BOUND);
        drop(state);
        let recent = format!("kick-{}", BOUND + 9);
        let first = core
            .revert_blocking(&recent, RevertCause::Requested)
            .unwrap();
        let again = core
            .revert_blocking(&recent, RevertCause::Requested)
            .unwrap();
        assert_eq!((first.at, &first.detail), (again.at, &again.detail));
        assert_eq!(first.detail, "instant fault: nothing to revert");
        let err = core
            .apply_blocking(&recent, &kill_with(victim.pid(), "SIGWINCH"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("conflict: fault {recent} already ran and was reverted")
        );
        let renewed = core.renew(&[recent.clone(), "held-0".to_owned()]);
        assert_eq!(renewed.ended.len(), 1);
        assert_eq!(renewed.ended[0].id, recent);
        assert_eq!(
            renewed.unknown,
            vec!["held-0".to_owned()],
            "the oldest id was not forgotten"
        );
    }

    #[test]
    fn a_lapsed_lease_is_not_renewed_before_the_reaper_reverts_it() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        let req = ApplyRequest {
            lease_ms: 50,
            ..pause(victim.pid())
        };
        core.apply_blocking("late-0", &req).unwrap();
        assert!(core.renew(&["late-0".to_owned()]).renewed == ["late-0"]);
        // The run renews nothing for longer than its lease (stopped, say); no reaper runs here.
        std::thread::sleep(Duration::from_millis(120));
        let late = core.renew(&["late-0".to_owned()]);
        assert!(
            late.renewed.is_empty(),
            "a lapsed lease was renewed: {late:?}"
        );
        assert!(late.ended.is_empty() && late.unknown.is_empty(), "{late:?}");
        assert_eq!(
            core.expired(Instant::now()),
            [("late-0".to_owned(), RevertCause::LeaseExpired)],
            "the late renewal kept the reaper from seeing the lapse"
        );
        core.revert_blocking("late-0", RevertCause::LeaseExpired)
            .unwrap();
        let after = core.renew(&["late-0".to_owned()]);
        assert_eq!(after.ended.len(), 1, "{after:?}");
        assert_eq!(after.ended[0].cause, RevertCause::LeaseExpired);
        assert!(!victim.stopped());
    }

    #[test]
    fn renewing_a_fault_the_agent_ended_says_when_and_why() {
        let (_dir, core) = open_core();
        let victim = Victim::spawn();
        core.apply_blocking("lapsed-0", &pause(victim.pid()))
            .unwrap();
        // What the reaper does when the lease lapses.
        let lapsed = core
            .revert_blocking("lapsed-0", RevertCause::LeaseExpired)
            .unwrap();
        let renewed = core.renew(&["lapsed-0".to_owned(), "never-0".to_owned()]);
        assert!(renewed.renewed.is_empty());
        assert_eq!(renewed.unknown, vec!["never-0".to_owned()]);
        assert_eq!(renewed.ended.len(), 1);
        let ended = &renewed.ended[0];
        assert_eq!(ended.id, "lapsed-0");
        assert_eq!(ended.cause, RevertCause::LeaseExpired);
        assert_eq!(ended.at, lapsed.at);
        assert!(!victim.stopped());
    }

    #[test]
    fn a_fault_recovered_from_the_journal_is_reported_as_ended_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let victim = Victim::spawn();
        let victim_ref = process::read(victim.pid()).unwrap().to_ref();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.pid()),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        let me = process::read(std::process::id() as i32).unwrap().to_ref();
        // Left by an agent that is gone: same pid, another start time.
        let dead = process::ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        Journal::open(dir.path())
            .unwrap()
            .record(&Entry {
                id: "crashed-0".to_owned(),
                run_id: "r".to_owned(),
                kind: "process-pause".to_owned(),
                undo: Undo::Resume {
                    procs: vec![victim_ref],
                },
                owner: dead,
                written_at: Timestamp::now(),
                deadline: None,
                secrets: Vec::new(),
                boot: journal::boot_id(),
            })
            .unwrap();
        let before = Timestamp::now();
        let (core, recovery) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        assert_eq!(recovery.reverted.len(), 1, "{recovery:?}");
        let renewed = core.renew(&["crashed-0".to_owned()]);
        assert_eq!(renewed.ended.len(), 1, "{renewed:?}");
        assert_eq!(renewed.ended[0].cause, RevertCause::Recovered);
        assert!(renewed.ended[0].at >= before);
        assert!(renewed.unknown.is_empty());
        assert!(!victim.stopped());
    }

    /// A crash of the host can bring back the entry of a fault that was undone (its removal was
    /// not synced): the next start runs the undo again, which must succeed with nothing to undo.
    #[test]
    fn entries_from_before_a_restart_of_the_host_run_only_undos_of_what_outlives_it() {
        let dir = tempfile::tempdir().unwrap();
        // A stopped process whose pid and start time an entry from an earlier boot names: after
        // a real restart it would be an unrelated process that happens to match, so recovery
        // must not continue it. The same entry from this boot continues it (the other tests).
        let victim = Victim::spawn();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.pid()),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        while !victim.stopped() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let victim_ref = process::read(victim.pid()).unwrap().to_ref();
        // Written by this very process, which is alive: only the boot says its writer is gone.
        let me = process::read(std::process::id() as i32).unwrap().to_ref();
        let fill = dir.path().join(".faultline-fill-before-restart");
        // Marked as disk-fill marks its files, or its undo leaves the file alone.
        std::fs::write(
            &fill,
            b"faultline fill .faultline-fill-before-restart\n0000",
        )
        .unwrap();
        let earlier = Some("00000000-0000-4000-8000-000000000000".to_owned());
        assert_ne!(earlier, journal::boot_id());
        let journal = Journal::open(dir.path()).unwrap();
        for (id, kind, undo) in [
            (
                "old-pause",
                "process-pause",
                Undo::Resume {
                    procs: vec![victim_ref],
                },
            ),
            (
                "old-fill",
                "disk-fill",
                Undo::RemoveFile { path: fill.clone() },
            ),
        ] {
            journal
                .record(&Entry {
                    id: id.to_owned(),
                    run_id: "r".to_owned(),
                    kind: kind.to_owned(),
                    undo,
                    owner: me.clone(),
                    written_at: Timestamp::now(),
                    deadline: None,
                    secrets: Vec::new(),
                    boot: earlier.clone(),
                })
                .unwrap();
        }
        let (core, recovery) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        assert!(recovery.failed.is_empty(), "{recovery:?}");
        assert_eq!(recovery.reverted.len(), 2, "{recovery:?}");
        assert!(
            recovery
                .reverted
                .iter()
                .any(|r| r.starts_with("old-pause") && r.contains("the host restarted")),
            "{recovery:?}"
        );
        assert!(
            victim.stopped(),
            "an entry from an earlier boot continued a process"
        );
        assert!(!fill.exists(), "a fill file outlives a restart and must go");
        assert!(core.journal.entries().is_empty());
        assert!(outlives_a_restart(&Undo::RemoveFile { path: fill }));
        assert!(!outlives_a_restart(&Undo::Nothing));
    }

    #[test]
    fn entries_of_faults_already_undone_recover_cleanly_and_torn_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let victim = Victim::spawn();
        let victim_ref = process::read(victim.pid()).unwrap().to_ref();
        let me = process::read(std::process::id() as i32).unwrap().to_ref();
        let dead = process::ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        let fill = dir
            .path()
            .join("elsewhere")
            .join(".faultline-fill-gone-0-abcd");
        let undone = [
            ("nothing", Undo::Nothing),
            // Continued already: the victim runs.
            (
                "process-pause",
                Undo::Resume {
                    procs: vec![victim_ref],
                },
            ),
            // Deleted already.
            ("disk-fill", Undo::RemoveFile { path: fill }),
            (
                "cpu-stress",
                Undo::KillWorkers {
                    fault_id: "gone-3".to_owned(),
                },
            ),
            (
                "latency",
                Undo::ClearToxics {
                    proxy: "listen-127.0.0.1:1".to_owned(),
                    owner: "gone-4".to_owned(),
                },
            ),
            (
                "proxy",
                Undo::CloseProxy {
                    proxy: "listen-127.0.0.1:1".to_owned(),
                },
            ),
        ];
        let journal = Journal::open(dir.path()).unwrap();
        for (i, (kind, undo)) in undone.iter().enumerate() {
            journal
                .record(&Entry {
                    id: format!("gone-{i}"),
                    run_id: "r".to_owned(),
                    kind: (*kind).to_owned(),
                    undo: undo.clone(),
                    owner: dead.clone(),
                    written_at: Timestamp::now(),
                    deadline: None,
                    secrets: Vec::new(),
                    boot: journal::boot_id(),
                })
                .unwrap();
        }
        std::fs::write(
            dir.path().join("torn-0.json"),
            b"{\n  \"id\": \"torn-0\",\n",
        )
        .unwrap();
        let (core, recovery) = AgentCore::open(dir.path(), Envelope::default(), None).unwrap();
        assert!(recovery.failed.is_empty(), "{recovery:?}");
        assert_eq!(recovery.reverted.len(), undone.len() + 1, "{recovery:?}");
        assert!(
            recovery
                .reverted
                .iter()
                .any(|r| r.contains("torn-0.json: discarded a journal entry")),
            "{recovery:?}"
        );
        assert!(core.journal.entries().is_empty());
        assert!(!victim.stopped());
    }

    /// The operator's own revert may not be safe to run twice: its entry must not come back.
    #[test]
    fn only_an_operators_revert_program_or_request_is_forgotten_durably() {
        let undo = |json: &str| serde_json::from_str::<Undo>(json).unwrap();
        let command = undo(r#"{"undo": "command", "argv": ["/usr/bin/true"], "timeout_ms": 1000}"#);
        let http = undo(
            r#"{"undo": "http", "method": "POST", "url": "http://127.0.0.1:1/", "timeout_ms": 1000}"#,
        );
        assert_eq!(forget(&command), Forget::Durably);
        assert_eq!(forget(&http), Forget::Durably);
        for lazy in [
            Undo::Nothing,
            Undo::DeleteNftTable {
                table: "t".to_owned(),
            },
            Undo::RemoveFile {
                path: PathBuf::from("/tmp/x"),
            },
        ] {
            assert_eq!(forget(&lazy), Forget::Lazily, "{lazy:?}");
        }
    }

    #[test]
    fn a_run_cannot_open_a_proxy_under_a_persistent_proxys_name() {
        let dir = tempfile::tempdir().unwrap();
        let envelope = Envelope::parse(
            "[[proxy]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let (core, _) = AgentCore::open(dir.path(), envelope, None).unwrap();
        let open = |name: &str| {
            core.open_blocking(
                &format!("res-{name}"),
                &OpenRequest {
                    run_id: "r".to_owned(),
                    resource: RunResource::Proxy {
                        name: name.to_owned(),
                        listen: "127.0.0.1:9".parse().unwrap(),
                        upstream: "127.0.0.1:2".to_owned(),
                    },
                    lease_ms: 60_000,
                },
            )
        };
        let err = open("db").unwrap_err();
        assert!(matches!(err, AgentError::Conflict(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "conflict: proxy `db` is one of this agent's persistent proxies: a run may neither open nor close it"
        );
        let err = open("cache").unwrap_err();
        assert!(matches!(err, AgentError::BadRequest(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "bad request: invalid run proxy name `cache`: the proxies of runs are named `listen-ADDRESS`"
        );
        assert!(crate::proxy::registry().listen_of("db").is_none());
        assert!(crate::proxy::registry().listen_of("cache").is_none());
        assert!(core.active().is_empty());
        assert!(core.journal.entries().is_empty());
    }

    #[test]
    fn journal_recovery_leaves_the_async_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        // Recovery waits until a task on the same single-threaded runtime has run: that task
        // can only run if recovery is not occupying the runtime's one thread.
        let (release, gate) = std::sync::mpsc::channel();
        hooks::gate_recovery(dir.path(), gate);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ran_during_recovery = runtime.block_on(async {
            let other = tokio::spawn(async move { release.send(()).is_ok() });
            let opened =
                AgentCore::open_async(dir.path().to_owned(), Envelope::default(), None).await;
            opened.unwrap();
            other.await.unwrap()
        });
        assert!(
            ran_during_recovery,
            "the other task could not run during recovery"
        );
    }
}
