//! Owns the `command` fault: a custom action with a guaranteed revert. `run` is a program the
//! agent executes (an argument vector, never a shell string) when the fault is injected, `verify`
//! an optional program whose exit status 0 says the action took effect, and `revert` the program
//! that undoes it. The revert's argument vector, with its program resolved to an absolute path,
//! is the fault's [`super::Undo`]: journaled before `run` starts, so it runs on every way a fault
//! can end — its duration, the lease, an abort, Ctrl-C, the run's watchdog after a SIGKILL, and an
//! agent's journal recovery after a crash.
//!
//! Every program runs in a process group of its own with stdin closed; at its `timeout` the whole
//! group is killed, and whatever it left in its group is killed when it exits (an action is
//! expected to finish; something meant to outlive it must start its own session, as daemons do).
//! Its exit status and the first [`MAX_OUTPUT`] bytes of stdout and stderr (sanitised) are kept
//! for the report.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::check::{Checked, FieldError};
use crate::protocol::ActionOutput;
use crate::units::Dur;

/// The most arguments one argument vector may have (the program included).
pub(crate) const MAX_ARGS: usize = 256;
/// The longest one argument may be, in bytes.
pub(crate) const MAX_ARG_BYTES: usize = 4096;
/// The most bytes all arguments of one vector may hold together.
pub(crate) const MAX_ARGV_BYTES: usize = 64 * 1024;
/// The longest a program may run before its process group is killed: an action, not a hold.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// `timeout` when none is written.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most `env` entries.
pub(crate) const MAX_ENV: usize = 64;
/// How much of each of stdout and stderr is kept for the report.
pub(crate) const MAX_OUTPUT: usize = 4096;
/// How many times a failing revert is tried, within its `timeout` altogether.
const REVERT_ATTEMPTS: u32 = 3;
/// How long output readers get to reach end of file once the program's group is gone: a program
/// that handed its stdout to a process in another session must not hold the agent up.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Where a bare program name is looked up when neither `env` nor the agent set `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The keys of a `command` table, as written (`duration` is common to every fault).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    run: Vec<String>,
    revert: Vec<String>,
    verify: Option<Vec<String>>,
    timeout: Option<Dur>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

impl Table {
    #[expect(
        clippy::unnecessary_wraps,
        reason = "every kind's `validate` has this shape; bounds are in `check`"
    )]
    pub(crate) fn validate(self) -> Result<CommandAction, FieldError> {
        Ok(CommandAction {
            run: self.run,
            revert: self.revert,
            verify: self.verify,
            timeout_ms: self
                .timeout
                .map_or(DEFAULT_TIMEOUT, |d| d.0)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            env: self.env,
            cwd: self.cwd,
        })
    }
}

/// A `command` fault as the wire carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandAction {
    pub(crate) run: Vec<String>,
    pub(crate) revert: Vec<String>,
    #[serde(default)]
    pub(crate) verify: Option<Vec<String>>,
    /// Per program execution.
    pub(crate) timeout_ms: u64,
    /// Added to the agent's own environment for every program.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// The working directory of every program; the agent's own when absent.
    #[serde(default)]
    pub(crate) cwd: Option<String>,
}

/// One program to execute, self-contained: what the journal holds for `revert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Invocation {
    /// The argument vector, the program resolved to an absolute path.
    pub(crate) argv: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    pub(crate) timeout_ms: u64,
}

impl Invocation {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A `command` fault whose programs are resolved; nothing has run yet.
#[derive(Debug)]
pub(crate) struct Prepared {
    run: Invocation,
    verify: Option<Invocation>,
    pub(crate) revert: Invocation,
    /// What ran so far (run, verify), for the report.
    outputs: ActionLog,
}

/// What an action kind ran so far, for the report: both kinds keep their steps here.
#[derive(Debug, Default)]
pub(super) struct ActionLog(Mutex<Vec<ActionOutput>>);

impl ActionLog {
    /// Records `output` and hands it back.
    pub(super) fn keep(&self, output: ActionOutput) -> ActionOutput {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(output.clone());
        output
    }

