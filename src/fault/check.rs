//! Owns the bounds of a fault spec that both sides enforce: `faultline validate` after building a
//! spec from TOML, and an agent on every request it receives, with the same words.
//!
//! Bounds here are host-independent; what depends on the agent's host (devices, CPU count) is in
//! [`Host`] and runs only on the agent.

use std::path::Path;
use std::time::Duration;

use crate::model::Pick;
use crate::process::Selector;
use crate::units::{Dur, Percent};

/// The most worker processes a stress fault may start, whatever the host: far above any sensible
/// load, far below a fork bomb.
pub(crate) const MAX_WORKERS: u32 = 1024;
/// An agent refuses more stress workers than this many per CPU it has.
pub(crate) const WORKERS_PER_CPU: u32 = 4;
/// The longest a fault may be held (`duration`, the wire's `duration_ms`), and the latest `at`.
/// A day keeps `at + duration` far from overflowing and is longer than any sane experiment.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// The longest lease a coordinator may ask for: a lease is the dead-man switch, so an hour already
/// means an hour of fault after the coordinator is gone.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(3600);

/// A value out of bounds in a fault spec or request. The message names the field, so it reads
/// right after `validate`'s "FILE: line L, column C: fault `name`: " and alone in an agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct FieldError {
    /// The key (as users write it in TOML) the problem is with, so `validate` can point at it.
    pub(crate) field: &'static str,
    pub(crate) message: String,
}

impl FieldError {
    /// `` `field` `` followed by `what`.
    pub(crate) fn new(field: &'static str, what: impl std::fmt::Display) -> FieldError {
        FieldError {
            field,
            message: format!("`{field}` {what}"),
        }
    }

    /// A message that already names the field its own way.
    pub(crate) fn raw(field: &'static str, message: String) -> FieldError {
        FieldError { field, message }
    }
}

pub(crate) type Checked = Result<(), FieldError>;

/// What the agent knows about its own host when it checks a request.
pub(crate) struct Host {
    pub(crate) cpus: u32,
    /// Where network devices are listed (`/sys/class/net`); a field so tests can point elsewhere.
    pub(crate) net_class: &'static Path,
}

impl Host {
    /// The host this process runs on.
    pub(crate) fn this() -> Host {
        Host {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            net_class: Path::new("/sys/class/net"),
        }
    }

    pub(crate) fn workers(&self, field: &'static str, workers: u32) -> Checked {
        let most = self.cpus.saturating_mul(WORKERS_PER_CPU);
        if workers > most {
            return Err(FieldError::new(
                field,
                format!(
                    "must be at most {most} on this agent ({WORKERS_PER_CPU} per CPU, {} CPU(s)); got {workers}",
                    self.cpus
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn device(&self, device: &str) -> Checked {
        // `device` passed `check_device_name`, so it is one path component.
        if !self.net_class.join(device).exists() {
            return Err(FieldError::new(
                "device",
                format!(
                    "`{device}` is not a network device of this agent (no {})",
                    self.net_class.join(device).display()
                ),
            ));
        }
        Ok(())
    }
}

/// A worker count: at least one, at most [`MAX_WORKERS`].
pub(crate) fn workers(workers: u32) -> Checked {
    if workers == 0 {
        return Err(FieldError::new(
            "workers",
            "must be at least 1 (got 0): zero workers start nothing",
        ));
    }
    if workers > MAX_WORKERS {
        return Err(FieldError::new(
            "workers",
            format!("must be at most {MAX_WORKERS} (got {workers})"),
        ));
    }
    Ok(())
}

/// A share in `(0, 100%]`.
pub(crate) fn share(field: &'static str, fraction: f64) -> Checked {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(FieldError::new(
            field,
            format!("must be above 0% and at most 100% (got {})", show(fraction)),
        ));
    }
    Ok(())
}

/// A share in `[0, 100%]`, where zero means "none of it".
pub(crate) fn share_or_zero(field: &'static str, fraction: f64) -> Checked {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(FieldError::new(
            field,
            format!("must be from 0% to 100% (got {})", show(fraction)),
        ));
    }
    Ok(())
}

/// A fraction as a percentage, also when it is not a number.
fn show(fraction: f64) -> String {
    if fraction.is_finite() {
        Percent(fraction).to_string()
    } else {
        format!("{fraction}")
    }
}

