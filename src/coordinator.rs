//! Owns the `faultline coordinator` daemon: one dispatcher task that owns the schedules' cursors,
//! the fires in flight and the hosts they hold, and is the only `select!` over a sleep until the
//! next slot, signals and the events its fire tasks send; each fire (checks, claim, runs) is a task
//! of its own (`fire.rs`). What is due when is `timing.rs`; which runs may overlap is
//! `conflict.rs`; both are pure.
//!
//! Architecture invariant: a fire is recorded in the history (`claim_fire`) before any of its runs
//! starts, and a run (`start_run`) before it touches anything, so a restart never repeats one.

mod conflict;
mod fire;
mod timing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::gameday::GameDay;
use crate::history::{FireRow, FireState, History, Location, RunEnd};
use crate::progress::Progress;
use crate::run::session::Session;
use crate::schedule::{Calendar, Concurrency, OnConflict};
use crate::web::{self, Action, ActionError, Command, FirePhase, Snapshot};

use self::conflict::{Answer, Claim, FireId, Table};
use self::timing::Step;

/// The reason recorded for a run its coordinator did not see to the end.
pub(crate) const STOPPED_DURING_RUN: &str = "the coordinator stopped during the run";

/// The lease name coordinators sharing a PostgreSQL history compete for: its holder fires.
const LEAD: &str = "coordinator";

/// The longest the dispatcher sleeps at once, so a step of the wall clock (NTP, a suspended VM)
/// is noticed within this time rather than after a long sleep on the monotonic clock.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A line on stderr with the UTC time: the coordinator's log, one event per line.
pub(crate) fn log(line: &str) {
    // Experiments' secrets never reach the coordinator's log (`secrets.rs`).
    eprintln!("{:.3} {}", Timestamp::now(), crate::secrets::redact(line));
}

/// What every fire task shares with the dispatcher.
pub(crate) struct Ctx {
    pub(crate) gameday: GameDay,
    /// This coordinator's name in the history and the logs.
    pub(crate) name: String,
    pub(crate) history: History,
    pub(crate) session: Session,
    pub(crate) http: reqwest::Client,
    /// The seed of every fire's jitter, so a restarted coordinator draws the same delays.
    pub(crate) seed: u64,
    /// True after the first SIGTERM: fires that have not claimed their slot give up, and no
    /// further experiment of a fire starts.
    pub(crate) draining: watch::Receiver<bool>,
    /// True after the second SIGTERM: running runs revert at once.
    pub(crate) cancel: watch::Receiver<bool>,
}

/// What fire tasks and the leader task tell the dispatcher.
pub(crate) enum Event {
    /// A fire wants these hosts; the answer comes when they are granted, or at once for a skip.
    Hosts {
        fire: FireId,
        hosts: BTreeSet<String>,
        reply: oneshot::Sender<Answer>,
    },
    /// A fire started this run (for conflict messages).
    Running {
        fire: FireId,
        run: String,
        stage: crate::progress::Stage,
    },
    /// A fire ended (sent by its guard, whatever happened).
    Done { fire: FireId },
    /// Leadership (PostgreSQL histories only): gained with every schedule's last recorded slot,
    /// or lost.
    Lead(Option<Vec<Option<Timestamp>>>),
    /// The lead is held until this instant at the latest (this host's monotonic clock): the
    /// lease's length after the renewal that the history granted was sent.
    Renewed(tokio::time::Instant),
}

/// A fire the dispatcher started and has not seen end.
struct InFlight {
    schedule: usize,
    at: Timestamp,
    /// The run it started last and where that run stands (for the dashboard).
    run: Option<(String, crate::progress::Stage)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    /// First SIGTERM/SIGINT: no new fires; running runs finish.
    Drain,
    /// Second: running runs revert now.
    Cancel,
}

