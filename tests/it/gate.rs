//! The regression gate end to end: real `faultline run`s of a server killed under a restart loop
//! whose delay sets the time to recover, judged against the real SQLite history in their state
//! directory. One real fast run is copied in the history (new run id, earlier start, its report's
//! run id rewritten) to make up the earlier runs, so each test does only two real runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rusqlite::Connection;

use crate::support::{BIN, Proc, Run, free_port, run_experiment, tempdir, wait_until};

const TITLE: &str = "gated web kill";

/// A server on `port` restarted `delay` seconds after it dies, killed once; `gate` goes under
/// `[gate]` (empty: no table). Every delay gives the same title but another sha256, as an edit
/// of the file would.
fn experiment(port: u16, delay: &str, gate: &str) -> String {
    let gate = if gate.is_empty() {
        String::new()
    } else {
        format!("[gate]\n{gate}\n")
    };
    format!(
        r#"title = "{TITLE}"
[[setup]]
name = "server under a restart loop"
run = ["sh", "-c", "while :; do python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1; sleep {delay}; done"]
ready = {{ tcp = "127.0.0.1:{port}", within = "10s" }}
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "front page"
http = {{ url = "http://127.0.0.1:{port}/" }}
every = "50ms"
timeout = "500ms"
slo = {{ success = "99%" }}
[[fault]]
name = "kill"
kind = "process-kill"
select = {{ port = {port} }}
[recovery]
within = "8s"
{gate}"#
    )
}

