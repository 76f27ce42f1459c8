//! Owns the run loop: fixtures → before (baseline) → method (faults on their timeline, abort rules,
//! lease renewal) → after (recovery) → teardown, and the verdict that comes out of it.
//!
//! One task owns all run state and is the only `select!` over its events (samples, fault results,
//! an alarm at the next moment the clock alone changes something, a tick, signals); probes and
//! fault operations are separate tasks that talk to it by channels.

pub(crate) mod session;
mod verdict;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::agent::{Agent, AgentError};
use crate::budget::{self, Budget};
use crate::fault::RunResource;
use crate::fixture;
use crate::model::Experiment;
use crate::probe::{self, Sample};
use crate::progress::Progress;
use crate::protocol::{Applied, ApplyRequest, OpenRequest, Renewed, RevertCause, Reverted};
use crate::report::{FaultRecord, FaultState, Phase, ProbePhase, Report, SampleRecord, millis};
use crate::sli::{RecoveryState, RecoveryTracker, Stats, abort_breach, between, check_slo};
use crate::units::{LatencyBound, format_ms};

use self::verdict::{Event, Judge};

/// How often the run loop re-evaluates abort rules and refreshes its status at the latest. The
/// timeline (the end of the baseline, injections, fault ends, a recovery window completing,
/// renewals) does not wait for a tick: an alarm wakes the loop at the next such moment.
const TICK: Duration = Duration::from_millis(20);
/// How long one apply or revert may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct RunOptions {
    pub(crate) seed: Option<u64>,
    pub(crate) dry_run: bool,
    /// The dead-man switch: an agent reverts a fault whose lease is not renewed within this time.
    pub(crate) lease: Duration,
    /// Faults the embedded agent reverted from an earlier crashed run, for the report.
    pub(crate) recovered: Vec<String>,
    /// The run's id, when the caller recorded it before the run (the history); drawn otherwise.
    pub(crate) run_id: Option<String>,
    /// Set by a caller that owns the signals (the coordinator): the run then ignores SIGINT and
    /// SIGTERM and stops, reverting every fault, once this turns true (or its sender is gone).
    pub(crate) stop: Option<watch::Receiver<bool>>,
}

