//! Owns reading processes from `/proc`: selecting victims, identifying them across pid reuse, and
//! signalling them safely.
//!
//! Architecture invariant: a process is only ever signalled through [`ProcRef::signal`], which
//! re-checks the start time first, so a pid the kernel reused for another process is never touched.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use procfs::process::{FDTarget, Process};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// How a fault finds its victims: every key given must match (a conjunction), and at least one
/// is given. `pid`, `pidfile` and `port` name processes explicitly; the others are patterns.
/// On the wire a selector is a map of the keys given, so a one-key selector reads as before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pidfile: Option<PathBuf>,
    /// The kernel's short name (`comm`), matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// A regex over the whole command line, arguments joined by spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cmdline: Option<String>,
    /// The process that owns a listening TCP socket on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
    /// A container id or a unique prefix of one, read from each process's cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) container: Option<String>,
    /// A container's name, where its runtime records one (see `container::NAME_ANNOTATIONS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) container_name: Option<String>,
    /// A cgroup path: processes in it or below it, in any hierarchy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<String>,
}

impl Selector {
    #[cfg(test)]
    pub(crate) fn pid(pid: i32) -> Selector {
        Selector {
            pid: Some(pid),
            ..Selector::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn name(name: &str) -> Selector {
        Selector {
            name: Some(name.to_owned()),
            ..Selector::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn cmdline(pattern: &str) -> Selector {
        Selector {
            cmdline: Some(pattern.to_owned()),
            ..Selector::default()
        }
    }

    /// Whether no key is given (such a selector is refused: it would match everything).
    pub(crate) fn is_empty(&self) -> bool {
        self == &Selector::default()
    }

    /// Whether the selector names processes (`pid`, `pidfile`, `port`) rather than a pattern.
    pub(crate) fn is_explicit(&self) -> bool {
        self.pid.is_some() || self.pidfile.is_some() || self.port.is_some()
    }

    /// Each key given, as (what one key alone selects, the same as a condition).
    fn phrases(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(pid) = self.pid {
            out.push((format!("pid {pid}"), format!("have pid {pid}")));
        }
        if let Some(path) = &self.pidfile {
            let path = path.display();
            out.push((
                format!("the pid in {path}"),
                format!("have the pid in {path}"),
            ));
        }
        if let Some(name) = &self.name {
            out.push((
                format!("processes named `{name}`"),
                format!("are named `{name}`"),
            ));
        }
        if let Some(re) = &self.cmdline {
            out.push((
                format!("processes whose command line matches /{re}/"),
                format!("have a command line matching /{re}/"),
            ));
        }
        if let Some(port) = self.port {
            out.push((
                format!("the process listening on TCP port {port}"),
                format!("listen on TCP port {port}"),
            ));
        }
        if let Some(c) = &self.container {
            out.push((
                format!("processes in container `{c}`"),
                format!("are in container `{c}`"),
            ));
        }
        if let Some(n) = &self.container_name {
            out.push((
                format!("processes in the container named `{n}`"),
                format!("are in the container named `{n}`"),
            ));
        }
        if let Some(g) = &self.cgroup {
            out.push((
                format!("processes in cgroup `{g}` or below"),
                format!("are in cgroup `{g}` or below"),
            ));
        }
        out
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phrases = self.phrases();
        match phrases.as_slice() {
            [] => f.write_str("no process (an empty selector)"),
            [(alone, _)] => f.write_str(alone),
            many => {
                let conditions: Vec<&str> = many.iter().map(|(_, c)| c.as_str()).collect();
                write!(f, "processes that {}", conditions.join(" and "))
            }
        }
    }
}

/// A process identity that survives pid reuse: the pid plus the kernel's start time (in clock ticks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRef {
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    pub(crate) comm: String,
}

impl fmt::Display for ProcRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// What became of a signal sent to a [`ProcRef`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Sent,
    /// The process is gone, or its pid now belongs to another process.
    Gone,
}

impl ProcRef {
    /// Whether this exact process still exists (and is not a zombie).
    pub(crate) fn is_alive(&self) -> bool {
        match Process::new(self.pid).and_then(|p| p.stat()) {
            Ok(stat) => stat.starttime == self.start_time && stat.state != 'Z' && stat.state != 'X',
            Err(_) => false,
        }
    }

    /// The process state letter (`R`, `S`, `T`, ...) if this exact process still exists.
    pub(crate) fn state(&self) -> Option<char> {
        let stat = Process::new(self.pid).and_then(|p| p.stat()).ok()?;
        (stat.starttime == self.start_time).then_some(stat.state)
    }

    pub(crate) fn signal(&self, sig: Signal) -> Result<Delivery, String> {
        if !self.is_alive() {
            return Ok(Delivery::Gone);
        }
        match signal::kill(Pid::from_raw(self.pid), sig) {
            Ok(()) => Ok(Delivery::Sent),
            Err(nix::errno::Errno::ESRCH) => Ok(Delivery::Gone),
            Err(e) => Err(format!("failed to send {sig} to {self}: {e}")),
        }
    }
}

/// One process as seen in `/proc`.
#[derive(Clone, Debug)]
pub(crate) struct ProcInfo {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) comm: String,
    pub(crate) cmdline: String,
    pub(crate) start_time: u64,
    /// The state letter (`R`, `S`, `T` for stopped, ...) when it was read.
    pub(crate) state: char,
    /// From the kernel's `PF_KTHREAD` flag, not from "pid 2 or a child of it": inside a pid
    /// namespace (a container, an agent's test host) pid 2 is an ordinary process.
    kernel_thread: bool,
}

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags.
const PF_KTHREAD: u32 = 0x0020_0000;

impl ProcInfo {
    pub(crate) fn to_ref(&self) -> ProcRef {
        ProcRef {
            pid: self.pid,
            start_time: self.start_time,
            comm: self.comm.clone(),
        }
    }

