//! Owns one fire of one schedule, from its slot to its last run: the jitter delay, the checks that
//! skip it (an outage, halted agents, a conflict on a host), the claim in the history, and each
//! experiment run through the shared session and recorded before and after.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::history::{FireState, RunEnd, RunStart};
use crate::inventory::Selection;
use crate::model::Experiment;
use crate::progress::Progress;
use crate::report::Verdict;
use crate::run::session::{self, StartError};
use crate::run::{self, RunOptions};
use crate::schedule::{self, Schedule};

use super::conflict::{self, Answer, FireId};
use super::{Ctx, Event, fire_row, log};

/// One slot to fire.
pub(crate) struct Job {
    pub(crate) id: FireId,
    /// Index into the calendar's schedules.
    pub(crate) schedule: usize,
    /// The nominal fire time: the fire's identity in the history.
    pub(crate) at: Timestamp,
    /// A slot missed while the coordinator was down, run once now.
    pub(crate) catch_up: bool,
}

/// Tells the dispatcher a fire ended however its task ends (returned, or panicked), so its hosts
/// are released and `concurrency = forbid` sees it gone.
struct DoneGuard {
    fire: FireId,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Done { fire: self.fire });
    }
}

/// An experiment of the fire, ready to run or already known to end in `error`.
enum Prepared {
    Ready {
        exp: Box<Experiment>,
        selection: Selection,
        seed: u64,
    },
    Broken {
        title: String,
        file: String,
        sha256: String,
        seed: u64,
        message: String,
    },
}

impl Prepared {
    fn title(&self) -> &str {
        match self {
            Prepared::Ready { exp, .. } => &exp.title,
            Prepared::Broken { title, .. } => title,
        }
    }
}

/// Why a fire did not get to its runs.
enum Stop {
    /// Recorded as a skipped slot with this reason.
    Skip(String),
    /// SIGTERM came before the fire claimed its slot: nothing is recorded, the slot is free.
    Drained,
}

pub(crate) async fn fire(ctx: Arc<Ctx>, job: Job, events: mpsc::UnboundedSender<Event>) {
    let _done = DoneGuard {
        fire: job.id,
        events: events.clone(),
    };
    let s = &ctx.gameday.calendar.schedules[job.schedule];
    let delay = schedule::jitter(s, job.at, ctx.seed);
    match checks(&ctx, &job, s, delay, &events).await {
        Ok(prepared) => runs(&ctx, &job, s, delay, prepared, &events).await,
        Err(Stop::Skip(why)) => {
            log(&format!("skipped `{}` at {:.0}: {why}", s.name, job.at));
            record_skip(&ctx, &s.name, job.at, delay, why).await;
        }
        Err(Stop::Drained) => log(&format!(
            "`{}` fire at {:.0} not started: the coordinator is stopping",
            s.name, job.at
        )),
    }
}

/// Everything before the claim, in the order an SRE expects: wait the jitter, load the
/// experiments and choose their agents, wait for (or skip on) the hosts other runs act on, and
/// only then the checks that must hold at the moment faults start: no outage, no halted agent.
async fn checks(
    ctx: &Ctx,
    job: &Job,
    s: &Schedule,
    delay: Duration,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<Vec<Prepared>, Stop> {
    let mut draining = ctx.draining.clone();
    if !delay.is_zero() {
        log(&format!(
            "`{}` fire at {:.0}: waiting its jitter of {}",
            s.name,
            job.at,
            crate::units::Dur(delay)
        ));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = draining.wait_for(|d| *d) => return Err(Stop::Drained),
        }
    }
    if *draining.borrow() {
        return Err(Stop::Drained);
    }
    let mut prepared = Vec::new();
    for path in &s.experiments {
        prepared.push(prepare(ctx, path, &s.vars).await);
    }
    let hosts: BTreeSet<String> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Ready { exp, selection, .. } => Some(conflict::hosts(exp, selection)),
            Prepared::Broken { .. } => None,
        })
        .flatten()
        .collect();
    let (reply, answer) = oneshot::channel();
    let _ = events.send(Event::Hosts {
        fire: job.id,
        hosts,
        reply,
    });
    tokio::select! {
        answer = answer => match answer {
            Ok(Answer::Granted) => {}
            Ok(conflict) => return Err(Stop::Skip(conflict.reason().unwrap_or_default())),
            Err(_) => return Err(Stop::Drained),
        },
        _ = draining.wait_for(|d| *d) => return Err(Stop::Drained),
    }
    // Granted in the same instant as SIGTERM: nothing is claimed yet, so the slot stays free.
    if *draining.borrow() {
        return Err(Stop::Drained);
    }
    // After any wait for hosts, so an incident or a halt that began meanwhile still stops it.
    if let Some(why) = outage(ctx).await {
        return Err(Stop::Skip(why));
    }
    for p in &mut prepared {
        let Prepared::Ready {
            exp,
            seed,
            selection,
        } = p
        else {
            continue;
        };
        match session::preflight(selection).await {
            Ok(()) => {}
            Err(StartError::Halted(why)) => {
                return Err(Stop::Skip(format!("agents halted: {why}")));
            }
            Err(e) => {
                *p = Prepared::Broken {
                    title: exp.title.clone(),
                    file: exp.file.display().to_string(),
                    sha256: exp.sha256.clone(),
                    seed: *seed,
                    message: format!("{e}; nothing was injected"),
                };
            }
        }
    }
    // The outage and halt checks ask over the network and may take seconds: a SIGTERM that came
    // meanwhile stops the fire before its claim, as one during the jitter or the queue does.
    if *draining.borrow() {
        return Err(Stop::Drained);
    }
    Ok(prepared)
}

