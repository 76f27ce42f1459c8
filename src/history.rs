//! Owns the history of runs and fires: every run (the coordinator's and the CLI's) and every
//! schedule slot the coordinator fired or skipped, in SQLite (embedded default, `history.db` in a
//! state directory) or PostgreSQL (several coordinators), behind one interface with one test suite.
//!
//!
//! `History` is a dispatch over one `Store` per database (`history/sqlite.rs`,
//! `history/postgres.rs`); `history/schema.rs` holds what both agree on (the schema version and
//! how values are stored).

// `allow`, not `expect`: once the coordinator (h/coord) calls the fire and lease methods this
// line is dead too and goes at that merge, where an `expect` would fail the build.

mod postgres;
mod schema;
mod sqlite;
#[cfg(test)]
mod tests;

pub(crate) use sqlite::insert_finished as insert_finished_sqlite;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::model::Experiment;
use crate::report::{FaultState, Report, Verdict};

/// Where a history lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A SQLite file.
    File(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            // The URL may carry a password: show only where it points.
            Location::Postgres(url) => write!(f, "{}", redact_url(url)),
        }
    }
}

/// A `postgres://user:secret@host/db` URL without its password.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = match user.split_once(':') {
                Some((name, _)) => format!("{name}:***"),
                None => user.to_owned(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl Location {
    /// The SQLite file of a state directory: `<dir>/history.db`.
    pub(crate) fn in_state_dir(dir: &Path) -> Location {
        Location::File(dir.join("history.db"))
    }

    /// A URL (`postgres://…`) or a file path.
    pub(crate) fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_owned())
        } else {
            Location::File(PathBuf::from(s))
        }
    }
}

/// What is known when a run starts; written before the run touches anything.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunStart {
    pub(crate) run_id: String,
    /// The schedule that fired it; None for a CLI run.
    pub(crate) schedule: Option<String>,
    /// The nominal fire time of the slot it belongs to; None for a CLI run.
    pub(crate) fire_at: Option<Timestamp>,
    pub(crate) title: String,
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) seed: u64,
    pub(crate) started_at: Timestamp,
    /// Who ran it: the coordinator's name, or None for a CLI run.
    pub(crate) coordinator: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunEnd {
    pub(crate) ended_at: Timestamp,
    /// `passed`, `failed`, `aborted`, `not_run`, `error` (`report::Verdict::as_str`).
    pub(crate) verdict: String,
    pub(crate) exit_code: u8,
    pub(crate) reason: String,
    pub(crate) time_to_recover: Option<Duration>,
    pub(crate) time_to_abort: Option<Duration>,
    /// Every agent a fault of the run acted on.
    pub(crate) agents: Vec<String>,
    /// The full JSON report (`report::json::render`), when the run produced one.
    pub(crate) report_json: Option<String>,
}

impl RunStart {
    /// A run of `exp` starting now, by the CLI (no schedule, no coordinator).
    pub(crate) fn of_experiment(exp: &Experiment, run_id: &str, seed: u64) -> RunStart {
        RunStart {
            run_id: run_id.to_owned(),
            schedule: None,
            fire_at: None,
            title: exp.title.clone(),
            file: exp.file.display().to_string(),
            sha256: exp.sha256.clone(),
            seed,
            started_at: Timestamp::now(),
            coordinator: None,
        }
    }
}

impl RunEnd {
    /// How a run that produced `report` ended, with the report itself.
    pub(crate) fn of_report(report: &Report) -> RunEnd {
        // Agents a fault acted on: a fault skipped before it started touched nothing.
        let agents: BTreeSet<&str> = report
            .faults
            .iter()
            .filter(|f| f.status != FaultState::Skipped)
            .map(|f| f.agent.as_str())
            .collect();
        RunEnd {
            ended_at: report.ended_at,
            verdict: report.verdict.as_str().to_owned(),
            exit_code: report.exit_code(),
            reason: report.reason.clone(),
            time_to_recover: report.time_to_recover,
            time_to_abort: report.time_to_abort,
            agents: agents.into_iter().map(str::to_owned).collect(),
            report_json: Some(crate::report::json::render(report)),
        }
    }

    /// A run that ended without a report: `reason` says what went wrong.
    pub(crate) fn error(reason: &str) -> RunEnd {
        RunEnd {
            ended_at: Timestamp::now(),
            verdict: Verdict::Error.as_str().to_owned(),
            exit_code: Verdict::Error.exit_code(),
            reason: reason.to_owned(),
            time_to_recover: None,
            time_to_abort: None,
            agents: Vec::new(),
            report_json: None,
        }
    }
}

/// One stored run; `end` is None while it runs (or when its coordinator died before recovery).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub(crate) start: RunStart,
    pub(crate) end: Option<RunEnd>,
}

/// What became of one schedule slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FireState {
    /// Claimed to run (its runs carry the same schedule and `fire_at`).
    Fired,
    /// Not run, with the reason (blackout, window, halted agents, an alert, a conflict…).
    Skipped(String),
}

