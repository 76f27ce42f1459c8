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
}

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

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Prepared {
        let args = vec!["--cpu-load".to_owned(), self.load.to_string()];
        Prepared {
            fault_id: ctx.fault_id.to_owned(),
            worker_args: vec![args; self.workers_on(&Host::this()) as usize],
            hold_each: None,
        }
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
        let (total, available) = meminfo()?;
        let reserve = (total / 10).max(256 << 20);
        if self.size.saturating_add(reserve) > available {
            return Err(format!(
                "refusing to hold {}: only {} of {} is available and at least {} must stay free",
                format_bytes(self.size),
                format_bytes(available),
                format_bytes(total),
                format_bytes(reserve)
            ));
        }
        let each = self.size / u64::from(self.workers);
        let args = vec!["--memory".to_owned(), each.to_string()];
        Ok(Prepared {
            fault_id: ctx.fault_id.to_owned(),
            worker_args: vec![args; self.workers as usize],
            hold_each: Some(each),
        })
    }
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("failed to find the faultline binary: {e}"))?;
        let mut pids = Vec::new();
        for args in &self.worker_args {
            let mut child = Command::new(&exe)
                .arg(WORKER_COMMAND)
                .args(["--fault-id", &self.fault_id])
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

/// The running workers of one fault, found by the tag in their command line.
fn workers_of(fault_id: &str) -> Vec<ProcRef> {
    let tag = format!(" {WORKER_COMMAND} --fault-id {fault_id} ");
    process::all()
        .into_iter()
        .filter(|p| p.cmdline.contains(&tag))
        .map(|p| p.to_ref())
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
fn meminfo() -> Result<(u64, u64), String> {
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
