//! The history of runs end to end: real `faultline run`s write `history.db` (a real SQLite file)
//! in their state directory, and `faultline history` / `show` read it back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{self, BIN, Proc, tempdir};

/// An always-steady experiment titled `title` that pauses `victim` for 300 ms.
fn pause(title: &str, victim: u32) -> String {
    support::always_steady_experiment(
        title,
        "",
        &format!(
            "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {victim} }}\nduration = \"300ms\""
        ),
    )
}

/// `faultline ARGS` reading the history of `state`; panics unless it exits 0.
fn faultline_ok(args: &[&str], state: &Path) -> String {
    let out = faultline(args, state);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn faultline(args: &[&str], state: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output()
        .expect("run faultline")
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn history_json(state: &Path, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["history", "--json"];
    args.extend_from_slice(filter);
    let text = faultline_ok(&args, state);
    match serde_json::from_str(&text).expect("history --json is JSON") {
        Value::Array(list) => list,
        other => panic!("history --json is not an array: {other}"),
    }
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter().map(|r| r["run_id"].as_str().unwrap()).collect()
}

/// Runs `toml` (written into `dir/name`) with `--report-json` and the state directory
/// `dir/state`, returning the run and the report's text.
fn run(dir: &Path, name: &str, toml: &str, extra: &[&str]) -> (support::Run, String) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let state = state(dir);
    let mut args = vec!["--state-dir", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = support::run_experiment(&sub, toml, &args);
    let report = std::fs::read_to_string(sub.join("report.json")).unwrap_or_default();
    (run, report)
}

/// A `faultline` process killed when dropped, so a failing test leaves none behind.
struct Running(Option<std::process::Child>);

impl Running {
    fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn state(dir: &Path) -> PathBuf {
    dir.join("state")
}

#[test]
fn runs_are_listed_newest_first_with_verdict_recovery_sha256_and_seed_and_filters_work() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let (first, _) = run(
        dir.path(),
        "a",
        &pause("web", victim.pid()),
        &["--seed", "7"],
    );
    assert_eq!(first.code, 0, "{}", first.explain());
    let (second, second_json) = run(
        dir.path(),
        "b",
        &pause("web", victim.pid()),
        &["--seed", "18446744073709551615"],
    );
    assert_eq!(second.code, 0, "{}", second.explain());
    let (other, _) = run(dir.path(), "c", &pause("db", victim.pid()), &[]);
    assert_eq!(other.code, 0, "{}", other.explain());
    let second_stdout = second.stdout.clone();
    let report = |r: &support::Run| r.report.clone().expect("a report");
    let (first, second, other) = (report(&first), report(&second), report(&other));

    let all = history_json(&state(dir.path()), &[]);
    assert_eq!(
        ids(&all),
        [&other["run_id"], &second["run_id"], &first["run_id"]].map(|v| v.as_str().unwrap())
    );
    for (row, report) in all.iter().zip([&other, &second, &first]) {
        assert_eq!(row["verdict"], "passed", "{row}");
        assert_eq!(row["exit_code"], 0, "{row}");
        assert_eq!(row["seed"], report["seed"], "{row}");
        assert_eq!(row["experiment"], report["experiment"], "{row}");
        assert_eq!(row["reason"], report["reason"], "{row}");
        assert_eq!(
            row["time_to_recover_ms"], report["time_to_recover_ms"],
            "{row}"
        );
        assert!(row["time_to_recover_ms"].is_f64(), "{row}");
        assert_eq!(row["agents"], serde_json::json!(["local"]), "{row}");
        assert_eq!(row["schedule"], Value::Null, "{row}");
    }
    assert_eq!(all[1]["seed"].as_u64(), Some(u64::MAX));
    assert_eq!(all[1]["experiment"]["sha256"].as_str().unwrap().len(), 64);

    let web = history_json(&state(dir.path()), &["--experiment", "web"]);
    assert_eq!(ids(&web), ids(&all[1..]));
    let newest_web = history_json(&state(dir.path()), &["--experiment", "web", "--last", "1"]);
    assert_eq!(ids(&newest_web), ids(&all[1..2]));
    assert!(history_json(&state(dir.path()), &["--schedule", "nightly"]).is_empty());

    // `--db` names the file itself.
    let db = state(dir.path()).join("history.db");
    let out = Command::new(BIN)
        .args(["history", "--json", "--last", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let by_db: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&by_db), ids(&all[..1]));

    let table = faultline_ok(&["history", "--last", "2"], &state(dir.path()));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[1].contains("when") && lines[1].contains("time to recover"),
        "{table}"
    );
    assert!(
        lines[3].contains("│ db ") && lines[3].contains("│ passed "),
        "{table}"
    );
    assert!(
        lines[4].contains("│ web ") && lines[4].contains("│ passed "),
        "{table}"
    );
    assert_eq!(lines.len(), 7, "two runs, newest first:\n{table}");

    // `show` prints what the run printed at its end (progress lines go to stderr), and `--json`
    // the very report the run wrote.
    let id = all[1]["run_id"].as_str().unwrap();
    assert_eq!(
        faultline_ok(&["show", id], &state(dir.path())),
        second_stdout
    );
    assert_eq!(
        faultline_ok(&["show", id, "--json"], &state(dir.path())),
        second_json
    );
}

#[test]
fn show_of_an_unknown_run_exits_2_naming_it() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let (ran, _) = run(dir.path(), "a", &pause("web", victim.pid()), &[]);
    assert_eq!(ran.code, 0, "{}", ran.explain());
    let out = faultline(&["show", "20200101T000000Z-dead"], &state(dir.path()));
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let db = state(dir.path()).join("history.db");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: no run 20200101T000000Z-dead in the history {}\n",
            db.display()
        )
    );
}

