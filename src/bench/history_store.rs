//! Owns `faultline bench history-store`: what the history costs a coordinator per fire in each
//! store, SQLite (a temporary file) and PostgreSQL (a temporary database on the server given by
//! `--postgres`, dropped afterwards): open, `try_lead`, and one fire's `claim_fire` +
//! `start_run` + `finish_run` on an open handle, as the coordinator makes them. A benchmark, not
//! a test: nothing here asserts a speed. (`bench history` measures `faultline history` and a CLI
//! run's rows on SQLite.)

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;

use crate::history::{FireRow, FireState, History, Location, RunEnd, RunStart};
use crate::units::format_ms;

pub(crate) struct Settings {
    /// A server where the URL's user may create databases; None measures SQLite alone.
    pub(crate) postgres: Option<String>,
    /// Fires timed per store.
    pub(crate) fires: usize,
}

/// Opens and lead checks timed per store.
const REPEATS: usize = 21;
/// The stored report's size: a `faultline run` JSON report of one probe and one fault is about
/// this long.
const REPORT_BYTES: usize = 4096;

/// A directory removed when dropped, whatever happened.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database of the bench's own on a PostgreSQL server, dropped (with its sessions) on drop.
struct Database {
    admin: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        // Drop cannot await and may run on the bench's runtime: a thread with its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(admin_query(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: could not drop the bench database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// The server settings that decide what a commit costs, as `name=value` pairs.
async fn durability(url: &str) -> Result<String, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to {}: {e}", crate::history::Location::parse(url)))?;
    let connection = tokio::spawn(connection);
    let mut pairs = Vec::new();
    for name in ["fsync", "synchronous_commit", "server_version"] {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| format!("SHOW {name}: {e}"))?;
        pairs.push(format!("{name}={}", row.get::<_, String>(0)));
    }
    drop(client);
    let _ = connection.await;
    Ok(pairs.join(", "))
}

async fn admin_query(url: &str, sql: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to {}: {e}", crate::history::Location::parse(url)))?;
    let connection = tokio::spawn(connection);
    let done = client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"));
    drop(client);
    let _ = connection.await;
    done
}

pub(crate) fn run(settings: &Settings) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "faultline-bench-history-store-{}-{}",
        std::process::id(),
        Timestamp::now().as_microsecond()
    )));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "faultline bench history-store — per store: open, try_lead, and one fire (claim_fire + \
         start_run + finish_run with a {REPORT_BYTES}-byte report) on an open handle; \
         median (p90, max) of {REPEATS} opens and lead checks, {} fires\n",
        settings.fires
    );
    let sqlite = Location::in_state_dir(&scratch.0);
    // The SQLite store commits in WAL mode with synchronous=NORMAL (no fsync per commit).
    runtime.block_on(measure(
        "SQLite, WAL, synchronous=NORMAL",
        &sqlite,
        settings.fires,
        &mut out,
    ))?;

    if let Some(admin) = &settings.postgres {
        let db = Database {
            admin: admin.clone(),
            name: format!("faultline_bench_{:016x}", rand::random::<u64>()),
        };
        runtime
            .block_on(admin_query(admin, &format!("CREATE DATABASE {}", db.name)))
            .map_err(anyhow::Error::msg)
            .context("the --postgres server must let its user create a database")?;
        let url = with_database(admin, &db.name);
        let settings_text = runtime
            .block_on(durability(admin))
            .map_err(anyhow::Error::msg)?;
        runtime.block_on(measure(
            &format!("PostgreSQL, {settings_text}"),
            &Location::Postgres(url),
            settings.fires,
            &mut out,
        ))?;
        drop(db);
    } else {
        let _ = writeln!(
            out,
            "PostgreSQL: not measured (--postgres URL; `eval \"$(scripts/postgres.sh start)\"` \
             gives one in $FAULTLINE_TEST_POSTGRES)"
        );
    }
    Ok(out)
}

async fn measure(
    label: &str,
    location: &Location,
    fires: usize,
    out: &mut String,
) -> anyhow::Result<()> {
    // The first open creates and migrates; the timed ones find the schema current, as every
    // coordinator restart and `faultline run` does.
    let history = History::open(location).await?;
    let mut opens = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        drop(History::open(location).await?);
        opens.push(t.elapsed());
    }
    let mut leads = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        history
            .try_lead("bench", "bench", Duration::from_secs(10))
            .await?;
        leads.push(t.elapsed());
    }
    let report = format!("{{\"report\":\"{}\"}}", "x".repeat(REPORT_BYTES - 14));
    let base = Timestamp::now();
    let mut round_trips = Vec::new();
    for i in 0..fires {
        let at = base.checked_add(jiff::SignedDuration::from_secs(2 * i as i64))?;
        let t = Instant::now();
        fire_once(&history, at, i, &report).await?;
        round_trips.push(t.elapsed());
    }
    let _ = writeln!(out, "{label} ({location}):");
    let _ = writeln!(out, "  open (schema current)        {}", spread(&mut opens));
    let _ = writeln!(out, "  try_lead                     {}", spread(&mut leads));
    let _ = writeln!(
        out,
        "  one fire's three writes      {}",
        spread(&mut round_trips)
    );
    Ok(())
}

/// What the coordinator writes for one fire that runs one experiment.
async fn fire_once(history: &History, at: Timestamp, i: usize, report: &str) -> anyhow::Result<()> {
    let claimed = history
        .claim_fire(&FireRow {
            schedule: "bench".to_owned(),
            at,
            state: FireState::Fired,
            by: "bench".to_owned(),
            recorded_at: Timestamp::now(),
            jitter: Duration::ZERO,
        })
        .await?;
    anyhow::ensure!(claimed, "slot {at} of the bench was claimed already");
    let run_id = format!("bench-{i:06}");
    history
        .start_run(&RunStart {
            run_id: run_id.clone(),
            schedule: Some("bench".to_owned()),
            fire_at: Some(at),
            title: "bench".to_owned(),
            file: "bench.toml".to_owned(),
            sha256: format!("{i:064x}"),
            seed: i as u64,
            started_at: Timestamp::now(),
            coordinator: Some("bench".to_owned()),
        })
        .await?;
    history
        .finish_run(
            &run_id,
            &RunEnd {
                ended_at: Timestamp::now(),
                verdict: "passed".to_owned(),
                exit_code: 0,
                reason: "every SLO held".to_owned(),
                time_to_recover: Some(Duration::from_millis(1500)),
                time_to_abort: None,
                agents: vec!["local".to_owned()],
                report_json: Some(report.to_owned()),
            },
        )
        .await?;
    Ok(())
}

/// Median (p90, max), sorting `times`.
fn spread(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} (p90 {}, max {})",
        format_ms(at(0.5)),
        format_ms(at(0.9)),
        format_ms(times[times.len() - 1])
    )
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}
