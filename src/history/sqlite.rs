//! Owns the SQLite history store (`history.db` in a state directory): opening it (mode 0600, WAL,
//! a busy timeout so a CLI run and the coordinator write at once), its migrations, and every
//! query, each run on a blocking thread.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior, params};

use super::schema::{self, SQLITE_MIGRATIONS};
use super::{Filter, FireRow, FireState, HistoryError, RunEnd, RunRow, RunStart};

/// How long a statement waits for another process's write before it fails: a run's whole report
/// is one short transaction, so 5 s is many of them.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection per open history, shared by its clones; a statement holds it only while it runs.
#[derive(Debug, Clone)]
pub(super) struct Store {
    path: Arc<PathBuf>,
    conn: Arc<Mutex<Connection>>,
}

const RUN_COLUMNS: &str = "run_id, schedule, fire_at_us, title, file, sha256, seed, started_at_us, \
     coordinator, ended_at_us, verdict, exit_code, reason, time_to_recover_us, time_to_abort_us, \
     agents, report_json";

/// `RUN_COLUMNS` without the report: a report is kilobytes (its samples), and a list of 100 000
/// runs need not read them all.
const LIST_COLUMNS: &str = "run_id, schedule, fire_at_us, title, file, sha256, seed, started_at_us, \
     coordinator, ended_at_us, verdict, exit_code, reason, time_to_recover_us, time_to_abort_us, \
     agents, NULL";

const INSERT_RUN: &str =
    "INSERT INTO runs (run_id, schedule, fire_at_us, title, file, sha256, seed,
         started_at_us, coordinator)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Writes how a run ended; the number of rows changed (0: no such run).
fn write_end(conn: &Connection, run_id: &str, end: &RunEnd) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE runs SET ended_at_us = ?2, verdict = ?3, exit_code = ?4, reason = ?5,
             time_to_recover_us = ?6, time_to_abort_us = ?7, agents = ?8, report_json = ?9
         WHERE run_id = ?1",
        params![
            run_id,
            schema::micros(end.ended_at),
            end.verdict,
            end.exit_code,
            end.reason,
            end.time_to_recover.map(schema::duration_micros),
            end.time_to_abort.map(schema::duration_micros),
            schema::agents_text(&end.agents),
            end.report_json,
        ],
    )
}