/// Runs the daemon until SIGTERM/SIGINT and every run it started has ended.
pub(crate) async fn run(gameday: GameDay) -> anyhow::Result<()> {
    let name = gameday.coordinator.name.clone();
    let state_dir = gameday.coordinator.state_dir.clone();
    tokio::fs::create_dir_all(&state_dir)
        .await
        .with_context(|| {
            format!(
                "failed to create the state directory {}",
                state_dir.display()
            )
        })?;
    let location = match &gameday.coordinator.database {
        Some(url) => Location::parse(url),
        None => Location::in_state_dir(&state_dir),
    };
    let history = History::open(&location)
        .await
        .with_context(|| format!("failed to open the history at {location}"))?;
    let progress = Progress::new(true);
    // Reverts what an earlier coordinator process left in the journal before anything else, and
    // keeps the watchdog beating for as long as this process lives.
    let mut session = Session::open(state_dir, gameday.coordinator.lease, &progress).await?;
    let recovered = session.take_recovered();
    let closing = match location {
        Location::File(_) => Closing::AtStart,
        Location::Postgres(_) => Closing::Own,
    };
    close_unfinished(&history, &name, closing, &recovered).await?;

    let (draining_tx, draining) = watch::channel(false);
    let (cancel_tx, cancel) = watch::channel(false);
    let (events_tx, events) = mpsc::unbounded_channel();
    let postgres = matches!(location, Location::Postgres(_));
    let lease = gameday.coordinator.lease;
    let ctx = Arc::new(Ctx {
        seed: gameday.coordinator.seed,
        gameday,
        name,
        history,
        session,
        http: crate::outage::client().map_err(anyhow::Error::msg)?,
        draining,
        cancel,
    });
    log(&format!(
        "coordinator `{}` started on {}: {} schedule(s), {} blackout(s), history {location}",
        ctx.name,
        ctx.gameday.file.display(),
        ctx.gameday.calendar.schedules.len(),
        ctx.gameday.calendar.blackouts.len()
    ));
    // Finding a schedule's first fire may walk up to `MAX_SCAN` skipped slots (a per-second cron
    // in a long blackout: seconds of CPU each), which is no work for an async thread.
    let shown = ctx.clone();
    tokio::task::spawn_blocking(move || announce(&shown.gameday, Timestamp::now()))
        .await
        .context("failed to describe the schedules")?;

    let mut cursors = Vec::new();
    for s in &ctx.gameday.calendar.schedules {
        cursors.push(ctx.history.last_fire(&s.name).await?);
    }
    let leading = postgres.then(|| tokio::spawn(lead(ctx.clone(), lease, events_tx.clone())));
    let leader = !postgres;
    let (snapshot_tx, snapshot) = watch::channel(Snapshot::default());
    // Bounded: actions are people and scripts; a flood waits rather than growing a queue.
    let (actions_tx, actions) = mpsc::channel(16);
    let server = web::Server::bind(&ctx.gameday, ctx.history.clone(), snapshot, actions_tx).await?;
    let serving = server.map(|server| {
        if let Some(addr) = server.local_addr() {
            log(&format!("dashboard, API and /metrics on http://{addr}/"));
        }
        tokio::spawn(server.serve())
    });
    // Suspension is the dispatcher's own copy: `suspend`/`resume` change it until a restart.
    let calendar = ctx.gameday.calendar.clone();
    let overridden = vec![false; calendar.schedules.len()];
    let mut dispatcher = Dispatcher {
        cursors: cursors
            .into_iter()
            .map(|c| c.unwrap_or_else(Timestamp::now))
            .collect(),
        next: Vec::new(),
        idle: Vec::new(),
        draining_tx,
        cancel_tx,
        ctx: ctx.clone(),
        in_flight: BTreeMap::new(),
        waiting: BTreeMap::new(),
        table: Table::default(),
        next_id: 0,
        leader,
        lead_until: None,
        stopping: Stopping::No,
        events_tx,
        tasks: JoinSet::new(),
        calendar,
        overridden,
        snapshot_tx,
    };
    dispatcher.run(events, actions).await;
    if let Some(serving) = serving {
        serving.abort();
        let _ = serving.await;
    }
    if let Some(leading) = leading {
        // Stopped before the lead is given up, so no renewal already under way takes it back.
        leading.abort();
        let _ = leading.await;
        if let Err(e) = ctx.history.release_lead(LEAD, &ctx.name).await {
            log(&format!("could not give up the lead: {e}"));
        }
    }
    log("coordinator stopped");
    Ok(())
}