/// One schedule slot as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FireRow {
    pub(crate) schedule: String,
    /// The nominal fire time; (schedule, at) is unique.
    pub(crate) at: Timestamp,
    pub(crate) state: FireState,
    /// The coordinator that recorded it.
    pub(crate) by: String,
    pub(crate) recorded_at: Timestamp,
    /// The seeded delay drawn for it.
    pub(crate) jitter: Duration,
}

/// Which runs `runs` returns, newest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) experiment: Option<String>,
    pub(crate) schedule: Option<String>,
    pub(crate) last: Option<usize>,
}

/// What went wrong with a history. Every message names the database (its file, or its URL
/// without the password: `Location`'s `Display`), because callers print it as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HistoryError(pub(crate) String);

/// An open history; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct History {
    store: Store,
}

/// The store behind a history: one arm per database. Every store has the same methods as
/// `History` (same names and signatures), so `dispatch!` is the only place that lists them.
#[derive(Debug, Clone)]
enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::PostgresStore),
}

/// Calls the same method on whichever store this history has.
macro_rules! dispatch {
    ($history:expr, $store:ident => $call:expr) => {
        match &$history.store {
            Store::Sqlite($store) => $call,
            Store::Postgres($store) => $call,
        }
    };
}

impl History {
    /// Opens (creating and migrating when needed) the history at `location`.
    pub(crate) async fn open(location: &Location) -> Result<History, HistoryError> {
        let store = match location {
            Location::File(path) => Store::Sqlite(sqlite::Store::open(path).await?),
            Location::Postgres(url) => Store::Postgres(postgres::PostgresStore::open(url).await?),
        };
        Ok(History { store })
    }

    /// Records a slot as fired, before its runs start. Returns false (and changes nothing) when
    /// the slot was already recorded, by this or another coordinator: it must not run again.
    pub(crate) async fn claim_fire(&self, fire: &FireRow) -> Result<bool, HistoryError> {
        dispatch!(self, s => s.claim_fire(fire).await)
    }

    /// The latest recorded slot (fired or skipped) of a schedule.
    pub(crate) async fn last_fire(
        &self,
        schedule: &str,
    ) -> Result<Option<Timestamp>, HistoryError> {
        dispatch!(self, s => s.last_fire(schedule).await)
    }

    /// Recorded slots, oldest first; all schedules when None.
    pub(crate) async fn fires(&self, schedule: Option<&str>) -> Result<Vec<FireRow>, HistoryError> {
        dispatch!(self, s => s.fires(schedule).await)
    }

    /// Records a run before it touches anything. A run id already stored is an error.
    pub(crate) async fn start_run(&self, start: &RunStart) -> Result<(), HistoryError> {
        // The history is read by anyone with the state directory or the dashboard: no secret
        // of the experiment is stored (`secrets.rs`).
        let mut start = start.clone();
        crate::secrets::redact_in_place(&mut start.title);
        crate::secrets::redact_in_place(&mut start.file);
        let start = &start;
        dispatch!(self, s => s.start_run(start).await)
    }

    /// Records how a started run ended. A run id never started is an error.
    pub(crate) async fn finish_run(&self, run_id: &str, end: &RunEnd) -> Result<(), HistoryError> {
        let mut end = end.clone();
        crate::secrets::redact_in_place(&mut end.reason);
        for agent in &mut end.agents {
            crate::secrets::redact_in_place(agent);
        }
        if let Some(json) = &mut end.report_json {
            crate::secrets::redact_in_place(json);
        }
        let end = &end;
        dispatch!(self, s => s.finish_run(run_id, end).await)
    }

    /// Runs that started and have no end, of one coordinator (or of all when None), oldest first.
    pub(crate) async fn unfinished(
        &self,
        coordinator: Option<&str>,
    ) -> Result<Vec<RunRow>, HistoryError> {
        dispatch!(self, s => s.unfinished(coordinator).await)
    }

    /// Runs, newest first.
    pub(crate) async fn runs(&self, filter: &Filter) -> Result<Vec<RunRow>, HistoryError> {
        dispatch!(self, s => s.runs(filter).await)
    }

    /// `runs` with every `report_json` left out, for lists (`faultline history`): a report is
    /// kilobytes, and listing 100 000 runs must not read them all. Every store leaves them out
    /// in its query.
    pub(crate) async fn runs_without_reports(
        &self,
        filter: &Filter,
    ) -> Result<Vec<RunRow>, HistoryError> {
        dispatch!(self, s => s.runs_without_reports(filter).await)
    }

    pub(crate) async fn run(&self, run_id: &str) -> Result<Option<RunRow>, HistoryError> {
        dispatch!(self, s => s.run(run_id).await)
    }

    /// Takes or renews the lease named `name` for `holder` for `lease`; true when `holder` holds
    /// it afterwards. Coordinators sharing a database call it before every fire, so exactly one
    /// fires. The database's clock decides expiry (PostgreSQL `now()`), so hosts' clocks may differ.
    pub(crate) async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, HistoryError> {
        dispatch!(self, s => s.try_lead(name, holder, lease).await)
    }

    /// Gives the lease up (on a clean stop), so another coordinator takes over at once.
    pub(crate) async fn release_lead(&self, name: &str, holder: &str) -> Result<(), HistoryError> {
        dispatch!(self, s => s.release_lead(name, holder).await)
    }
}
