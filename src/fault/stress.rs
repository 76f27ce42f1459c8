//! Owns the `cpu-stress` and `memory-stress` faults: worker processes (this binary, hidden
//! `stress-worker` subcommand) that burn CPU at a duty cycle or hold touched memory, killed on revert.
//!
//! Workers are tagged with the fault id in their command line, so the journaled undo can find and
//! kill them after a crash without knowing their pids; and each worker exits by itself when its
//! parent (the agent) disappears, so even an agent killed with SIGKILL leaves no load behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::Context;
use super::check::{self, Checked, FieldError, Host};
use crate::process::{self, Delivery, ProcRef};
use crate::units::{ByteSize, Percent, format_bytes};

/// The hidden subcommand the workers run as.
pub(crate) const WORKER_COMMAND: &str = "stress-worker";
/// How often a worker checks on its parent, and the CPU duty-cycle period.
const PERIOD: Duration = Duration::from_millis(100);

/// The keys of a `cpu-stress` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CpuTable {
    workers: Option<u32>,
    load: Option<Percent>,
}

impl CpuTable {
    #[expect(
        clippy::unnecessary_wraps,
        reason = "every kind's validate has this shape, for the one dispatch in fault.rs"
    )]
    pub(crate) fn validate(self) -> Result<CpuStress, FieldError> {
        // Without `workers`, the agent starts one per CPU of its own host.
        Ok(CpuStress {
            workers: self.workers,
            load: self.load.map_or(1.0, |p| p.0),
        })
    }
}

/// The keys of a `memory-stress` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemoryTable {
    workers: Option<u32>,
    size: Option<ByteSize>,
}