    pub(crate) fn is_kernel_thread(&self) -> bool {
        self.kernel_thread
    }
}

pub(crate) fn read(pid: i32) -> Option<ProcInfo> {
    let process = Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    if stat.state == 'Z' || stat.state == 'X' {
        return None;
    }
    let cmdline = process
        .cmdline()
        .map(|args| args.join(" "))
        .unwrap_or_default();
    Some(ProcInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        comm: stat.comm,
        cmdline,
        start_time: stat.starttime,
        state: stat.state,
        kernel_thread: stat.flags & PF_KTHREAD != 0,
    })
}

pub(crate) fn all() -> Vec<ProcInfo> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|p| read(p.pid()))
        .collect()
}

/// The subcommand of this binary that runs the embedded agent's watchdog (`agent/watchdog.rs`).
const WATCHDOG_COMMAND: &str = "watchdog";

/// The processes no fault may ever signal, each with the reason: init of this pid namespace (pid
/// 1 as this process sees it), this process and every ancestor of it, and this process's own
/// watchdog. Every entry is a thread-group leader: a thread id is resolved to its leader before
/// it is looked up here. Kernel threads are refused separately, by their `PF_KTHREAD` flag.
pub(crate) fn protected() -> HashMap<i32, &'static str> {
    let me = std::process::id() as i32;
    let mut pids: HashMap<i32, &'static str> = HashMap::from([(1, "init of this pid namespace")]);
    pids.insert(me, "faultline itself");
    let mut pid = me;
    while let Some(parent) = read(pid).map(|info| info.ppid) {
        if parent <= 1 || pids.contains_key(&parent) {
            break;
        }
        pids.insert(parent, "an ancestor of faultline");
        pid = parent;
    }
    for watchdog in own_watchdogs(me) {
        pids.insert(watchdog, "faultline's own watchdog");
    }
    for other in faultline_processes() {
        pids.entry(other)
            .or_insert("a faultline agent, run, watchdog or fixture guard");
    }
    pids
}

/// The modes of this binary whose processes no fault may signal: freezing or killing another
/// agent, run, watchdog or fixture guard would defeat its dead-man switch (its faults would
/// outlive their lease). Stress workers are not among them: they are a fault's own load.
const GUARDED_MODES: [&str; 4] = ["agent", "run", WATCHDOG_COMMAND, "fixture-guard"];

/// The dedicated agent executable (`src/bin/faultline-agent.rs`), installed beside `faultline`.
const AGENT_EXECUTABLE: &str = "faultline-agent";
/// The executable with every subcommand.
const MAIN_EXECUTABLE: &str = "faultline";

