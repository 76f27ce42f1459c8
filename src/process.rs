//! Owns reading processes from `/proc`: selecting victims, identifying them across pid reuse, and
//! signalling them safely.
//!
//! Architecture invariant: a process is only ever signalled through [`ProcRef::signal`], which
//! re-checks the start time first, so a pid the kernel reused for another process is never touched.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use procfs::process::{FDTarget, Process};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// How a fault finds its victims. Exactly one way per fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Selector {
    Pid(i32),
    Pidfile(PathBuf),
    /// The kernel's short name (`comm`), matched exactly.
    Name(String),
    /// A regex over the whole command line, arguments joined by spaces.
    Cmdline(String),
    /// The process that owns a listening TCP socket on this port.
    Port(u16),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "pid {pid}"),
            Selector::Pidfile(path) => write!(f, "the pid in {}", path.display()),
            Selector::Name(name) => write!(f, "processes named `{name}`"),
            Selector::Cmdline(re) => write!(f, "processes whose command line matches /{re}/"),
            Selector::Port(port) => write!(f, "the process listening on TCP port {port}"),
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

    fn is_kernel_thread(&self) -> bool {
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

/// The processes no fault may ever signal: init, kthreadd, this process and every ancestor of it.
pub(crate) fn protected() -> HashSet<i32> {
    let mut pids: HashSet<i32> = [1, 2].into();
    let mut pid = std::process::id() as i32;
    while pid > 1 && pids.insert(pid) {
        match read(pid) {
            Some(info) => pid = info.ppid,
            None => break,
        }
    }
    pids
}

/// Why a process is protected, for error messages.
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

/// Finds the processes a selector names. Explicit selectors (`pid`, `pidfile`, `port`) that name a
/// protected process are an error; pattern selectors silently leave protected processes out.
pub(crate) fn select(selector: &Selector) -> Result<Matches, String> {
    let protected = protected();
    let explicit = |pid: i32| -> Result<Matches, String> {
        if protected.contains(&pid) {
            return Err(format!(
                "refusing to signal pid {pid}: it is {}",
                protection_reason(pid)
            ));
        }
        Ok(Matches {
            procs: read(pid).into_iter().collect(),
            excluded: Vec::new(),
        })
    };
    match selector {
        Selector::Pid(pid) => explicit(*pid),
        Selector::Pidfile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("failed to read pidfile {}: {e}", path.display()))?;
            let pid = text.trim().parse::<i32>().map_err(|_| {
                format!(
                    "pidfile {} does not hold a pid (it holds `{}`)",
                    path.display(),
                    text.trim()
                )
            })?;
            explicit(pid)
        }
        Selector::Port(port) => {
            let mut matches = Matches {
                procs: Vec::new(),
                excluded: Vec::new(),
            };
            for pid in listeners(*port)? {
                let found = explicit(pid)?;
                matches.procs.extend(found.procs);
            }
            Ok(matches)
        }
        Selector::Name(name) => Ok(split_protected(
            all().into_iter().filter(|p| &p.comm == name),
            &protected,
        )),
        Selector::Cmdline(pattern) => {
            let re = Regex::new(pattern)
                .map_err(|e| format!("invalid cmdline regex /{pattern}/: {e}"))?;
            Ok(split_protected(
                all()
                    .into_iter()
                    .filter(|p| !p.cmdline.is_empty() && re.is_match(&p.cmdline)),
                &protected,
            ))
        }
    }
}

fn split_protected(found: impl Iterator<Item = ProcInfo>, protected: &HashSet<i32>) -> Matches {
    let (excluded, procs) = found
        .filter(|p| !p.is_kernel_thread())
        .partition(|p: &ProcInfo| protected.contains(&p.pid));
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
        assert!(protected.contains(&1));
        assert!(protected.contains(&(std::process::id() as i32)));
        let err = select(&Selector::Pid(1)).unwrap_err();
        assert!(
            err.contains("refusing to signal pid 1: it is init"),
            "{err}"
        );
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
}