impl Store {
    pub(super) async fn open(path: &Path) -> Result<Store, HistoryError> {
        let path = path.to_owned();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&opened))
            .await
            .map_err(|e| {
                HistoryError(format!("history {}: failed to open: {e}", path.display()))
            })??;
        Ok(Store {
            path: Arc::new(path),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on a blocking thread with the connection; its error names the file.
    async fn with<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let conn = self.conn.clone();
        let done = tokio::task::spawn_blocking(move || {
            // A panic in another statement poisons the lock but leaves the connection usable:
            // SQLite rolled back whatever that statement had open.
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&mut conn)
        })
        .await;
        let done = match done {
            Ok(done) => done.map_err(|e| e.0),
            Err(e) => Err(e.to_string()),
        };
        done.map_err(|e| HistoryError(format!("history {}: {what}: {e}", self.path.display())))
    }

    pub(super) async fn claim_fire(&self, fire: &FireRow) -> Result<bool, HistoryError> {
        let fire = fire.clone();
        self.with("failed to record a fire", move |conn| {
            let skipped = match &fire.state {
                FireState::Fired => None,
                FireState::Skipped(reason) => Some(reason.as_str()),
            };
            let inserted = conn
                .execute(
                    "INSERT INTO fires (schedule, at_us, skipped, recorded_by, recorded_at_us, jitter_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (schedule, at_us) DO NOTHING",
                    params![
                        fire.schedule,
                        schema::micros(fire.at),
                        skipped,
                        fire.by,
                        schema::micros(fire.recorded_at),
                        schema::duration_micros(fire.jitter),
                    ],
                )
                .map_err(sql)?;
            Ok(inserted == 1)
        })
        .await
    }

    pub(super) async fn last_fire(
        &self,
        schedule: &str,
    ) -> Result<Option<Timestamp>, HistoryError> {
        let schedule = schedule.to_owned();
        self.with("failed to read the last fire", move |conn| {
            let us: Option<i64> = conn
                .query_row(
                    "SELECT max(at_us) FROM fires WHERE schedule = ?1",
                    [schedule],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            us.map(schema::timestamp).transpose()
        })
        .await
    }

    pub(super) async fn fires(&self, schedule: Option<&str>) -> Result<Vec<FireRow>, HistoryError> {
        let schedule = schedule.map(str::to_owned);
        self.with("failed to read fires", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT schedule, at_us, skipped, recorded_by, recorded_at_us, jitter_us FROM fires
                     WHERE ?1 IS NULL OR schedule = ?1 ORDER BY at_us, schedule",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([schedule], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .map_err(sql)?;
            let mut fires = Vec::new();
            for row in rows {
                let (schedule, at, skipped, by, recorded_at, jitter) = row.map_err(sql)?;
                fires.push(FireRow {
                    schedule,
                    at: schema::timestamp(at)?,
                    state: skipped.map_or(FireState::Fired, FireState::Skipped),
                    by,
                    recorded_at: schema::timestamp(recorded_at)?,
                    jitter: schema::duration(jitter)?,
                });
            }
            Ok(fires)
        })
        .await
    }

    pub(super) async fn start_run(&self, start: &RunStart) -> Result<(), HistoryError> {
        let start = start.clone();
        self.with("failed to record the start of a run", move |conn| {
            conn.execute(
                INSERT_RUN,
                params![
                    start.run_id,
                    start.schedule,
                    start.fire_at.map(schema::micros),
                    start.title,
                    start.file,
                    start.sha256,
                    start.seed.to_string(),
                    schema::micros(start.started_at),
                    start.coordinator,
                ],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    HistoryError(format!("run {} is already recorded", start.run_id))
                }
                _ => sql(e),
            })?;
            Ok(())
        })
        .await
    }

    pub(super) async fn finish_run(&self, run_id: &str, end: &RunEnd) -> Result<(), HistoryError> {
        let run_id = run_id.to_owned();
        let end = end.clone();
        self.with("failed to record the end of a run", move |conn| {
            let updated = write_end(conn, &run_id, &end).map_err(sql)?;
            if updated == 0 {
                return Err(HistoryError(format!("run {run_id} was never started")));
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn unfinished(
        &self,
        coordinator: Option<&str>,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let coordinator = coordinator.map(str::to_owned);
        self.with("failed to read unfinished runs", move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {LIST_COLUMNS} FROM runs WHERE ended_at_us IS NULL
                     AND (?1 IS NULL OR coordinator = ?1) ORDER BY started_at_us, run_id"
                ))
                .map_err(sql)?;
            collect_runs(stmt.query([coordinator]).map_err(sql)?)
        })
        .await
    }

    pub(super) async fn runs(&self, filter: &Filter) -> Result<Vec<RunRow>, HistoryError> {
        self.list(filter, RUN_COLUMNS).await
    }

    pub(super) async fn runs_without_reports(
        &self,
        filter: &Filter,
    ) -> Result<Vec<RunRow>, HistoryError> {
        self.list(filter, LIST_COLUMNS).await
    }

    async fn list(
        &self,
        filter: &Filter,
        columns: &'static str,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let filter = filter.clone();
        self.with("failed to read runs", move |conn| {
            // Only the conditions asked for, so SQLite picks the index of the one filter
            // (`x IS NULL OR title = x` would defeat it and scan every run). The values stay
            // bound parameters; only fixed text is joined.
            let mut conditions = Vec::new();
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::new();
            if let Some(title) = &filter.experiment {
                values.push(title);
                conditions.push(format!("title = ?{}", values.len()));
            }
            if let Some(schedule) = &filter.schedule {
                values.push(schedule);
                conditions.push(format!("schedule = ?{}", values.len()));
            }
            // -1 is SQLite's "no limit".
            let limit = filter
                .last
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
            values.push(&limit);
            let limit_at = values.len();
            let filter_sql = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {columns} FROM runs {filter_sql}
                     ORDER BY started_at_us DESC, run_id DESC LIMIT ?{limit_at}"
                ))
                .map_err(sql)?;
            collect_runs(stmt.query(values.as_slice()).map_err(sql)?)
        })
        .await
    }

    pub(super) async fn run(&self, run_id: &str) -> Result<Option<RunRow>, HistoryError> {
        let run_id = run_id.to_owned();
        self.with("failed to read a run", move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"))
                .map_err(sql)?;
            Ok(collect_runs(stmt.query([run_id]).map_err(sql)?)?.pop())
        })
        .await
    }

    pub(super) async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, HistoryError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with("failed to take the lead", move |conn| {
            try_lead_at(conn, &name, &holder, lease, Timestamp::now())
        })
        .await
    }

    pub(super) async fn release_lead(&self, name: &str, holder: &str) -> Result<(), HistoryError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with("failed to release the lead", move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}