/// A new run id: the start time (UTC, to the second) and 16 random bits.
pub(crate) fn new_run_id(started_at: Timestamp) -> String {
    format!(
        "{}-{:04x}",
        started_at.strftime("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Pending,
    Injecting,
    Active { since: Instant },
    Reverting,
    Done,
}

/// One fault step acting on one agent: a step whose target group resolved to three agents runs as
/// three of these, injected and reverted concurrently and reported one by one.
struct FaultRun {
    /// Index into `Experiment::faults`.
    step: usize,
    agent: Agent,
    id: String,
    seed: u64,
    slot: Slot,
    record: FaultRecord,
    /// When the fault stopped acting: revert done, or injection done for instant faults.
    ended: Option<Instant>,
    /// When the apply was sent: the agent's clock for the fault's duration starts no earlier.
    sent: Option<Instant>,
    /// Set once the run learnt that the fault stopped acting before its planned end without
    /// being asked; its record then keeps that end, whatever a later revert answers.
    early: bool,
}

enum Op {
    Applied(usize, Result<Applied, AgentError>),
    Reverted(usize, Result<Reverted, AgentError>),
    /// A renewal answer from one agent, and when it came.
    Renewed {
        agent: String,
        renewed: Renewed,
        at: Timestamp,
    },
}

enum Stage {
    Before { until: Instant },
    Method,
    After { tracker: RecoveryTracker },
    Done,
}

/// The agents each target group resolved to, `local` included when a fault uses it.
pub(crate) type Targets = BTreeMap<String, Vec<Agent>>;

struct Runner<'a> {
    exp: &'a Experiment,
    opts: RunOptions,
    progress: &'a Progress,
    run_id: String,
    seed: u64,
    t0: Instant,
    started_at: Timestamp,
    stage: Stage,
    samples: Vec<Vec<Sample>>,
    faults: Vec<FaultRun>,
    ops: mpsc::UnboundedSender<Op>,
    before_start: Instant,
    method_start: Option<Instant>,
    first_injected: Option<Instant>,
    baselines: Vec<Stats>,
    /// Decides the verdict from what happened; also says when the run must wind down early.
    judge: Judge,
    /// When the breach that fired the abort rule began.
    abort_breach: Option<Instant>,
    recovered_at: Option<Instant>,
    after_start: Option<Instant>,
    last_renew: Instant,
    /// When the loop last ran: a gap longer than the lease means the run was stopped or stalled
    /// and every lease it held may have lapsed.
    last_advance: Instant,
    last_status: Instant,
    /// The run resources (proxies) open on agents, with their ids; renewed like active faults.
    resources: Vec<(Agent, String)>,
    /// The error-budget numbers, when the experiment has a gate and Prometheus answered.
    budget: Option<Budget>,
}

/// Runs an experiment against the agents of its target groups and returns the report. Never panics
/// on a failed fault: every outcome, including errors, is a report.
pub(crate) async fn run(
    exp: &Experiment,
    targets: &Targets,
    opts: RunOptions,
    progress: &Progress,
) -> Report {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let started_at = Timestamp::now();
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| new_run_id(started_at));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    for (i, step) in exp.faults.iter().enumerate() {
        for (k, agent) in targets.get(&step.on).into_iter().flatten().enumerate() {
            faults.push(FaultRun {
                step: i,
                agent: agent.clone(),
                // Unique per (step, agent): agents that share a filesystem (two on one host, an
                // NFS mount) must never collide on a fill file or journal entry. The first agent's
                // id is the plain `RUN-STEP` that `plan` shows.
                id: if k == 0 {
                    format!("{run_id}-{i}")
                } else {
                    format!("{run_id}-{i}.{k}")
                },
                seed: rng.random(),
                slot: Slot::Pending,
                record: FaultRecord {
                    name: step.name.clone(),
                    kind: step.spec.kind().to_owned(),
                    agent: agent.name().to_owned(),
                    targets: Vec::new(),
                    injected_at: None,
                    reverted_at: None,
                    status: FaultState::Skipped,
                    detail: String::new(),
                    actions: Vec::new(),
                },
                ended: None,
                sent: None,
                early: false,
            });
        }
    }
    let (ops, mut ops_rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut runner = Runner {
        exp,
        opts,
        progress,
        run_id,
        seed,
        t0: now,
        started_at,
        stage: Stage::Done,
        samples: vec![Vec::new(); exp.steady_state.probes.len()],
        faults,
        ops,
        before_start: now,
        method_start: None,
        first_injected: None,
        baselines: Vec::new(),
        judge: Judge::new(),
        abort_breach: None,
        recovered_at: None,
        after_start: None,
        last_renew: now,
        last_advance: now,
        last_status: now,
        resources: Vec::new(),
        budget: None,
    };
    progress.log(&format!(
        "run {} of `{}` (seed {})",
        runner.run_id, exp.title, seed
    ));

    // The gate comes first: a run refused for lack of budget must not even start its fixtures.
    if let Some(spec) = &exp.budget {
        match budget::check(spec).await {
            Ok(numbers) => {
                let enough = numbers.enough();
                let summary = numbers.summary();
                runner.budget = Some(numbers);
                if !enough {
                    runner.judge.on(Event::BudgetTooLow(format!(
                        "error budget too low: {summary}; no fault was injected"
                    )));
                    return runner.report();
                }
                progress.log(&format!("error budget: {summary}"));
            }
            Err(e) => {
                runner.judge.on(Event::SetupFailed(format!(
                    "could not check the error budget: {e}; nothing was injected"
                )));
                return runner.report();
            }
        }
    }

    let log = |line: String| progress.log(&line);
    let fixtures = match fixture::start(&exp.setup, &log).await {
        Ok(running) => running,
        Err((started, e)) => {
            fixture::stop_all(started, &log).await;
            runner
                .judge
                .on(Event::SetupFailed(format!("{e}; nothing was injected")));
            return runner.report();
        }
    };

    if let Err(e) = runner.open_resources().await {
        runner.close_resources().await;
        fixture::stop_all(fixtures, &log).await;
        runner
            .judge
            .on(Event::SetupFailed(format!("{e}; nothing was injected")));
        return runner.report();
    }

    let (samples_tx, mut samples_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let probes = match probe::spawn_all(&exp.steady_state.probes, &samples_tx, &stop_rx) {
        Ok(set) => set,
        Err(e) => {
            runner.close_resources().await;
            fixture::stop_all(fixtures, &log).await;
            runner
                .judge
                .on(Event::SetupFailed(format!("{e}; nothing was injected")));
            return runner.report();
        }
    };
    drop(samples_tx);
    runner.before_start = Instant::now();
    runner.stage = Stage::Before {
        until: runner.before_start + exp.steady_state.window,
    };
    progress.log(&format!(
        "before: measuring the steady state for {}",
        crate::units::Dur(exp.steady_state.window)
    ));

    let mut stop = runner.opts.stop.clone();
    let own_signals = stop.is_none();
    let mut sigint = own_signals
        .then(|| signal(SignalKind::interrupt()).ok())
        .flatten();
    let mut sigterm = own_signals
        .then(|| signal(SignalKind::terminate()).ok())
        .flatten();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let alarm = runner.next_due(Instant::now());
        tokio::select! {
            Some(sample) = samples_rx.recv() => runner.samples[sample.probe].push(sample),
            Some(op) = ops_rx.recv() => runner.on_op(op),
            () = sleep_until(alarm) => {}
            _ = tick.tick() => {}
            Some(()) = recv_signal(&mut sigint) => runner.interrupt("SIGINT"),
            Some(()) = recv_signal(&mut sigterm) => runner.interrupt("SIGTERM"),
            Some(()) = stop_requested(&mut stop) => runner.interrupt("SIGTERM"),
        }
        runner.advance(Instant::now());
        if matches!(runner.stage, Stage::Done) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    probes.join_all().await;
    while let Ok(sample) = samples_rx.try_recv() {
        runner.samples[sample.probe].push(sample);
    }
    runner.close_resources().await;
    fixture::stop_all(fixtures, &log).await;
    runner.report()
}

/// A fault the run holds on the agent whose renewal answer is being read.
struct Held<'a> {
    id: &'a str,
    /// When the apply was sent.
    sent: Option<Instant>,
    duration: Option<Duration>,
}

/// Which held faults (`held[i]` is `None` when fault `i` is not held on this agent) a renewal
/// answer says ended early, with when and why: those the agent ended on its own for a reason other
/// than their duration, and those it does not know at all (it restarted and reverted its journal,
/// or lost its state) while their duration cannot have ended yet. `at` is when the answer came.
fn early_from_renewal(
    held: &[Option<Held<'_>>],
    agent: &str,
    renewed: &Renewed,
    at: Timestamp,
    now: Instant,
) -> Vec<(usize, Timestamp, String)> {
    let find = |id: &str| {
        held.iter()
            .position(|h| h.as_ref().is_some_and(|h| h.id == id))
    };
    let mut early: Vec<(usize, Timestamp, String)> = Vec::new();
    for ended in &renewed.ended {
        let (Some(why), Some(i)) = (early_cause(ended.cause), find(&ended.id)) else {
            continue;
        };
        let why = format!(
            "{agent} reverted it on its own at {:.0} because {why} ({})",
            ended.at, ended.detail
        );
        early.push((i, ended.at, why));
    }
    for id in &renewed.unknown {
        let Some(i) = find(id) else { continue };
        if early.iter().any(|(j, ..)| *j == i) {
            continue;
        }
        // The agent's clock for the duration starts no earlier than the apply was sent: from
        // then on, an unknown id may simply be a fault whose duration ended there first.
        let may_have_ended = held[i]
            .as_ref()
            .and_then(|h| h.sent.zip(h.duration))
            .is_some_and(|(sent, d)| now >= sent + d);
        if may_have_ended {
            continue;
        }
        let why = format!(
            "{agent} no longer held it at {at:.0} (the agent restarted and reverted its journal, or lost its state)"
        );
        early.push((i, at, why));
    }
    early
}

/// Why an agent's own revert means the fault ended before its time; `None` when the run asked or
/// the fault's duration simply ended on the agent's clock.
fn early_cause(cause: RevertCause) -> Option<&'static str> {
    match cause {
        RevertCause::Requested | RevertCause::DurationEnded => None,
        other => other.on_its_own(),
    }
}

/// When a fault in `slot` next needs the run by the clock: its injection time while pending,
/// its planned end while active (none for a fault without a duration), nothing otherwise.
fn slot_due(slot: Slot, inject_at: Instant, duration: Option<Duration>) -> Option<Instant> {
    match slot {
        Slot::Pending => Some(inject_at),
        Slot::Active { since } => duration.map(|d| since + d),
        Slot::Injecting | Slot::Reverting | Slot::Done => None,
    }
}

/// When the next recovery window completes: a recovery is confirmed once a whole `window` after
/// a sample taken since `from` has passed, so the first such sample whose window is still open
/// at `now` gives the moment (each probe's samples are in start order). `None` before any.
fn next_window_end(
    samples: &[Vec<Sample>],
    from: Instant,
    window: Duration,
    now: Instant,
) -> Option<Instant> {
    samples
        .iter()
        .filter_map(|probe| {
            let i = probe.partition_point(|s| s.at < from || s.at + window <= now);
            probe.get(i).map(|s| s.at + window)
        })
        .min()
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves once when the caller asks the run to stop, then never again.
async fn stop_requested(s: &mut Option<watch::Receiver<bool>>) -> Option<()> {
    let Some(rx) = s else {
        return std::future::pending().await;
    };
    let _ = rx.wait_for(|stop| *stop).await;
    *s = None;
    Some(())
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl Runner<'_> {
    /// Opens what the faults act through for the whole run (latency proxies), before the steady
    /// state is measured, so probes that go through them see the same path before, during and after.
    async fn open_resources(&mut self) -> Result<(), String> {
        // One resource per agent that runs a fault needing it, however many faults share it.
        let mut wanted: Vec<(Agent, RunResource)> = Vec::new();
        for f in &self.faults {
            if let Some(resource) = self.exp.faults[f.step].spec.run_resource() {
                if !wanted
                    .iter()
                    .any(|(a, r)| a.name() == f.agent.name() && *r == resource)
                {
                    wanted.push((f.agent.clone(), resource));
                }
            }
        }
        // All at once: a run that opens a proxy on each of hundreds of agents waits for the
        // slowest, not the sum. Every one that opened is kept, so a failure closes them all.
        let opening: Vec<_> = wanted
            .into_iter()
            .enumerate()
            .map(|(k, (agent, resource))| {
                let id = format!("{}-r{k}", self.run_id);
                let what = format!("{} on {}", resource.describe(), agent.name());
                let req = OpenRequest {
                    run_id: self.run_id.clone(),
                    resource,
                    lease_ms: self.opts.lease.as_millis() as u64,
                };
                let task = {
                    let (agent, id) = (agent.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(OP_TIMEOUT, agent.open(&id, req)).await
                    })
                };
                (agent, id, what, task)
            })
            .collect();
        let mut failed = None;
        for (agent, id, what, task) in opening {
            let error = match task.await {
                Ok(Ok(Ok(opened))) => {
                    self.progress
                        .log(&format!("setup: {}: {}", agent.name(), opened.detail));
                    self.resources.push((agent, id));
                    continue;
                }
                Ok(Ok(Err(e))) => format!("failed to open the {what}: {e}"),
                Ok(Err(_)) => format!(
                    "failed to open the {what}: no answer from the agent within {}",
                    format_ms(OP_TIMEOUT)
                ),
                Err(e) => format!("failed to open the {what}: {e}"),
            };
            failed.get_or_insert(error);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.last_renew = Instant::now();
        Ok(())
    }

    /// Closes the run resources; a failure is reported like a failed revert.
    async fn close_resources(&mut self) {
        // All at once, like opening them.
        let closing: Vec<_> = std::mem::take(&mut self.resources)
            .into_iter()
            .map(|(agent, id)| {
                let task = {
                    let (agent, id) = (agent.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(OP_TIMEOUT, agent.revert(&id)).await
                    })
                };
                (agent, id, task)
            })
            .collect();
        for (agent, id, task) in closing {
            let Ok(closed) = task.await else {
                let line = format!(
                    "run resource {id} on {} could NOT be closed: the closing task failed",
                    agent.name()
                );
                self.progress.log(&line);
                self.judge.on(Event::ResourceNotClosed(line));
                continue;
            };
            let line = match closed {
                Ok(Ok(closed)) => {
                    self.progress
                        .log(&format!("teardown: {}: {}", agent.name(), closed.detail));
                    continue;
                }
                Ok(Err(e)) => format!(
                    "run resource {id} on {} could NOT be closed: {e}",
                    agent.name()
                ),
                Err(_) => format!(
                    "run resource {id} on {} could NOT be closed: no answer within {}",
                    agent.name(),
                    format_ms(OP_TIMEOUT)
                ),
            };
            self.progress.log(&line);
            self.judge.on(Event::ResourceNotClosed(line));
        }
    }

    /// The next moment at which the clock alone changes what the run must do: the end of the
    /// baseline, a fault's injection time or planned end, a recovery window completing (or the
    /// recovery deadline), the next lease renewal. `None` when nothing is due by the clock. A
    /// moment already past is not returned: `advance` has just handled it.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        let renew = self.last_renew + self.opts.lease / 3;
        let stage = match &self.stage {
            Stage::Before { until } => Some(*until),
            Stage::Method => self.method_start.and_then(|start| {
                self.faults
                    .iter()
                    .filter_map(|f| {
                        let step = &self.exp.faults[f.step];
                        slot_due(f.slot, start + step.at, step.duration)
                    })
                    .filter(|t| *t > now)
                    .min()
            }),
            Stage::After { tracker } => {
                let next = next_window_end(
                    &self.samples,
                    self.after_start.unwrap_or(now),
                    self.exp.steady_state.window,
                    now,
                );
                Some(next.map_or(tracker.deadline(), |t| t.min(tracker.deadline())))
            }
            Stage::Done => None,
        };
        [Some(renew), stage]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    fn interrupt(&mut self, name: &'static str) {
        if !self.judge.interrupted() {
            self.progress.log(&format!(
                "{name} received: reverting every fault and stopping"
            ));
        }
        self.judge.on(Event::Interrupted(name));
    }

    fn advance(&mut self, now: Instant) {
        self.show_status(now);
        let gap = now.saturating_duration_since(self.last_advance);
        if gap > self.opts.lease && matches!(self.stage, Stage::Method) {
            self.lapsed_while_stopped(gap);
        }
        self.last_advance = now;
        // Leases are renewed in every stage: run resources are held from before to after.
        if now.duration_since(self.last_renew) >= self.opts.lease / 3 {
            self.renew_leases();
            self.last_renew = now;
        }
        match &mut self.stage {
            Stage::Before { until } => {
                let until = *until;
                if self.judge.interrupted() {
                    self.stage = Stage::Done;
                } else if now >= until {
                    self.end_before(until);
                }
            }
            Stage::Method => self.advance_method(now),
            Stage::After { tracker } => {
                let state = tracker.update(
                    &self.exp.steady_state.probes,
                    &self.samples,
                    &self.baselines,
                    now,
                );
                if self.judge.interrupted() {
                    self.stage = Stage::Done;
                    return;
                }
                match state {
                    RecoveryState::Pending => {}
                    RecoveryState::Recovered(at) => self.end_recovered(at),
                    RecoveryState::Failed(why) => {
                        self.judge.on(Event::NotRecovered(why));
                        self.stage = Stage::Done;
                    }
                }
            }
            Stage::Done => {}
        }
    }

    fn end_before(&mut self, until: Instant) {
        let probes = &self.exp.steady_state.probes;
        self.baselines = (0..probes.len())
            .map(|i| Stats::of(between(&self.samples[i], self.before_start, until)))
            .collect();
        let failures: Vec<String> = probes
            .iter()
            .zip(&self.baselines)
            // Bounds relative to the baseline hold trivially against the baseline itself.
            .filter_map(|(p, stats)| check_slo(&p.name, &p.slo, stats, Some(stats)).err())
            .collect();
        if !failures.is_empty() {
            self.judge.on(Event::SteadyStateNotMet(failures));
            self.stage = Stage::Done;
            return;
        }
        if self.opts.dry_run {
            self.judge.on(Event::DryRunHeld);
            self.stage = Stage::Done;
            return;
        }
        self.judge.on(Event::MethodStarted);
        self.progress
            .log("before: steady state met; starting the method");
        self.method_start = Some(until);
        self.stage = Stage::Method;
    }

    fn advance_method(&mut self, now: Instant) {
        let start = self.method_start.expect("method started");
        if !self.judge.must_stop() {
            for i in 0..self.faults.len() {
                if self.faults[i].slot == Slot::Pending
                    && now >= start + self.exp.faults[self.faults[i].step].at
                {
                    self.inject(i);
                }
            }
            self.check_aborts(now);
        }
        let stopping = self.judge.must_stop();
        for i in 0..self.faults.len() {
            match self.faults[i].slot {
                Slot::Pending if stopping => {
                    self.faults[i].slot = Slot::Done;
                    "not started: the run stopped first"
                        .clone_into(&mut self.faults[i].record.detail);
                }
                Slot::Active { since } => {
                    let due = self.exp.faults[self.faults[i].step]
                        .duration
                        .is_some_and(|d| now >= since + d);
                    if due || stopping {
                        self.revert(i);
                    }
                }
                _ => {}
            }
        }
        if self.faults.iter().all(|f| f.slot == Slot::Done) {
            self.end_method(now);
        }
    }

    fn end_method(&mut self, now: Instant) {
        if let Some(breach) = self.abort_breach {
            let reverted = self
                .faults
                .iter()
                .filter_map(|f| f.ended)
                .max()
                .unwrap_or(now);
            self.judge.on(Event::AbortReverted {
                after: reverted.saturating_duration_since(breach),
            });
            self.progress.log(&format!(
                "aborted by `{}`: every fault reverted",
                self.judge.aborted_by().unwrap_or_default()
            ));
        }
        if self.judge.decided_without_recovery() {
            self.stage = Stage::Done;
            return;
        }
        let from = self
            .faults
            .iter()
            .filter_map(|f| f.ended)
            .max()
            .unwrap_or(now);
        self.after_start = Some(from);
        self.judge.on(Event::RecoveryStarted);
        self.progress.log(&format!(
            "after: waiting up to {} for the steady state to return",
            format_ms(self.exp.recovery_within)
        ));
        self.stage = Stage::After {
            tracker: RecoveryTracker::new(
                from,
                self.exp.steady_state.window,
                self.exp.recovery_within,
            ),
        };
    }

    fn end_recovered(&mut self, at: Instant) {
        self.recovered_at = Some(at);
        let after = at.saturating_duration_since(self.after_start.expect("after started"));
        let during_breaches = self.during_breaches();
        self.judge.on(Event::Recovered {
            after,
            allowed: self.exp.recovery_within,
            during_breaches,
        });
        self.stage = Stage::Done;
    }

    fn during_breaches(&self) -> Vec<String> {
        let (Some(from), Some(to)) = (self.method_start, self.after_start) else {
            return Vec::new();
        };
        self.exp
            .steady_state
            .probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let slo = p.slo_during.as_ref()?;
                check_slo(
                    &p.name,
                    slo,
                    &Stats::of(between(&self.samples[i], from, to)),
                    self.baselines.get(i),
                )
                .err()
            })
            .collect()
    }

    fn check_aborts(&mut self, now: Instant) {
        let Some(active_since) = self.first_injected else {
            return;
        };
        let any_active = self
            .faults
            .iter()
            .any(|f| matches!(f.slot, Slot::Active { .. } | Slot::Injecting));
        if !any_active || self.judge.aborted_by().is_some() {
            return;
        }
        for rule in &self.exp.aborts {
            if let Some(breach) = abort_breach(rule, &self.samples[rule.probe], active_since, now) {
                self.progress.log(&format!(
                    "abort rule `{}` fired: reverting every fault now",
                    rule.name
                ));
                self.abort_breach = Some(breach);
                self.judge.on(Event::AbortFired {
                    rule: rule.name.clone(),
                });
                return;
            }
        }
    }

    /// The loop did not run for `gap`, longer than the lease: the run was stopped (SIGSTOP,
    /// Ctrl-Z) or starved. No renewal went out, so every fault whose lease would have lapsed before
    /// its planned end was reverted by its agent (or the embedded run's watchdog) without the run.
    fn lapsed_while_stopped(&mut self, gap: Duration) {
        let lease = self.opts.lease;
        let lapsed = self.last_advance + lease;
        // Wall-clock time of the lapse, for the report: now, less how long ago it was.
        let lapsed_at = Timestamp::now()
            .checked_sub(gap.saturating_sub(lease))
            .unwrap_or_else(|_| Timestamp::now());
        self.progress.log(&format!(
            "the run did not run for {} (lease {}): it was stopped or stalled, so its leases lapsed",
            format_ms(gap),
            format_ms(lease)
        ));
        for i in 0..self.faults.len() {
            let f = &self.faults[i];
            let Slot::Active { since } = f.slot else {
                continue;
            };
            let planned_end = self.exp.faults[f.step].duration.map(|d| since + d);
            if f.early || planned_end.is_some_and(|end| end <= lapsed) {
                continue;
            }
            let why = format!(
                "the run was stopped or stalled for {}, longer than its {} lease, so the lease lapsed \
                 and the fault was reverted without the run by about {lapsed_at:.0}",
                format_ms(gap),
                format_ms(lease)
            );
            self.note_early(i, lapsed_at, why);
        }
    }

    /// Records that fault `i` stopped acting at `at` before its planned end, without the run asking.
    fn note_early(&mut self, i: usize, at: Timestamp, why: String) {
        let fault = &mut self.faults[i];
        if fault.early {
            return;
        }
        fault.early = true;
        fault.record.status = FaultState::EndedEarly;
        fault.record.reverted_at = Some(at);
        fault.record.detail = format!("{}; ENDED EARLY: {why}", fault.record.detail);
        self.progress.log(&format!(
            "fault `{}` on {} ENDED EARLY: {why}; reverting every fault and stopping",
            fault.record.name, fault.record.agent
        ));
        self.judge.on(Event::EndedEarly {
            fault: fault.record.name.clone(),
            agent: fault.record.agent.clone(),
            why,
        });
    }

    /// What a renewal says about faults the run still holds: those the agent ended on its own
    /// before their planned end, and those it does not know at all (it restarted and reverted its
    /// journal, or lost its state).
    fn on_renewed(&mut self, agent: &str, renewed: &Renewed, at: Timestamp) {
        let held: Vec<Option<Held<'_>>> = self
            .faults
            .iter()
            .map(|f| {
                (f.agent.name() == agent && matches!(f.slot, Slot::Active { .. })).then(|| Held {
                    id: &f.id,
                    sent: f.sent,
                    duration: self.exp.faults[f.step].duration,
                })
            })
            .collect();
        let early = early_from_renewal(&held, agent, renewed, at, Instant::now());
        for (i, at, why) in early {
            self.note_early(i, at, why);
        }
    }

    fn inject(&mut self, i: usize) {
        let fault = &mut self.faults[i];
        let step = &self.exp.faults[fault.step];
        fault.slot = Slot::Injecting;
        fault.sent = Some(Instant::now());
        let req = ApplyRequest {
            run_id: self.run_id.clone(),
            spec: step.spec.clone(),
            duration_ms: step.duration.map(|d| d.as_millis() as u64),
            lease_ms: self.opts.lease.as_millis() as u64,
            seed: fault.seed,
        };
        self.progress.log(&format!(
            "inject `{}` on {}: {}",
            step.name,
            fault.agent.name(),
            step.spec.describe()
        ));
        let (agent, id, ops) = (fault.agent.clone(), fault.id.clone(), self.ops.clone());
        // An action kind waits for its programs or request on the agent, each within its timeout.
        let within = OP_TIMEOUT + step.spec.apply_allowance();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(within, agent.apply(&id, req)).await {
                Ok(result) => result,
                Err(_) => Err(AgentError::FaultFailed(format!(
                    "no answer from the agent within {}",
                    format_ms(within)
                ))),
            };
            let _ = ops.send(Op::Applied(i, result));
        });
    }

    fn revert(&mut self, i: usize) {
        let fault = &mut self.faults[i];
        fault.slot = Slot::Reverting;
        let extra = self.exp.faults[fault.step].spec.revert_allowance();
        let within = OP_TIMEOUT + extra;
        let (agent, id, ops) = (fault.agent.clone(), fault.id.clone(), self.ops.clone());
        tokio::spawn(async move {
            let result = match tokio::time::timeout(within, agent.revert_within(&id, extra)).await {
                Ok(result) => result,
                Err(_) => Err(AgentError::RevertFailed(format!(
                    "no answer from the agent within {}",
                    format_ms(within)
                ))),
            };
            let _ = ops.send(Op::Reverted(i, result));
        });
    }

    /// Renews every held fault's lease: one call per agent, all agents at once. A renewal that
    /// fails is only logged: if the agent stays unreachable, its lease lapses and it reverts alone.
    fn renew_leases(&self) {
        let mut per_agent: BTreeMap<&str, (Agent, Vec<String>)> = BTreeMap::new();
        for f in self
            .faults
            .iter()
            .filter(|f| matches!(f.slot, Slot::Active { .. }))
        {
            per_agent
                .entry(f.agent.name())
                .or_insert_with(|| (f.agent.clone(), Vec::new()))
                .1
                .push(f.id.clone());
        }
        for (agent, id) in &self.resources {
            per_agent
                .entry(agent.name())
                .or_insert_with(|| (agent.clone(), Vec::new()))
                .1
                .push(id.clone());
        }
        let timeout = self.opts.lease;
        for (_, (agent, ids)) in per_agent {
            let ops = self.ops.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, agent.renew(ids)).await {
                    Ok(Ok(renewed)) => {
                        let _ = ops.send(Op::Renewed {
                            agent: agent.name().to_owned(),
                            renewed,
                            at: Timestamp::now(),
                        });
                    }
                    Ok(Err(e)) => tracing::warn!("failed to renew leases on {}: {e}", agent.name()),
                    Err(_) => tracing::warn!(
                        "failed to renew leases on {}: no answer within {}",
                        agent.name(),
                        format_ms(timeout)
                    ),
                }
            });
        }
    }

    fn on_op(&mut self, op: Op) {
        let now = Instant::now();
        match op {
            Op::Applied(i, result) => {
                let fault = &mut self.faults[i];
                let name = format!("{}` on `{}", fault.record.name, fault.record.agent);
                match result {
                    Ok(applied) => {
                        fault.record.injected_at = Some(applied.injected_at);
                        fault.record.targets = applied.targets;
                        fault.record.detail = applied.detail;
                        fault.record.actions = applied.actions;
                        self.first_injected.get_or_insert(now);
                        self.judge.on(Event::Injected);
                        if applied.instant {
                            fault.slot = Slot::Done;
                            fault.ended = Some(now);
                            fault.record.status = FaultState::Completed;
                        } else {
                            fault.slot = Slot::Active { since: now };
                            fault.record.status = FaultState::Reverted;
                        }
                        self.progress
                            .log(&format!("injected `{name}`: {}", fault.record.detail));
                    }
                    Err(e) => {
                        fault.slot = Slot::Done;
                        fault.record.status = FaultState::InjectFailed;
                        fault.record.detail = e.to_string();
                        self.progress
                            .log(&format!("FAILED to inject `{name}`: {e}"));
                        self.judge.on(Event::InjectFailed {
                            fault: fault.record.name.clone(),
                            error: fault.record.detail.clone(),
                        });
                    }
                }
            }
            Op::Renewed { agent, renewed, at } => self.on_renewed(&agent, &renewed, at),
            Op::Reverted(i, result) => {
                if let Ok(reverted) = &result {
                    if let Some(why) = early_cause(reverted.cause) {
                        let why = format!(
                            "{} reverted it on its own at {:.0} because {why}",
                            self.faults[i].record.agent, reverted.at
                        );
                        self.note_early(i, reverted.at, why);
                    }
                }
                let fault = &mut self.faults[i];
                let name = format!("{}` on `{}", fault.record.name, fault.record.agent);
                fault.slot = Slot::Done;
                fault.ended = Some(now);
                if let Ok(reverted) = &result {
                    fault
                        .record
                        .actions
                        .extend(reverted.actions.iter().cloned());
                }
                match result {
                    Ok(reverted) if fault.early => {
                        // The record keeps the early end; this revert only confirms nothing is left.
                        fault.record.detail = format!(
                            "{}; then reverted: {}",
                            fault.record.detail, reverted.detail
                        );
                        self.progress
                            .log(&format!("reverted `{name}`: {}", reverted.detail));
                    }
                    Ok(reverted) => {
                        fault.record.reverted_at = Some(reverted.at);
                        fault.record.status = FaultState::Reverted;
                        let by = reverted.cause.on_its_own().map_or_else(String::new, |why| {
                            format!(" by the agent, because {why}")
                        });
                        fault.record.detail =
                            format!("{}; reverted{by}: {}", fault.record.detail, reverted.detail);
                        self.progress
                            .log(&format!("reverted `{name}`: {}", reverted.detail));
                    }
                    Err(e) => {
                        fault.record.status = FaultState::RevertFailed;
                        fault.record.detail =
                            format!("{}; REVERT FAILED: {e}", fault.record.detail);
                        self.progress
                            .log(&format!("FAILED to revert `{name}`: {e}"));
                        self.judge.on(Event::RevertFailed {
                            fault: fault.record.name.clone(),
                            agent: fault.record.agent.clone(),
                            detail: fault.record.detail.clone(),
                        });
                    }
                }
            }
        }
    }

    fn show_status(&mut self, now: Instant) {
        // Every tick, so a dashboard reading it is at most one tick behind.
        self.progress.set_stage(match self.stage {
            Stage::Before { .. } => Some("before"),
            Stage::Method => Some("during"),
            Stage::After { .. } => Some("after"),
            Stage::Done => None,
        });
        if now.duration_since(self.last_status) < Duration::from_millis(200) {
            return;
        }
        self.last_status = now;
        let stage = match self.stage {
            Stage::Before { .. } => "before",
            Stage::Method => "during",
            Stage::After { .. } => "after",
            Stage::Done => return,
        };
        let health: Vec<String> = self
            .exp
            .steady_state
            .probes
            .iter()
            .zip(&self.samples)
            .map(|(p, s)| {
                let recent = &s[s.len().saturating_sub(10)..];
                let ok = recent.iter().filter(|x| x.ok).count();
                format!("{} {ok}/{}", p.name, recent.len())
            })
            .collect();
        self.progress
            .status(&format!("{stage} | {}", health.join(" | ")));
    }

    fn phase_stats(&self, phase: Phase, from: Instant, to: Instant) -> Vec<ProbePhase> {
        self.exp
            .steady_state
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let stats = Stats::of(between(&self.samples[i], from, to));
                let baseline = self.baselines.get(i);
                let slo_met = match phase {
                    Phase::Before => Some(check_slo(&p.name, &p.slo, &stats, Some(&stats)).is_ok()),
                    Phase::During => p
                        .slo_during
                        .as_ref()
                        .map(|slo| check_slo(&p.name, slo, &stats, baseline).is_ok()),
                    Phase::After => Some(self.recovered_at.is_some_and(|c| {
                        let window = Stats::of(between(
                            &self.samples[i],
                            c,
                            c + self.exp.steady_state.window,
                        ));
                        check_slo(&p.name, &p.slo, &window, baseline).is_ok()
                    })),
                };
                // The bound the phase was judged by, for the HTML timeline's SLO line.
                let (slo, base) = match phase {
                    Phase::Before => (Some(&p.slo), Some(&stats)),
                    Phase::During => (p.slo_during.as_ref(), baseline),
                    Phase::After => (Some(&p.slo), baseline),
                };
                let p99_limit = slo.and_then(|s| s.p99).and_then(|bound| match bound {
                    LatencyBound::Absolute(d) => Some(d),
                    LatencyBound::TimesBaseline(x) => {
                        base.and_then(|b| b.p99).map(|d| d.mul_f64(x))
                    }
                });
                ProbePhase {
                    probe: p.name.clone(),
                    signal: p.signal,
                    stats,
                    slo_met,
                    p99_limit,
                }
            })
            .collect()
    }

    fn phase_of(&self, at: Instant) -> Phase {
        match (self.method_start, self.after_start) {
            (_, Some(after)) if at >= after => Phase::After,
            (Some(method), _) if at >= method => Phase::During,
            _ => Phase::Before,
        }
    }

    fn report(&self) -> Report {
        let end = Instant::now();
        let (verdict, reason) = self.judge.decide();
        let method = self.method_start.unwrap_or(end);
        let before = self.phase_stats(Phase::Before, self.before_start, method);
        let (during, after) = match (self.method_start, self.after_start) {
            (Some(m), Some(a)) => (
                self.phase_stats(Phase::During, m, a),
                self.phase_stats(Phase::After, a, end),
            ),
            (Some(m), None) => (self.phase_stats(Phase::During, m, end), Vec::new()),
            _ => (Vec::new(), Vec::new()),
        };
        let mut samples: Vec<SampleRecord> = self
            .samples
            .iter()
            .flatten()
            .map(|s| SampleRecord {
                probe: self.exp.steady_state.probes[s.probe].name.clone(),
                t_ms: millis(s.at.saturating_duration_since(self.t0)),
                phase: self.phase_of(s.at),
                ok: s.ok,
                latency_ms: millis(s.latency),
                error: s.error.clone(),
                cause: s.cause.clone(),
                value: s.value,
                connect_ms: s.timing.connect.map(millis),
                first_byte_ms: s.timing.first_byte.map(millis),
            })
            .collect();
        samples.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        Report {
            run_id: self.run_id.clone(),
            title: self.exp.title.clone(),
            file: self.exp.file.display().to_string(),
            sha256: self.exp.sha256.clone(),
            seed: self.seed,
            started_at: self.started_at,
            ended_at: Timestamp::now(),
            dry_run: self.opts.dry_run,
            verdict,
            reason,
            before,
            during,
            after,
            faults: self.faults.iter().map(|f| f.record.clone()).collect(),
            time_to_recover: self
                .recovered_at
                .zip(self.after_start)
                .map(|(c, a)| c.saturating_duration_since(a)),
            recovery_within: self.exp.recovery_within,
            aborted_by: self.judge.aborted_by().map(str::to_owned),
            time_to_abort: self.judge.time_to_abort(),
            recovered_from_journal: self.opts.recovered.clone(),
            budget: self.budget.clone(),
            samples,
            warnings: crate::probe::warnings(&self.exp.steady_state.probes),
            input_invalid: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use jiff::Timestamp;

    use super::{Held, Slot, early_from_renewal, next_window_end, slot_due};
    use crate::probe::Sample;
    use crate::protocol::{Renewed, RevertCause, Reverted};

    fn sample(probe: usize, at: Instant) -> Sample {
        Sample {
            probe,
            at,
            ok: true,
            latency: Duration::from_millis(1),
            error: None,
            cause: None,
            value: None,
            timing: crate::probe::Timing::default(),
        }
    }

    #[test]
    fn the_loop_wakes_for_a_pending_fault_at_its_injection_and_an_active_one_at_its_end() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let at = t0 + ms(300);
        assert_eq!(slot_due(Slot::Pending, at, Some(ms(100))), Some(at));
        let active = Slot::Active {
            since: t0 + ms(310),
        };
        assert_eq!(slot_due(active, at, Some(ms(100))), Some(t0 + ms(410)));
        // Without a duration an active fault ends with the run; in flight, an answer wakes it.
        assert_eq!(slot_due(active, at, None), None);
        for slot in [Slot::Injecting, Slot::Reverting, Slot::Done] {
            assert_eq!(slot_due(slot, at, Some(ms(100))), None, "{slot:?}");
        }
    }

    #[test]
    fn the_loop_wakes_when_the_first_open_recovery_window_completes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let window = ms(200);
        let from = t0 + ms(1000);
        let samples = vec![
            // Before the recovery started: never a candidate.
            vec![
                sample(0, t0 + ms(990)),
                sample(0, t0 + ms(1010)),
                sample(0, t0 + ms(1050)),
            ],
            vec![sample(1, t0 + ms(1030))],
        ];
        assert_eq!(
            next_window_end(&samples, from, window, t0 + ms(1100)),
            Some(t0 + ms(1210))
        );
        // Once that window has completed (and was judged), the next one open is the moment.
        assert_eq!(
            next_window_end(&samples, from, window, t0 + ms(1210)),
            Some(t0 + ms(1230))
        );
        assert_eq!(
            next_window_end(&samples, from, window, t0 + ms(1250)),
            None,
            "every window has completed: the recovery deadline is left"
        );
        assert_eq!(next_window_end(&[Vec::new()], from, window, from), None);
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ended(id: &str, cause: RevertCause) -> Reverted {
        Reverted {
            id: id.to_owned(),
            detail: "continued pid 42 (sleep)".to_owned(),
            actions: Vec::new(),
            at: at("2026-12-02T04:00:01Z"),
            cause,
        }
    }

    #[test]
    fn a_renewal_reports_faults_the_agent_ended_or_forgot_before_their_time() {
        let sent = Instant::now();
        let ten_s = Some(Duration::from_secs(10));
        let held = [
            Some(Held {
                id: "r-0",
                sent: Some(sent),
                duration: ten_s,
            }),
            Some(Held {
                id: "r-1",
                sent: Some(sent),
                duration: ten_s,
            }),
            Some(Held {
                id: "r-2",
                sent: Some(sent),
                duration: ten_s,
            }),
            // Held elsewhere (another agent) or no longer held: never reported from this answer.
            None,
        ];
        let renewed = Renewed {
            renewed: vec!["r-2".to_owned()],
            // An agent may list what it ended in both: it is reported once, with the cause.
            unknown: vec!["r-0".to_owned(), "r-1".to_owned(), "r-3".to_owned()],
            ended: vec![
                ended("r-0", RevertCause::Halted),
                ended("r-3", RevertCause::Halted),
            ],
        };
        let now = sent + Duration::from_secs(2);
        let early = early_from_renewal(&held, "a1", &renewed, at("2026-12-02T04:00:02Z"), now);
        assert_eq!(
            early,
            vec![
                (
                    0,
                    at("2026-12-02T04:00:01Z"),
                    "a1 reverted it on its own at 2026-12-02T04:00:01Z because `faultline halt` (continued pid 42 (sleep))".to_owned()
                ),
                (
                    1,
                    at("2026-12-02T04:00:02Z"),
                    "a1 no longer held it at 2026-12-02T04:00:02Z (the agent restarted and reverted its journal, or lost its state)".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_fault_whose_duration_may_have_ended_on_the_agent_is_not_early() {
        let sent = Instant::now();
        let held = [Some(Held {
            id: "r-0",
            sent: Some(sent),
            duration: Some(Duration::from_secs(3)),
        })];
        let by_duration = Renewed {
            renewed: Vec::new(),
            unknown: Vec::new(),
            ended: vec![ended("r-0", RevertCause::DurationEnded)],
        };
        let now = sent + Duration::from_secs(1);
        assert!(early_from_renewal(&held, "a1", &by_duration, Timestamp::now(), now).is_empty());
        // Unknown once its duration could have run out on the agent's clock: its revert will say.
        let unknown = Renewed {
            renewed: Vec::new(),
            unknown: vec!["r-0".to_owned()],
            ended: Vec::new(),
        };
        let late = sent + Duration::from_secs(3);
        assert!(early_from_renewal(&held, "a1", &unknown, Timestamp::now(), late).is_empty());
        assert_eq!(
            early_from_renewal(&held, "a1", &unknown, Timestamp::now(), now).len(),
            1
        );
        // A lapsed lease is early whatever the time.
        let lapsed = Renewed {
            renewed: Vec::new(),
            unknown: Vec::new(),
            ended: vec![ended("r-0", RevertCause::LeaseExpired)],
        };
        let early = early_from_renewal(&held, "a1", &lapsed, Timestamp::now(), late);
        assert!(early[0].2.contains("because its lease lapsed"), "{early:?}");
    }
}