/// Every process on the host that runs faultline — this same binary or its sibling executable in
/// the same directory (`faultline` beside `faultline-agent`), by `/proc/PID/exe` — in a guarded
/// mode (see [`guarded`]).
fn faultline_processes() -> Vec<i32> {
    let Ok(my_exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let executables = [
        my_exe.clone(),
        my_exe.with_file_name(MAIN_EXECUTABLE),
        my_exe.with_file_name(AGENT_EXECUTABLE),
    ];
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .filter_map(Result::ok)
        .filter(|p| {
            p.exe().is_ok_and(|exe| {
                executables.contains(&exe) && p.cmdline().is_ok_and(|argv| guarded(&exe, &argv))
            })
        })
        .map(|p| p.pid())
        .collect()
}

/// Whether a faultline process (`exe`, `argv`) is one no fault may signal: `faultline` in one of
/// the [`GUARDED_MODES`] (its first argument that is not a flag), or the dedicated agent
/// executable in any mode but the stress workers its own faults start.
fn guarded(exe: &Path, argv: &[String]) -> bool {
    if exe.file_name().is_some_and(|name| name == AGENT_EXECUTABLE) {
        return argv
            .get(1)
            .is_none_or(|mode| mode != crate::fault::STRESS_WORKER_COMMAND);
    }
    argv.iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|mode| GUARDED_MODES.contains(&mode.as_str()))
}

/// Every process on the host whose executable (`/proc/PID/exe`) is this same binary: faultline's
/// own agents, runs, guards and stress workers, whatever their command line says.
pub(crate) fn this_binary_processes() -> Vec<procfs::process::Process> {
    let Ok(my_exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .filter_map(Result::ok)
        .filter(|p| p.exe().is_ok_and(|exe| exe == my_exe))
        .collect()
}

/// This process's children that run this same binary's `watchdog` subcommand: the dead-man
/// switch of an embedded run, which must outlive any fault the run injects.
fn own_watchdogs(me: i32) -> Vec<i32> {
    let Ok(my_exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    children(me)
        .into_iter()
        .filter(|&child| {
            let Ok(process) = Process::new(child) else {
                return false;
            };
            process.exe().is_ok_and(|exe| exe == my_exe)
                && process
                    .cmdline()
                    .is_ok_and(|argv| argv.get(1).map(String::as_str) == Some(WATCHDOG_COMMAND))
        })
        .collect()
}

/// The children of `pid`, found by scanning `/proc` for processes whose parent it is (the
/// kernel's `task/*/children` lists need a config option not every kernel has).
fn children(pid: i32) -> Vec<i32> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    // Only `stat` is read: this runs for every selection, so it stays cheap.
    processes
        .filter_map(Result::ok)
        .filter(|p| p.stat().is_ok_and(|stat| stat.ppid == pid))
        .map(|p| p.pid())
        .collect()
}

/// The thread-group leader (the process) that a pid or thread id belongs to, from `Tgid:` in
/// `/proc/ID/status`. `/proc/TID` exists for every thread even though `/proc` does not list it,
/// and a signal sent to a thread id acts on its whole process.
pub(crate) fn thread_group_of(id: i32) -> Option<i32> {
    Process::new(id).ok()?.status().ok().map(|s| s.tgid)
}

/// Why a pid is protected, for messages about a pid the coordinator names before any agent reads
/// `/proc` (experiment validation); agents use the reasons [`protected`] gives.
pub(crate) fn protection_reason(pid: i32) -> &'static str {
    match pid {
        1 => "init, the first process",
        2 => "the kernel's thread parent",
        p if p == std::process::id() as i32 => "faultline itself",
        _ => "an ancestor of faultline",
    }
}

/// The result of resolving a selector against the processes running now.
#[derive(Debug)]
pub(crate) struct Matches {
    pub(crate) procs: Vec<ProcInfo>,
    /// Protected processes a pattern matched; they were left out.
    pub(crate) excluded: Vec<ProcInfo>,
}

/// At most this much of a pidfile is read: a pid is a few digits, and a pidfile pointed at the
/// wrong file (`/etc/shadow`) must not end up in an error message or an agent's audit log.
const PIDFILE_MAX: u64 = 64;

