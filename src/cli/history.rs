//! Owns the history on the command line: `faultline history` and `faultline show`, and the
//! `Recorder` through which `faultline run` records its run (a history that fails only warns).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use jiff::tz::TimeZone;
use serde_json::json;
use tabled::settings::Style;
use tabled::{Table, Tabled};

use crate::history::{
    Filter, FireRow, FireState, History, HistoryError, Location, RunEnd, RunRow, RunStart,
};
use crate::model::Experiment;
use crate::report::{self, Report};
use crate::units::format_ms;

/// Where to read a history: a state directory's `history.db`, or a database named outright.
#[derive(Args)]
pub(super) struct Where {
    /// The state directory whose `history.db` to read [default: the one `faultline run` uses:
    /// $FAULTLINE_STATE_DIR, else /var/lib/faultline/embedded for root, else the XDG state
    /// directory].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["db", "gameday"])]
    state_dir: Option<PathBuf>,
    /// A history database: a SQLite file or a `postgres://` URL (a coordinator's `database`).
    #[arg(long, value_name = "URL_OR_PATH", conflicts_with = "gameday")]
    db: Option<String>,
    /// The history of the coordinator that runs this game-day file: its `database`, else the
    /// `history.db` of its `state_dir`.
    #[arg(long, value_name = "FILE")]
    gameday: Option<PathBuf>,
}

impl Where {
    fn location(&self) -> Result<Location, String> {
        if let Some(file) = &self.gameday {
            let day = crate::gameday::load(file).map_err(|e| format!("invalid game day {e}"))?;
            return Ok(match &day.coordinator.database {
                Some(url) => Location::parse(url),
                None => Location::in_state_dir(&day.coordinator.state_dir),
            });
        }
        Ok(match (&self.db, &self.state_dir) {
            (Some(db), _) => Location::parse(db),
            (None, Some(dir)) => Location::in_state_dir(dir),
            (None, None) => Location::in_state_dir(&crate::agent::default_state_dir()),
        })
    }
}

#[derive(Args)]
pub(super) struct HistoryArgs {
    /// Only runs of the experiment with this title.
    #[arg(long, value_name = "TITLE")]
    experiment: Option<String>,
    /// Only runs a coordinator fired for this schedule.
    #[arg(long, value_name = "NAME")]
    schedule: Option<String>,
    /// Only the newest N runs.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Print a JSON array with every stored field of each run (`show --json` prints a report).
    #[arg(long)]
    json: bool,
    /// With --json: each run's full JSON report too, under `report` (for analysis elsewhere).
    #[arg(long, requires = "json")]
    reports: bool,
    /// List a coordinator's schedule slots instead of runs: each fired or skipped slot with its
    /// reason (blackout, window, an alert, halted agents, a conflict…), newest first.
    #[arg(long, conflicts_with = "experiment")]
    fires: bool,
    #[command(flatten)]
    at: Where,
}

#[derive(Args)]
pub(super) struct ShowArgs {
    /// The run id (`faultline history` lists them; a run prints its own at the start).
    run_id: String,
    /// Print the stored JSON report exactly as `run --report-json` wrote it.
    #[arg(long)]
    json: bool,
    /// Write the run's HTML report here, byte for byte as `run --report-html` wrote it.
    #[arg(long, value_name = "PATH", conflicts_with = "json")]
    html: Option<PathBuf>,
    #[command(flatten)]
    at: Where,
}

/// Opens an existing history for reading. A SQLite file that does not exist is not created: a
/// typo in `--state-dir` must not leave an empty database behind.
async fn open_existing(location: &Location) -> Result<Option<History>, String> {
    if let Location::File(path) = location {
        if !tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(None);
        }
    }
    History::open(location)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Opens an existing history and asks it one thing. None: there is no database there. An error
/// is printed here and becomes the exit code.
async fn read<T>(
    location: &Location,
    query: impl AsyncFnOnce(History) -> Result<T, HistoryError>,
) -> Result<Option<T>, ExitCode> {
    let failed = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(super::EXIT_ERROR)
    };
    match open_existing(location).await {
        Ok(Some(history)) => query(history).await.map(Some).map_err(|e| failed(&e)),
        Ok(None) => Ok(None),
        Err(e) => Err(failed(&e)),
    }
}