/// A duration held on the agent: at most [`MAX_HOLD`].
pub(crate) fn hold(field: &'static str, d: Duration) -> Checked {
    if d > MAX_HOLD {
        return Err(FieldError::new(
            field,
            format!("must be at most {} (got {})", Dur(MAX_HOLD), Dur(d)),
        ));
    }
    Ok(())
}

pub(crate) fn port(field: &'static str, port: Option<u16>) -> Checked {
    if port == Some(0) {
        return Err(FieldError::new(
            field,
            "must not be 0: port 0 is not a port traffic uses",
        ));
    }
    Ok(())
}

/// `count` or `percent` of the matches.
pub(crate) fn pick(pick: Option<Pick>) -> Checked {
    match pick {
        Some(Pick::Count(0)) => Err(FieldError::new(
            "count",
            "must be at least 1: `count = 0` selects nothing; remove the fault instead",
        )),
        Some(Pick::Percent(p)) => share("percent", p),
        _ => Ok(()),
    }
}

/// A process selector that can match something and never names init (pid 1) or a pid below it.
/// pid 2 is left to the agent: on a host it is `kthreadd`, which the agent refuses as a kernel
/// thread by its flag, but inside a container's pid namespace it is an ordinary process. Every
/// key given is checked; at least one must be.
pub(crate) fn selector(select: &Selector) -> Checked {
    if select.is_empty() {
        return Err(FieldError::raw(
            "select",
            format!("`select` needs at least one of {SELECT_KEYS}"),
        ));
    }
    match select.pid {
        Some(pid) if pid <= 0 => {
            return Err(FieldError::new(
                "pid",
                format!("must be a process id above 1 (got {pid})"),
            ));
        }
        Some(1) => {
            return Err(FieldError::raw(
                "select",
                format!(
                    "refusing to target pid 1: it is {}",
                    crate::process::protection_reason(1)
                ),
            ));
        }
        _ => {}
    }
    if select
        .pidfile
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(FieldError::new("pidfile", "must not be empty"));
    }
    if select.name.as_ref().is_some_and(String::is_empty) {
        return Err(FieldError::new("name", "must not be empty"));
    }
    if let Some(re) = &select.cmdline {
        if re.is_empty() {
            return Err(FieldError::new(
                "cmdline",
                "must not be empty: it would match every process",
            ));
        }
        regex::Regex::new(re)
            .map_err(|e| FieldError::raw("cmdline", format!("invalid `cmdline` regex: {e}")))?;
    }
    if let Some(p) = select.port {
        port("port", Some(p))?;
    }
    if let Some(c) = &select.container {
        crate::container::check_container_ref(c).map_err(|e| FieldError::new("container", e))?;
    }
    if let Some(n) = &select.container_name {
        crate::container::check_container_name(n)
            .map_err(|e| FieldError::new("container_name", e))?;
    }
    if let Some(g) = &select.cgroup {
        crate::container::check_cgroup_path(g).map_err(|e| FieldError::new("cgroup", e))?;
    }
    Ok(())
}

/// The keys of `select`, for messages.
pub(crate) const SELECT_KEYS: &str =
    "`pid`, `pidfile`, `name`, `cmdline`, `port`, `container`, `container_name` or `cgroup`";

/// A network device name as the kernel allows it. It becomes a `tc` argument and a path under
/// `/sys/class/net`, so one that starts with `-` or holds a `/` is refused too.
pub(crate) fn device_name(device: &str) -> Checked {
    let valid = !device.is_empty()
        && device.len() <= 15
        && !device.starts_with('-')
        && device != "."
        && device != ".."
        && !device
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if !valid {
        return Err(FieldError::raw(
            "device",
            format!(
                "`{device}` is not a network device name (1 to 15 characters, no `/`, `:` or spaces, not starting with `-`)"
            ),
        ));
    }
    Ok(())
}

/// Addresses on both sides of a match must be of one IP version, or no packet matches.
pub(crate) fn same_family(
    dst: Option<crate::fault::Cidr>,
    src: Option<crate::fault::Cidr>,
) -> Checked {
    match (dst, src) {
        (Some(d), Some(s)) if d.is_ipv6() != s.is_ipv6() => Err(FieldError::raw(
            "match",
            format!(
                "`dst` {d} and `src` {s} are of different IP versions, so no packet can match both"
            ),
        )),
        _ => Ok(()),
    }
}
