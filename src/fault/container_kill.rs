//! Owns the `container-kill` fault: send a signal (SIGKILL by default) to a container's init —
//! pid 1 of its pid namespace — once, so its runtime sees the container exit. The container is
//! found by id (or a unique prefix) or by name from the processes' cgroups, no runtime socket.

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::check::{Checked, FieldError};
use super::process_kill;
use super::{Context, container_pause};
use crate::process::{ProcRef, parse_signal};

/// The keys of a `container-kill` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    container: Option<String>,
    container_name: Option<String>,
    signal: Option<String>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<ContainerKill, FieldError> {
        Ok(ContainerKill {
            target: container_pause::target(self.container, self.container_name, None)?,
            signal: self.signal.unwrap_or_else(|| "SIGKILL".to_owned()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContainerKill {
    pub(crate) target: container_pause::Target,
    pub(crate) signal: String,
}

/// The signals a container's init may be sent: those that end a process. Stop signals would
/// leave it stopped with nothing to continue it (`container-pause` freezes instead), and a
/// pid-namespace init ignores from its host any other signal it has no handler for.
const SIGNALS: [Signal; 5] = [
    Signal::SIGKILL,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
];

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) container: String,
    pub(crate) kill: process_kill::Prepared,
}

impl ContainerKill {
    pub(crate) fn describe(&self) -> String {
        format!(
            "send {} to the init (pid 1 of its pid namespace) of {}",
            self.signal, self.target
        )
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        self.target.check()?;
        let signal = parse_signal(&self.signal)
            .map_err(|e| FieldError::new("signal", format!("must name a signal: {e}")))?;
        if !SIGNALS.contains(&signal) {
            return Err(FieldError::new(
                "signal",
                format!(
                    "{signal} is not one of the signals a container-kill sends: {}",
                    SIGNALS
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn prepare(&self, _ctx: &Context<'_>) -> Result<Prepared, String> {
        let signal = parse_signal(&self.signal)?;
        let (container, init) = self.target.init()?;
        Ok(Prepared {
            container,
            kill: process_kill::Prepared::new(vec![init], signal),
        })
    }
}

impl Prepared {
    pub(crate) fn init(&self) -> &[ProcRef] {
        &self.kill.victims
    }

    pub(crate) fn targets(&self) -> Vec<String> {
        self.kill
            .victims
            .iter()
            .map(|v| format!("container {} (init {v})", self.container))
            .collect()
    }

    pub(crate) fn inject(&self) -> Result<String, String> {
        self.kill
            .inject()
            .map(|done| format!("container {}: {done}", self.container))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        self.kill.verify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(signal: &str) -> ContainerKill {
        ContainerKill {
            target: container_pause::Target::Container("abcd".to_owned()),
            signal: signal.to_owned(),
        }
    }

    #[test]
    fn only_signals_that_end_a_process_are_accepted() {
        for fine in ["SIGKILL", "TERM", "9", "SIGINT", "SIGHUP", "quit"] {
            assert_eq!(kill(fine).check(), Ok(()), "{fine}");
        }
        for bad in ["SIGSTOP", "SIGCONT", "SIGUSR1"] {
            let e = kill(bad).check().unwrap_err();
            assert_eq!(e.field, "signal");
            assert!(e.message.contains("not one of the signals"), "{bad}: {e}");
        }
        let e = kill("SIGNOPE").check().unwrap_err();
        assert!(
            e.message
                .starts_with("`signal` must name a signal: unknown signal `SIGNOPE`"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_container_reference_is_refused_by_check() {
        let mut k = kill("SIGKILL");
        k.target = container_pause::Target::Container(String::new());
        let e = k.check().unwrap_err();
        assert_eq!(e.field, "container");
        assert_eq!(e.message, "`container` must not be empty");
        k.target = container_pause::Target::Container("ab".to_owned());
        assert!(k.check().unwrap_err().message.contains("too short"));
    }
}