/// Loads an experiment afresh (the file may have changed since the coordinator started; its
/// sha256 is recorded) and resolves its agents with a new seed, as `faultline run` does.
async fn prepare(ctx: &Ctx, path: &Path, vars: &crate::experiment::vars::Overrides) -> Prepared {
    let seed: u64 = rand::random();
    let owned = path.to_owned();
    let vars = vars.clone();
    let loaded =
        tokio::task::spawn_blocking(move || crate::experiment::load_with(&owned, &vars)).await;
    let exp = match loaded {
        Ok(Ok(exp)) => exp,
        Ok(Err(e)) => {
            return Prepared::Broken {
                title: path.display().to_string(),
                file: path.display().to_string(),
                sha256: String::new(),
                seed,
                message: format!("invalid experiment {e}; nothing was injected"),
            };
        }
        Err(e) => {
            return Prepared::Broken {
                title: path.display().to_string(),
                file: path.display().to_string(),
                sha256: String::new(),
                seed,
                message: format!("failed to load the experiment: {e}"),
            };
        }
    };
    match session::resolve(&exp, ctx.gameday.coordinator.agents.as_deref(), seed).await {
        Ok(selection) => Prepared::Ready {
            exp: Box::new(exp),
            selection,
            seed,
        },
        Err(e) => Prepared::Broken {
            title: exp.title.clone(),
            file: exp.file.display().to_string(),
            sha256: exp.sha256.clone(),
            seed,
            message: format!("{e}; nothing was injected"),
        },
    }
}

/// `Some(reason)` when the fire must be skipped for an outage (or because the outage check failed:
/// no chaos when the coordinator cannot tell whether an incident is on).
async fn outage(ctx: &Ctx) -> Option<String> {
    let outage = ctx.gameday.coordinator.outage.as_ref()?;
    crate::outage::gate(outage, &ctx.http).await
}

/// Claims the slot and runs the experiments in order, stopping at the first that does not pass
/// unless `continue = true`, and at SIGTERM.
async fn runs(
    ctx: &Ctx,
    job: &Job,
    s: &Schedule,
    delay: Duration,
    prepared: Vec<Prepared>,
    events: &mpsc::UnboundedSender<Event>,
) {
    let row = fire_row(ctx, &s.name, job.at, FireState::Fired, delay);
    match ctx.history.claim_fire(&row).await {
        Ok(true) => {}
        Ok(false) => {
            log(&format!(
                "`{}` fire at {:.0} is already recorded (by this or another coordinator): not running it again",
                s.name, job.at
            ));
            return;
        }
        Err(e) => {
            log(&format!(
                "`{}` fire at {:.0} not run: the history could not record it: {e}",
                s.name, job.at
            ));
            return;
        }
    }
    let names: Vec<&str> = prepared.iter().map(Prepared::title).collect();
    log(&format!(
        "fired `{}` at {:.0}{}{}: {}",
        s.name,
        job.at,
        if delay.is_zero() {
            String::new()
        } else {
            format!(" (jitter {})", crate::units::Dur(delay))
        },
        if job.catch_up { " (catch-up)" } else { "" },
        names.join(", ")
    ));
    for (k, p) in prepared.into_iter().enumerate() {
        if k > 0 && *ctx.draining.borrow() {
            log(&format!(
                "`{}` fire at {:.0}: the coordinator is stopping; its remaining experiments do not start",
                s.name, job.at
            ));
            return;
        }
        let verdict = run_one(ctx, job, s, p, events).await;
        if verdict != Some(Verdict::Passed) && !s.keep_going {
            break;
        }
    }
}

