//! Owns the `process-pause` fault: SIGSTOP the selected processes for the fault's duration, SIGCONT
//! them on revert — also when the revert runs from the journal after a crash.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::check::FieldError;
use super::{Context, choose_victims, victims};
use crate::model::Pick;
use crate::process::{Delivery, ProcRef, Selector};
use crate::units::Percent;

/// The keys of a `process-pause` table, as written (`duration` is common to every fault).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    select: Option<victims::SelectTable>,
    count: Option<u32>,
    percent: Option<Percent>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<ProcessPause, FieldError> {
        Ok(ProcessPause {
            select: victims::selector(self.select)?,
            pick: victims::pick(self.count, self.percent)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessPause {
    pub(crate) select: Selector,
    pub(crate) pick: Option<Pick>,
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) victims: Vec<ProcRef>,
    /// Matches left out because they were already stopped, for the inject's answer.
    left_out: Vec<String>,
}

impl ProcessPause {
    pub(crate) fn describe(&self) -> String {
        format!(
            "stop (SIGSTOP) {}; continue them (SIGCONT) on revert",
            self.select
        )
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        super::check::selector(&self.select)?;
        super::check::pick(self.pick)
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let chosen = choose_victims(&self.select, self.pick, ctx.seed, true)?;
        Ok(Prepared {
            victims: chosen.victims,
            left_out: chosen
                .stopped
                .iter()
                .map(|p| format!("pid {} ({})", p.pid, p.comm))
                .collect(),
        })
    }
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        let mut stopped = Vec::new();
        for victim in &self.victims {
            if victim.signal(Signal::SIGSTOP)? == Delivery::Sent {
                stopped.push(victim.to_string());
            }
        }
        if stopped.is_empty() {
            return Err("every selected process exited before it could be stopped".to_owned());
        }
        let left_out = if self.left_out.is_empty() {
            String::new()
        } else {
            format!(
                "; left out {}: already stopped, not by this fault",
                self.left_out.join(", ")
            )
        };
        Ok(format!("stopped {}{left_out}", stopped.join(", ")))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let running: Vec<String> = self
                .victims
                .iter()
                .filter(|v| v.state().is_some_and(|s| s != 'T' && s != 't'))
                .map(ToString::to_string)
                .collect();
            if running.is_empty() {
                return Ok("every victim is stopped".to_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not stopped 1 s after SIGSTOP: {}",
                    running.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Continues every process that is still the one that was stopped.
pub(super) fn resume(procs: &[ProcRef]) -> Result<String, String> {
    let mut resumed = Vec::new();
    let mut errors = Vec::new();
    for p in procs {
        match p.signal(Signal::SIGCONT) {
            Ok(Delivery::Sent) => resumed.push(p.to_string()),
            Ok(Delivery::Gone) => {}
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if resumed.is_empty() {
        Ok("no stopped process left to continue".to_owned())
    } else {
        Ok(format!("continued {}", resumed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep` stopped with SIGSTOP before any fault; continued and reaped on drop.
    struct Stopped(std::process::Child);

    impl Stopped {
        fn start() -> Stopped {
            let child = std::process::Command::new("sleep")
                .arg("301.25")
                .spawn()
                .unwrap();
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while crate::process::read(pid.as_raw()).is_none_or(|p| p.state != 'T') {
                assert!(Instant::now() < deadline, "sleep did not stop");
                std::thread::sleep(Duration::from_millis(5));
            }
            Stopped(child)
        }
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            fault_id: "pause-t",
            seed: 1,
            control_port: None,
        }
    }

    #[test]
    fn a_victim_stopped_before_the_fault_is_refused_by_pid_and_left_out_of_patterns() {
        let stopped = Stopped::start();
        let pid = stopped.0.id() as i32;
        let by_pid = ProcessPause {
            select: Selector::pid(pid),
            pick: None,
        };
        let err = by_pid.prepare(&ctx()).unwrap_err();
        assert_eq!(
            err,
            format!(
                "refusing to pause pid {pid} (sleep): it is already stopped (state T), so continuing it on revert would resume a process this fault did not stop"
            )
        );
        let by_pattern = ProcessPause {
            select: Selector::cmdline(r"^sleep 301\.25$"),
            pick: None,
        };
        let prepared = by_pattern.prepare(&ctx());
        match prepared {
            Ok(p) => {
                assert!(
                    p.victims.iter().all(|v| v.pid != pid),
                    "the stopped process was chosen: {:?}",
                    p.victims
                );
                assert!(p.left_out.contains(&format!("pid {pid} (sleep)")));
            }
            Err(e) => assert!(e.contains("already-stopped process(es) left out"), "{e}"),
        }
    }
}