/// One line per schedule (its cron, zone and first real fire, past any skipped slots) and per
/// blackout, so the log says at start what the coordinator understood.
fn announce(gameday: &GameDay, now: Timestamp) {
    let cal = &gameday.calendar;
    for (i, s) in cal.schedules.iter().enumerate() {
        let next = match cal.next_fire(i, now) {
            Some(at) => format!(
                "first fire {at:.0} ({} {})",
                at.to_zoned(s.zone.clone()).strftime("%Y-%m-%d %H:%M:%S%:z"),
                s.zone_name
            ),
            None if s.suspend => "suspended".to_owned(),
            None => format!("no fire among its next {} slots", crate::schedule::MAX_SCAN),
        };
        log(&format!(
            "schedule `{}`: cron `{}` in {}; {next}",
            s.name, s.cron_text, s.zone_name
        ));
    }
    for b in &cal.blackouts {
        log(&format!("blackout `{}` (in {})", b.name, b.zone_name));
    }
}

/// Whose unfinished runs a coordinator closes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// At start on a SQLite history: every coordinator's. The state directory (journal and
    /// history) is one coordinator's at a time, whatever it was called: a pod restarted on the
    /// same volume comes back under a new host name.
    AtStart,
    /// At start on PostgreSQL: its own; the others' are the leader's business.
    Own,
    /// On taking the lead on PostgreSQL: those of every other coordinator.
    Others,
}

/// Finishes the runs a coordinator left without an end (whose runs: `closing`) as `error`, with
/// what the journal recovery reverted, when it names them. A CLI run (no coordinator) is never
/// closed: it may be running in another process.
async fn close_unfinished(
    history: &History,
    me: &str,
    closing: Closing,
    recovered: &[String],
) -> anyhow::Result<()> {
    let owner = (closing == Closing::Own).then_some(me);
    for row in history.unfinished(owner).await? {
        let Some(by) = row.start.coordinator.clone() else {
            continue;
        };
        if closing == Closing::Others && by == me {
            continue;
        }
        let mine: Vec<&str> = recovered
            .iter()
            .filter(|l| l.contains(&row.start.run_id))
            .map(String::as_str)
            .collect();
        let mut reason = STOPPED_DURING_RUN.to_owned();
        if closing == Closing::Others {
            reason.push_str(&format!(
                " (coordinator `{by}` lost the lead; closed by `{me}`)"
            ));
        } else if by != me {
            reason.push_str(&format!(
                " (coordinator `{by}`; closed by `{me}`, which took over its state directory)"
            ));
        }
        if !mine.is_empty() {
            reason.push_str(&format!(
                "; reverted from the journal at restart: {}",
                mine.join("; ")
            ));
        }
        let end = RunEnd::error(&reason);
        history.finish_run(&row.start.run_id, &end).await?;
        log(&format!(
            "run {} of `{}` ({}) closed as error: {reason}",
            row.start.run_id,
            row.start.title,
            row.start.schedule.as_deref().unwrap_or("no schedule")
        ));
    }
    Ok(())
}

/// Keeps (or tries to take) the lead every lease/3 and tells the dispatcher when it changes. A
/// history error counts as not leading: two coordinators that cannot both be sure must not fire.
/// After SIGTERM it takes no lead it does not hold, but keeps one it holds until the dispatcher
/// has seen every run end and stops it: another coordinator that led meanwhile would close those
/// runs as abandoned and fire onto the hosts they still act on.
async fn lead(ctx: Arc<Ctx>, lease: Duration, events: mpsc::UnboundedSender<Event>) {
    let mut leading = false;
    let mut last_failure: Option<String> = None;
    let mut announced = false;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if *ctx.draining.borrow() && !leading {
            return;
        }
        // The history counts the lease from when it runs the statement, which is after this.
        let sent = tokio::time::Instant::now();
        let (now, failed) = match ctx.history.try_lead(LEAD, &ctx.name, lease).await {
            Ok(held) => (held, None),
            Err(e) => (false, Some(e.to_string())),
        };
        // Said once per change, not every lease/3.
        if failed != last_failure {
            match &failed {
                Some(e) => log(&format!(
                    "cannot ask the history who leads: {e}; not firing until it answers"
                )),
                None => log("the history answers again"),
            }
            last_failure = failed;
        }
        if !announced && last_failure.is_none() && !now {
            log("following: another coordinator leads; this one fires once its lease lapses");
        }
        announced = true;
        if now && events.send(Event::Renewed(sent + lease)).is_err() {
            return;
        }
        if now == leading {
            continue;
        }
        leading = now;
        if !now {
            log("lost the lead: not firing until it is back");
            if events.send(Event::Lead(None)).is_err() {
                return;
            }
            continue;
        }
        if *ctx.draining.borrow() {
            // Taken in the instant SIGTERM came: held without firing until the stop releases it.
            continue;
        }
        match gained(&ctx).await {
            Ok(cursors) => {
                log("took the lead: this coordinator fires now");
                if events.send(Event::Lead(Some(cursors))).is_err() {
                    return;
                }
            }
            Err(e) => {
                log(&format!(
                    "took the lead but could not read the history: {e:#}"
                ));
                leading = false;
            }
        }
    }
}

