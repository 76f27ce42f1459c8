//! Owns the PostgreSQL history store (`database = "postgres://…"`): the schema and its migrations,
//! one reconnecting connection per handle, and the queries behind every `History` method,
//! including the slot claims and the lease that let several coordinators share one database.
//!
//! TLS: faultline connects without TLS (`NoTls`), meant for a database on loopback or a private
//! network. `sslmode=require` is refused with an error rather than silently sent in clear text;
//! `sslmode=prefer` (libpq's default) and `disable` connect in clear text.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row};

use super::{Filter, FireRow, FireState, HistoryError, RunEnd, RunRow, RunStart, schema};

/// The schema, one migration per entry; entry N brings the schema from version N to N + 1. Each
/// is applied in the transaction that records its version, so a failed one leaves no trace.
/// Append, never edit. Tables, columns and encodings are the SQLite store's
/// (`schema::SQLITE_MIGRATIONS`): instants and durations are integer microseconds, the seed is
/// decimal text, agents a JSON list; so one mental model (and one query) fits both databases.
/// Only the integer type differs (PostgreSQL's INTEGER is 32-bit).
const MIGRATIONS: &[&str] = &[
    // 1: runs, fires and leases.
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL,
        schedule TEXT,
        fire_at_us BIGINT,
        title TEXT NOT NULL,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        seed TEXT NOT NULL,
        started_at_us BIGINT NOT NULL,
        coordinator TEXT,
        ended_at_us BIGINT,
        verdict TEXT,
        exit_code SMALLINT,
        reason TEXT,
        time_to_recover_us BIGINT,
        time_to_abort_us BIGINT,
        agents TEXT,
        report_json TEXT
    );
    CREATE INDEX runs_by_start ON runs (started_at_us DESC);
    CREATE INDEX runs_by_title ON runs (title, started_at_us DESC);
    CREATE INDEX runs_by_schedule ON runs (schedule, started_at_us DESC);
    CREATE INDEX runs_unfinished ON runs (coordinator) WHERE ended_at_us IS NULL;
    CREATE TABLE fires (
        schedule TEXT NOT NULL,
        at_us BIGINT NOT NULL,
        skipped TEXT,
        recorded_by TEXT NOT NULL,
        recorded_at_us BIGINT NOT NULL,
        jitter_us BIGINT NOT NULL,
        PRIMARY KEY (schedule, at_us)
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY NOT NULL,
        holder TEXT NOT NULL,
        expires_at_us BIGINT NOT NULL
    );",
];

/// The advisory-lock key migrations run under (any constant; this is "faultlin" in ASCII), so
/// coordinators starting at once against a fresh database do not both create the tables.
pub(super) const MIGRATION_LOCK: i64 = 0x6661_756c_746c_696e;

/// How long one call may take, connecting included, before its connection is dropped and the
/// call fails; a hung server must not hang the coordinator's loop (it then stops firing, which is
/// what losing the lease means anyway).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const RUN_COLUMNS: &str = "run_id, schedule, fire_at_us, title, file, sha256, seed, started_at_us, \
    coordinator, ended_at_us, verdict, exit_code, reason, time_to_recover_us, time_to_abort_us, \
    agents, report_json";

/// `RUN_COLUMNS` without the report (kilobytes a run), for lists.
const LIST_COLUMNS: &str = "run_id, schedule, fire_at_us, title, file, sha256, seed, started_at_us, \
    coordinator, ended_at_us, verdict, exit_code, reason, time_to_recover_us, time_to_abort_us, \
    agents, NULL::TEXT";

