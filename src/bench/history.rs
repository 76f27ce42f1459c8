//! Owns `faultline bench history`: what the history costs. It runs a minimal experiment with this
//! binary (its wall time, and its JSON report as the realistic report of every synthetic run),
//! fills a temporary SQLite history with N runs, then times the queries `faultline history`
//! makes (in this process and as the real command) and the rows a run writes. A benchmark, not a
//! test: nothing here asserts a speed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::{SignedDuration, Timestamp};

use crate::history::{Filter, History, Location, RunEnd, RunRow, RunStart};
use crate::units::format_ms;

pub(crate) struct Settings {
    pub(crate) runs: usize,
}

/// Distinct experiment titles and schedules among the synthetic runs: a filter by title selects
/// 1 run in 50, by schedule 1 in 40 (every 4th run has one of 10 schedules).
const TITLES: usize = 50;
const SCHEDULES: usize = 10;
/// How many times each timed figure is taken; the median is printed, with the spread.
const REPEATS: usize = 9;

/// A directory removed when dropped, whatever happened.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `sleep` the minimal experiment pauses, killed when dropped.
struct Victim(std::process::Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn run(settings: &Settings) -> anyhow::Result<String> {
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "faultline-bench-history-{}-{}",
        std::process::id(),
        Timestamp::now().as_microsecond()
    )));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("failed to create {}", scratch.0.display()))?;
    let dir = scratch.0.as_path();
    let exe = std::env::current_exe().context("failed to find this binary")?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "faultline bench history — SQLite in {}, {} runs, median of {REPEATS} (min–max)\n",
        dir.display(),
        settings.runs
    );

    // A minimal run: one probe, one 100 ms pause, as `faultline run` runs it.
    let victim = Victim(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .context("failed to start the sleep the minimal experiment pauses")?,
    );
    let experiment = dir.join("minimal.toml");
    std::fs::write(&experiment, minimal_experiment(victim.0.id()))?;
    let report_path = dir.join("report.json");
    let mut with_history = Vec::new();
    let mut without = Vec::new();
    // Alternated, so a drift of the machine's load falls on both alike.
    for i in 0..REPEATS {
        let record = i % 2 == 0;
        let took = minimal_run(
            &exe,
            &experiment,
            &dir.join("run-state"),
            &report_path,
            record,
        )?;
        if record {
            with_history.push(took);
        } else {
            without.push(took);
        }
    }
    let report_json = std::fs::read_to_string(&report_path)?;
    let report = crate::report::json::parse(&report_json)
        .map_err(|e| anyhow::anyhow!("the minimal run's report: {e}"))?;
    let _ = writeln!(
        out,
        "minimal `faultline run` (300 ms baseline, 100 ms pause; a process of its own): {} with its history, {} with --no-history",
        spread(&mut with_history),
        spread(&mut without)
    );
    let _ = writeln!(
        out,
        "its JSON report: {} bytes ({} samples), the size of every synthetic run's report",
        report_json.len(),
        report.samples.len()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let db = dir.join("history.db");
    let end = RunEnd::of_report(&report);
    let fill = Instant::now();
    fill_history(&db, settings.runs, &end)?;
    let filled = fill.elapsed();
    let size = std::fs::metadata(&db).map_or(0, |m| m.len())
        + std::fs::metadata(dir.join("history.db-wal")).map_or(0, |m| m.len());
    let _ = writeln!(
        out,
        "filled {} runs in {} ({} MiB on disk)\n",
        settings.runs,
        format_ms(filled),
        size / (1 << 20)
    );

    runtime.block_on(async {
        let history = History::open(&Location::File(db.clone())).await?;
        let title = format!("experiment {:02}", 7);
        let schedule = format!("schedule {}", 3);
        let queries: [(&str, Filter); 4] = [
            (
                "newest 20 (`history --last 20`)",
                Filter {
                    last: Some(20),
                    ..Filter::default()
                },
            ),
            (
                "newest 20 of one experiment",
                Filter {
                    experiment: Some(title.clone()),
                    last: Some(20),
                    ..Filter::default()
                },
            ),
            (
                "every run of one schedule",
                Filter {
                    schedule: Some(schedule.clone()),
                    ..Filter::default()
                },
            ),
            ("every run (`history` with no filter)", Filter::default()),
        ];
        let _ = writeln!(
            out,
            "queries in this process (History::runs_without_reports, as `history` makes them):"
        );
        for (label, filter) in &queries {
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..REPEATS {
                let t = Instant::now();
                rows = history.runs_without_reports(filter).await?.len();
                times.push(t.elapsed());
            }
            let _ = writeln!(out, "  {label:<40} {rows:>7} rows  {}", spread(&mut times));
        }
        anyhow::Ok(())
    })?;

    let _ = writeln!(
        out,
        "\n`faultline history` as a command (process start included, output to /dev/null):"
    );
    let db_arg = db.to_str().context("the scratch path is not UTF-8")?;
    for (label, args) in [
        ("history --last 20", vec!["--last", "20"]),
        (
            "history --experiment T --last 20",
            vec!["--experiment", "experiment 07", "--last", "20"],
        ),
        ("history --schedule S", vec!["--schedule", "schedule 3"]),
        ("history (every run, table)", vec![]),
        ("history --json (every run)", vec!["--json"]),
    ] {
        let mut times = Vec::new();
        for _ in 0..REPEATS {
            let t = Instant::now();
            let status = Command::new(&exe)
                .arg("history")
                .args(["--db", db_arg])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("faultline {label} failed: {status}");
            }
            times.push(t.elapsed());
        }
        let _ = writeln!(out, "  {label:<40} {}", spread(&mut times));
    }

    // What a run adds: open the history, write its start, write its end with the report.
    let _ = writeln!(
        out,
        "\nwhat `faultline run` spends on its history (open + start_run + finish_run, in this process):"
    );
    let fresh_dir = dir.join("fresh");
    for (label, location) in [
        (
            format!("into the {}-run history", settings.runs),
            Location::File(db.clone()),
        ),
        (
            "into a new history (created, migrated)".to_owned(),
            Location::File(fresh_dir.join("history.db")),
        ),
    ] {
        let mut times = Vec::new();
        for i in 0..REPEATS {
            if label.starts_with("into a new") {
                let _ = std::fs::remove_dir_all(&fresh_dir);
            }
            let t = Instant::now();
            runtime.block_on(write_one(&location, &report, i))?;
            times.push(t.elapsed());
        }
        let median = spread(&mut times);
        let ratio = times[times.len() / 2].as_secs_f64() / median_of(&mut without).as_secs_f64();
        let _ = writeln!(
            out,
            "  {label:<40} {median}  = {:.2}% of the minimal run's wall time",
            ratio * 100.0
        );
    }
    drop(victim);
    Ok(out)
}