/// Reads the pid in a pidfile, reading at most [`PIDFILE_MAX`] bytes and never echoing them.
fn read_pidfile(path: &Path) -> Result<i32, String> {
    // Non-blocking, so a FIFO named as a pidfile fails here instead of hanging the agent.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| format!("failed to read pidfile {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("failed to read pidfile {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("pidfile {} is not a regular file", path.display()));
    }
    let mut head = Vec::new();
    file.take(PIDFILE_MAX + 1)
        .read_to_end(&mut head)
        .map_err(|e| format!("failed to read pidfile {}: {e}", path.display()))?;
    if head.len() as u64 > PIDFILE_MAX {
        return Err(format!(
            "pidfile {} does not hold a pid: it is longer than {PIDFILE_MAX} bytes (its content is not shown)",
            path.display()
        ));
    }
    std::str::from_utf8(&head)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| {
            format!(
                "pidfile {} does not hold a pid: its {} byte(s) are not a positive decimal number (its content is not shown)",
                path.display(),
                head.len()
            )
        })
}

/// Finds the processes a selector names: those that match every key given. Explicit keys
/// (`pid`, `pidfile`, `port`) that name a protected process or a kernel thread are an error;
/// patterns silently leave them out. A thread id stands for its whole process (signals act on
/// the thread group).
pub(crate) fn select(selector: &Selector) -> Result<Matches, String> {
    if selector.is_empty() {
        return Err("an empty selector: give at least one key".to_owned());
    }
    let protected = protected();
    let explicit = |id: i32| -> Result<Option<ProcInfo>, String> {
        let Some(pid) = thread_group_of(id) else {
            return Ok(None);
        };
        let named = if pid == id {
            format!("pid {id}")
        } else {
            format!("pid {id} (a thread of pid {pid})")
        };
        if let Some(reason) = protected.get(&pid) {
            return Err(format!("refusing to signal {named}: it is {reason}"));
        }
        let Some(info) = read(pid) else {
            return Ok(None);
        };
        if info.is_kernel_thread() {
            return Err(format!(
                "refusing to signal {named} ({}): it is a kernel thread",
                info.comm
            ));
        }
        Ok(Some(info))
    };
    // The processes the explicit keys name, each key narrowing the others.
    let mut named: Option<Vec<ProcInfo>> = None;
    let mut narrow = |found: Vec<ProcInfo>| {
        named = Some(match named.take() {
            None => found,
            Some(before) => before
                .into_iter()
                .filter(|p| found.iter().any(|f| f.pid == p.pid))
                .collect(),
        });
    };
    if let Some(pid) = selector.pid {
        narrow(explicit(pid)?.into_iter().collect());
    }
    if let Some(path) = &selector.pidfile {
        narrow(explicit(read_pidfile(path)?)?.into_iter().collect());
    }
    if let Some(port) = selector.port {
        let mut found = Vec::new();
        for pid in listeners(port)? {
            found.extend(explicit(pid)?);
        }
        narrow(found);
    }
    let is_explicit = named.is_some();
    let candidates = named.unwrap_or_else(all);
    let filter = Filter::new(selector, &candidates)?;
    let found = candidates.into_iter().filter(|p| filter.accepts(p));
    if is_explicit {
        return Ok(Matches {
            procs: found.collect(),
            excluded: Vec::new(),
        });
    }
    Ok(split_protected(found, &protected))
}

/// The pattern keys of a selector, ready to test processes against.
struct Filter<'s> {
    name: Option<&'s str>,
    cmdline: Option<Regex>,
    /// The container a `container` or `container_name` key resolved to (both, if both are
    /// given: then they must be the same one), with the index that says where each process is.
    /// `Some(None)` when a key is given but no running container fits it.
    containers: Option<(Option<String>, crate::container::Index)>,
    cgroup: Option<&'s str>,
}

