//! Small helpers shared by the integration tests: running the binary, free ports, demo servers,
//! privileged-test gating, and guards that clean up whatever a test made, even when it fails.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod agent;
pub mod alertmanager;
pub mod chromium;
pub mod coordinator;
pub mod postgres;
pub mod runc;

pub const BIN: &str = env!("CARGO_BIN_EXE_faultline");
/// The dedicated agent executable (`src/bin/faultline-agent.rs`).
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_faultline-agent");

/// Whether this process can do what privileged tests need (namespaces, mounts, nft, tc).
pub fn is_root() -> bool {
    nix_is_root()
}

fn nix_is_root() -> bool {
    // /proc/self/status reports the effective uid as the second number of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Gate for tests that need root. Returns false (after saying so loudly) when the test must be
/// skipped; panics with a clear message when `FAULTLINE_REQUIRE_PRIVILEGED=1` demands it run.
#[must_use]
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("FAULTLINE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root (namespaces, mounts, nft or tc) and FAULTLINE_REQUIRE_PRIVILEGED=1 forbids skipping it"
    );
    eprintln!(
        "SKIPPED {test}: needs root; set FAULTLINE_REQUIRE_PRIVILEGED=1 to make this a failure"
    );
    false
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("faultline-test-")
        .tempdir()
        .expect("create temp dir")
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The result of one `faultline` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
}

impl Run {
    pub fn verdict(&self) -> &str {
        self.report
            .as_ref()
            .and_then(|r| r["verdict"].as_str())
            .unwrap_or("<no report>")
    }

    pub fn explain(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `faultline ARGS...` with its own state directory and returns its exit code and output.
pub fn faultline(args: &[&str], state_dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FAULTLINE_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the faultline binary")
}

/// Writes `toml` to a file in `dir`, runs it with `--report-json`, and parses the report.
pub fn run_experiment(dir: &Path, toml: &str, extra: &[&str]) -> Run {
    let file = dir.join("experiment.toml");
    std::fs::write(&file, toml).expect("write experiment");
    let report_path = dir.join("report.json");
    let _ = std::fs::remove_file(&report_path);
    let state = dir.join("state");
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--quiet",
        "--report-json",
        report_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = faultline(&args, &state);
    let report = std::fs::read_to_string(&report_path)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("report is JSON"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    }
}

/// A child process killed (with its whole process group) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Starts `argv` in its own process group.
    pub fn spawn(argv: &[&str]) -> Proc {
        use std::os::unix::process::CommandExt;
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn test process");
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python HTTP server on 127.0.0.1:`port`, serving `dir`.
pub fn http_server(port: u16, dir: &Path) -> Proc {
    let p = Proc::spawn(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
        dir.to_str().unwrap(),
    ]);
    wait_for_port(port, Duration::from_secs(10));
    p
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A tmpfs mounted on a fresh directory, unmounted (lazily, so a busy mount cannot leak) on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempdir();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ])
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Tmpfs { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Used fraction as `df` computes it.
    pub fn usage(&self) -> f64 {
        let out = Command::new("df")
            .args([
                "--output=used,avail",
                "-B1",
                self.dir.path().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().nth(1).expect("df output");
        let nums: Vec<f64> = line
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        nums[0] / (nums[0] + nums[1])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.dir.path().to_str().unwrap()])
            .status();
    }
}

/// Starts `faultline run FILE --quiet EXTRA...` in the background with its own state directory,
/// for tests that watch the host while the run holds its faults. Its watchdog is off, so a test
/// that kills the run sees what the journal alone must undo; `spawn_run_with_watchdog` keeps it.
pub fn spawn_run(file: &Path, state_dir: &Path, extra: &[&str]) -> Child {
    run_command(file, state_dir, extra)
        .env("FAULTLINE_NO_WATCHDOG", "1")
        .spawn()
        .expect("start faultline run")
}

/// `spawn_run` with the run's watchdog on, as users run it.
pub fn spawn_run_with_watchdog(file: &Path, state_dir: &Path, extra: &[&str]) -> Child {
    run_command(file, state_dir, extra)
        .spawn()
        .expect("start faultline run")
}

fn run_command(file: &Path, state_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["run", file.to_str().unwrap(), "--quiet"])
        .args(extra)
        .env("FAULTLINE_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Polls `ready` every 20 ms; panics naming `what` when it has not held within `within`.
pub fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `ready` every 10 ms until it holds or `within` has passed; returns how long it took, or
/// `None` when it never held (for tests that report or bound the time rather than panic).
pub fn poll_until(within: Duration, mut ready: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ready() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a test may conclude about a process from the state letter in `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Stopped by a signal (`T`, or `t` under a tracer): a pause holds.
    Stopped,
    /// Running, sleeping or in uninterruptible wait (`R`, `S`, `D`, ...). These are one value
    /// because a `sleep` continued a moment ago reads `R` before it is back in `S`, and no test
    /// may depend on which it catches.
    Awake,
    /// Exited, a zombie (`Z`), dead (`X`), or never existed.
    Gone,
}

/// The state of `pid`; see [`ProcState`] for what each value covers.
pub fn state_of(pid: u32) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcState::Gone;
    };
    // The command name in parentheses may hold spaces or `)`, so read after the last `) `.
    match stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
    {
        Some('T' | 't') => ProcState::Stopped,
        Some('Z' | 'X') | None => ProcState::Gone,
        Some(_) => ProcState::Awake,
    }
}

/// An experiment titled `title` whose steady state always holds (`true` every 100 ms over a
/// 300 ms window) and whose recovery window is 5 s, with `targets` and `faults` (TOML) in
/// between: for tests about what faults and agents do, not about probes.
pub fn always_steady_experiment(title: &str, targets: &str, faults: &str) -> String {
    format!(
        r#"title = "{title}"
{targets}
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "always"
command = ["true"]
every = "100ms"
{faults}
[recovery]
within = "5s"
"#
    )
}

/// The tests above rely on `state_of` telling a pause from a running or sleeping process, and a
/// process that is busy on a CPU (`R`) from a stopped one, whichever letter they catch.
#[test]
fn state_of_reads_stopped_awake_whether_running_or_sleeping_and_gone() {
    let signal = |pid: u32, signal: &str| {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    };
    let sleeping = Proc::spawn(&["sleep", "300"]);
    wait_until("sleep asleep", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/stat", sleeping.pid()))
            .is_ok_and(|s| s.contains(") S "))
    });
    assert_eq!(state_of(sleeping.pid()), ProcState::Awake);
    // A shell spinning on a CPU reads `R` nearly always: still awake, not a pause.
    let mut busy = Proc::spawn(&["sh", "-c", "while :; do :; done"]);
    wait_until("the busy shell running", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/stat", busy.pid()))
            .is_ok_and(|s| s.contains(") R "))
    });
    assert_eq!(state_of(busy.pid()), ProcState::Awake);
    signal(busy.pid(), "-STOP");
    wait_until("the busy shell stopped", Duration::from_secs(5), || {
        state_of(busy.pid()) == ProcState::Stopped
    });
    signal(busy.pid(), "-CONT");
    assert_ne!(state_of(busy.pid()), ProcState::Stopped);
    signal(busy.pid(), "-KILL");
    busy.child.wait().expect("reap the busy shell");
    assert_eq!(state_of(busy.pid()), ProcState::Gone);
}
