//! Owns the embedded agent's dead-man switch: a small process (this binary's hidden `watchdog`
//! subcommand) that outlives `faultline run` and, the moment the run is gone — SIGKILL, OOM kill,
//! crash — reverts whatever the run's journal still holds. A run that ends normally leaves an empty
//! journal, and the watchdog simply exits.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use super::AgentCore;
use super::envelope::Envelope;

/// How often the watchdog checks that its run still exists: bounds how long a fault can outlive it.
const POLL: Duration = Duration::from_millis(100);

/// Starts the watchdog for this process and its state directory. `FAULTLINE_NO_WATCHDOG=1` turns
/// it off, for tests of the journal recovery that the next run does instead, or when another
/// supervisor already cleans up after faultline.
pub(crate) fn spawn(state_dir: &Path) -> Result<(), String> {
    if std::env::var("FAULTLINE_NO_WATCHDOG").as_deref() == Ok("1") {
        return Ok(());
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("failed to find the faultline binary: {e}"))?;
    Command::new(exe)
        .arg("watchdog")
        .args(["--parent", &std::process::id().to_string()])
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C meant for the run (which reverts by itself) must not
        // take the watchdog down with it.
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("failed to start the watchdog: {e}"))
}

/// The body of the watchdog: waits for `parent` to go, then reverts every journal entry whose
/// writer is gone. Entries of other runs that still live are left alone by the recovery itself.
pub(crate) fn main(parent: u32, state_dir: &Path) -> ExitCode {
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(POLL);
    }
    match AgentCore::open(state_dir, Envelope::default(), None) {
        Ok((_, recovery)) => {
            for line in &recovery.reverted {
                eprintln!(
                    "faultline watchdog: run {parent} ended with a fault still applied; reverted {line}"
                );
            }
            for line in &recovery.failed {
                eprintln!("faultline watchdog: could NOT revert {line}");
            }
            if recovery.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(5)
            }
        }
        Err(e) => {
            eprintln!("faultline watchdog: {e}");
            ExitCode::from(5)
        }
    }
}
