//! Owns `[[setup]]` fixtures: processes the run starts first (waiting until they are ready) and
//! stops last, each in its own process group so that everything it started goes with it.
//!
//! Each fixture runs under a guard (this binary's hidden `fixture-guard` subcommand) that leads
//! its process group and kills the group as soon as the run that started it is gone, so even a
//! run killed with SIGKILL leaves no demo server behind.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::model::{Fixture, ReadyKind};

/// The hidden subcommand a fixture's guard runs as.
const GUARD_COMMAND: &str = "fixture-guard";
/// How often a guard checks that the run that started it still exists.
const GUARD_POLL: Duration = Duration::from_millis(100);

/// How long a fixture gets to exit after SIGTERM before its group is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Running {
    pub(crate) name: String,
    child: Child,
    pgid: i32,
}

/// Starts the fixtures in order. On error, the ones already started are returned for stopping.
pub(crate) async fn start(
    fixtures: &[Fixture],
    log: &(dyn Fn(String) + Sync),
) -> Result<Vec<Running>, (Vec<Running>, String)> {
    let mut running = Vec::new();
    for f in fixtures {
        if let Err(e) = find_program(&f.argv[0]) {
            return Err((
                running,
                format!("setup `{}` failed to start `{}`: {e}", f.name, f.argv[0]),
            ));
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return Err((running, format!("failed to find the faultline binary: {e}"))),
        };
        let child = Command::new(exe)
            .arg(GUARD_COMMAND)
            .args(["--parent", &std::process::id().to_string(), "--"])
            .args(&f.argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                return Err((
                    running,
                    format!("setup `{}` failed to start `{}`: {e}", f.name, f.argv[0]),
                ));
            }
        };
        let pid = child.id().map_or(0, |p| p as i32);
        log(format!("setup: started `{}` (pid {pid})", f.name));
        let ready = match &f.ready {
            None => Ok(()),
            Some(check) => wait_ready(&mut child, &check.kind, check.within).await,
        };
        running.push(Running {
            name: f.name.clone(),
            child,
            pgid: pid,
        });
        if let Err(e) = ready {
            return Err((running, format!("setup `{}` {e}", f.name)));
        }
    }
    Ok(running)
}

async fn wait_ready(child: &mut Child, kind: &ReadyKind, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .map_err(|e| e.to_string())?;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before it was ready"));
        }
        let ready = match kind {
            ReadyKind::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            ReadyKind::Http(url) => client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() < 500),
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = match kind {
                ReadyKind::Tcp(addr) => format!("accept TCP connections on {addr}"),
                ReadyKind::Http(url) => format!("answer {url}"),
            };
            return Err(format!(
                "did not {what} within {}",
                humantime::format_duration(within)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops fixtures in reverse order: SIGTERM to the group, then SIGKILL after a grace period.
///
/// A group is only signalled while its leader, the guard, is this process's child and not yet
/// reaped (running, or a zombie): its pid, and so the group id, cannot have been reused by then.
/// The guard is reaped only after the last signal.
pub(crate) async fn stop_all(mut running: Vec<Running>, log: &(dyn Fn(String) + Sync)) {
    while let Some(mut f) = running.pop() {
        if f.pgid <= 1 {
            continue;
        }
        let group = Pid::from_raw(f.pgid);
        let _ = killpg(group, Signal::SIGCONT);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while !has_exited(group) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The leader may be gone while others of its group (a server it restarted) live on.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = f.child.wait().await;
        log(format!("setup: stopped `{}`", f.name));
    }
}

/// Whether the child `pid` has exited, without reaping it (`WNOWAIT`): it stays a zombie, holding
/// its pid, until `Child::wait`. Does not block.
fn has_exited(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    !matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG
        ),
        Ok(WaitStatus::StillAlive)
    )
}

/// Checks a program can be started, so a typo is reported as such and not as a fixture that
/// "exited before it was ready".
fn find_program(program: &str) -> Result<(), String> {
    if program.contains('/') {
        return if std::path::Path::new(program).is_file() {
            Ok(())
        } else {
            Err("no such file".to_owned())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
        Ok(())
    } else {
        Err("not found in PATH".to_owned())
    }
}

/// The body of a fixture guard: starts `argv` in the guard's own process group, exits with its
/// status when it ends, and kills the whole group when `parent` is no longer the guard's parent.
pub(crate) fn guard_main(parent: u32, argv: &[String]) -> std::process::ExitCode {
    let mut child = match std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("failed to start `{}`: {e}", argv[0]);
            return std::process::ExitCode::from(127);
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let code = status.code().unwrap_or(128).clamp(0, 255);
                return std::process::ExitCode::from(code as u8);
            }
            Ok(None) => {}
            Err(_) => return std::process::ExitCode::from(1),
        }
        if std::os::unix::process::parent_id() != parent {
            // The run is gone: take the fixture and everything it started (this guard included) down.
            let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
        }
        std::thread::sleep(GUARD_POLL);
    }
}
