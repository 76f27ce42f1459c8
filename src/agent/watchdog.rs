//! Owns the embedded agent's dead-man switch: a small process (this binary's hidden `watchdog`
//! subcommand) that outlives `faultline run` and reverts the run's journaled faults when the run
//! can no longer be trusted to: the moment the run is gone (SIGKILL, OOM kill, crash), when its
//! heartbeat is older than the lease (stopped by SIGSTOP or Ctrl-Z, or stalled), and when a fault is
//! past its journaled deadline. A run that ends normally leaves an empty journal, and the watchdog
//! simply exits.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::AgentCore;
use super::envelope::Envelope;
use super::journal::Journal;

/// How often the watchdog checks its run: bounds how long a fault can outlive the run's lease.
const POLL: Duration = Duration::from_millis(100);
/// How far past its deadline a fault may go before the watchdog reverts it: the run's own agent
/// reverts at the deadline, so the watchdog only steps in when that did not happen.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// The run's side of the heartbeat: a task that rewrites the heartbeat file every lease/3 while
/// the run's runtime runs. Dropping it stops the beats and removes the file.
pub(crate) struct Heartbeat {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn heartbeat_path(state_dir: &Path, pid: u32) -> PathBuf {
    state_dir.join(format!(".heartbeat-{pid}"))
}

/// Starts the watchdog for this process and its state directory, and the heartbeat it watches
/// (call from within the runtime). `FAULTLINE_NO_WATCHDOG=1` turns both off, for tests of the
/// journal recovery that the next run does instead, or when another supervisor already cleans up
/// after faultline.
///
/// `run`: the history row of a `faultline run` (in the state directory's `history.db`), which the
/// watchdog ends as `error` if the run's process dies before it ended the row itself.
pub(crate) fn spawn(
    state_dir: &Path,
    lease: Duration,
    run: Option<&str>,
) -> Result<Option<Heartbeat>, String> {
    if std::env::var("FAULTLINE_NO_WATCHDOG").as_deref() == Ok("1") {
        return Ok(None);
    }
    let path = heartbeat_path(state_dir, std::process::id());
    std::fs::write(&path, "0")
        .map_err(|e| format!("failed to write the heartbeat {}: {e}", path.display()))?;
    let exe =
        std::env::current_exe().map_err(|e| format!("failed to find the faultline binary: {e}"))?;
    let mut command = Command::new(exe);
    command
        .arg("watchdog")
        .args(["--parent", &std::process::id().to_string()])
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--lease-ms", &lease.as_millis().to_string()]);
    if let Some(run) = run {
        command.args(["--history-run", run]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C meant for the run (which reverts by itself) must not
        // take the watchdog down with it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("failed to start the watchdog: {e}"))?;
    let beat_path = path.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        for beat in 1_u64.. {
            tick.tick().await;
            let path = beat_path.clone();
            // The content only has to change: the watchdog times beats on its own monotonic
            // clock, so a wall-clock step can neither fake nor hide one.
            let written =
                tokio::task::spawn_blocking(move || std::fs::write(&path, beat.to_string())).await;
            if let Ok(Err(e)) = written {
                tracing::warn!("failed to write the heartbeat {}: {e}", beat_path.display());
            }
        }
    });
    Ok(Some(Heartbeat { path, task }))
}

/// What the watchdog has seen of its run's heartbeat.
struct Pulse {
    path: PathBuf,
    last: Option<Vec<u8>>,
    at: Instant,
}

impl Pulse {
    /// Reads the heartbeat; returns when it last changed.
    fn read(&mut self, now: Instant) -> Instant {
        let content = std::fs::read(&self.path).ok();
        if content != self.last {
            self.last = content;
            self.at = now;
        }
        self.at
    }
}

/// The body of the watchdog: while `parent` lives, reverts its faults whose heartbeat is older
/// than `lease` or whose deadline has passed; once it is gone, reverts every journal entry whose
/// writer is gone. Entries of other runs that still live are left alone.
///
/// With `history_run`, once the run is gone the watchdog also ends its history row, if the run
/// did not: as `error`, saying the run's process stopped and what was reverted for it.
pub(crate) fn main(
    parent: u32,
    state_dir: &Path,
    lease: Duration,
    history_run: Option<&str>,
) -> ExitCode {
    let journal = match Journal::open(state_dir) {
        Ok(journal) => journal,
        Err(e) => {
            eprintln!("faultline watchdog: {e}");
            return ExitCode::from(5);
        }
    };
    let mut pulse = Pulse {
        path: heartbeat_path(state_dir, parent),
        last: None,
        at: Instant::now(),
    };
    // When each entry was first seen: a fault journaled after a long quiet spell (a slow budget
    // check) gets a full lease from its own start, not from the last beat.
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    // A revert that failed is retried once a second, not on every poll.
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let beat = pulse.read(now);
        let wall = Timestamp::now();
        for entry in journal.entries().into_iter().flatten() {
            if u32::try_from(entry.owner.pid).ok() != Some(parent) {
                continue;
            }
            if retry_at.get(&entry.id).is_some_and(|at| now < *at) {
                continue;
            }
            let seen = *first_seen.entry(entry.id.clone()).or_insert(now);
            let quiet = now.saturating_duration_since(beat.max(seen));
            let overdue = entry
                .deadline
                .and_then(|d| d.checked_add(DEADLINE_GRACE).ok())
                .is_some_and(|d| wall > d);
            let why = if quiet > lease {
                format!(
                    "the run's heartbeat is {} ms old, longer than its {} ms lease (stopped or stalled)",
                    quiet.as_millis(),
                    lease.as_millis()
                )
            } else if overdue {
                format!(
                    "it is past its deadline {:.0}",
                    entry.deadline.unwrap_or(wall)
                )
            } else {
                continue;
            };
            // The run's own agent may revert the same entry at the same moment: an undo is
            // idempotent, and removing a missing entry succeeds.
            match entry.undo.revert() {
                Ok(detail) => {
                    let _ = journal.remove(&entry.id, super::core::forget(&entry.undo));
                    eprintln!(
                        "faultline watchdog: run {parent} still holds {} ({}) but {why}; reverted it: {}",
                        entry.id,
                        entry.kind,
                        crate::secrets::redact(&detail)
                    );
                }
                Err(e) => {
                    eprintln!(
                        "faultline watchdog: could NOT revert {} ({why}): {}; retrying in 1 s",
                        entry.id,
                        crate::secrets::redact(&e)
                    );
                    retry_at.insert(entry.id.clone(), now + Duration::from_secs(1));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&pulse.path);
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
            if let Some(run_id) = history_run {
                end_abandoned_run(state_dir, run_id, &recovery.reverted, &recovery.failed);
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

/// Ends the history row of a run whose process is gone without ending it (SIGKILL, a crash, the
/// OOM killer), so the history never keeps a run without an ending it can explain. A run that
/// ended its row itself is left alone.
fn end_abandoned_run(state_dir: &Path, run_id: &str, reverted: &[String], failed: &[String]) {
    let location = crate::history::Location::in_state_dir(state_dir);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("faultline watchdog: failed to start a runtime for the history: {e}");
            return;
        }
    };
    let ended = runtime.block_on(async {
        let history = crate::history::History::open(&location).await?;
        match history.run(run_id).await? {
            Some(row) if row.end.is_none() => {
                let mut reason =
                    "the run's process stopped during the run (killed or crashed)".to_owned();
                if !reverted.is_empty() {
                    reason.push_str(&format!(
                        "; the watchdog reverted its faults: {}",
                        reverted.join("; ")
                    ));
                }
                if !failed.is_empty() {
                    reason.push_str(&format!(
                        "; the watchdog could NOT revert: {}",
                        failed.join("; ")
                    ));
                }
                history
                    .finish_run(run_id, &crate::history::RunEnd::error(&reason))
                    .await?;
                Ok(true)
            }
            _ => Ok::<bool, crate::history::HistoryError>(false),
        }
    });
    match ended {
        Ok(true) => eprintln!("faultline watchdog: recorded run {run_id} as error in {location}"),
        Ok(false) => {}
        Err(e) => eprintln!("faultline watchdog: could not end run {run_id} in the history: {e}"),
    }
}