/// Runs `toml` in its own subdirectory of `dir`, recording into the shared `dir/state`.
fn run(dir: &Path, name: &str, toml: &str, extra: &[&str]) -> Run {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let state = dir.join("state");
    let mut args = vec!["--state-dir", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_experiment(&sub, toml, &args)
}

fn run_id(run: &Run) -> String {
    run.report.as_ref().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ttr_ms(run: &Run) -> f64 {
    run.report.as_ref().unwrap()["time_to_recover_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no time to recover: {}", run.explain()))
}

fn reason(run: &Run) -> String {
    run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Adds `copies` copies of the stored run `original`, each started (and ended) one more minute
/// earlier, so the history holds `copies + 1` such runs, all older than any later run.
fn copy_run(dir: &Path, original: &str, copies: u32) {
    let db = Connection::open(dir.join("state/history.db")).expect("open the history");
    for i in 1..=copies {
        let id = format!("{original}-copy{i}");
        let earlier_us = i64::from(i) * 60_000_000;
        let added = db
            .execute(
                "INSERT INTO runs (run_id, schedule, fire_at_us, title, file, sha256, seed,
                     started_at_us, coordinator, ended_at_us, verdict, exit_code, reason,
                     time_to_recover_us, time_to_abort_us, agents, report_json)
                 SELECT ?1, schedule, fire_at_us, title, file, sha256, seed, started_at_us - ?2,
                     coordinator, ended_at_us - ?2, verdict, exit_code, reason,
                     time_to_recover_us, time_to_abort_us, agents, replace(report_json, ?3, ?1)
                 FROM runs WHERE run_id = ?3",
                rusqlite::params![id, earlier_us, original],
            )
            .expect("copy a run");
        assert_eq!(added, 1, "run {original} is not in the history");
    }
}

/// The stored verdict and reason of `run_id`.
fn stored(dir: &Path, run_id: &str) -> (String, String) {
    let db = Connection::open(dir.join("state/history.db")).expect("open the history");
    db.query_row(
        "SELECT verdict, reason FROM runs WHERE run_id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("the run's row")
}

#[test]
fn a_recovery_four_times_slower_than_the_last_ten_passed_runs_fails_the_gate() {
    let dir = tempdir();
    let port = free_port();
    let gate = r#"time_to_recover = "1.5x median of last 10 passed""#;
    let fast = run(dir.path(), "fast", &experiment(port, "0.2", gate), &[]);
    assert_eq!(fast.code, 0, "{}", fast.explain());
    let fast_ms = ttr_ms(&fast);
    // The first run has no history: it passes and says why the gate was not applied.
    assert!(
        reason(&fast)
            .contains("gate not applied: only 0 passed runs in the history, the gate needs 10"),
        "{}",
        reason(&fast)
    );
    copy_run(dir.path(), &run_id(&fast), 9);

    let slow = run(dir.path(), "slow", &experiment(port, "2", gate), &[]);
    assert_eq!(slow.code, 1, "{}", slow.explain());
    assert_eq!(slow.verdict(), "failed");
    let slow_ms = ttr_ms(&slow);
    let reason = reason(&slow);
    // Both numbers, as the reason prints them: seconds with two decimals.
    let expected = format!(
        "time to recover {:.2} s, {:.1}× the median {:.2} s of the last 10 passed runs (gate 1.5×)",
        slow_ms / 1000.0,
        slow_ms / fast_ms,
        fast_ms / 1000.0
    );
    assert!(
        reason.starts_with(&expected),
        "{reason}\nexpected: {expected}"
    );
    assert!(
        slow.stdout.contains("verdict: FAILED (exit 1)"),
        "{}",
        slow.explain()
    );
    // The history keeps the gated verdict, so the next gate does not count this run as passed.
    assert_eq!(
        stored(dir.path(), &run_id(&slow)),
        ("failed".to_owned(), reason.clone())
    );
}

#[test]
fn with_only_three_runs_of_history_the_gate_is_not_applied_and_the_run_passes() {
    let dir = tempdir();
    let port = free_port();
    let fast = run(dir.path(), "fast", &experiment(port, "0.2", ""), &[]);
    assert_eq!(fast.code, 0, "{}", fast.explain());
    copy_run(dir.path(), &run_id(&fast), 2);

    // The rule comes from the command line this time.
    let flag = ["--gate", "time_to_recover=1.5x median of last 10 passed"];
    let slow = run(dir.path(), "slow", &experiment(port, "2", ""), &flag);
    assert_eq!(slow.code, 0, "{}", slow.explain());
    assert_eq!(slow.verdict(), "passed");
    let why = reason(&slow);
    assert!(
        why.ends_with("; gate not applied: only 3 passed runs in the history, the gate needs 10"),
        "{why}"
    );
    assert_eq!(
        stored(dir.path(), &run_id(&slow)),
        ("passed".to_owned(), why.clone())
    );

    // Without a history to compare with, the gate says so and the run stands.
    let unrecorded = run(
        dir.path(),
        "unrecorded",
        &experiment(port, "0.2", ""),
        &[&flag[..], &["--no-history"]].concat(),
    );
    assert_eq!(unrecorded.code, 0, "{}", unrecorded.explain());
    let unrecorded = reason(&unrecorded);
    assert!(
        unrecorded.contains("gate not applied: the run is not recorded (--no-history)"),
        "{unrecorded}"
    );
}

/// A coordinator's run is gated against the same history: a CLI run recovering fast, then the
/// coordinator's slow one, judged before its row ends.
#[test]
fn a_coordinator_run_slower_than_the_history_is_recorded_as_failed() {
    let dir = tempdir();
    let port = free_port();
    let fast = run(dir.path(), "fast", &experiment(port, "0.2", ""), &[]);
    assert_eq!(fast.code, 0, "{}", fast.explain());
    let slow = dir.path().join("slow.toml");
    let gate = r#"time_to_recover = "1.5x median of last 1 passed""#;
    std::fs::write(&slow, experiment(port, "2", gate)).unwrap();
    // The game day's state directory is the CLI runs' one, so both share `state/history.db`.
    let gameday = dir.path().join("gameday.toml");
    std::fs::write(
        &gameday,
        format!(
            r#"[coordinator]
state_dir = "state"
timezone = "UTC"
name = "gate-test"
lease = "2s"

[[schedule]]
name = "every 2s"
experiments = ["{}"]
cron = "*/2 * * * * *"
"#,
            slow.display()
        ),
    )
    .unwrap();
    let mut coordinator = Proc::spawn(&[BIN, "coordinator", gameday.to_str().unwrap()]);
    let db = dir.path().join("state/history.db");
    let ended = || -> Option<(String, String)> {
        let conn = Connection::open(&db).ok()?;
        conn.query_row(
            "SELECT verdict, reason FROM runs WHERE coordinator = 'gate-test' AND verdict IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
    };
    wait_until(
        "the coordinator's run ended",
        Duration::from_secs(30),
        || ended().is_some(),
    );
    let (verdict, why) = ended().unwrap();
    assert_eq!(verdict, "failed", "{why}");
    let fast_s = ttr_ms(&fast) / 1000.0;
    assert!(
        why.starts_with("time to recover ")
            && why.contains(&format!(
                "the median {fast_s:.2} s of the last 1 passed run (gate 1.5×)"
            )),
        "{why}"
    );
    // A clean stop: SIGTERM lets a run in progress finish and revert.
    let status = Command::new("kill")
        .args(["-TERM", &coordinator.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the coordinator stopped", Duration::from_secs(20), || {
        !coordinator.alive()
    });
}
