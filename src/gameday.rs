//! Owns the TOML of game-day files (`[coordinator]`, `[[schedule]]`, `[[blackout]]`): strict like
//! experiments (unknown keys and bad values are errors naming file, line, column and key), turned
//! once into a validated `GameDay` whose timing lives in `schedule::Calendar`.
//!
//! SKELETON (lead): the types and signatures below are the contract the coordinator codes against;
//! the schedule engineer fills in the bodies and may add fields and functions, never remove these.
#![allow(dead_code)] // SKELETON: the engineer filling this file removes this line

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schedule::Calendar;

/// A validated game-day file.
#[derive(Debug, Clone)]
pub(crate) struct GameDay {
    pub(crate) file: PathBuf,
    pub(crate) coordinator: Coordinator,
    pub(crate) calendar: Calendar,
}

/// `[coordinator]`.
#[derive(Debug, Clone)]
pub(crate) struct Coordinator {
    /// History database (SQLite `history.db`), the embedded agent's journal, stored reports.
    pub(crate) state_dir: PathBuf,
    /// The default zone of every schedule and blackout, as written (IANA name).
    pub(crate) timezone: String,
    /// Agent inventory, resolved against the game-day file's directory (as `run --agents`).
    pub(crate) agents: Option<PathBuf>,
    /// `postgres://…`: the history lives there and coordinators sharing it elect who fires.
    pub(crate) database: Option<String>,
    /// No chaos during an incident: fires are skipped while a matching alert fires.
    pub(crate) outage: Option<Outage>,
    /// The lease of every run's faults (as `run --lease`) [default 5s].
    pub(crate) lease: Duration,
}

/// `outage = { alertmanager = "http://…", matchers = ['severity="critical"'] }`.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    /// Base URL of Alertmanager (the API v2 lives under `/api/v2/`).
    pub(crate) alertmanager: String,
    /// Alertmanager matchers as written (`name="value"`, `name=~"regex"`, `!=`, `!~`); an alert
    /// counts when it is active and matches all of them.
    pub(crate) matchers: Vec<String>,
}

/// Why a game-day file was refused; `Display` names the file, line, column and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GameDayError(pub(crate) String);

/// Reads and validates a game-day file.
pub(crate) fn load(path: &Path) -> Result<GameDay, GameDayError> {
    Err(GameDayError(format!(
        "{}: game-day files are not read yet",
        path.display()
    )))
}

/// Whether a TOML text is a game day rather than an experiment (it has `[coordinator]`,
/// `[[schedule]]` or `[[blackout]]` at the top level), so `validate` can take either.
pub(crate) fn is_gameday(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l == "[coordinator]" || l == "[[schedule]]" || l == "[[blackout]]"
    })
}