    /// Every step recorded so far.
    pub(super) fn all(&self) -> Vec<ActionOutput> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl CommandAction {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(crate) fn describe(&self) -> String {
        let verify = self
            .verify
            .as_ref()
            .map_or_else(String::new, |v| format!(", check it with `{}`", show(v)));
        format!(
            "run `{}`{verify}; on revert run `{}` (each within {})",
            show(&self.run),
            show(&self.revert),
            Dur(self.timeout())
        )
    }

    /// The exact programs, for `plan`. `env` values are not shown: they may be credentials.
    pub(crate) fn changes(&self) -> String {
        let mut text = format!("run:    {}\n", show(&self.run));
        if let Some(verify) = &self.verify {
            text.push_str(&format!("verify: {}\n", show(verify)));
        }
        text.push_str(&format!("revert: {}\n", show(&self.revert)));
        if !self.env.is_empty() {
            let names: Vec<&str> = self.env.keys().map(String::as_str).collect();
            text.push_str(&format!(
                "env:    {} (values not shown)\n",
                names.join(", ")
            ));
        }
        if let Some(cwd) = &self.cwd {
            text.push_str(&format!("cwd:    {cwd}\n"));
        }
        text.push_str(&format!(
            "each program runs in its own process group, killed after {}",
            Dur(self.timeout())
        ));
        text
    }

    /// Where each program resolves on this host right now.
    pub(crate) fn preview(&self) -> String {
        let mut seen = Vec::new();
        for (step, argv) in self.steps() {
            seen.push(match resolve(&argv[0], &self.env) {
                Ok(path) => format!("`{step}` runs {}", path.display()),
                Err(e) => e,
            });
        }
        seen.join("; ")
    }

    fn steps(&self) -> Vec<(&'static str, &Vec<String>)> {
        let mut steps = vec![("run", &self.run)];
        if let Some(v) = &self.verify {
            steps.push(("verify", v));
        }
        steps.push(("revert", &self.revert));
        steps
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        argv("run", &self.run)?;
        if let Some(v) = &self.verify {
            argv("verify", v)?;
        }
        argv("revert", &self.revert)?;
        timeout("timeout", self.timeout())?;
        env("env", &self.env)?;
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.len() > MAX_ARG_BYTES || cwd.contains('\0') {
                return Err(FieldError::new(
                    "cwd",
                    format!(
                        "must be an absolute path of at most {MAX_ARG_BYTES} bytes without NUL (got `{}`)",
                        clip(cwd)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The longest the agent may take to apply this fault beyond ordinary bookkeeping: `run`
    /// and `verify` each up to `timeout`.
    pub(crate) fn apply_allowance(&self) -> Duration {
        let programs = if self.verify.is_some() { 2 } else { 1 };
        self.timeout() * programs + DRAIN_GRACE * programs
    }

    /// The longest a revert may take: every attempt together stays within `timeout`.
    pub(crate) fn revert_allowance(&self) -> Duration {
        self.timeout() + DRAIN_GRACE
    }

    /// Resolves every program on this host, so that a `revert` that could not run is found
    /// before `run` changes anything. Runs nothing.
    pub(crate) fn prepare(&self) -> Result<Prepared, String> {
        let invocation = |step: &str, argv: &[String]| -> Result<Invocation, String> {
            let program = resolve(&argv[0], &self.env).map_err(|e| format!("`{step}`: {e}"))?;
            let mut resolved = vec![program.to_string_lossy().into_owned()];
            resolved.extend(argv[1..].iter().cloned());
            Ok(Invocation {
                argv: resolved,
                env: self.env.clone(),
                cwd: self.cwd.clone(),
                timeout_ms: self.timeout_ms,
            })
        };
        if let Some(cwd) = &self.cwd {
            if !Path::new(cwd).is_dir() {
                return Err(format!("`cwd` {cwd} is not a directory on this host"));
            }
        }
        Ok(Prepared {
            run: invocation("run", &self.run)?,
            verify: self
                .verify
                .as_ref()
                .map(|v| invocation("verify", v))
                .transpose()?,
            revert: invocation("revert", &self.revert)?,
            outputs: ActionLog::default(),
        })
    }
}

impl Prepared {
    pub(crate) fn targets(&self) -> Vec<String> {
        vec![format!("command `{}`", show(&self.run.argv))]
    }

    fn keep(&self, output: ActionOutput) -> ActionOutput {
        self.outputs.keep(output)
    }

    /// What ran, for the report.
    pub(crate) fn actions(&self) -> Vec<ActionOutput> {
        self.outputs.all()
    }

    /// Runs `run`. A non-zero exit is a failed injection: the agent then runs the journaled revert.
    pub(crate) fn inject(&self) -> Result<String, String> {
        let out = self.keep(execute("run", &self.run, self.run.timeout()));
        if out.ok {
            Ok(format!("ran `{}`: {}", out.command, out.outcome))
        } else {
            Err(format!(
                "`run` `{}` failed: {}{}",
                out.command,
                out.outcome,
                stderr_note(&out)
            ))
        }
    }

    /// Runs `verify`, if there is one: exit 0 says the action took effect.
    pub(crate) fn verify(&self) -> Result<String, String> {
        let Some(verify) = &self.verify else {
            return Ok("no `verify` given: only the exit status of `run` was checked".to_owned());
        };
        let out = self.keep(execute("verify", verify, verify.timeout()));
        if out.ok {
            Ok(format!("verified with `{}`: {}", out.command, out.outcome))
        } else {
            Err(format!(
                "`verify` `{}` says the action did not take effect: {}{}",
                out.command,
                out.outcome,
                stderr_note(&out)
            ))
        }
    }
}

/// Runs the journaled revert, trying again (up to [`REVERT_ATTEMPTS`] in all) while it fails and
/// its `timeout` is not used up. Every attempt is returned for the report.
pub(super) fn revert(inv: &Invocation) -> (Result<String, String>, Vec<ActionOutput>) {
    let outputs = revert_attempts(inv.timeout(), |left| execute("revert", inv, left));
    let result = match outputs.last() {
        Some(out) if out.ok => Ok(format!(
            "ran `{}`: {}{}",
            out.command,
            out.outcome,
            if outputs.len() > 1 {
                format!(" (attempt {})", outputs.len())
            } else {
                String::new()
            }
        )),
        Some(out) => Err(format!(
            "`revert` `{}` failed {} time(s) within {}; last: {}{}",
            out.command,
            outputs.len(),
            Dur(inv.timeout()),
            out.outcome,
            stderr_note(out)
        )),
        None => Err(format!(
            "`revert` `{}` could not run: its timeout is used up",
            show(&inv.argv)
        )),
    };
    (result, outputs)
}

/// Runs `attempt` (given the time left) until it succeeds, at most [`REVERT_ATTEMPTS`] times and
/// while `timeout` is not used up, backing off a little more each time: the revert of both action
/// kinds. Every attempt is returned for the report; none when the timeout was used up at once.
pub(super) fn revert_attempts(
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> ActionOutput,
) -> Vec<ActionOutput> {
    let started = Instant::now();
    let mut outputs = Vec::new();
    for n in 1..=REVERT_ATTEMPTS {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let out = attempt(left);
        let ok = out.ok;
        outputs.push(out);
        if ok {
            break;
        }
        if n < REVERT_ATTEMPTS {
            std::thread::sleep(Duration::from_millis(200) * n);
        }
    }
    outputs
}

/// Executes one program: its own process group, stdin closed, stdout and stderr captured (the
/// first [`MAX_OUTPUT`] bytes each); the group is killed at `timeout` and once the program exits.
pub(crate) fn execute(step: &str, inv: &Invocation, timeout: Duration) -> ActionOutput {
    let started = Instant::now();
    let command = show(&inv.argv);
    let failed = |outcome: String| ActionOutput {
        step: step.to_owned(),
        command: command.clone(),
        ok: false,
        exit_code: None,
        status: None,
        outcome,
        stdout: String::new(),
        stderr: String::new(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let mut cmd = Command::new(&inv.argv[0]);
    cmd.args(&inv.argv[1..])
        .envs(&inv.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &inv.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("failed to start: {e}")),
    };
    let pid = Pid::from_raw(child.id() as i32);
    let readers = [
        child.stdout.take().map(|s| capture(Box::new(s))),
        child.stderr.take().map(|s| capture(Box::new(s))),
    ];
    // Wait for the exit without reaping it: until it is reaped, the program's pid — which is its
    // group's id — cannot be reused, so killing the group below can only hit what it started.
    let (exited_tx, exited_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ));
    });
    let timed_out = exited_rx.recv_timeout(timeout).is_err();
    // Whatever is left in the group: the program itself at a timeout, or what it left behind.
    let _ = killpg(pid, Signal::SIGKILL);
    let status = child.wait();
    let grace = Instant::now() + DRAIN_GRACE;
    let [stdout, stderr] = readers.map(|r| {
        r.and_then(|rx| {
            rx.recv_timeout(grace.saturating_duration_since(Instant::now()))
                .ok()
        })
        .unwrap_or_default()
    });
    let (ok, exit_code, outcome) = match status {
        _ if timed_out => (
            false,
            None,
            format!(
                "timed out after {}; its process group was killed",
                Dur(timeout)
            ),
        ),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(0), _) => (true, Some(0), "exit 0".to_owned()),
            (Some(code), _) => (false, Some(code), format!("exit {code}")),
            (None, Some(sig)) => (
                false,
                None,
                format!(
                    "killed by {}",
                    Signal::try_from(sig)
                        .map_or_else(|_| format!("signal {sig}"), |s| s.to_string())
                ),
            ),
            (None, None) => (false, None, format!("ended with status {s}")),
        },
        Err(e) => (false, None, format!("could not be waited for: {e}")),
    };
    ActionOutput {
        step: step.to_owned(),
        command,
        ok,
        exit_code,
        status: None,
        outcome,
        stdout,
        stderr,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// Reads a pipe to its end on a thread of its own, keeping the first [`MAX_OUTPUT`] bytes.
fn capture(mut pipe: Box<dyn Read + Send>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut more = 0_usize;
        let mut buf = [0_u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&buf[..room]);
                    more += n - room;
                }
            }
        }
        let _ = tx.send(sanitise(&kept, more));
    });
    rx
}

