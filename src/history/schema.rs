//! Owns what every history store agrees on about stored values: the schema version, the SQLite
//! migrations, and how instants, durations and lists become columns.

use std::time::Duration;

use jiff::Timestamp;

use super::HistoryError;

/// The SQLite migrations, in order; migration `i` takes the schema from version `i` to `i + 1`.
/// Each runs once, in the transaction that bumps `user_version`. Append, never edit: a database
/// records only how many have been applied.
///
/// Instants and durations are integer microseconds (UTC since the Unix epoch), so ordering in SQL
/// is ordering in time; the seed is decimal text because SQLite integers are signed 64-bit.
pub(super) const SQLITE_MIGRATIONS: &[&str] = &[
    // 1: runs, fires and leases.
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL,
        schedule TEXT,
        fire_at_us INTEGER,
        title TEXT NOT NULL,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        seed TEXT NOT NULL,
        started_at_us INTEGER NOT NULL,
        coordinator TEXT,
        ended_at_us INTEGER,
        verdict TEXT,
        exit_code INTEGER,
        reason TEXT,
        time_to_recover_us INTEGER,
        time_to_abort_us INTEGER,
        agents TEXT,
        report_json TEXT
    );
    CREATE INDEX runs_by_start ON runs (started_at_us DESC, run_id DESC);
    CREATE INDEX runs_by_title ON runs (title, started_at_us DESC, run_id DESC);
    CREATE INDEX runs_by_schedule ON runs (schedule, started_at_us DESC, run_id DESC);
    CREATE INDEX runs_unfinished ON runs (coordinator) WHERE ended_at_us IS NULL;
    CREATE TABLE fires (
        schedule TEXT NOT NULL,
        at_us INTEGER NOT NULL,
        skipped TEXT,
        recorded_by TEXT NOT NULL,
        recorded_at_us INTEGER NOT NULL,
        jitter_us INTEGER NOT NULL,
        PRIMARY KEY (schedule, at_us)
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY NOT NULL,
        holder TEXT NOT NULL,
        expires_at_us INTEGER NOT NULL
    );",
];

/// The schema version this faultline writes.
pub(super) fn sqlite_version() -> i64 {
    SQLITE_MIGRATIONS.len() as i64
}

pub(super) fn micros(at: Timestamp) -> i64 {
    at.as_microsecond()
}

pub(super) fn timestamp(us: i64) -> Result<Timestamp, HistoryError> {
    Timestamp::from_microsecond(us)
        .map_err(|e| HistoryError(format!("stored instant {us} µs is out of range: {e}")))
}

/// A duration in whole microseconds, rounded exactly as the JSON report rounds it
/// (`report::millis`), so `history` and `show` print the same time to recover; saturating (an
/// `as` cast from f64 does) for a lease of centuries.
pub(super) fn duration_micros(d: Duration) -> i64 {
    (d.as_secs_f64() * 1_000_000.0).round() as i64
}

pub(super) fn duration(us: i64) -> Result<Duration, HistoryError> {
    u64::try_from(us)
        .map(Duration::from_micros)
        .map_err(|_| HistoryError(format!("stored duration {us} µs is negative")))
}

pub(super) fn agents_text(agents: &[String]) -> String {
    serde_json::to_string(agents).expect("a list of strings always serializes")
}

pub(super) fn agents_list(text: &str) -> Result<Vec<String>, HistoryError> {
    serde_json::from_str(text).map_err(|e| {
        HistoryError(format!(
            "stored agent list {text:?} is not a JSON list: {e}"
        ))
    })
}

pub(super) fn seed(text: &str) -> Result<u64, HistoryError> {
    text.parse()
        .map_err(|e| HistoryError(format!("stored seed {text:?} is not a number: {e}")))
}
