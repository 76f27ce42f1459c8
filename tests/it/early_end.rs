//! Faults that end before their planned end without the run asking — an agent restarted
//! mid-fault, a run stopped (SIGSTOP) past its lease — are reported as ended early, with when and
//! why, and the run's verdict is `error`, never `passed`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::agent::{TlsAgent, spawn_logged};
use crate::support::{self, BIN, Proc, ProcState, poll_until, state_of, wait_until};

/// Starts `faultline run EXP ARGS... --report-json DIR/report.json` in the background with its
/// state in `DIR/STATE` and its output in `DIR/run.log`; killed on drop.
fn start_run(dir: &Path, exp: &Path, args: &[&str], state: &str) -> Proc {
    let report = dir.join("report.json");
    let mut argv = vec![BIN, "run", exp.to_str().unwrap()];
    argv.extend_from_slice(args);
    argv.extend(["--report-json", report.to_str().unwrap()]);
    spawn_logged(&argv, Some(&dir.join(state)), &dir.join("run.log"))
}

/// Waits for the run to exit and returns its exit code and JSON report.
fn finish(run: &mut Proc, report: &Path, log: &Path) -> (i32, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (
        status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap(),
    )
}

fn pause_experiment(targets: &str, on: &str, victim: u32, duration: &str) -> String {
    let fault = format!(
        r#"[[fault]]
name = "pause"
kind = "process-pause"
{on}
select = {{ pid = {victim} }}
duration = "{duration}""#
    );
    support::always_steady_experiment("early end", targets, &fault)
}

#[test]
fn an_agent_restarted_mid_fault_makes_the_run_an_error_naming_the_fault_and_agent() {
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(dir.path());
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"a1\"\naddress = \"https://{}\"\ntags = {{ role = \"web\" }}\n",
            agent.certs.ca().display(),
            agent.certs.file("token").display(),
            agent.listen,
        ),
    )
    .unwrap();
    let victim = Proc::spawn(&["sleep", "300"]);
    let exp = dir.path().join("pause.toml");
    std::fs::write(
        &exp,
        pause_experiment(
            "[targets.web]\ntags = { role = \"web\" }",
            "on = \"web\"",
            victim.pid(),
            "30s",
        ),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let run_log = dir.path().join("run.log");
    let mut run = start_run(
        dir.path(),
        &exp,
        &["--agents", inventory.to_str().unwrap(), "--lease", "2s"],
        "run-state",
    );
    wait_for_injection(&run_log, victim.pid());

    // The agent dies and comes back: its start reverts the journal, so the pause ends ~25 s early.
    agent.restart();
    assert_ne!(
        state_of(victim.pid()),
        ProcState::Stopped,
        "the restarted agent did not revert its journal"
    );

    let (code, report) = finish(&mut run, &report, &run_log);
    assert_eq!(code, 5, "{report:#}");
    assert_eq!(report["verdict"], "error");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("fault `pause` on a1 ended early: a1 reverted it on its own at ")
            && reason.contains("because the agent recovered it from its journal"),
        "{reason}"
    );
    let fault = &report["faults"][0];
    assert_eq!(fault["status"], "ended_early", "{fault:#}");
    assert!(fault["reverted_at"].is_string(), "{fault:#}");
    assert!(
        fault["detail"]
            .as_str()
            .unwrap()
            .contains("ENDED EARLY: a1 reverted it on its own"),
        "{fault:#}"
    );
    // The run stopped at once instead of waiting out the 30 s it planned.
    let injected: jiff::Timestamp = fault["injected_at"].as_str().unwrap().parse().unwrap();
    let ended: jiff::Timestamp = report["ended_at"].as_str().unwrap().parse().unwrap();
    assert!(
        ended.duration_since(injected) < jiff::SignedDuration::from_secs(20),
        "{report:#}"
    );
}

