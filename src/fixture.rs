//! Owns `[[setup]]` fixtures: processes the run starts first (waiting until they are ready) and
//! stops last, each in its own process group so that everything it started goes with it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::model::{Fixture, ReadyKind};

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
    log: &dyn Fn(String),
) -> Result<Vec<Running>, (Vec<Running>, String)> {
    let mut running = Vec::new();
    for f in fixtures {
        let child = Command::new(&f.argv[0])
            .args(&f.argv[1..])
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
pub(crate) async fn stop_all(mut running: Vec<Running>, log: &dyn Fn(String)) {
    while let Some(mut f) = running.pop() {
        if f.pgid <= 1 {
            continue;
        }
        let group = Pid::from_raw(f.pgid);
        let _ = killpg(group, Signal::SIGCONT);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, f.child.wait())
            .await
            .is_err()
        {
            let _ = f.child.start_kill();
        }
        // The leader may be gone while others of its group (a server it restarted) live on.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = f.child.wait().await;
        log(format!("setup: stopped `{}`", f.name));
    }
}