/// Output as a report may show it: valid UTF-8, control characters other than newline and tab
/// replaced by a space (no terminal escapes), and how much was cut.
pub(crate) fn sanitise(bytes: &[u8], more: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if more > 0 {
        out.push_str(&format!("… ({more} more bytes)"));
    }
    out
}

/// At most 200 characters of `text`, control characters replaced by a space: what of a value
/// may reach an error message or a report line.
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// The start of what a program wrote to stderr, for an error message (the report has it all).
pub(crate) fn stderr_note(out: &ActionOutput) -> String {
    let first = out.stderr.trim();
    if first.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", clip(first))
    }
}

/// An argument vector as one line for people: arguments with spaces or quotes are quoted.
pub(crate) fn show(argv: &[String]) -> String {
    let shown: Vec<String> = argv
        .iter()
        .map(|a| {
            let a = clip(a);
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a
            }
        })
        .collect();
    shown.join(" ")
}

/// Finds `program` as `execvp` would: an absolute path as is, a bare name in `PATH` (from
/// `env` if it sets one, else the agent's). The result must be an executable file.
pub(crate) fn resolve(program: &str, env: &BTreeMap<String, String>) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "program {program} is not an executable file on this host"
            ))
        };
    }
    let path = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program `{program}` is not found in PATH ({path})"))
}

