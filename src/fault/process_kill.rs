//! Owns the `process-kill` fault: send a signal (SIGKILL by default) to the selected processes, once.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::check::{self, Checked, FieldError};
use super::{Context, choose_victims, victims};
use crate::model::Pick;
use crate::process::{Delivery, ProcRef, Selector, parse_signal};
use crate::units::Percent;

/// The keys of a `process-kill` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    select: Option<victims::SelectTable>,
    count: Option<u32>,
    percent: Option<Percent>,
    signal: Option<String>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<ProcessKill, FieldError> {
        Ok(ProcessKill {
            select: victims::selector(self.select)?,
            pick: victims::pick(self.count, self.percent)?,
            signal: self.signal.unwrap_or_else(|| "SIGKILL".to_owned()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessKill {
    pub(crate) select: Selector,
    pub(crate) pick: Option<Pick>,
    pub(crate) signal: String,
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) victims: Vec<ProcRef>,
    signal: Signal,
}

/// How long a SIGKILLed process may take to disappear before the kill counts as not taken.
const DEATH_WAIT: Duration = Duration::from_secs(2);

impl ProcessKill {
    pub(crate) fn describe(&self) -> String {
        let pick = match self.pick {
            Some(Pick::Count(n)) => format!("{n} of "),
            Some(Pick::Percent(p)) => format!("{}% of ", p * 100.0),
            None => String::new(),
        };
        format!("send {} to {pick}{}", self.signal, self.select)
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        check::selector(&self.select)?;
        check::pick(self.pick)?;
        let signal =
            parse_signal(&self.signal).map_err(|e| FieldError::raw("signal", e.clone()))?;
        // A stop signal leaves the process stopped with nothing journaled to continue it: a kill
        // is instant and has no undo.
        if signal == Signal::SIGCONT {
            return Err(FieldError::new(
                "signal",
                "SIGCONT continues processes that a `process-pause` fault holds stopped, behind its back; a kill must not undo another fault",
            ));
        }
        if matches!(
            signal,
            Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
        ) {
            return Err(FieldError::new(
                "signal",
                format!(
                    "{signal} stops processes and a kill has nothing to undo, so they would stay stopped; use kind `process-pause`, which continues them on revert"
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let signal = parse_signal(&self.signal)?;
        let victims = choose_victims(&self.select, self.pick, ctx.seed, false)?.victims;
        Ok(Prepared { victims, signal })
    }
}

impl Prepared {
    /// A kill of exactly these processes (`container-kill` sends its signal through this).
    pub(super) fn new(victims: Vec<ProcRef>, signal: Signal) -> Prepared {
        Prepared { victims, signal }
    }

    pub(crate) fn inject(&self) -> Result<String, String> {
        let mut sent = Vec::new();
        for victim in &self.victims {
            if victim.signal(self.signal)? == Delivery::Sent {
                sent.push(victim.to_string());
            }
        }
        if sent.is_empty() {
            return Err("every selected process exited before it could be signalled".to_owned());
        }
        Ok(format!("sent {} to {}", self.signal, sent.join(", ")))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        if self.signal != Signal::SIGKILL {
            return Ok(format!("{} delivered", self.signal));
        }
        let deadline = Instant::now() + DEATH_WAIT;
        loop {
            let alive: Vec<String> = self
                .victims
                .iter()
                .filter(|v| v.is_alive())
                .map(ToString::to_string)
                .collect();
            if alive.is_empty() {
                return Ok("every victim has exited".to_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still alive {} s after SIGKILL: {}",
                    DEATH_WAIT.as_secs(),
                    alive.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(signal: &str) -> ProcessKill {
        ProcessKill {
            select: Selector::name("x"),
            pick: None,
            signal: signal.to_owned(),
        }
    }

    #[test]
    fn stop_signals_are_refused_and_point_to_process_pause() {
        for stop in ["SIGSTOP", "stop", "SIGTSTP", "SIGTTIN", "TTOU", "19"] {
            let e = kill(stop).check().unwrap_err();
            assert_eq!(e.field, "signal");
            assert!(
                e.message.contains("use kind `process-pause`"),
                "{stop}: {e}"
            );
        }
        for fine in ["SIGKILL", "SIGTERM", "9", "SIGHUP"] {
            assert_eq!(kill(fine).check(), Ok(()), "{fine}");
        }
        let e = kill("SIGNOPE").check().unwrap_err();
        assert!(e.message.starts_with("unknown signal `SIGNOPE`"), "{e}");
    }

    #[test]
    fn sigcont_is_refused_because_it_resumes_another_faults_victims() {
        for cont in ["SIGCONT", "cont", "18"] {
            let e = kill(cont).check().unwrap_err();
            assert_eq!(e.field, "signal");
            assert!(
                e.message.contains("must not undo another fault"),
                "{cont}: {e}"
            );
        }
    }
}