/// Writes finished runs in one transaction, through the same statements as `start_run` and
/// `finish_run`: for `faultline bench history`, which fills a database with 100 000 of them.
pub(crate) fn insert_finished(path: &Path, runs: &[RunRow]) -> Result<(), HistoryError> {
    let mut conn = open_blocking(path)?;
    let tx = conn.transaction().map_err(sql)?;
    for run in runs {
        let (s, Some(e)) = (&run.start, &run.end) else {
            continue;
        };
        tx.execute(
            INSERT_RUN,
            params![
                s.run_id,
                s.schedule,
                s.fire_at.map(schema::micros),
                s.title,
                s.file,
                s.sha256,
                s.seed.to_string(),
                schema::micros(s.started_at),
                s.coordinator,
            ],
        )
        .map_err(sql)?;
        write_end(&tx, &s.run_id, e).map_err(sql)?;
    }
    tx.commit().map_err(sql)
}

/// The lease logic with the clock passed in. On SQLite every writer is on this host, so this
/// host's clock is the database's clock.
fn try_lead_at(
    conn: &Connection,
    name: &str,
    holder: &str,
    lease: Duration,
    now: Timestamp,
) -> Result<bool, HistoryError> {
    let now = schema::micros(now);
    let expires = now.saturating_add(schema::duration_micros(lease));
    // One statement, so two processes cannot both see the lease free: the upsert takes it when
    // nobody has it, renews it for its holder, and takes it over only once it has expired.
    let changed = conn
        .execute(
            "INSERT INTO leases (name, holder, expires_at_us) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                 expires_at_us = excluded.expires_at_us
             WHERE leases.holder = excluded.holder OR leases.expires_at_us <= ?4",
            params![name, holder, expires, now],
        )
        .map_err(sql)?;
    Ok(changed == 1)
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "a `map_err` adapter takes the error by value"
)]
fn sql(e: rusqlite::Error) -> HistoryError {
    HistoryError(e.to_string())
}

fn collect_runs(mut rows: rusqlite::Rows<'_>) -> Result<Vec<RunRow>, HistoryError> {
    let mut runs = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        runs.push(run_row(row)?);
    }
    Ok(runs)
}

fn run_row(r: &Row<'_>) -> Result<RunRow, HistoryError> {
    let get = |e: rusqlite::Error| sql(e);
    let start = RunStart {
        run_id: r.get(0).map_err(get)?,
        schedule: r.get(1).map_err(get)?,
        fire_at: r
            .get::<_, Option<i64>>(2)
            .map_err(get)?
            .map(schema::timestamp)
            .transpose()?,
        title: r.get(3).map_err(get)?,
        file: r.get(4).map_err(get)?,
        sha256: r.get(5).map_err(get)?,
        seed: schema::seed(&r.get::<_, String>(6).map_err(get)?)?,
        started_at: schema::timestamp(r.get(7).map_err(get)?)?,
        coordinator: r.get(8).map_err(get)?,
    };
    let end = match r.get::<_, Option<i64>>(9).map_err(get)? {
        None => None,
        Some(ended_at) => Some(RunEnd {
            ended_at: schema::timestamp(ended_at)?,
            verdict: r
                .get::<_, Option<String>>(10)
                .map_err(get)?
                .unwrap_or_default(),
            exit_code: r.get::<_, Option<u8>>(11).map_err(get)?.unwrap_or_default(),
            reason: r
                .get::<_, Option<String>>(12)
                .map_err(get)?
                .unwrap_or_default(),
            time_to_recover: r
                .get::<_, Option<i64>>(13)
                .map_err(get)?
                .map(schema::duration)
                .transpose()?,
            time_to_abort: r
                .get::<_, Option<i64>>(14)
                .map_err(get)?
                .map(schema::duration)
                .transpose()?,
            agents: match r.get::<_, Option<String>>(15).map_err(get)? {
                Some(text) => schema::agents_list(&text)?,
                None => Vec::new(),
            },
            report_json: r.get(16).map_err(get)?,
        }),
    };
    Ok(RunRow { start, end })
}