fn minimal_experiment(victim: u32) -> String {
    format!(
        r#"title = "bench minimal"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "always"
command = ["true"]
every = "100ms"
[[fault]]
name = "pause"
kind = "process-pause"
select = {{ pid = {victim} }}
duration = "100ms"
[recovery]
within = "5s"
"#
    )
}

fn minimal_run(
    exe: &Path,
    experiment: &Path,
    state: &Path,
    report: &Path,
    record: bool,
) -> anyhow::Result<Duration> {
    let mut command = Command::new(exe);
    command
        .arg("run")
        .arg(experiment)
        .args(["--quiet", "--state-dir"])
        .arg(state)
        .arg("--report-json")
        .arg(report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !record {
        command.arg("--no-history");
    }
    let t = Instant::now();
    let status = command.status()?;
    let took = t.elapsed();
    if !status.success() {
        bail!(
            "the minimal run did not pass: {status} (experiment {})",
            experiment.display()
        );
    }
    Ok(took)
}

/// Synthetic runs a minute apart up to now, in chunks of 1000 per transaction.
fn fill_history(db: &Path, runs: usize, end: &RunEnd) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let verdicts = [
        ("passed", 0),
        ("passed", 0),
        ("passed", 0),
        ("failed", 1),
        ("not_run", 4),
    ];
    let mut chunk = Vec::with_capacity(1000);
    for i in 0..runs {
        let ago = SignedDuration::from_secs(60 * (runs - i) as i64);
        let started_at = now.checked_sub(ago)?;
        let (verdict, exit_code) = verdicts[i % verdicts.len()];
        chunk.push(RunRow {
            start: RunStart {
                run_id: format!("{}-{:06}", started_at.strftime("%Y%m%dT%H%M%SZ"), i),
                schedule: (i % 4 == 0).then(|| format!("schedule {}", (i / 4) % SCHEDULES)),
                fire_at: (i % 4 == 0).then_some(started_at),
                title: format!("experiment {:02}", i % TITLES),
                file: format!("experiments/e{:02}.toml", i % TITLES),
                sha256: format!("{:064x}", i % TITLES),
                seed: i as u64,
                started_at,
                coordinator: (i % 4 == 0).then(|| "bench".to_owned()),
            },
            end: Some(RunEnd {
                ended_at: started_at.checked_add(SignedDuration::from_secs(2))?,
                verdict: verdict.to_owned(),
                exit_code,
                ..end.clone()
            }),
        });
        if chunk.len() == 1000 || i + 1 == runs {
            crate::history::insert_finished_sqlite(db, &chunk)?;
            chunk.clear();
        }
    }
    Ok(())
}

/// What `faultline run` does for its history, rendering the report's JSON included.
async fn write_one(
    location: &Location,
    report: &crate::report::Report,
    i: usize,
) -> anyhow::Result<()> {
    let history = History::open(location).await?;
    let start = RunStart {
        run_id: format!("{}-w{i}", report.run_id),
        schedule: None,
        fire_at: None,
        title: report.title.clone(),
        file: report.file.clone(),
        sha256: report.sha256.clone(),
        seed: report.seed,
        started_at: Timestamp::now(),
        coordinator: None,
    };
    history.start_run(&start).await?;
    history
        .finish_run(&start.run_id, &RunEnd::of_report(report))
        .await?;
    Ok(())
}

fn median_of(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// "median (min–max)"; sorts `times`.
fn spread(times: &mut [Duration]) -> String {
    let median = median_of(times);
    format!(
        "{} ({}–{})",
        format_ms(median),
        format_ms(times[0]),
        format_ms(times[times.len() - 1])
    )
}