pub(super) async fn history(args: &HistoryArgs) -> ExitCode {
    let location = match args.at.location() {
        Ok(location) => location,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    if args.fires {
        return fires(args, &location).await;
    }
    let filter = Filter {
        experiment: args.experiment.clone(),
        schedule: args.schedule.clone(),
        last: args.last,
    };
    let rows = match read(&location, async |history| {
        if args.reports {
            history.runs(&filter).await
        } else {
            history.runs_without_reports(&filter).await
        }
    })
    .await
    {
        Ok(Some(rows)) => rows,
        Ok(None) => {
            eprintln!("no runs recorded: {location} does not exist");
            Vec::new()
        }
        Err(code) => return code,
    };
    if args.json {
        print!("{}", runs_json(&rows));
    } else {
        print!("{}", runs_table(&rows, &TimeZone::system()));
    }
    ExitCode::SUCCESS
}

pub(super) async fn show(args: &ShowArgs) -> ExitCode {
    let location = match args.at.location() {
        Ok(location) => location,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    let row = match read(&location, async |history| history.run(&args.run_id).await).await {
        Ok(row) => row.flatten(),
        Err(code) => return code,
    };
    let Some(row) = row else {
        eprintln!("error: no run {} in the history {location}", args.run_id);
        return ExitCode::from(super::EXIT_INVALID);
    };
    let json = match &row.end {
        Some(RunEnd {
            report_json: Some(json),
            ..
        }) => json,
        Some(end) => {
            eprintln!(
                "error: run {} has no stored report: it ended with {} before it made one ({})",
                args.run_id, end.verdict, end.reason
            );
            return ExitCode::from(super::EXIT_INVALID);
        }
        None => {
            eprintln!(
                "error: run {} has no stored report: it started at {} and has not ended (still running, or its process died)",
                args.run_id, row.start.started_at
            );
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    if args.json {
        print!("{json}");
        return ExitCode::SUCCESS;
    }
    match report::json::parse(json) {
        Ok(report) => {
            let Some(path) = &args.html else {
                print!("{}", report::terminal::render(&report));
                return ExitCode::SUCCESS;
            };
            match tokio::fs::write(path, report::html::render(&report)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "error: failed to write the HTML report of run {} to {}: {e}",
                        args.run_id,
                        path.display()
                    );
                    ExitCode::from(super::EXIT_ERROR)
                }
            }
        }
        Err(e) => {
            eprintln!(
                "error: the stored report of run {} cannot be shown: {e}",
                args.run_id
            );
            ExitCode::from(super::EXIT_ERROR)
        }
    }
}

/// `history --fires`: a coordinator's slots, newest first.
async fn fires(args: &HistoryArgs, location: &Location) -> ExitCode {
    let schedule = args.schedule.as_deref();
    let rows = match read(location, async |history| history.fires(schedule).await).await {
        Ok(Some(mut rows)) => {
            rows.reverse();
            rows.truncate(args.last.unwrap_or(usize::MAX));
            rows
        }
        Ok(None) => {
            eprintln!("no fires recorded: {location} does not exist");
            Vec::new()
        }
        Err(code) => return code,
    };
    if args.json {
        print!("{}", fires_json(&rows));
    } else {
        print!("{}", fires_table(&rows, &TimeZone::system()));
    }
    ExitCode::SUCCESS
}

#[derive(Tabled)]
struct FireLine {
    #[tabled(rename = "slot")]
    at: String,
    schedule: String,
    state: String,
    reason: String,
    jitter: String,
    by: String,
}

fn fires_table(rows: &[FireRow], zone: &TimeZone) -> String {
    if rows.is_empty() {
        return "no fires\n".to_owned();
    }
    let lines: Vec<FireLine> = rows
        .iter()
        .map(|row| {
            let (state, reason) = match &row.state {
                FireState::Fired => ("fired", String::new()),
                FireState::Skipped(why) => ("skipped", cut(why, REASON_WIDTH)),
            };
            FireLine {
                at: row
                    .at
                    .to_zoned(zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                schedule: row.schedule.clone(),
                state: state.to_owned(),
                reason,
                jitter: format_ms(row.jitter),
                by: row.by.clone(),
            }
        })
        .collect();
    let mut out = Table::new(lines).with(Style::rounded()).to_string();
    let zone_name = zone.iana_name().unwrap_or("local time");
    let _ = writeln!(out, "\nslot times in {zone_name}, newest first");
    out
}

/// Every stored field of each slot; instants in RFC 3339 UTC, the jitter in milliseconds.
fn fires_json(rows: &[FireRow]) -> String {
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let (state, reason) = match &row.state {
                FireState::Fired => ("fired", None),
                FireState::Skipped(why) => ("skipped", Some(why)),
            };
            json!({
                "schedule": row.schedule,
                "at": row.at.to_string(),
                "state": state,
                "reason": reason,
                "jitter_ms": report::millis(row.jitter),
                "by": row.by,
                "recorded_at": row.recorded_at.to_string(),
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

#[derive(Tabled)]
struct Line {
    #[tabled(rename = "when")]
    when: String,
    experiment: String,
    schedule: String,
    verdict: String,
    #[tabled(rename = "time to recover")]
    recover: String,
    reason: String,
    run: String,
}

/// Reasons are sentences with numbers; the table shows their start and `show` the rest.
const REASON_WIDTH: usize = 60;

fn runs_table(rows: &[RunRow], zone: &TimeZone) -> String {
    let zone_name = zone.iana_name().unwrap_or("local time");
    if rows.is_empty() {
        return "no runs\n".to_owned();
    }
    let lines: Vec<Line> = rows
        .iter()
        .map(|row| {
            let end = row.end.as_ref();
            Line {
                when: row
                    .start
                    .started_at
                    .to_zoned(zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                experiment: row.start.title.clone(),
                schedule: row.start.schedule.clone().unwrap_or_else(|| "-".to_owned()),
                verdict: end.map_or_else(|| "(no end)".to_owned(), |e| e.verdict.clone()),
                recover: end
                    .and_then(|e| e.time_to_recover)
                    .map_or_else(|| "-".to_owned(), format_ms),
                reason: end.map_or_else(String::new, |e| cut(&e.reason, REASON_WIDTH)),
                run: row.start.run_id.clone(),
            }
        })
        .collect();
    let mut out = Table::new(lines).with(Style::rounded()).to_string();
    let _ = writeln!(out, "\ntimes in {zone_name}, newest first");
    out
}

/// The first `width` characters of `text` on one line, with `…` when cut.
fn cut(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        return flat;
    }
    let mut out: String = flat.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Every stored field but the report, one object per run; instants in RFC 3339 UTC and durations
/// in milliseconds, like the JSON report.
fn runs_json(rows: &[RunRow]) -> String {
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let (s, e) = (&row.start, row.end.as_ref());
            let mut object = json!({
                "run_id": s.run_id,
                "schedule": s.schedule,
                "fire_at": s.fire_at.map(|t| t.to_string()),
                "experiment": { "title": s.title, "file": s.file, "sha256": s.sha256 },
                "seed": s.seed,
                "coordinator": s.coordinator,
                "started_at": s.started_at.to_string(),
                "ended_at": e.map(|e| e.ended_at.to_string()),
                "verdict": e.map(|e| &e.verdict),
                "exit_code": e.map(|e| e.exit_code),
                "reason": e.map(|e| &e.reason),
                "time_to_recover_ms": e.and_then(|e| e.time_to_recover).map(report::millis),
                "time_to_abort_ms": e.and_then(|e| e.time_to_abort).map(report::millis),
                "agents": e.map(|e| &e.agents),
            });
            // Only `--reports` reads them; the report is JSON itself, so it is embedded as such.
            if let Some(text) = e.and_then(|e| e.report_json.as_deref()) {
                let report = serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
                object["report"] = report;
            }
            object
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// Records one `faultline run` in its state directory's history. The history never changes a
/// run's verdict or exit code: when it cannot be opened or written, a warning names the file and
/// the error, and the run goes on unrecorded.
pub(super) struct Recorder {
    open: Option<(History, String)>,
}

impl Recorder {
    /// Writes the run's start, before the run touches anything. `None` (`--no-history`) records
    /// nothing.
    pub(super) async fn start(
        state_dir: Option<&Path>,
        exp: &Experiment,
        run_id: &str,
        seed: u64,
    ) -> Recorder {
        let Some(dir) = state_dir else {
            return Recorder { open: None };
        };
        let location = Location::in_state_dir(dir);
        let started = async {
            let history = History::open(&location).await?;
            history
                .start_run(&RunStart::of_experiment(exp, run_id, seed))
                .await?;
            Ok::<_, crate::history::HistoryError>(history)
        };
        match started.await {
            Ok(history) => Recorder {
                open: Some((history, run_id.to_owned())),
            },
            Err(e) => {
                warn(&e.to_string());
                Recorder { open: None }
            }
        }
    }

    /// Writes how the run ended, with its report.
    pub(super) async fn finish(self, report: &Report) {
        self.end(&RunEnd::of_report(report)).await;
    }

    async fn end(self, end: &RunEnd) {
        if let Some((history, run_id)) = self.open {
            if let Err(e) = history.finish_run(&run_id, end).await {
                warn(&e.to_string());
            }
        }
    }
}

/// `error` names the database already (every `HistoryError` does).
fn warn(error: &str) {
    eprintln!(
        "warning: this run is not recorded ({error}); its verdict and exit code are unaffected (--no-history skips the history)"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::tz::TimeZone;

    use super::{cut, fires_table, runs_json, runs_table};
    use crate::history::{FireRow, FireState, RunEnd, RunRow, RunStart};

    fn rows() -> Vec<RunRow> {
        let start = RunStart {
            run_id: "20270328T003000Z-00ff".to_owned(),
            schedule: Some("nightly".to_owned()),
            fire_at: Some("2027-03-28T00:30:00Z".parse().unwrap()),
            title: "web survives a kill".to_owned(),
            file: "experiments/quickstart.toml".to_owned(),
            sha256: "ab".repeat(32),
            seed: 18_446_744_073_709_551_615,
            started_at: "2027-03-28T00:30:01.5Z".parse().unwrap(),
            coordinator: Some("c1".to_owned()),
        };
        let end = RunEnd {
            ended_at: "2027-03-28T00:30:09Z".parse().unwrap(),
            verdict: "failed".to_owned(),
            exit_code: 1,
            reason: "probe `web` met its SLO before the faults but not after them: success 80% (needed at least 99%), status 503 in 17 samples".to_owned(),
            time_to_recover: Some(Duration::from_micros(674_620)),
            time_to_abort: None,
            agents: vec!["local".to_owned()],
            report_json: Some("{}".to_owned()),
        };
        let running = RunStart {
            run_id: "20270328T013000Z-0001".to_owned(),
            schedule: None,
            fire_at: None,
            coordinator: None,
            started_at: "2027-03-28T01:30:00Z".parse().unwrap(),
            ..start.clone()
        };
        vec![
            RunRow {
                start: running,
                end: None,
            },
            RunRow {
                start,
                end: Some(end),
            },
        ]
    }

    #[test]
    fn the_history_table_shows_local_times_and_cuts_reasons() {
        let zone = TimeZone::get("Europe/Berlin").unwrap();
        let expected = "\
╭─────────────────────┬─────────────────────┬──────────┬──────────┬─────────────────┬──────────────────────────────────────────────────────────────┬───────────────────────╮
│ when                │ experiment          │ schedule │ verdict  │ time to recover │ reason                                                       │ run                   │
├─────────────────────┼─────────────────────┼──────────┼──────────┼─────────────────┼──────────────────────────────────────────────────────────────┼───────────────────────┤
│ 2027-03-28 03:30:00 │ web survives a kill │ -        │ (no end) │ -               │                                                              │ 20270328T013000Z-0001 │
│ 2027-03-28 01:30:01 │ web survives a kill │ nightly  │ failed   │ 675 ms          │ probe `web` met its SLO before the faults but not after the… │ 20270328T003000Z-00ff │
╰─────────────────────┴─────────────────────┴──────────┴──────────┴─────────────────┴──────────────────────────────────────────────────────────────┴───────────────────────╯
times in Europe/Berlin, newest first
";
        assert_eq!(runs_table(&rows(), &zone), expected);
        assert_eq!(runs_table(&[], &zone), "no runs\n");
    }

    #[test]
    fn the_fires_table_shows_each_slot_with_its_state_reason_and_jitter() {
        let zone = TimeZone::get("Europe/Berlin").unwrap();
        let at: jiff::Timestamp = "2027-03-28T00:30:00Z".parse().unwrap();
        let rows = [
            FireRow {
                schedule: "nightly".to_owned(),
                at,
                state: FireState::Skipped("blackout `year-end freeze`".to_owned()),
                by: "c1".to_owned(),
                recorded_at: at,
                jitter: Duration::ZERO,
            },
            FireRow {
                schedule: "nightly".to_owned(),
                at: at - jiff::SignedDuration::from_hours(24),
                state: FireState::Fired,
                by: "c1".to_owned(),
                recorded_at: at,
                jitter: Duration::from_millis(1500),
            },
        ];
        let table = fires_table(&rows, &zone);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].contains("slot") && lines[1].contains("reason"),
            "{table}"
        );
        assert!(
            lines[3].contains("2027-03-28 01:30:00")
                && lines[3].contains("skipped")
                && lines[3].contains("blackout `year-end freeze`"),
            "{table}"
        );
        assert!(
            lines[4].contains("2027-03-27 01:30:00")
                && lines[4].contains("fired")
                && lines[4].contains("1.5 s"),
            "{table}"
        );
        assert!(
            table.ends_with("slot times in Europe/Berlin, newest first\n"),
            "{table}"
        );
        assert_eq!(fires_table(&[], &zone), "no fires\n");
    }

    #[test]
    fn the_history_json_has_every_stored_field_but_the_report() {
        // As `runs_without_reports` reads them: `history --json` without `--reports`.
        let mut rows = rows();
        for row in &mut rows {
            if let Some(end) = &mut row.end {
                end.report_json = None;
            }
        }
        let value: serde_json::Value = serde_json::from_str(&runs_json(&rows)).unwrap();
        let expected = serde_json::json!([
            {
                "run_id": "20270328T013000Z-0001", "schedule": null, "fire_at": null,
                "experiment": { "title": "web survives a kill", "file": "experiments/quickstart.toml", "sha256": "ab".repeat(32) },
                "seed": 18_446_744_073_709_551_615_u64, "coordinator": null,
                "started_at": "2027-03-28T01:30:00Z", "ended_at": null, "verdict": null,
                "exit_code": null, "reason": null, "time_to_recover_ms": null,
                "time_to_abort_ms": null, "agents": null
            },
            {
                "run_id": "20270328T003000Z-00ff", "schedule": "nightly", "fire_at": "2027-03-28T00:30:00Z",
                "experiment": { "title": "web survives a kill", "file": "experiments/quickstart.toml", "sha256": "ab".repeat(32) },
                "seed": 18_446_744_073_709_551_615_u64, "coordinator": "c1",
                "started_at": "2027-03-28T00:30:01.5Z", "ended_at": "2027-03-28T00:30:09Z",
                "verdict": "failed", "exit_code": 1,
                "reason": "probe `web` met its SLO before the faults but not after them: success 80% (needed at least 99%), status 503 in 17 samples",
                "time_to_recover_ms": 674.62, "time_to_abort_ms": null, "agents": ["local"]
            }
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn history_json_with_reports_embeds_each_stored_report_as_json() {
        let mut rows = rows();
        rows[1].end.as_mut().unwrap().report_json = Some(r#"{"schema_version": 1}"#.to_owned());
        let value: serde_json::Value = serde_json::from_str(&runs_json(&rows)).unwrap();
        assert_eq!(
            value[1]["report"],
            serde_json::json!({ "schema_version": 1 })
        );
        assert!(
            value[0].get("report").is_none(),
            "a run without a report has no `report`"
        );
    }

    #[test]
    fn cut_reasons_stay_on_one_line() {
        assert_eq!(cut("a\nb", 10), "a b");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abcd", 4), "abcd");
    }
}