/// Opens (creating with mode 0600) and migrates the database at `path`.
fn open_blocking(path: &Path) -> Result<Connection, HistoryError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        HistoryError(format!("history {}: {what}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The same mode as the agent's journal in the same directory: reports name hosts.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("failed to create its directory", &e))?;
    }
    // Created here rather than by SQLite, whose default mode follows the umask (often 0644);
    // SQLite gives its -wal and -shm files the mode of the database file.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("failed to create the file", &e))?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail("failed to open", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail("failed to set the busy timeout", &e))?;
    // WAL lets `history` read while a run writes, and a run and the coordinator write one after
    // the other instead of failing. Switching needs a moment alone with the file; SQLite answers
    // "database is locked" at once there instead of waiting for the busy timeout (several
    // processes opening a new file together), so the switch is retried until that timeout. A
    // database already in WAL answers at once.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other.map_err(|e| fail("failed to switch to WAL", &e))?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(
            "failed to switch to WAL",
            &format!("the journal mode stayed {mode}"),
        ));
    }
    // WAL is durable with NORMAL except for the last transactions before a power loss, which is
    // fine for a history and saves an fsync per statement.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| fail("failed to set synchronous", &e))?;
    // No checkpoint when the connection closes: with NORMAL, that checkpoint was the only fsync
    // of a run's history (the WAL, then the database), and it deleted the WAL so that the next
    // run's first commit created it again (an fsync of the new WAL's header and of the
    // directory). Together four fsyncs, on every `faultline run`'s critical path. The WAL stays
    // and is checkpointed when it reaches SQLite's auto-checkpoint size (1000 pages); readers see
    // its rows as before. Durability is what NORMAL promises (a power loss may lose the last
    // rows, never corrupt the file); the agent's journal, which undoes faults, has its own fsyncs.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| fail("failed to keep the WAL on close", &e))?;
    migrate(&mut conn).map_err(|e| fail("failed to migrate", &e.0))?;
    Ok(conn)
}