impl MemoryTable {
    pub(crate) fn validate(self) -> Result<MemoryStress, FieldError> {
        let Some(size) = self.size else {
            return Err(FieldError::raw(
                "size",
                "memory-stress needs `size`, e.g. `size = \"1GiB\"`".to_owned(),
            ));
        };
        Ok(MemoryStress {
            workers: self.workers.unwrap_or(1),
            size: size.0,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CpuStress {
    /// `None`: one per CPU of the agent, decided on the agent.
    #[serde(default)]
    pub(crate) workers: Option<u32>,
    /// Busy fraction of each worker's time, `0.0..=1.0`.
    pub(crate) load: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemoryStress {
    pub(crate) workers: u32,
    /// Total bytes held, split evenly across the workers.
    pub(crate) size: u64,
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) fault_id: String,
    /// One argument list per worker, after the subcommand and tag.
    worker_args: Vec<Vec<String>>,
    /// Bytes each worker must hold before the fault counts as injected (memory only).
    hold_each: Option<u64>,
    /// Held from prepare to the end of verify, so stress faults applied at once take turns and
    /// each counts the workers (and memory) the others started against the host's limits.
    _host_lock: crate::fault::serial::Held,
}

/// The key every stress fault's prepare → verify holds: the host's CPUs and memory are one budget.
const HOST_KEY: &str = "stress:host";

impl CpuStress {
    pub(crate) fn describe(&self) -> String {
        let workers = match self.workers {
            Some(n) => n.to_string(),
            None => "one per CPU of the target".to_owned(),
        };
        format!(
            "run {workers} CPU burner process(es) at {} load each; kill them on revert",
            Percent(self.load)
        )
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        if let Some(workers) = self.workers {
            check::workers(workers)?;
        }
        check::share("load", self.load)
    }

    pub(crate) fn preview(&self) -> String {
        let workers = self
            .workers
            .map_or_else(|| "one per CPU".to_owned(), |n| n.to_string());
        format!("starts new processes ({workers}); acts on nothing that exists now")
    }

    /// The agent's own limits: the worker count it would start against its CPUs.
    pub(crate) fn check_host(&self, host: &Host) -> Checked {
        host.workers("workers", self.workers_on(host))
    }

    /// The number of workers on `host`: as asked, or one per CPU of the agent (not of the
    /// coordinator, which may be a different machine).
    pub(crate) fn workers_on(&self, host: &Host) -> u32 {
        self.workers.unwrap_or(host.cpus)
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let lock = crate::fault::serial::hold(HOST_KEY.to_owned());
        let host = Host::this();
        let workers = self.workers_on(&host);
        let running = live_workers().len() as u32;
        host_has_room(&host, running, workers)?;
        let args = vec!["--cpu-load".to_owned(), self.load.to_string()];
        Ok(Prepared {
            fault_id: ctx.fault_id.to_owned(),
            worker_args: vec![args; workers as usize],
            hold_each: None,
            _host_lock: lock,
        })
    }
}

impl MemoryStress {
    pub(crate) fn describe(&self) -> String {
        format!(
            "hold {} of touched memory in {} process(es); kill them on revert (refused if it would leave the host under 10% of its memory available)",
            format_bytes(self.size),
            self.workers
        )
    }

    pub(crate) fn preview(&self) -> String {
        match meminfo() {
            Ok((total, available)) => format!(
                "now {} available of {}; would hold {} more",
                format_bytes(available),
                format_bytes(total),
                format_bytes(self.size)
            ),
            Err(e) => e,
        }
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        check::workers(self.workers)?;
        if self.size == 0 {
            return Err(check::FieldError::new("size", "must be above zero"));
        }
        Ok(())
    }

    pub(crate) fn check_host(&self, host: &Host) -> Checked {
        host.workers("workers", self.workers)
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let lock = crate::fault::serial::hold(HOST_KEY.to_owned());
        let running = live_workers();
        host_has_room(&Host::this(), running.len() as u32, self.workers)?;
        let (total, available) = meminfo()?;
        // Workers still touching their memory hold less than they will: MemAvailable does not
        // know the rest yet, so it counts as taken.
        let promised: u64 = running
            .iter()
            .filter_map(|w| {
                let bytes = w.memory?;
                Some(bytes.saturating_sub(resident_bytes(w.proc.pid).unwrap_or(0)))
            })
            .sum();
        let available = available.saturating_sub(promised);
        let reserve = memory_reserve(total);
        if self.size.saturating_add(reserve) > available {
            return Err(format!(
                "refusing to hold {}: only {} of {} is available (after {} still promised to running memory-stress workers) and at least {} must stay free",
                format_bytes(self.size),
                format_bytes(available),
                format_bytes(total),
                format_bytes(promised),
                format_bytes(reserve)
            ));
        }
        let each = self.size / u64::from(self.workers);
        let args = vec!["--memory".to_owned(), each.to_string()];
        Ok(Prepared {
            fault_id: ctx.fault_id.to_owned(),
            worker_args: vec![args; self.workers as usize],
            hold_each: Some(each),
            _host_lock: lock,
        })
    }
}

/// The memory a fault never takes from the host: a tenth of it, at least 256 MiB.
pub(super) fn memory_reserve(total: u64) -> u64 {
    (total / 10).max(256 << 20)
}

/// Refuses starting `more` workers when the stress workers already running on the host (of every
/// fault, of every agent running this binary) would take the total past the per-host cap.
fn host_has_room(host: &Host, running: u32, more: u32) -> Result<(), String> {
    let most = host.cpus.saturating_mul(check::WORKERS_PER_CPU);
    if running.saturating_add(more) > most {
        return Err(format!(
            "refusing to start {more} stress worker(s): {running} are already running on this host, and the cap is {most} ({} per CPU, {} CPU(s)) across all stress faults",
            check::WORKERS_PER_CPU,
            host.cpus
        ));
    }
    Ok(())
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("failed to find the faultline binary: {e}"))?;
        let mut pids = Vec::new();
        for args in &self.worker_args {
            let mut child = Command::new(&exe)
                .arg(WORKER_COMMAND)
                // One argument, so an id can never be read as a flag of its own.
                .arg(format!("--fault-id={}", self.fault_id))
                .args(["--parent", &std::process::id().to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("failed to start a stress worker: {e}"))?;
            pids.push(child.id());
            // Reap the worker when it exits, so killed workers do not linger as zombies.
            std::thread::spawn(move || child.wait());
        }
        Ok(format!("started {} worker(s): pids {pids:?}", pids.len()))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let workers = workers_of(&self.fault_id);
            let short = workers.len() < self.worker_args.len();
            let holding = self.hold_each.is_none_or(|each| {
                workers.iter().all(|w| {
                    resident_bytes(w.pid).is_some_and(|rss| rss as f64 >= each as f64 * 0.9)
                })
            });
            if !short && holding {
                return Ok(match self.hold_each {
                    Some(each) => format!(
                        "{} worker(s) each hold {}",
                        workers.len(),
                        format_bytes(each)
                    ),
                    None => format!("{} worker(s) running", workers.len()),
                });
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {} of {} stress worker(s) running and holding their share after 10 s",
                    workers.len(),
                    self.worker_args.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running stress worker of this binary, as its exact command line says.
struct Worker {
    proc: ProcRef,
    fault_id: String,
    /// Bytes it holds once it has touched them (memory workers).
    memory: Option<u64>,
}

/// Every live stress worker on the host: a process whose executable is this binary, whose argv is
/// exactly the form `inject` starts (`stress-worker --fault-id=ID --parent PID --cpu-load X` or
/// `--memory N`), and whose parent is still the process its argv names. A process that only
/// looks like one (`exec -a "stress-worker --fault-id=x" sleep`) is none of them.
fn live_workers() -> Vec<Worker> {
    process::this_binary_processes()
        .into_iter()
        .filter_map(|p| {
            let argv = p.cmdline().ok()?;
            let info = process::read(p.pid())?;
            let (fault_id, memory) = worker_form(&argv, info.ppid)?;
            Some(Worker {
                proc: info.to_ref(),
                fault_id,
                memory,
            })
        })
        .collect()
}

/// The fault id and memory size of a worker's argv, if it is exactly the worker form and names
/// `ppid` as its parent.
fn worker_form(argv: &[String], ppid: i32) -> Option<(String, Option<u64>)> {
    let [_, command, id, parent_flag, parent, work, amount] = argv else {
        return None;
    };
    let fault_id = id.strip_prefix("--fault-id=")?;
    let parent: i32 = parent.parse().ok()?;
    if command != WORKER_COMMAND || parent_flag != "--parent" || parent != ppid {
        return None;
    }
    let memory = match work.as_str() {
        "--cpu-load" => {
            amount.parse::<f64>().ok()?;
            None
        }
        "--memory" => Some(amount.parse::<u64>().ok()?),
        _ => return None,
    };
    Some((fault_id.to_owned(), memory))
}

/// The running workers of one fault.
fn workers_of(fault_id: &str) -> Vec<ProcRef> {
    live_workers()
        .into_iter()
        .filter(|w| w.fault_id == fault_id)
        .map(|w| w.proc)
        .collect()
}

/// Kills every worker of the fault. Idempotent.
pub(super) fn kill_workers(fault_id: &str) -> Result<String, String> {
    let mut killed = 0;
    for w in workers_of(fault_id) {
        if w.signal(Signal::SIGKILL)? == Delivery::Sent {
            killed += 1;
        }
    }
    Ok(if killed == 0 {
        "no stress worker left to stop".to_owned()
    } else {
        format!("killed {killed} stress worker(s)")
    })
}

fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// (MemTotal, MemAvailable) in bytes.
pub(super) fn meminfo() -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("failed to read /proc/meminfo: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok((field("MemTotal:")?, field("MemAvailable:")?))
}

/// What a worker does, from its command line.
pub(crate) enum Work {
    Cpu { load: f64 },
    Memory { bytes: u64 },
}

/// The body of a stress worker process. Returns when its parent, the agent that started it, is
/// gone. The parent's pid comes from the command line rather than from `getppid` at start: the
/// agent may die before the worker's first instruction, and the worker must notice that too.
pub(crate) fn worker_main(work: &Work, parent: u32) {
    let held: Vec<u8> = match work {
        Work::Memory { bytes } => {
            let mut block = vec![0_u8; usize::try_from(*bytes).unwrap_or(usize::MAX)];
            // Touch every page so the memory is really resident, not just reserved.
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            block
        }
        Work::Cpu { .. } => Vec::new(),
    };
    while std::os::unix::process::parent_id() == parent {
        match work {
            Work::Cpu { load } => {
                let busy_until = Instant::now() + PERIOD.mul_f64(load.clamp(0.0, 1.0));
                let mut x: u64 = 1;
                while Instant::now() < busy_until {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
                std::thread::sleep(PERIOD.mul_f64(1.0 - load.clamp(0.0, 1.0)));
            }
            Work::Memory { .. } => {
                std::hint::black_box(&held);
                std::thread::sleep(PERIOD);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impostor_with_a_worker_command_line_is_not_a_worker() {
        let mut impostors: Vec<std::process::Child> = [
            "innocent stress-worker --fault-id spoof2 x",
            "stress-worker --fault-id=spoof2 --parent 1 --cpu-load 1",
        ]
        .iter()
        .map(|name| {
            Command::new("bash")
                .args(["-c", &format!("exec -a \"{name}\" sleep 300")])
                .spawn()
                .unwrap()
        })
        .collect();
        let pids: Vec<i32> = impostors.iter().map(|c| c.id() as i32).collect();
        // Wait until both have exec'd into sleep with their disguise.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pids
            .iter()
            .all(|&pid| process::read(pid).is_some_and(|p| p.cmdline.contains("spoof2")))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = workers_of("spoof2");
        let said = kill_workers("spoof2");
        let alive: Vec<bool> = impostors
            .iter_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .collect();
        for c in &mut impostors {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(found.is_empty(), "impostors counted as workers: {found:?}");
        assert_eq!(said.unwrap(), "no stress worker left to stop");
        assert_eq!(alive, [true, true], "an impostor was killed");
    }

    #[test]
    fn only_the_exact_worker_form_with_its_real_parent_is_a_worker() {
        let argv = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let good = argv(&[
            "/x/faultline",
            "stress-worker",
            "--fault-id=a-1",
            "--parent",
            "7",
            "--memory",
            "4096",
        ]);
        assert_eq!(worker_form(&good, 7), Some(("a-1".to_owned(), Some(4096))));
        assert_eq!(worker_form(&good, 8), None, "its parent is gone");
        let cpu = argv(&[
            "f",
            "stress-worker",
            "--fault-id=b",
            "--parent",
            "7",
            "--cpu-load",
            "0.5",
        ]);
        assert_eq!(worker_form(&cpu, 7), Some(("b".to_owned(), None)));
        for bad in [
            argv(&[
                "f",
                "stress-worker",
                "--fault-id",
                "b",
                "--parent",
                "7",
                "--cpu-load",
            ]),
            argv(&[
                "f",
                "stress-worker",
                "--fault-id=b",
                "--parent",
                "7",
                "--cpu-load",
                "0.5",
                "x",
            ]),
            argv(&[
                "f",
                "other",
                "--fault-id=b",
                "--parent",
                "7",
                "--cpu-load",
                "0.5",
            ]),
            argv(&[
                "f",
                "stress-worker",
                "--fault-id=b",
                "--parent",
                "7",
                "--memory",
                "lots",
            ]),
        ] {
            assert_eq!(worker_form(&bad, 7), None, "{bad:?}");
        }
    }

    #[test]
    fn the_worker_cap_counts_workers_of_every_fault() {
        let host = Host {
            cpus: 2,
            net_class: std::path::Path::new("/sys/class/net"),
        };
        assert_eq!(host_has_room(&host, 0, 8), Ok(()));
        let err = host_has_room(&host, 8, 8).unwrap_err();
        assert!(
            err.contains(
                "8 are already running on this host, and the cap is 8 (4 per CPU, 2 CPU(s))"
            ),
            "{err}"
        );
    }
}