/// An argument vector: a program (absolute, or a bare name looked up in `PATH`) and bounded
/// arguments without NUL bytes.
pub(crate) fn argv(field: &'static str, argv: &[String]) -> Checked {
    let Some(program) = argv.first() else {
        return Err(FieldError::new(
            field,
            "must not be empty: give the program and its arguments, e.g. [\"/usr/bin/touch\", \"/tmp/marker\"]",
        ));
    };
    if program.is_empty() {
        return Err(FieldError::new(
            field,
            "must start with a program, not \"\"",
        ));
    }
    if program.contains('/') && !program.starts_with('/') {
        return Err(FieldError::new(
            field,
            format!(
                "program `{}` is a relative path: use an absolute path or a bare name looked up in PATH",
                clip(program)
            ),
        ));
    }
    if argv.len() > MAX_ARGS {
        return Err(FieldError::new(
            field,
            format!("has {} arguments; at most {MAX_ARGS}", argv.len()),
        ));
    }
    let mut total = 0;
    for (i, arg) in argv.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES {
            return Err(FieldError::new(
                field,
                format!(
                    "argument {i} is {} bytes long; at most {MAX_ARG_BYTES}",
                    arg.len()
                ),
            ));
        }
        if arg.contains('\0') {
            return Err(FieldError::new(
                field,
                format!("argument {i} holds a NUL byte"),
            ));
        }
        total += arg.len();
    }
    if total > MAX_ARGV_BYTES {
        return Err(FieldError::new(
            field,
            format!("holds {total} bytes of arguments; at most {MAX_ARGV_BYTES}"),
        ));
    }
    Ok(())
}

/// A per-program timeout: above zero, at most [`MAX_TIMEOUT`].
pub(crate) fn timeout(field: &'static str, d: Duration) -> Checked {
    if d.is_zero() {
        return Err(FieldError::new(field, "must be above 0"));
    }
    if d > MAX_TIMEOUT {
        return Err(FieldError::new(
            field,
            format!("must be at most {} (got {})", Dur(MAX_TIMEOUT), Dur(d)),
        ));
    }
    Ok(())
}

