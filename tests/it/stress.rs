//! `cpu-stress` and `memory-stress`: real worker processes while held, none after — also when the
//! run is SIGKILLed, since workers leave when their parent does. Workers are recognised by their
//! command line (binary, subcommand, agent pid and fault id), never by their parent pid, which
//! changes to a reaper's the moment their run is gone.

use std::time::{Duration, Instant};

use crate::support::{free_port, http_server, run_experiment, spawn_run, tempdir};

fn stress_experiment(port: u16, kind_and_keys: &str, duration: &str) -> String {
    format!(
        r#"
title = "stress"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "server"
tcp = "127.0.0.1:{port}"
every = "100ms"
[[fault]]
name = "stress"
{kind_and_keys}
duration = "{duration}"
[recovery]
within = "2s"
"#
    )
}

/// Which stress workers to look for. Workers are found by what they are — this binary running
/// `stress-worker`, tagged with the fault id and the agent's pid on its command line — and not by
/// their parent: a worker orphaned by its run is re-parented, and must still be found.
#[derive(Clone, Copy)]
enum Tag<'a> {
    /// Started by the agent in this process (`--parent PID`), the run's embedded agent.
    Agent(u32),
    /// Started for a fault of this run (`--fault-id=RUN_ID-...`).
    Run(&'a str),
}

/// Pids and resident bytes of the live (not zombie) stress workers with this tag.
fn workers(tag: Tag<'_>) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let argv: Vec<&str> = cmdline.split('\0').collect();
        let value = |flag: &str| {
            argv.iter()
                .position(|a| *a == flag)
                .and_then(|i| argv.get(i + 1).copied())
        };
        let tagged = match tag {
            Tag::Agent(pid) => value("--parent") == Some(pid.to_string().as_str()),
            Tag::Run(run_id) => argv.iter().any(|a| {
                a.strip_prefix("--fault-id=")
                    .is_some_and(|id| id.starts_with(&format!("{run_id}-")))
            }),
        };
        if argv.get(1) != Some(&"stress-worker") || !tagged || !alive(pid) {
            continue;
        }
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        let rss = statm
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * 4096;
        found.push((pid, rss));
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// Kills, on drop, every stress worker the run with this pid started, so a failing test leaves no
/// load behind.
struct KillWorkers(u32);

impl Drop for KillWorkers {
    fn drop(&mut self) {
        for (pid, _) in workers(Tag::Agent(self.0)) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Starts a run, watches its workers until it ends, returns (most workers seen, most bytes held).
/// Fails if a worker is still running when the run has ended, or in the run's last moments (the
/// fault was reverted before the recovery phase, so none may be left by then).
fn watch_run(file: &std::path::Path, dir: &std::path::Path) -> (usize, u64, Option<i32>) {
    let report = dir.join("report.json");
    let mut child = spawn_run(
        file,
        &dir.join("state"),
        &["--report-json", report.to_str().unwrap()],
    );
    let _cleanup = KillWorkers(child.id());
    let (mut most, mut held) = (0, 0);
    let mut last_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        last_seen = workers(Tag::Agent(child.id()));
        most = most.max(last_seen.len());
        held = held.max(last_seen.iter().map(|(_, rss)| rss).sum());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let code = child.wait().unwrap().code();
    // Orphaned workers notice within 100 ms that their agent is gone; look before they do.
    let left = workers(Tag::Agent(pid));
    assert!(
        left.is_empty(),
        "stress workers outlived the run that started them: {left:?}"
    );
    assert!(
        last_seen.is_empty(),
        "stress workers still ran at the end of the run, after their fault was reverted: {last_seen:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("a report was written"))
            .unwrap();
    let run_id = report["run_id"].as_str().expect("the report names its run");
    let left = workers(Tag::Run(run_id));
    assert!(
        left.is_empty(),
        "workers of run {run_id} are left: {left:?}"
    );
    (most, held, code)
}

#[test]
fn cpu_stress_runs_its_workers_while_held_and_none_after() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("cpu.toml");
    std::fs::write(
        &file,
        stress_experiment(
            port,
            "kind = \"cpu-stress\"\nworkers = 2\nload = \"50%\"",
            "1s",
        ),
    )
    .unwrap();
    let (most, _, code) = watch_run(&file, dir.path());
    assert_eq!(code, Some(0));
    assert_eq!(most, 2, "expected two CPU workers while the fault was held");
}

#[test]
fn memory_stress_holds_its_size_while_held() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("mem.toml");
    std::fs::write(
        &file,
        stress_experiment(
            port,
            "kind = \"memory-stress\"\nworkers = 2\nsize = \"64MiB\"",
            "1s",
        ),
    )
    .unwrap();
    let (most, held, code) = watch_run(&file, dir.path());
    assert_eq!(code, Some(0));
    assert_eq!(most, 2);
    assert!(held >= 60 << 20, "workers held only {held} bytes");
}

#[test]
fn memory_stress_refuses_to_starve_the_host() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let run = run_experiment(
        dir.path(),
        &stress_experiment(port, "kind = \"memory-stress\"\nsize = \"64TiB\"", "1s"),
        &[],
    );
    assert_eq!(run.code, 5, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("refusing to hold 64.0 TiB"), "{reason}");
}

#[test]
fn stress_workers_leave_when_the_run_is_killed() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let file = dir.path().join("cpu.toml");
    std::fs::write(
        &file,
        stress_experiment(
            port,
            "kind = \"cpu-stress\"\nworkers = 1\nload = \"10%\"",
            "60s",
        ),
    )
    .unwrap();
    let mut child = spawn_run(&file, &dir.path().join("state"), &[]);
    let _cleanup = KillWorkers(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let pids = loop {
        let seen = workers(Tag::Agent(child.id()));
        if !seen.is_empty() {
            break seen;
        }
        assert!(Instant::now() < deadline, "no worker started");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|(pid, _)| alive(*pid)) {
        if Instant::now() >= deadline {
            let left: Vec<String> = pids
                .iter()
                .filter(|(pid, _)| alive(*pid))
                .map(|(pid, _)| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
                })
                .collect();
            panic!("a stress worker outlived its killed run by 2 s: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