/// Records, runs and records one experiment; `None` when it could not even be recorded.
async fn run_one(
    ctx: &Ctx,
    job: &Job,
    s: &Schedule,
    p: Prepared,
    events: &mpsc::UnboundedSender<Event>,
) -> Option<Verdict> {
    let (title, file, sha256, seed) = match &p {
        Prepared::Ready { exp, seed, .. } => (
            exp.title.clone(),
            exp.file.display().to_string(),
            exp.sha256.clone(),
            *seed,
        ),
        Prepared::Broken {
            title,
            file,
            sha256,
            seed,
            ..
        } => (title.clone(), file.clone(), sha256.clone(), *seed),
    };
    let mut start = RunStart {
        run_id: String::new(),
        schedule: Some(s.name.clone()),
        fire_at: Some(job.at),
        title: title.clone(),
        file,
        sha256,
        seed,
        started_at: Timestamp::now(),
        coordinator: Some(ctx.name.clone()),
    };
    // A run id has 16 random bits per second, so two runs starting in one second may draw the
    // same one, which the history refuses: draw again rather than lose the run.
    let mut attempt = 0;
    loop {
        start.started_at = Timestamp::now();
        start.run_id = run::new_run_id(start.started_at);
        match ctx.history.start_run(&start).await {
            Ok(()) => break,
            Err(e) if attempt >= 2 => {
                // A run that is not recorded before it starts could not be closed after a crash.
                log(&format!(
                    "`{title}` not run: the history could not record its start: {e}"
                ));
                return None;
            }
            Err(_) => attempt += 1,
        }
    }
    let run_id = start.run_id.clone();
    // Plain lines timed from the run's start, as `faultline run --quiet` prints them; its stage is
    // what the dashboard shows as the run's phase.
    let progress = Progress::new(true);
    let _ = events.send(Event::Running {
        fire: job.id,
        run: run_id.clone(),
        stage: progress.stage(),
    });
    let notify = match &p {
        Prepared::Ready { exp, .. } => [&ctx.gameday.notify[..], &exp.notify].concat(),
        Prepared::Broken { .. } => ctx.gameday.notify.clone(),
    };
    let end = match p {
        Prepared::Broken { message, .. } => RunEnd::error(&message),
        Prepared::Ready {
            exp,
            selection,
            seed,
        } => {
            let opts = RunOptions {
                seed: Some(seed),
                dry_run: false,
                lease: ctx.gameday.coordinator.lease,
                recovered: Vec::new(),
                run_id: Some(run_id.clone()),
                stop: Some(ctx.cancel.clone()),
            };
            let mut report = ctx.session.run(&exp, &selection, opts, &progress).await;
            // Judged before the run's end is recorded, so the history keeps the gated verdict.
            crate::gate::judge_run(&mut report, &exp.gate, Ok(&ctx.history)).await;
            RunEnd::of_report(&report)
        }
    };
    let verdict = match end.verdict.as_str() {
        "passed" => Verdict::Passed,
        "failed" => Verdict::Failed,
        "aborted" => Verdict::Aborted,
        "not_run" => Verdict::NotRun,
        _ => Verdict::Error,
    };
    let recover = end
        .time_to_recover
        .map(|d| format!(", time to recover {}", crate::units::format_ms(d)))
        .unwrap_or_default();
    log(&format!(
        "run {run_id} of `{title}` (`{}` at {:.0}) ended: {}{recover}: {}",
        s.name, job.at, end.verdict, end.reason
    ));
    finish(ctx, &run_id, &end).await;
    // After the end is recorded (the link shows the finished run), in a task of its own: retries
    // to a slow receiver never hold up the next run.
    tokio::spawn(crate::notify::send(
        notify,
        crate::notify::Outcome::of_run(&start, &end),
        log,
    ));
    Some(verdict)
}

/// The pauses between tries of a run's end: a SQLite file another writer holds past the busy
/// timeout, or a PostgreSQL restart, must not leave a run that ended without its end (the next
/// start would call it abandoned, and its report would be lost). About half a minute in all.
const FINISH_RETRY_PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(9),
    Duration::from_secs(20),
];

/// Records how a run ended, trying again after `FINISH_RETRY_PAUSES`; a second SIGTERM ends the
/// waiting (the process must exit at once; the next start closes the run).
async fn finish(ctx: &Ctx, run_id: &str, end: &RunEnd) {
    let mut pauses = FINISH_RETRY_PAUSES.iter();
    let mut cancel = ctx.cancel.clone();
    loop {
        let Err(e) = ctx.history.finish_run(run_id, end).await else {
            return;
        };
        let Some(pause) = pauses.next().filter(|_| !*cancel.borrow()) else {
            log(&format!(
                "run {run_id}: the history could not record its end: {e}; gave up (the next start closes it as error)"
            ));
            return;
        };
        log(&format!(
            "run {run_id}: the history could not record its end: {e}; trying again in {}",
            crate::units::Dur(*pause)
        ));
        tokio::select! {
            () = tokio::time::sleep(*pause) => {}
            _ = cancel.wait_for(|c| *c) => {}
        }
    }
}

/// Records a skipped slot; a slot already recorded (by another coordinator) is left as it is.
pub(crate) async fn record_skip(
    ctx: &Ctx,
    schedule: &str,
    at: Timestamp,
    jitter: Duration,
    why: String,
) {
    let row = fire_row(ctx, schedule, at, FireState::Skipped(why), jitter);
    if let Err(e) = ctx.history.claim_fire(&row).await {
        log(&format!(
            "`{schedule}` at {at:.0}: the history could not record the skip: {e}"
        ));
    }
}