impl<'s> Filter<'s> {
    fn new(selector: &'s Selector, candidates: &[ProcInfo]) -> Result<Filter<'s>, String> {
        let cmdline = match &selector.cmdline {
            None => None,
            Some(pattern) => Some(
                Regex::new(pattern)
                    .map_err(|e| format!("invalid cmdline regex /{pattern}/: {e}"))?,
            ),
        };
        let containers = if selector.container.is_some() || selector.container_name.is_some() {
            let index = crate::container::Index::scan(candidates.iter().map(|p| p.pid));
            let by_id = match &selector.container {
                Some(reference) => Some(index.resolve(reference)?),
                None => None,
            };
            let by_name = match &selector.container_name {
                Some(name) => Some(index.resolve_name(name)?),
                None => None,
            };
            let id = match (by_id, by_name) {
                (Some(a), Some(b)) => a.filter(|a| b.as_ref() == Some(a)),
                (Some(one), None) | (None, Some(one)) => one,
                (None, None) => None,
            };
            Some((id, index))
        } else {
            None
        };
        Ok(Filter {
            name: selector.name.as_deref(),
            cmdline,
            containers,
            cgroup: selector.cgroup.as_deref(),
        })
    }

    fn accepts(&self, p: &ProcInfo) -> bool {
        if self.name.is_some_and(|name| p.comm != name) {
            return false;
        }
        if self
            .cmdline
            .as_ref()
            .is_some_and(|re| p.cmdline.is_empty() || !re.is_match(&p.cmdline))
        {
            return false;
        }
        if let Some((id, index)) = &self.containers {
            let inside = id
                .as_ref()
                .is_some_and(|id| index.container_of(p.pid).is_some_and(|f| &f.id == id));
            if !inside {
                return false;
            }
        }
        if let Some(prefix) = self.cgroup {
            let lines = crate::container::cgroups_of(p.pid);
            if !lines
                .iter()
                .any(|l| crate::container::is_under(&l.path, prefix))
            {
                return false;
            }
        }
        true
    }
}

fn split_protected(
    found: impl Iterator<Item = ProcInfo>,
    protected: &HashMap<i32, &'static str>,
) -> Matches {
    let (excluded, procs) = found
        .filter(|p| !p.is_kernel_thread())
        .partition(|p: &ProcInfo| protected.contains_key(&p.pid));
    Matches { procs, excluded }
}

/// The pids owning a listening TCP socket (IPv4 or IPv6) on `port`, found through socket inodes.
fn listeners(port: u16) -> Result<Vec<i32>, String> {
    let mut inodes = HashSet::new();
    let tables = [procfs::net::tcp(), procfs::net::tcp6()];
    for table in tables.into_iter().flatten() {
        for entry in table {
            if entry.state == procfs::net::TcpState::Listen && entry.local_address.port() == port {
                inodes.insert(entry.inode);
            }
        }
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pids = Vec::new();
    let processes =
        procfs::process::all_processes().map_err(|e| format!("failed to list processes: {e}"))?;
    for process in processes.filter_map(Result::ok) {
        let Ok(fds) = process.fd() else { continue };
        let owns = fds
            .filter_map(Result::ok)
            .any(|fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)));
        if owns {
            pids.push(process.pid());
        }
    }
    Ok(pids)
}