/// Applies the migrations this database has not seen, each once and all in one immediate
/// transaction, so two processes opening a new file at once do not both create the tables.
fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    // Most opens find the schema current: a plain read then spares `history` a write lock.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version == schema::sqlite_version() {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    let latest = schema::sqlite_version();
    if version > latest {
        return Err(HistoryError(format!(
            "the database has schema version {version}, newer than the {latest} this faultline knows; \
             use a newer faultline or another file"
        )));
    }
    let start = usize::try_from(version).map_err(|_| {
        HistoryError(format!(
            "the database has a negative schema version {version}"
        ))
    })?;
    for (i, migration) in SQLITE_MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(migration)
            .map_err(|e| HistoryError(format!("migration {} failed: {e}", i + 1)))?;
    }
    if start < SQLITE_MIGRATIONS.len() {
        // PRAGMA takes no bound parameters; `latest` is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {latest}"))
            .map_err(sql)?;
    }
    tx.commit().map_err(sql)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use jiff::Timestamp;
    use rusqlite::Connection;

    use super::{Store, open_blocking, try_lead_at};
    use crate::history::{Filter, FireRow, FireState, RunEnd, RunStart, schema};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn start(id: &str, title: &str, started: &str) -> RunStart {
        RunStart {
            run_id: id.to_owned(),
            schedule: None,
            fire_at: None,
            title: title.to_owned(),
            file: "exp.toml".to_owned(),
            sha256: "ab".repeat(32),
            seed: u64::MAX,
            started_at: at(started),
            coordinator: None,
        }
    }

    #[test]
    fn migrations_run_once_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/history.db");
        let first = open_blocking(&path).unwrap();
        // SQLite gives the files beside the database the database's mode.
        for file in ["history.db", "history.db-wal", "history.db-shm"] {
            let meta = std::fs::metadata(path.with_file_name(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        drop(first);
        // A second open applies nothing again (the CREATE TABLEs would fail) and keeps the version.
        let conn = open_blocking(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::sqlite_version());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn closing_leaves_the_wal_for_the_next_open_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let conn = open_blocking(&path).unwrap();
        conn.execute_batch("CREATE TABLE scratch (x INTEGER); INSERT INTO scratch VALUES (42)")
            .unwrap();
        drop(conn);
        // No checkpoint on close (it would have copied the WAL into the database, fsynced both
        // and deleted the WAL): the WAL is still there, holding the writes above.
        let wal = std::fs::metadata(path.with_file_name("history.db-wal"))
            .expect("the WAL outlives the connection");
        assert!(wal.len() > 0, "the WAL is empty");
        let conn = open_blocking(&path).unwrap();
        let x: i64 = conn
            .query_row("SELECT x FROM scratch", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 42);
    }

    #[test]
    fn a_database_from_a_newer_faultline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = open_blocking(&path).unwrap_err().0;
        assert_eq!(
            err,
            format!(
                "history {}: failed to migrate: the database has schema version 99, newer than the {} \
                 this faultline knows; use a newer faultline or another file",
                path.display(),
                schema::sqlite_version()
            )
        );
    }

    #[tokio::test]
    async fn a_fire_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("history.db")).await.unwrap();
        let fire = FireRow {
            schedule: "nightly".to_owned(),
            at: at("2027-03-28T01:30:00Z"),
            state: FireState::Fired,
            by: "a".to_owned(),
            recorded_at: at("2027-03-28T01:30:01Z"),
            jitter: Duration::from_millis(1500),
        };
        assert!(store.claim_fire(&fire).await.unwrap());
        let again = FireRow {
            by: "b".to_owned(),
            state: FireState::Skipped("blackout".to_owned()),
            ..fire.clone()
        };
        assert!(!store.claim_fire(&again).await.unwrap());
        let skipped = FireRow {
            at: at("2027-03-29T01:30:00Z"),
            state: FireState::Skipped("blackout `freeze`".to_owned()),
            ..fire.clone()
        };
        assert!(store.claim_fire(&skipped).await.unwrap());
        assert_eq!(store.fires(Some("nightly")).await.unwrap(), [fire, skipped]);
        assert_eq!(
            store.last_fire("nightly").await.unwrap(),
            Some(at("2027-03-29T01:30:00Z"))
        );
        assert_eq!(store.last_fire("other").await.unwrap(), None);
    }

    #[test]
    fn a_lead_is_held_until_its_lease_expires() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_blocking(&dir.path().join("history.db")).unwrap();
        let lease = Duration::from_secs(10);
        let t0 = at("2027-01-01T00:00:00Z");
        let later = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        assert!(try_lead_at(&conn, "fire", "a", lease, t0).unwrap());
        assert!(!try_lead_at(&conn, "fire", "b", lease, later(5)).unwrap());
        // Renewed at 8 s: held to 18 s.
        assert!(try_lead_at(&conn, "fire", "a", lease, later(8)).unwrap());
        assert!(!try_lead_at(&conn, "fire", "b", lease, later(17)).unwrap());
        assert!(try_lead_at(&conn, "fire", "b", lease, later(18)).unwrap());
        assert!(!try_lead_at(&conn, "fire", "a", lease, later(19)).unwrap());
        // Another name is another lease.
        assert!(try_lead_at(&conn, "other", "a", lease, later(19)).unwrap());
    }

    /// Two connections stand for two processes (a coordinator and a CLI run, or two
    /// coordinators on one host): one lead between them, and writes that wait for each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_connections_share_one_lead_and_write_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let (a, b) = (
            Store::open(&path).await.unwrap(),
            Store::open(&path).await.unwrap(),
        );
        let hour = Duration::from_secs(3600);
        assert!(a.try_lead("fire", "a", hour).await.unwrap());
        assert!(!b.try_lead("fire", "b", hour).await.unwrap());
        let write = |store: Store, who: &'static str| {
            tokio::spawn(async move {
                for i in 0..100 {
                    let id = format!("{who}-{i:03}");
                    store
                        .start_run(&start(&id, who, "2027-01-01T00:00:00Z"))
                        .await?;
                    let fire = FireRow {
                        schedule: "s".to_owned(),
                        at: at("2027-01-01T00:00:00Z")
                            .checked_add(jiff::SignedDuration::from_secs(i))
                            .unwrap(),
                        state: FireState::Fired,
                        by: who.to_owned(),
                        recorded_at: at("2027-01-01T00:00:00Z"),
                        jitter: Duration::ZERO,
                    };
                    store.claim_fire(&fire).await?;
                }
                Ok::<_, crate::history::HistoryError>(())
            })
        };
        let (wa, wb) = (write(a.clone(), "a"), write(b.clone(), "b"));
        wa.await.unwrap().unwrap();
        wb.await.unwrap().unwrap();
        assert_eq!(a.runs(&Filter::default()).await.unwrap().len(), 200);
        // Each slot went to exactly one of them.
        assert_eq!(b.fires(Some("s")).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn a_released_lead_is_free_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("history.db")).await.unwrap();
        let hour = Duration::from_secs(3600);
        assert!(store.try_lead("fire", "a", hour).await.unwrap());
        assert!(!store.try_lead("fire", "b", hour).await.unwrap());
        store.release_lead("fire", "b").await.unwrap();
        assert!(!store.try_lead("fire", "b", hour).await.unwrap());
        store.release_lead("fire", "a").await.unwrap();
        assert!(store.try_lead("fire", "b", hour).await.unwrap());
    }

    #[tokio::test]
    async fn runs_round_trip_newest_first_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("history.db")).await.unwrap();
        let a = start("r-a", "kill web", "2027-01-01T10:00:00Z");
        let b = RunStart {
            schedule: Some("nightly".to_owned()),
            fire_at: Some(at("2027-01-02T10:00:00Z")),
            coordinator: Some("c1".to_owned()),
            ..start("r-b", "pause db", "2027-01-02T10:00:01Z")
        };
        let c = start("r-c", "kill web", "2027-01-03T10:00:00Z");
        for s in [&a, &b, &c] {
            store.start_run(s).await.unwrap();
        }
        let dup = store.start_run(&a).await.unwrap_err().0;
        assert!(dup.ends_with("run r-a is already recorded"), "{dup}");
        let end = RunEnd {
            ended_at: at("2027-01-01T10:00:05Z"),
            verdict: "passed".to_owned(),
            exit_code: 0,
            reason: "recovered".to_owned(),
            time_to_recover: Some(Duration::from_micros(1_234_567)),
            time_to_abort: None,
            agents: vec!["local".to_owned(), "web-1".to_owned()],
            report_json: Some("{\"a\":1}".to_owned()),
        };
        store.finish_run("r-a", &end).await.unwrap();
        let missing = store.finish_run("r-x", &end).await.unwrap_err().0;
        assert!(missing.ends_with("run r-x was never started"), "{missing}");

        let ids = |rows: Vec<crate::history::RunRow>| {
            rows.into_iter().map(|r| r.start.run_id).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(store.runs(&Filter::default()).await.unwrap()),
            ["r-c", "r-b", "r-a"]
        );
        let kill = Filter {
            experiment: Some("kill web".to_owned()),
            ..Filter::default()
        };
        assert_eq!(ids(store.runs(&kill).await.unwrap()), ["r-c", "r-a"]);
        let last = Filter {
            last: Some(1),
            ..kill
        };
        assert_eq!(ids(store.runs(&last).await.unwrap()), ["r-c"]);
        let nightly = Filter {
            schedule: Some("nightly".to_owned()),
            ..Filter::default()
        };
        assert_eq!(store.runs(&nightly).await.unwrap()[0].start, b);
        let listed = store.runs(&Filter::default()).await.unwrap();
        assert_eq!(listed[2].end.as_ref(), Some(&end));
        let listed_a = store
            .runs_without_reports(&Filter::default())
            .await
            .unwrap()[2]
            .end
            .clone()
            .unwrap();
        assert_eq!(listed_a.report_json, None, "the report was left out");
        assert_eq!(
            RunEnd {
                report_json: end.report_json.clone(),
                ..listed_a
            },
            end
        );
        let row = store.run("r-a").await.unwrap().unwrap();
        assert_eq!((row.start, row.end), (a, Some(end)));
        assert_eq!(store.run("r-x").await.unwrap(), None);
        assert_eq!(ids(store.unfinished(None).await.unwrap()), ["r-b", "r-c"]);
        assert_eq!(ids(store.unfinished(Some("c1")).await.unwrap()), ["r-b"]);
    }
}