#[test]
fn a_run_with_no_history_writes_none() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let (ran, _) = run(
        dir.path(),
        "a",
        &pause("web", victim.pid()),
        &["--no-history"],
    );
    assert_eq!(ran.code, 0, "{}", ran.explain());
    let db = state(dir.path()).join("history.db");
    assert!(!db.exists(), "{} was written", db.display());
    // Reading a history that does not exist creates nothing either, and says so.
    assert!(history_json(&state(dir.path()), &[]).is_empty());
    let out = faultline(&["history"], &state(dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no runs\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("no runs recorded: {} does not exist\n", db.display())
    );
    assert!(!db.exists(), "`history` created {}", db.display());
}

#[test]
fn failed_and_not_run_verdicts_are_recorded() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let bystander = Proc::spawn(&["sleep", "300"]);
    // The probe holds while the victim runs or sleeps; killed, it is a zombie (or gone), which
    // fails the run.
    let killed = format!(
        r#"title = "nobody restarts it"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "victim alive"
command = ["grep", "-q", "^State:[[:space:]]*[RS]", "/proc/{pid}/status"]
every = "100ms"
[[fault]]
name = "kill"
kind = "process-kill"
select = {{ pid = {pid} }}
[recovery]
within = "1s"
"#,
        pid = victim.pid()
    );
    let (failed, _) = run(dir.path(), "a", &killed, &[]);
    assert_eq!(failed.code, 1, "{}", failed.explain());
    // The steady state never holds: nothing is injected.
    let never = support::always_steady_experiment(
        "never steady",
        "",
        &format!(
            "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {} }}\nduration = \"300ms\"",
            bystander.pid()
        ),
    )
    .replace("command = [\"true\"]", "command = [\"false\"]");
    let (not_run, _) = run(dir.path(), "b", &never, &[]);
    assert_eq!(not_run.code, 4, "{}", not_run.explain());

    let all = history_json(&state(dir.path()), &[]);
    let summary: Vec<(&str, &str, i64)> = all
        .iter()
        .map(|r| {
            (
                r["experiment"]["title"].as_str().unwrap(),
                r["verdict"].as_str().unwrap(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("never steady", "not_run", 4),
            ("nobody restarts it", "failed", 1)
        ]
    );
    assert_eq!(
        all[0]["agents"],
        serde_json::json!([]),
        "nothing was injected"
    );
    assert_eq!(all[1]["reason"], failed.report.as_ref().unwrap()["reason"]);
    assert_eq!(all[1]["time_to_recover_ms"], Value::Null);
}

#[test]
fn runs_writing_one_history_at_once_are_all_recorded_while_it_is_read() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, pause("dry", victim.pid())).unwrap();
    let state = state(dir.path());
    // Dry runs journal nothing, so four can share one state directory; they create the database
    // together and write their starts and ends at the same moments.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(BIN)
                .args(["run", file.to_str().unwrap(), "--quiet", "--dry-run"])
                .arg("--state-dir")
                .arg(&state)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(|c| Running(Some(c)))
                .unwrap()
        })
        .collect();
    // Read while they write (the file may not exist yet at first).
    let mut reads = 0;
    while reads < 20 {
        let out = faultline(&["history", "--json"], &state);
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        reads += 1;
    }
    for run in runs {
        let out = run.wait();
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("warning"), "{stderr}");
    }
    let all = history_json(&state, &[]);
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().all(|r| r["verdict"] == "not_run"), "{all:?}");
}