/// What a new leader does before firing: closes the runs of coordinators that stopped leading
/// without finishing them, and reads where every schedule stands.
async fn gained(ctx: &Ctx) -> anyhow::Result<Vec<Option<Timestamp>>> {
    close_unfinished(&ctx.history, &ctx.name, Closing::Others, &[]).await?;
    let mut cursors = Vec::new();
    for s in &ctx.gameday.calendar.schedules {
        cursors.push(ctx.history.last_fire(&s.name).await?);
    }
    Ok(cursors)
}

struct Dispatcher {
    ctx: Arc<Ctx>,
    /// Per schedule: every slot up to here is dealt with (fired, skipped, missed or not ours).
    cursors: Vec<Timestamp>,
    /// Per schedule: when its next slot is due (None: no slot left).
    next: Vec<Option<Timestamp>>,
    /// Per schedule: said in the log that it has no slot left.
    idle: Vec<bool>,
    draining_tx: watch::Sender<bool>,
    cancel_tx: watch::Sender<bool>,
    in_flight: BTreeMap<FireId, InFlight>,
    /// Fires queued for hosts, with where to send the grant.
    waiting: BTreeMap<FireId, oneshot::Sender<Answer>>,
    table: Table,
    next_id: FireId,
    /// Whether the last word of the lead task (or a SQLite history, always) says this one leads.
    leader: bool,
    /// When the lead lapses unless renewed (PostgreSQL only): past it, another coordinator may
    /// lead, whatever the lead task has (not yet) said.
    lead_until: Option<tokio::time::Instant>,
    stopping: Stopping,
    events_tx: mpsc::UnboundedSender<Event>,
    tasks: JoinSet<()>,
    /// The file's calendar with the runtime `suspend`/`resume` applied: what `advance` follows.
    calendar: Calendar,
    /// Per schedule: a runtime action, not the file, decided its suspension.
    overridden: Vec<bool>,
    /// What the web server shows of this dispatcher.
    snapshot_tx: watch::Sender<Snapshot>,
}