/// Environment entries: at most [`MAX_ENV`], names of `[A-Za-z_][A-Za-z0-9_]*`, bounded values.
pub(crate) fn env(field: &'static str, env: &BTreeMap<String, String>) -> Checked {
    if env.len() > MAX_ENV {
        return Err(FieldError::new(
            field,
            format!("has {} entries; at most {MAX_ENV}", env.len()),
        ));
    }
    for (name, value) in env {
        let good_name = !name.is_empty()
            && name.len() <= 256
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good_name {
            return Err(FieldError::new(
                field,
                format!(
                    "name `{}` is not a variable name: use letters, digits and `_`, not starting with a digit",
                    clip(name)
                ),
            ));
        }
        if value.len() > MAX_ARG_BYTES || value.contains('\0') {
            return Err(FieldError::new(
                field,
                format!("value of `{name}` must be at most {MAX_ARG_BYTES} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(run: &[&str], revert: &[&str]) -> CommandAction {
        CommandAction {
            run: run.iter().map(ToString::to_string).collect(),
            revert: revert.iter().map(ToString::to_string).collect(),
            verify: None,
            timeout_ms: 5000,
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    fn message(a: &CommandAction) -> String {
        a.check().unwrap_err().to_string()
    }

    #[test]
    fn bad_argument_vectors_are_refused_naming_the_key() {
        assert_eq!(
            message(&action(&[], &["true"])),
            "`run` must not be empty: give the program and its arguments, e.g. [\"/usr/bin/touch\", \"/tmp/marker\"]"
        );
        assert_eq!(
            message(&action(&["true"], &["bin/rm", "x"])),
            "`revert` program `bin/rm` is a relative path: use an absolute path or a bare name looked up in PATH"
        );
        assert_eq!(
            message(&action(&["./x"], &["true"])),
            "`run` program `./x` is a relative path: use an absolute path or a bare name looked up in PATH"
        );
        assert_eq!(
            message(&action(&[""], &["true"])),
            "`run` must start with a program, not \"\""
        );
        let long = "a".repeat(MAX_ARG_BYTES + 1);
        assert_eq!(
            message(&action(&["true", &long], &["true"])),
            "`run` argument 1 is 4097 bytes long; at most 4096"
        );
        let many: Vec<&str> = std::iter::repeat_n("x", MAX_ARGS + 1).collect();
        assert_eq!(
            message(&action(&many, &["true"])),
            "`run` has 257 arguments; at most 256"
        );
        let big = "b".repeat(MAX_ARG_BYTES);
        let wide: Vec<&str> = std::iter::repeat_n(big.as_str(), 17).collect();
        assert_eq!(
            message(&action(&wide, &["true"])),
            "`run` holds 69632 bytes of arguments; at most 65536"
        );
        assert_eq!(
            message(&action(&["true", "a\0b"], &["true"])),
            "`run` argument 1 holds a NUL byte"
        );
        let mut a = action(&["true"], &["true"]);
        a.verify = Some(vec![]);
        assert!(message(&a).starts_with("`verify` must not be empty"));
        assert_eq!(
            action(&["/usr/bin/touch", "x"], &["rm", "-f", "x"]).check(),
            Ok(())
        );
    }

    #[test]
    fn validate_points_at_the_key_with_its_line_and_column() {
        let text = format!(
            "{}kind = \"command\"\nduration = \"1s\"\nrun = [\"true\"]\nrevert = [\"bin/undo\"]\n",
            crate::experiment::ONE_FAULT_HEAD
        );
        let e = crate::experiment::parse(Path::new("x.toml"), &text)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("x.toml: line 15, column 1: fault `f`: `revert` program `bin/undo` is a relative path: use an absolute path or a bare name looked up in PATH"),
            "{e}"
        );
        let text = format!(
            "{}kind = \"command\"\nduration = \"1s\"\nrun = [\"true\"]\nrevert = [\"true\"]\ntimout = \"1s\"\n",
            crate::experiment::ONE_FAULT_HEAD
        );
        let e = crate::experiment::parse(Path::new("x.toml"), &text)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 16, column 1")
                && e.contains("`timout` does not apply to kind `command`"),
            "{e}"
        );
    }

    #[test]
    fn timeouts_env_and_cwd_out_of_bounds_are_refused() {
        let mut a = action(&["true"], &["true"]);
        a.timeout_ms = 0;
        assert_eq!(message(&a), "`timeout` must be above 0");
        a.timeout_ms = 300_001;
        assert_eq!(message(&a), "`timeout` must be at most 5m (got 5m 1ms)");
        a.timeout_ms = 300_000;
        assert_eq!(a.check(), Ok(()));
        a.env.insert("1BAD".to_owned(), "x".to_owned());
        assert!(message(&a).starts_with("`env` name `1BAD` is not a variable name"));
        a.env.clear();
        a.env.insert("GOOD_1".to_owned(), "x\0y".to_owned());
        assert_eq!(
            message(&a),
            "`env` value of `GOOD_1` must be at most 4096 bytes without NUL"
        );
        a.env.clear();
        a.cwd = Some("relative/dir".to_owned());
        assert!(message(&a).starts_with("`cwd` must be an absolute path"));
        a.cwd = Some("/tmp".to_owned());
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn a_program_missing_on_this_host_is_found_before_anything_runs() {
        let a = action(&["true"], &["no-such-program-faultline-test"]);
        let err = a.prepare().unwrap_err();
        assert!(
            err.starts_with(
                "`revert`: program `no-such-program-faultline-test` is not found in PATH"
            ),
            "{err}"
        );
        let a = action(&["/nonexistent/x"], &["true"]);
        assert_eq!(
            a.prepare().unwrap_err(),
            "`run`: program /nonexistent/x is not an executable file on this host"
        );
        let p = action(&["true"], &["rm", "-f", "/tmp/x"])
            .prepare()
            .unwrap();
        assert!(p.revert.argv[0].starts_with('/'), "{:?}", p.revert.argv);
        assert!(p.revert.argv[0].ends_with("/rm"), "{:?}", p.revert.argv);
    }

    fn inv(argv: &[&str], timeout_ms: u64) -> Invocation {
        Invocation {
            argv: argv.iter().map(ToString::to_string).collect(),
            env: BTreeMap::from([("FAULTLINE_TEST_VALUE".to_owned(), "seen".to_owned())]),
            cwd: Some("/".to_owned()),
            timeout_ms,
        }
    }

    #[test]
    fn a_program_s_exit_code_output_env_and_cwd_are_reported_and_bounded() {
        let out = execute(
            "run",
            &inv(
                &[
                    "/bin/sh",
                    "-c",
                    "echo \"$FAULTLINE_TEST_VALUE in $(pwd)\"; printf '\\033[31mred' >&2; exit 3",
                ],
                10_000,
            ),
            Duration::from_secs(10),
        );
        assert!(!out.ok);
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.outcome, "exit 3");
        assert_eq!(out.stdout, "seen in /\n");
        assert_eq!(out.stderr, " [31mred", "escape sequences are defused");
        let out = execute(
            "run",
            &inv(
                &["/bin/sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x"],
                10_000,
            ),
            Duration::from_secs(10),
        );
        assert!(out.ok, "{out:?}");
        assert_eq!(
            out.stdout,
            format!("{}… (5904 more bytes)", "x".repeat(4096))
        );
    }

    #[test]
    fn a_program_past_its_timeout_is_killed_with_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let out = execute(
            "run",
            &inv(&["/bin/sh", "-c", &script], 300),
            Duration::from_millis(300),
        );
        assert!(!out.ok);
        assert_eq!(out.exit_code, None);
        assert_eq!(
            out.outcome,
            "timed out after 300ms; its process group was killed"
        );
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::process::read(grandchild).is_some_and(|p| p.state != 'Z') {
            assert!(Instant::now() < deadline, "the background sleep survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_failing_revert_is_retried_and_every_attempt_reported() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails twice, then succeeds: the attempts counted in a file.
        let script = format!("echo x >> {0}; [ $(wc -l < {0}) -ge 3 ]", count.display());
        let (result, outputs) = revert(&inv(&["/bin/sh", "-c", &script], 10_000));
        assert_eq!(outputs.len(), 3, "{outputs:?}");
        assert!(
            result.as_ref().unwrap().ends_with("exit 0 (attempt 3)"),
            "{result:?}"
        );
        let (result, outputs) = revert(&inv(&["/bin/false"], 10_000));
        assert_eq!(outputs.len(), 3);
        assert_eq!(
            result.unwrap_err(),
            "`revert` `/bin/false` failed 3 time(s) within 10s; last: exit 1"
        );
    }
}