/// A handle on a PostgreSQL history; clones share one connection.
#[derive(Debug, Clone)]
pub(crate) struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// The URL without its password, for messages.
    shown: String,
    /// The live connection, or None once it broke: the next call opens a new one, so a database
    /// restart or a dropped TCP session costs one failed call, not the coordinator.
    client: Mutex<Option<Arc<Client>>>,
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date.
    pub(crate) async fn open(url: &str) -> Result<PostgresStore, HistoryError> {
        let shown = super::redact_url(url);
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            HistoryError(format!("invalid postgres URL {shown}: {}", describe(&e)))
        })?;
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {
                config.ssl_mode(SslMode::Disable);
            }
            mode => {
                let mode = format!("{mode:?}").to_lowercase();
                return Err(HistoryError(format!(
                    "postgres history at {shown}: sslmode={mode} is not supported: faultline \
                     connects without TLS (use sslmode=disable, over loopback or a private network)"
                )));
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // Names faultline's sessions in pg_stat_activity, unless the URL names them already.
        if config.get_application_name().is_none() {
            config.application_name("faultline");
        }
        let store = PostgresStore {
            inner: Arc::new(Inner {
                config,
                shown,
                client: Mutex::new(None),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    fn fail(&self, what: &str, e: &tokio_postgres::Error) -> HistoryError {
        HistoryError(format!(
            "postgres history at {}: failed to {what}: {}",
            self.inner.shown,
            describe(e)
        ))
    }

    async fn connect(&self) -> Result<Client, HistoryError> {
        let (client, connection) = self
            .inner
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.fail("connect", &e))?;
        let shown = self.inner.shown.clone();
        // The connection task ends when the client is dropped or the session breaks; a broken
        // one shows as `Client::is_closed`, which `client` checks before every call.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(
                    "postgres history at {shown}: connection lost: {}",
                    describe(&e)
                );
            }
        });
        Ok(client)
    }

    /// The live connection, opening one when there is none or the last one broke.
    async fn client(&self) -> Result<Arc<Client>, HistoryError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        *slot = None;
        let client = Arc::new(self.connect().await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Runs one call on the live connection, bounded by `CALL_TIMEOUT`. A call is never retried
    /// here: a claim that reached the server before the session broke must not be sent twice.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, HistoryError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.call_raw(what, CALL_TIMEOUT, f)
            .await?
            .map_err(|e| self.fail(what, &e))
    }

    /// `call` bounded by `limit`, handing the database's error back to the caller to tell its
    /// kind; the outer error is a failure to connect or no answer in time.
    async fn call_raw<T, F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        f: F,
    ) -> Result<Result<T, tokio_postgres::Error>, HistoryError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let client = self.client().await?;
            let result = f(Arc::clone(&client)).await;
            if result.as_ref().is_err_and(ends_session) {
                // The session broke under this call; the connection task may not have noticed
                // yet (`is_closed` still false), so forget the client here: the next call
                // connects again instead of failing the same way.
                let mut slot = self.inner.client.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                    *slot = None;
                }
            }
            Ok(result)
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(what, limit).await),
        }
    }

    /// Drops the connection of a call that got no answer (dropping the client closes its
    /// session; the next call reconnects) and says so.
    async fn timed_out(&self, what: &str, limit: Duration) -> HistoryError {
        self.inner.client.lock().await.take();
        HistoryError(format!(
            "postgres history at {}: failed to {what}: no answer within {} ms",
            self.inner.shown,
            limit.as_millis()
        ))
    }

    /// Applies the migrations this database lacks, on a connection of its own, inside one
    /// transaction holding an advisory lock: a second coordinator starting at the same moment
    /// waits for the first and then finds the schema current.
    async fn migrate(&self) -> Result<(), HistoryError> {
        let mut client = self.connect().await?;
        let fail = |what: &str, e: &tokio_postgres::Error| self.fail(what, e);
        let known = MIGRATIONS.len();
        // Most opens find the schema current: a plain read then spares `history` and every
        // coordinator restart the lock and the DDL. A missing table (or any other answer) takes
        // the locked path, which decides.
        let current = client
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await
            .ok()
            .and_then(|row| row.get::<_, Option<i32>>(0))
            .and_then(|v| usize::try_from(v).ok());
        if current == Some(known) {
            *self.inner.client.lock().await = Some(Arc::new(client));
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| fail("begin the schema migration", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| fail("take the migration lock", &e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .await
            .map_err(|e| fail("create the schema_version table", &e))?;
        let version: i32 = tx
            .query_opt("SELECT max(version) FROM schema_version", &[])
            .await
            .map_err(|e| fail("read the schema version", &e))?
            .and_then(|row| row.get::<_, Option<i32>>(0))
            .unwrap_or(0);
        let from = usize::try_from(version).unwrap_or(usize::MAX);
        if from > known {
            return Err(HistoryError(format!(
                "postgres history at {}: the database has schema version {version}, newer than \
                 the {known} this faultline knows; use a newer faultline or another database",
                self.inner.shown
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| fail(&format!("migrate the schema to version {}", i + 1), &e))?;
        }
        if from < known {
            let to = i32::try_from(known).expect("a handful of migrations");
            tx.execute("DELETE FROM schema_version", &[])
                .await
                .map_err(|e| fail("record the schema version", &e))?;
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
                .await
                .map_err(|e| fail("record the schema version", &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| fail("commit the schema migration", &e))?;
        // This connection becomes the handle's first one.
        *self.inner.client.lock().await = Some(Arc::new(client));
        Ok(())
    }

    pub(crate) async fn claim_fire(&self, fire: &FireRow) -> Result<bool, HistoryError> {
        let skipped = match &fire.state {
            FireState::Fired => None,
            FireState::Skipped(reason) => Some(reason.as_str()),
        };
        let at = schema::micros(fire.at);
        let recorded_at = schema::micros(fire.recorded_at);
        let jitter = schema::duration_micros(fire.jitter);
        // The primary key (schedule, at_us) decides: of coordinators claiming one slot at once,
        // exactly one inserts; the others insert nothing and must not run it.
        let inserted = self
            .call("record a fire", |c| async move {
                c.execute(
                    "INSERT INTO fires (schedule, at_us, skipped, recorded_by, recorded_at_us, jitter_us) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (schedule, at_us) DO NOTHING",
                    &[&fire.schedule, &at, &skipped, &fire.by, &recorded_at, &jitter],
                )
                .await
            })
            .await?;
        Ok(inserted == 1)
    }

    pub(crate) async fn last_fire(
        &self,
        schedule: &str,
    ) -> Result<Option<Timestamp>, HistoryError> {
        let row = self
            .call("read the last fire", |c| async move {
                c.query_one(
                    "SELECT max(at_us) FROM fires WHERE schedule = $1",
                    &[&schedule],
                )
                .await
            })
            .await?;
        row.get::<_, Option<i64>>(0)
            .map(schema::timestamp)
            .transpose()
    }

    pub(crate) async fn fires(&self, schedule: Option<&str>) -> Result<Vec<FireRow>, HistoryError> {
        let rows = self
            .call("read fires", |c| async move {
                c.query(
                    "SELECT schedule, at_us, skipped, recorded_by, recorded_at_us, jitter_us \
                     FROM fires WHERE ($1::TEXT IS NULL OR schedule = $1) ORDER BY at_us, schedule",
                    &[&schedule],
                )
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(FireRow {
                    schedule: row.get(0),
                    at: schema::timestamp(row.get(1))?,
                    state: row
                        .get::<_, Option<String>>(2)
                        .map_or(FireState::Fired, FireState::Skipped),
                    by: row.get(3),
                    recorded_at: schema::timestamp(row.get(4))?,
                    jitter: schema::duration(row.get(5))?,
                })
            })
            .collect()
    }

    pub(crate) async fn start_run(&self, start: &RunStart) -> Result<(), HistoryError> {
        let fire_at = start.fire_at.map(schema::micros);
        let started_at = schema::micros(start.started_at);
        let seed = start.seed.to_string();
        let inserted = self
            .call_raw("record the start of a run", CALL_TIMEOUT, |c| async move {
                c.execute(
                    "INSERT INTO runs (run_id, schedule, fire_at_us, title, file, sha256, seed, \
                     started_at_us, coordinator) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &start.run_id,
                        &start.schedule,
                        &fire_at,
                        &start.title,
                        &start.file,
                        &start.sha256,
                        &seed,
                        &started_at,
                        &start.coordinator,
                    ],
                )
                .await
            })
            .await?;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(HistoryError(format!(
                "postgres history at {}: failed to record the start of a run: run {} is already recorded",
                self.inner.shown, start.run_id
            ))),
            Err(e) => Err(self.fail("record the start of a run", &e)),
        }
    }

    pub(crate) async fn finish_run(&self, run_id: &str, end: &RunEnd) -> Result<(), HistoryError> {
        let ended_at = schema::micros(end.ended_at);
        let exit_code = i16::from(end.exit_code);
        let recover = end.time_to_recover.map(schema::duration_micros);
        let abort = end.time_to_abort.map(schema::duration_micros);
        let agents = schema::agents_text(&end.agents);
        let updated = self
            .call("record the end of a run", |c| async move {
                c.execute(
                    "UPDATE runs SET ended_at_us = $2, verdict = $3, exit_code = $4, reason = $5, \
                     time_to_recover_us = $6, time_to_abort_us = $7, agents = $8, report_json = $9 \
                     WHERE run_id = $1",
                    &[
                        &run_id,
                        &ended_at,
                        &end.verdict,
                        &exit_code,
                        &end.reason,
                        &recover,
                        &abort,
                        &agents,
                        &end.report_json,
                    ],
                )
                .await
            })
            .await?;
        if updated == 0 {
            return Err(HistoryError(format!(
                "postgres history at {}: failed to record the end of a run: run {run_id} was never started",
                self.inner.shown
            )));
        }
        Ok(())
    }

    pub(crate) async fn unfinished(
        &self,
        coordinator: Option<&str>,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let sql = format!(
            "SELECT {LIST_COLUMNS} FROM runs WHERE ended_at_us IS NULL \
             AND ($1::TEXT IS NULL OR coordinator = $1) ORDER BY started_at_us, run_id"
        );
        let rows = self
            .call("read unfinished runs", |c| async move {
                c.query(&sql, &[&coordinator]).await
            })
            .await?;
        rows.iter().map(run_row).collect()
    }

    pub(crate) async fn runs(&self, filter: &Filter) -> Result<Vec<RunRow>, HistoryError> {
        self.list(filter, RUN_COLUMNS).await
    }

    pub(crate) async fn runs_without_reports(
        &self,
        filter: &Filter,
    ) -> Result<Vec<RunRow>, HistoryError> {
        self.list(filter, LIST_COLUMNS).await
    }

    async fn list(&self, filter: &Filter, columns: &str) -> Result<Vec<RunRow>, HistoryError> {
        // Only the conditions asked for, so the planner sees one plain condition and takes its
        // index; the values stay bound parameters, only fixed text is joined.
        let mut conditions = Vec::new();
        let mut values: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(title) = &filter.experiment {
            values.push(title);
            conditions.push(format!("title = ${}", values.len()));
        }
        if let Some(schedule) = &filter.schedule {
            values.push(schedule);
            conditions.push(format!("schedule = ${}", values.len()));
        }
        // LIMIT NULL is no limit.
        let limit = filter.last.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        values.push(&limit);
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {columns} FROM runs {filter_sql} \
             ORDER BY started_at_us DESC, run_id DESC LIMIT ${}",
            values.len()
        );
        let rows = self
            .call("read runs", |c| async move { c.query(&sql, &values).await })
            .await?;
        rows.iter().map(run_row).collect()
    }

    pub(crate) async fn run(&self, run_id: &str) -> Result<Option<RunRow>, HistoryError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1");
        let row = self
            .call("read a run", |c| async move {
                c.query_opt(&sql, &[&run_id]).await
            })
            .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// A lease row rather than an advisory lock: an advisory lock belongs to a session and is
    /// released only when that session ends, so a holder that hangs with its TCP session open
    /// (stopped, deadlocked, partitioned without a reset) would keep every fire from happening
    /// until keepalives gave up. The row expires after `lease` by the database's clock whatever
    /// the holder does (hosts' clocks may differ), and one statement decides: take it if
    /// absent, expired or ours. Concurrent takers of an absent row serialise on its key.
    pub(crate) async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, HistoryError> {
        let lease_us = schema::duration_micros(lease);
        // An answer later than the lease is worthless (the lease may have passed to another
        // meanwhile), so a hung database makes this a refusal after one lease, not 30 s (at
        // least 1 s, so a busy host does not turn a short test lease into a failed call).
        let limit = lease.clamp(Duration::from_secs(1), CALL_TIMEOUT);
        let row = self
            .call_raw("take the lead", limit, |c| async move {
                c.query_opt(
                    "WITH clock AS (SELECT (extract(epoch FROM now()) * 1000000)::BIGINT AS now_us) \
                     INSERT INTO leases AS l (name, holder, expires_at_us) \
                     SELECT $1, $2, now_us + $3 FROM clock \
                     ON CONFLICT (name) DO UPDATE \
                     SET holder = EXCLUDED.holder, expires_at_us = EXCLUDED.expires_at_us \
                     WHERE l.holder = EXCLUDED.holder \
                        OR l.expires_at_us <= (SELECT now_us FROM clock) \
                     RETURNING l.holder",
                    &[&name, &holder, &lease_us],
                )
                .await
            })
            .await?
            .map_err(|e| self.fail("take the lead", &e))?;
        Ok(row.is_some())
    }

    pub(crate) async fn release_lead(&self, name: &str, holder: &str) -> Result<(), HistoryError> {
        self.call("release the lead", |c| async move {
            c.execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
        })
        .await?;
        Ok(())
    }
}

fn run_row(row: &Row) -> Result<RunRow, HistoryError> {
    let start = RunStart {
        run_id: row.get(0),
        schedule: row.get(1),
        fire_at: row
            .get::<_, Option<i64>>(2)
            .map(schema::timestamp)
            .transpose()?,
        title: row.get(3),
        file: row.get(4),
        sha256: row.get(5),
        seed: schema::seed(row.get(6))?,
        started_at: schema::timestamp(row.get(7))?,
        coordinator: row.get(8),
    };
    let end = match row.get::<_, Option<i64>>(9) {
        None => None,
        Some(ended_at) => Some(RunEnd {
            ended_at: schema::timestamp(ended_at)?,
            verdict: row.get::<_, Option<String>>(10).unwrap_or_default(),
            exit_code: match row.get::<_, Option<i16>>(11) {
                None => 0,
                Some(code) => u8::try_from(code).map_err(|_| {
                    HistoryError(format!("stored exit code {code} is not 0 to 255"))
                })?,
            },
            reason: row.get::<_, Option<String>>(12).unwrap_or_default(),
            time_to_recover: row
                .get::<_, Option<i64>>(13)
                .map(schema::duration)
                .transpose()?,
            time_to_abort: row
                .get::<_, Option<i64>>(14)
                .map(schema::duration)
                .transpose()?,
            agents: match row.get::<_, Option<&str>>(15) {
                Some(text) => schema::agents_list(text)?,
                None => Vec::new(),
            },
            report_json: row.get(16),
        }),
    };
    Ok(RunRow { start, end })
}

/// Whether an error leaves the session unusable: anything but a statement's own error (a
/// violated constraint leaves the session fine; FATAL, an IO error or a closed socket do not).
fn ends_session(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_none_or(|db| db.parsed_severity() != Some(Severity::Error))
}

/// The server's own message when there is one (`tokio_postgres::Error`'s Display says only "db
/// error"), else the error with its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