impl Dispatcher {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut actions: mpsc::Receiver<Command>,
    ) {
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigint = signal(SignalKind::interrupt()).ok();
        self.advance(Timestamp::now());
        self.publish();
        loop {
            let sleep = self.sleep_for(Timestamp::now());
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                Some(()) = recv_signal(&mut sigterm) => self.on_signal("SIGTERM"),
                Some(()) = recv_signal(&mut sigint) => self.on_signal("SIGINT"),
                Some(event) = events.recv() => self.on_event(event),
                Some(command) = actions.recv() => self.on_action(command),
                Some(done) = self.tasks.join_next() => {
                    if let Err(e) = done {
                        log(&format!("a fire task failed: {e}"));
                    }
                }
            }
            if self.stopping != Stopping::No {
                self.publish();
                if self.in_flight.is_empty() {
                    break;
                }
                continue;
            }
            self.advance(Timestamp::now());
            self.publish();
        }
        // Skips still being recorded.
        while self.tasks.join_next().await.is_some() {}
    }

    /// Whether this coordinator fires now: it leads and, on PostgreSQL, its lease has not lapsed
    /// on this host's clock. A renewal that stalls (a slow database, a stopped process) must not
    /// leave it firing while another coordinator may have taken the lead meanwhile.
    fn leading(&self) -> bool {
        self.leader
            && self
                .lead_until
                .is_none_or(|until| tokio::time::Instant::now() < until)
    }

    /// Led, but the lease lapsed before a renewal answered: slots wait for that answer.
    fn lapsed(&self) -> bool {
        self.leader && !self.leading()
    }

    /// How long to sleep until the earliest next slot (capped, so wall-clock steps are seen).
    fn sleep_for(&self, now: Timestamp) -> Duration {
        if self.stopping != Stopping::No || self.lapsed() {
            return MAX_SLEEP;
        }
        self.next
            .iter()
            .flatten()
            .min()
            .map_or(MAX_SLEEP, |at| {
                Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
            })
            .min(MAX_SLEEP)
    }

    /// Deals with every slot due at `now` and works out when each schedule is due next.
    fn advance(&mut self, now: Timestamp) {
        let count = self.ctx.gameday.calendar.schedules.len();
        self.next.resize(count, None);
        self.idle.resize(count, false);
        // Every slot stays due until the lead task hears whether the lead is still ours: a late
        // renewal then fires them (or counts them missed), a lost lead leaves them to the history
        // and the next gain.
        if self.lapsed() {
            return;
        }
        for i in 0..count {
            // Most schedules are not due: their next slot is known, so no cron arithmetic.
            if self.idle[i] || self.next[i].is_some_and(|at| at > now) {
                continue;
            }
            loop {
                match timing::step(&self.calendar, i, self.cursors[i], now) {
                    Step::Wait(at) => {
                        // A slot that will be skipped is not the next fire; its skip is logged
                        // when it comes (a per-second cron in a blackout would otherwise say
                        // "next fire" every second, of a slot that does not fire).
                        if self.next[i] != Some(at) && self.calendar.skip_reason(i, at).is_none() {
                            self.log_next(i, at);
                        }
                        self.next[i] = Some(at);
                        break;
                    }
                    Step::Idle => {
                        self.next[i] = None;
                        if !self.idle[i] {
                            self.idle[i] = true;
                            log(&format!(
                                "schedule `{}` has no slot left",
                                self.ctx.gameday.calendar.schedules[i].name
                            ));
                        }
                        break;
                    }
                    Step::OnTime(slot) => {
                        self.cursors[i] = slot.at;
                        match slot.skipped {
                            Some(why) => self.skip(i, slot.at, why.to_string()),
                            None => self.fire(i, slot.at, false),
                        }
                    }
                    Step::Missed(missed) => {
                        self.cursors[i] = now;
                        self.missed(i, &missed, now);
                    }
                }
            }
        }
    }

    fn log_next(&self, i: usize, at: Timestamp) {
        let s = &self.ctx.gameday.calendar.schedules[i];
        let local = at.to_zoned(s.zone.clone());
        log(&format!(
            "next fire of `{}`: {at:.0} ({} {})",
            s.name,
            local.strftime("%Y-%m-%d %H:%M:%S%:z"),
            s.zone_name
        ));
    }

    fn missed(&mut self, i: usize, missed: &timing::Missed, now: Timestamp) {
        // A follower's slots are the leader's business; it takes them up from the history when
        // it leads.
        if !self.leading() {
            return;
        }
        let s = &self.ctx.gameday.calendar.schedules[i];
        let count = format!(
            "{}{}",
            missed.count,
            if missed.more { " or more" } else { "" }
        );
        let policy = match missed.catch_up {
            Some(at) => format!("catching up on the one at {at:.0} (missed = run-once)"),
            None => "none is run (missed = skip, or the latest is past the deadline)".to_owned(),
        };
        log(&format!(
            "`{}` missed {count} slot(s) from {:.0} to {now:.0} while the coordinator was down or stalled; {policy}",
            s.name, missed.first
        ));
        // One row says the gap was seen (never one per slot: a long downtime must not be a burst
        // of writes either); the caught-up slot is recorded as a fire like any other.
        if missed.catch_up != Some(missed.first) {
            let why = format!(
                "missed while the coordinator was down or stalled ({count} slot(s) up to {now:.0})"
            );
            self.record_skip(i, missed.first, why);
        }
        if let Some(at) = missed.catch_up {
            self.fire(i, at, true);
        }
    }

    fn skip(&mut self, i: usize, at: Timestamp, why: String) {
        if !self.leading() {
            return;
        }
        log(&format!(
            "skipped `{}` at {at:.0}: {why}",
            self.ctx.gameday.calendar.schedules[i].name
        ));
        self.record_skip(i, at, why);
    }

    fn record_skip(&mut self, i: usize, at: Timestamp, why: String) {
        let ctx = self.ctx.clone();
        let schedule = ctx.gameday.calendar.schedules[i].name.clone();
        self.tasks.spawn(async move {
            fire::record_skip(&ctx, &schedule, at, Duration::ZERO, why).await;
        });
    }

    fn fire(&mut self, i: usize, at: Timestamp, catch_up: bool) {
        if !self.leading() {
            return;
        }
        let s = &self.ctx.gameday.calendar.schedules[i];
        if s.concurrency == Concurrency::Forbid {
            if let Some(prev) = self.in_flight.values().find(|f| f.schedule == i) {
                let why = format!(
                    "the previous run of this schedule is still going (fire at {:.0})",
                    prev.at
                );
                self.skip(i, at, why);
                return;
            }
        }
        // At most one fire of a schedule waits for hosts: with `concurrency = "allow"` and runs
        // longer than the period on a shared host, every slot would otherwise join the queue, a
        // backlog that grows for as long as the coordinator runs and never catches up.
        if let Some(prev) = self
            .in_flight
            .iter()
            .find(|(id, f)| f.schedule == i && self.waiting.contains_key(id))
            .map(|(_, f)| f.at)
        {
            let why = format!(
                "the fire at {prev:.0} of this schedule still waits for its host(s) (on_conflict = queue)"
            );
            self.skip(i, at, why);
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight.insert(
            id,
            InFlight {
                schedule: i,
                at,
                run: None,
            },
        );
        let job = fire::Job {
            id,
            schedule: i,
            at,
            catch_up,
        };
        self.tasks
            .spawn(fire::fire(self.ctx.clone(), job, self.events_tx.clone()));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Hosts { fire, hosts, reply } => {
                let Some(f) = self.in_flight.get(&fire) else {
                    return;
                };
                let s = &self.ctx.gameday.calendar.schedules[f.schedule];
                let claim = Claim {
                    fire,
                    schedule: s.name.clone(),
                    at: f.at,
                    hosts,
                };
                let policy = s.on_conflict;
                match self.table.request(claim, policy) {
                    Answer::Queued => {
                        log(&format!(
                            "`{}` fire at {:.0} waits for a run on the same host(s) to end (on_conflict = queue)",
                            s.name, f.at
                        ));
                        self.waiting.insert(fire, reply);
                    }
                    answer => {
                        debug_assert!(policy == OnConflict::Skip || answer == Answer::Granted);
                        let _ = reply.send(answer);
                    }
                }
            }
            Event::Running { fire, run, stage } => {
                self.table.running(fire, &run);
                if let Some(f) = self.in_flight.get_mut(&fire) {
                    f.run = Some((run, stage));
                }
            }
            Event::Done { fire } => {
                self.in_flight.remove(&fire);
                self.waiting.remove(&fire);
                for granted in self.table.release(fire) {
                    if let Some(reply) = self.waiting.remove(&granted) {
                        let _ = reply.send(Answer::Granted);
                    }
                }
            }
            Event::Lead(Some(recorded)) => {
                self.leader = true;
                // Start from what the history says, both ways: a slot another coordinator
                // recorded is never fired again here, and the slots after it that this one only
                // watched go by while following (nobody recorded them: the old leader was dying)
                // are due or missed now, under the schedule's `missed` policy, not lost.
                // Not before a slot this coordinator is still firing: one that lost the lead
                // for a moment may have a fire in its jitter or queue, not claimed yet.
                for (i, last) in recorded.into_iter().enumerate() {
                    let own = self
                        .in_flight
                        .values()
                        .filter(|f| f.schedule == i)
                        .map(|f| f.at)
                        .max();
                    if let Some(last) = last.max(own) {
                        self.cursors[i] = last;
                        self.next[i] = None;
                        self.idle[i] = false;
                    }
                }
            }
            Event::Lead(None) => self.leader = false,
            Event::Renewed(until) => self.lead_until = Some(until),
        }
    }

    /// Publishes what the web server shows: cheap (no cron arithmetic), so after every turn.
    fn publish(&self) {
        let schedules = (0..self.calendar.schedules.len())
            .map(|i| web::ScheduleState {
                next_slot: self.next.get(i).copied().flatten(),
                suspended: self.calendar.schedules[i].suspend,
                overridden: self.overridden[i],
            })
            .collect();
        let fires = self
            .in_flight
            .iter()
            .map(|(id, f)| web::FireState {
                schedule: self.calendar.schedules[f.schedule].name.clone(),
                at: f.at,
                phase: if self.waiting.contains_key(id) {
                    FirePhase::Queued
                } else if f.run.is_some() {
                    FirePhase::Running
                } else {
                    FirePhase::Starting
                },
                run: f.run.as_ref().map(|(run, _)| run.clone()),
                stage: f.run.as_ref().map(|(_, stage)| stage.clone()),
            })
            .collect();
        self.snapshot_tx.send_replace(Snapshot {
            schedules,
            fires,
            leading: self.leading(),
        });
    }

    /// Executes an action of the API (the token was checked there) and answers what it did.
    fn on_action(&mut self, command: Command) {
        let Some(i) = self
            .calendar
            .schedules
            .iter()
            .position(|s| s.name == command.schedule)
        else {
            let _ = command
                .reply
                .send(Err(ActionError::NoSchedule(command.schedule)));
            return;
        };
        let name = self.calendar.schedules[i].name.clone();
        let outcome = match command.action {
            Action::RunNow if self.stopping != Stopping::No => Err(ActionError::Refused(
                "the coordinator is stopping: no new fires".to_owned(),
            )),
            Action::RunNow if !self.leading() => Err(ActionError::Refused(
                "this coordinator does not lead: ask the one that fires".to_owned(),
            )),
            Action::RunNow => {
                let at = Timestamp::now();
                let before = self.in_flight.len();
                // The usual rules hold: `concurrency = "forbid"` skips it (recorded), a busy host
                // queues it, the outage and halted-agent checks may skip it.
                self.fire(i, at, false);
                if self.in_flight.len() > before {
                    Ok(format!("`{name}` fires now (slot {at:.0})"))
                } else {
                    Err(ActionError::Refused(format!(
                        "`{name}` did not fire: its previous fire is still going or waiting (see the log)"
                    )))
                }
            }
            Action::Suspend | Action::Resume => {
                let suspend = command.action == Action::Suspend;
                let s = &mut self.calendar.schedules[i];
                s.suspend = suspend;
                self.overridden[i] = suspend != self.ctx.gameday.calendar.schedules[i].suspend;
                // Its next slot is worked out again from the cursor, with the new suspension.
                self.next[i] = None;
                self.idle[i] = false;
                Ok(format!(
                    "`{name}` {} until the coordinator restarts (the file says suspend = {})",
                    if suspend { "suspended" } else { "resumed" },
                    self.ctx.gameday.calendar.schedules[i].suspend
                ))
            }
        };
        let _ = command.reply.send(outcome);
    }

    fn on_signal(&mut self, name: &str) {
        match self.stopping {
            Stopping::No => {
                self.stopping = Stopping::Drain;
                let _ = self.draining_tx.send(true);
                log(&format!(
                    "{name} received: no new fires; {} fire(s) in flight finish first (send it again to revert at once)",
                    self.in_flight.len()
                ));
            }
            Stopping::Drain | Stopping::Cancel => {
                self.stopping = Stopping::Cancel;
                let _ = self.cancel_tx.send(true);
                log(&format!(
                    "{name} received again: reverting every running run now"
                ));
            }
        }
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The row that records a fire or a skip.
pub(crate) fn fire_row(
    ctx: &Ctx,
    schedule: &str,
    at: Timestamp,
    state: FireState,
    jitter: Duration,
) -> FireRow {
    FireRow {
        schedule: schedule.to_owned(),
        at,
        state,
        by: ctx.name.clone(),
        recorded_at: Timestamp::now(),
        jitter,
    }
}