/// Waits until the run has injected and verified its pause: stopping the run in the middle of the
/// agent's verification would make the injection, not the fault, what fails.
fn wait_for_injection(run_log: &Path, victim: u32) {
    wait_until("the pause being injected", Duration::from_secs(20), || {
        std::fs::read_to_string(run_log).is_ok_and(|log| log.contains("injected `pause`"))
    });
    assert_eq!(
        state_of(victim),
        ProcState::Stopped,
        "the victim is not stopped"
    );
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

#[test]
fn a_stopped_run_has_its_pause_reverted_by_the_watchdog_within_the_lease_and_ends_in_error() {
    let dir = support::tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let exp = dir.path().join("pause.toml");
    std::fs::write(&exp, pause_experiment("", "", victim.pid(), "3s")).unwrap();
    let report = dir.path().join("report.json");
    let run_log = dir.path().join("run.log");
    let lease = Duration::from_secs(1);
    // The watchdog is on, as users run it.
    let mut run = start_run(dir.path(), &exp, &["--lease", "1s"], "state");
    wait_for_injection(&run_log, victim.pid());
    signal(run.child.id(), "-STOP");
    let stopped_at = Instant::now();
    let stopped_for = Duration::from_secs(6);
    let resumed = until_running(victim.pid(), stopped_for).map(|_| stopped_at.elapsed());
    // The run stays stopped for the whole 6 s either way, as a stalled run would.
    std::thread::sleep(stopped_for.saturating_sub(stopped_at.elapsed()));
    signal(run.child.id(), "-CONT");
    eprintln!("run SIGSTOP -> victim running again: {resumed:?} (lease {lease:?})");
    assert!(
        resumed.is_some_and(|d| d <= lease + Duration::from_millis(1500)),
        "the victim stayed stopped while the run was stopped: {resumed:?}; {}",
        std::fs::read_to_string(&run_log).unwrap_or_default()
    );

    let (code, report) = finish(&mut run, &report, &run_log);
    assert_eq!(code, 5, "{report:#}");
    assert_eq!(report["verdict"], "error");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("fault `pause` on local ended early: the run was stopped or stalled for "),
        "{reason}"
    );
    assert_eq!(report["faults"][0]["status"], "ended_early");
    assert_ne!(state_of(victim.pid()), ProcState::Stopped);
}

#[test]
fn a_stopped_run_with_a_long_lease_has_its_pause_reverted_at_the_journaled_deadline() {
    let dir = support::tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    let exp = dir.path().join("pause.toml");
    std::fs::write(&exp, pause_experiment("", "", victim.pid(), "2s")).unwrap();
    let report = dir.path().join("report.json");
    let run_log = dir.path().join("run.log");
    // A lease far longer than the fault: only the deadline in the journal can end it in time.
    let mut run = start_run(dir.path(), &exp, &["--lease", "60s"], "state");
    wait_for_injection(&run_log, victim.pid());
    signal(run.child.id(), "-STOP");
    let resumed = until_running(victim.pid(), Duration::from_secs(8));
    signal(run.child.id(), "-CONT");
    eprintln!("2 s pause, its run stopped -> victim running again {resumed:?} after the SIGSTOP");
    assert!(
        resumed.is_some(),
        "the victim stayed stopped past its deadline while the run was stopped; {}",
        std::fs::read_to_string(&run_log).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(&run_log)
            .unwrap_or_default()
            .contains("past its deadline"),
        "the watchdog did not say why it reverted: {}",
        std::fs::read_to_string(&run_log).unwrap_or_default()
    );
    let (code, report) = finish(&mut run, &report, &run_log);
    // The pause held for its whole duration, so nothing ended early.
    assert_eq!(report["faults"][0]["status"], "reverted", "{report:#}");
    assert_eq!(code, 0, "{report:#}");
}

/// Polls until `pid` is awake again; returns how long that took, or `None` after `within`.
fn until_running(pid: u32, within: Duration) -> Option<Duration> {
    poll_until(within, || state_of(pid) == ProcState::Awake)
}
