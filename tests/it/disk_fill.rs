//! `disk-fill` on a real tmpfs: reaches its target while held, refuses to pass the guard, and
//! leaves nothing behind on any exit path.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    Tmpfs, free_port, http_server, privileged, run_experiment, spawn_run, tempdir, wait_until,
};

fn fill_experiment(port: u16, path: &std::path::Path, amount: &str, duration: &str) -> String {
    format!(
        r#"
title = "fill"
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "server"
tcp = "127.0.0.1:{port}"
every = "100ms"
[[fault]]
name = "fill"
kind = "disk-fill"
path = {path:?}
{amount}
duration = "{duration}"
[recovery]
within = "2s"
"#,
        path = path.to_str().unwrap()
    )
}

fn fill_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".faultline-fill-"))
        .collect()
}

#[test]
fn fill_to_ninety_percent_is_reached_while_held_and_removed_after() {
    if !privileged("fill_to_ninety_percent_is_reached_while_held_and_removed_after") {
        return;
    }
    let fs = Tmpfs::mount("64m");
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("fill.toml");
    std::fs::write(
        &file,
        fill_experiment(port, &fs.path(), "fill_to = \"90%\"", "2s"),
    )
    .unwrap();
    let mut child = spawn_run(&file, &dir.path().join("state"), &[]);
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        peak = peak.max(fs.usage());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        (0.88..=0.92).contains(&peak),
        "peak usage while held was {peak}"
    );
    assert!(fs.usage() < 0.02, "usage after the run is {}", fs.usage());
    assert!(fill_files(&fs.path()).is_empty(), "fill file left behind");
}

#[test]
fn a_fill_above_the_guard_is_refused_with_the_numbers() {
    if !privileged("a_fill_above_the_guard_is_refused_with_the_numbers") {
        return;
    }
    let fs = Tmpfs::mount("16m");
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let run = run_experiment(
        dir.path(),
        &fill_experiment(port, &fs.path(), "size = \"20MiB\"", "1s"),
        &[],
    );
    assert_eq!(run.code, 5, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("refusing to fill"), "{reason}");
    assert!(reason.contains("above the guard of 98%"), "{reason}");
    assert!(fill_files(&fs.path()).is_empty());
}

#[test]
fn sigterm_mid_fill_reverts_and_reports_an_error() {
    if !privileged("sigterm_mid_fill_reverts_and_reports_an_error") {
        return;
    }
    let fs = Tmpfs::mount("32m");
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("fill.toml");
    let report = dir.path().join("report.json");
    std::fs::write(
        &file,
        fill_experiment(port, &fs.path(), "size = \"8MiB\"", "60s"),
    )
    .unwrap();
    let mut child = spawn_run(
        &file,
        &dir.path().join("state"),
        &["--report-json", report.to_str().unwrap()],
    );
    wait_until("the fill", Duration::from_secs(20), || {
        !fill_files(&fs.path()).is_empty()
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    assert!(
        fill_files(&fs.path()).is_empty(),
        "fill file left behind after SIGTERM"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGTERM"),
        "{}",
        report["reason"]
    );
    assert_eq!(report["faults"][0]["status"], "reverted");
}

#[test]
fn a_fill_left_by_a_killed_run_is_removed_by_the_next_run() {
    if !privileged("a_fill_left_by_a_killed_run_is_removed_by_the_next_run") {
        return;
    }
    let fs = Tmpfs::mount("32m");
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("fill.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &file,
        fill_experiment(port, &fs.path(), "size = \"8MiB\"", "60s"),
    )
    .unwrap();
    let mut child = spawn_run(&file, &state, &[]);
    wait_until("the fill", Duration::from_secs(20), || {
        !fill_files(&fs.path()).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fill_files(&fs.path()).len(),
        1,
        "the fill should survive a SIGKILL of the run"
    );
    let out = crate::support::faultline(
        &["run", file.to_str().unwrap(), "--quiet", "--dry-run"],
        &state,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("reverted a fault left by an earlier crashed run")
    );
    assert!(
        fill_files(&fs.path()).is_empty(),
        "the next run did not remove the fill"
    );
}