#[test]
fn a_history_that_cannot_be_written_only_warns_and_keeps_the_verdict() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    // A directory where the database file should be: SQLite cannot open it.
    let db = state(dir.path()).join("history.db");
    std::fs::create_dir_all(&db).unwrap();
    let (ran, _) = run(dir.path(), "a", &pause("web", victim.pid()), &[]);
    assert_eq!(ran.code, 0, "{}", ran.explain());
    assert_eq!(ran.verdict(), "passed");
    let warning = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning:\n{}", ran.explain()));
    let expected = format!(
        "warning: this run is not recorded (history {}: failed to create the file: Is a directory (os error 21)); its verdict and exit code are unaffected (--no-history skips the history)",
        db.display()
    );
    assert_eq!(warning, expected);
}

#[test]
fn a_run_that_fails_before_its_report_is_recorded_as_an_error() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    // A journal entry nobody can read: the session refuses to start over it.
    let state = state(dir.path());
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("left-0.json"), "not a journal entry").unwrap();
    let (ran, _) = run(dir.path(), "a", &pause("web", victim.pid()), &[]);
    assert_eq!(ran.code, 5, "{}", ran.explain());
    let all = history_json(&state, &[]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["verdict"], "error");
    assert_eq!(all[0]["exit_code"], 5);
    let reason = all[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("faults left by an earlier crashed run could not be reverted"),
        "{reason}"
    );
    assert!(
        ran.stderr.contains(reason),
        "the recorded reason is the error the run printed: {}",
        ran.explain()
    );
    // The run still made its report (nothing measured, nothing injected), and `show` prints it.
    let id = all[0]["run_id"].as_str().unwrap();
    let out = faultline(&["show", id], &state);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.ends_with(&format!("verdict: ERROR (exit 5) — {reason}\n")),
        "{}",
        explain(&out)
    );
}

#[test]
fn a_run_killed_mid_fault_is_ended_as_error_by_its_watchdog() {
    // The run's own end never comes (SIGKILL): its watchdog reverts the pause and ends the row, so
    // the history explains the run instead of showing it without an end for ever.
    let dir = tempdir();
    let state = dir.path().join("state");
    let victim = Proc::spawn(&["sleep", "60"]);
    let file = dir.path().join("pause.toml");
    std::fs::write(
        &file,
        support::always_steady_experiment(
            "killed mid-pause",
            "",
            &format!(
                "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {} }}\nduration = \"30s\"",
                victim.pid()
            ),
        ),
    )
    .unwrap();
    let mut run = support::spawn_run_with_watchdog(&file, &state, &[]);
    support::wait_until(
        "the victim paused",
        std::time::Duration::from_secs(20),
        || support::state_of(victim.pid()) == support::ProcState::Stopped,
    );
    run.kill().unwrap();
    run.wait().unwrap();
    support::wait_until(
        "the watchdog ended the run",
        std::time::Duration::from_secs(10),
        || {
            history_json(&state, &[])
                .first()
                .is_some_and(|row| !row["verdict"].is_null())
        },
    );
    assert_eq!(support::state_of(victim.pid()), support::ProcState::Awake);
    let rows = history_json(&state, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["verdict"], "error");
    assert_eq!(rows[0]["exit_code"], 5);
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "the run's process stopped during the run (killed or crashed); the watchdog reverted its faults: "
        ) && reason.contains("pause"),
        "{reason}"
    );
}
