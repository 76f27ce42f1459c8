//! `cpu-stress` and `memory-stress`: real worker processes while held, none after — also when the
//! run is SIGKILLed, since workers leave when their parent does.

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

/// Pids and resident bytes of the stress workers started by runs whose state lives in `dir`.
fn workers(run_pid: u32) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (state, ppid) = (fields[0], fields[1].parse::<u32>().unwrap_or(0));
        let is_worker =
            String::from_utf8_lossy(&cmdline).split('\0').nth(1) == Some("stress-worker");
        if is_worker && ppid == run_pid && state != "Z" {
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
            let rss = statm
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0)
                * 4096;
            found.push((pid, rss));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// Starts a run, watches its workers until it ends, returns (most workers seen, most bytes held).
fn watch_run(file: &std::path::Path, state: &std::path::Path) -> (usize, u64, Option<i32>) {
    let mut child = spawn_run(file, state, &[]);
    let (mut most, mut held) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let seen = workers(child.id());
        most = most.max(seen.len());
        held = held.max(seen.iter().map(|(_, rss)| rss).sum());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let code = child.wait().unwrap().code();
    assert!(workers(pid).is_empty());
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
    let (most, _, code) = watch_run(&file, &dir.path().join("state"));
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
    let (most, held, code) = watch_run(&file, &dir.path().join("state"));
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let pids = loop {
        let seen = workers(child.id());
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