/// Parses a signal name (`SIGKILL`, `KILL`) or number (`9`).
pub(crate) fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("unknown signal `{name}`: write e.g. `SIGKILL`, `SIGTERM` or `9`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_this_process_are_protected() {
        let protected = protected();
        assert!(protected.contains_key(&1));
        assert!(protected.contains_key(&(std::process::id() as i32)));
        let err = select(&Selector::pid(1)).unwrap_err();
        assert!(
            err.contains("refusing to signal pid 1: it is init of this pid namespace"),
            "{err}"
        );
    }

    #[test]
    fn every_key_given_must_match() {
        let mut one = std::process::Command::new("sleep")
            .arg("304.125")
            .spawn()
            .unwrap();
        let mut two = std::process::Command::new("sleep")
            .arg("304.25")
            .spawn()
            .unwrap();
        let (a, b) = (one.id() as i32, two.id() as i32);
        let both = Selector {
            name: Some("sleep".to_owned()),
            cmdline: Some(r"^sleep 304\.125$".to_owned()),
            ..Selector::default()
        };
        let by_both = select(&both).map(|m| m.procs.iter().map(|p| p.pid).collect::<Vec<_>>());
        // An explicit pid narrowed by a name it does not have matches nothing.
        let mismatch = Selector {
            pid: Some(b),
            name: Some("python3".to_owned()),
            ..Selector::default()
        };
        let by_mismatch = select(&mismatch).map(|m| m.procs.len());
        let by_pid_and_name = select(&Selector {
            pid: Some(b),
            name: Some("sleep".to_owned()),
            ..Selector::default()
        })
        .map(|m| m.procs.iter().map(|p| p.pid).collect::<Vec<_>>());
        for child in [&mut one, &mut two] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert_eq!(by_both.unwrap(), [a]);
        assert_eq!(by_mismatch.unwrap(), 0);
        assert_eq!(by_pid_and_name.unwrap(), [b]);
        assert_eq!(
            both.to_string(),
            r"processes that are named `sleep` and have a command line matching /^sleep 304\.125$/"
        );
        assert_eq!(Selector::name("x").to_string(), "processes named `x`");
        assert!(select(&Selector::default()).is_err());
    }

    #[test]
    fn the_agent_executable_is_guarded_in_every_mode_but_its_stress_workers() {
        let argv = |args: &[&str]| args.iter().map(ToString::to_string).collect::<Vec<_>>();
        let agent = Path::new("/usr/local/bin/faultline-agent");
        let main = Path::new("/usr/local/bin/faultline");
        // Its first argument is a flag's value, not a mode: it is guarded all the same.
        let daemon = argv(&[
            "faultline-agent",
            "--listen",
            "0.0.0.0:7443",
            "--token-file",
            "t",
        ]);
        assert!(guarded(agent, &daemon));
        let worker = argv(&[
            "faultline-agent",
            "stress-worker",
            "--fault-id=x",
            "--parent",
            "1",
        ]);
        assert!(!guarded(agent, &worker));
        assert!(guarded(
            main,
            &argv(&["faultline", "agent", "--listen", "0.0.0.0:7443"])
        ));
        assert!(guarded(
            main,
            &argv(&["faultline", "--quiet", "run", "x.toml"])
        ));
        assert!(!guarded(main, &worker));
        assert!(!guarded(main, &argv(&["faultline", "validate", "x.toml"])));
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGKILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn a_reused_pid_is_never_signalled() {
        let me = read(std::process::id() as i32).unwrap();
        let stale = ProcRef {
            start_time: me.start_time + 1,
            ..me.to_ref()
        };
        assert!(!stale.is_alive());
        assert_eq!(stale.signal(Signal::SIGCONT).unwrap(), Delivery::Gone);
    }

    #[test]
    fn a_thread_id_of_this_process_is_protected_like_the_process() {
        let me = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = stopped.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(thread_group_of(tid), Some(me));
        let result = select(&Selector::pid(tid));
        stop.send(()).unwrap();
        thread.join().unwrap();
        let err = result.expect_err("a thread of this process was selected");
        assert_eq!(
            err,
            format!("refusing to signal pid {tid} (a thread of pid {me}): it is faultline itself")
        );
    }

    #[test]
    fn kernel_threads_are_refused_by_their_flag_not_their_number() {
        let kthread = all()
            .into_iter()
            .find(|p| p.is_kernel_thread() && p.pid > 2)
            .expect("no kernel thread is visible in /proc: run this test on a host, not in a pid namespace");
        let err = select(&Selector::pid(kthread.pid)).expect_err("a kernel thread was selected");
        assert_eq!(
            err,
            format!(
                "refusing to signal pid {} ({}): it is a kernel thread",
                kthread.pid, kthread.comm
            )
        );
        assert!(
            !protected().contains_key(&2),
            "pid 2 is protected by its number"
        );
        if read(2).is_some_and(|p| p.is_kernel_thread()) {
            let err = select(&Selector::pid(2)).expect_err("kthreadd was selected");
            assert!(err.ends_with("it is a kernel thread"), "{err}");
        }
    }

    #[test]
    fn a_pidfile_that_holds_no_pid_is_refused_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "root:$6$SECRETHASH:19000:0:99999:7:::\n").unwrap();
        let err = select(&Selector {
            pidfile: Some(secret.clone()),
            ..Selector::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            format!(
                "pidfile {} does not hold a pid: its 38 byte(s) are not a positive decimal number (its content is not shown)",
                secret.display()
            )
        );
        let long = dir.path().join("long");
        std::fs::write(
            &long,
            format!("{}\n{}", std::process::id(), "x".repeat(1 << 20)),
        )
        .unwrap();
        let err = select(&Selector {
            pidfile: Some(long.clone()),
            ..Selector::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            format!(
                "pidfile {} does not hold a pid: it is longer than 64 bytes (its content is not shown)",
                long.display()
            )
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = select(&Selector {
            pidfile: Some(fifo.clone()),
            ..Selector::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            format!("pidfile {} is not a regular file", fifo.display())
        );
        let good = dir.path().join("good");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&good, format!("{}\n", child.id())).unwrap();
        let found = select(&Selector {
            pidfile: Some(good),
            ..Selector::default()
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.unwrap().procs[0].pid, child.id() as i32);
    }
}
