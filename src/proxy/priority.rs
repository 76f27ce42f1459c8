//! Owns how the proxy thread is scheduled, which bounds how precisely a delayed chunk leaves:
//! its timer slack (always 1 ns instead of the default 50 µs, so no wake-up is deferred to be
//! grouped with others) and, when asked, a real-time priority (`SCHED_FIFO`), so a runnable proxy
//! thread preempts ordinary work on a busy host.
//!
//! Real-time priority is off by default: a real-time thread that spins starves the CPU it runs
//! on (the kernel keeps 5% for others), and it needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`. When
//! it is refused the proxy runs on at normal priority with a warning. `faultline bench proxy`
//! tunes its OS-floor thread the same way, so the floor it prints is the one the proxy faces.

use std::io;
use std::sync::OnceLock;

/// The environment variable that asks for real-time priority: `1` to `99`.
pub(crate) const REALTIME_ENV: &str = "FAULTLINE_PROXY_RT_PRIORITY";

/// The timer slack of the proxy thread, in nanoseconds (0 would mean the default again).
const TIMER_SLACK_NS: u64 = 1;

static REALTIME: OnceLock<Option<u8>> = OnceLock::new();

/// Parses a real-time priority: `1..=99` (`SCHED_FIFO`'s range on Linux).
pub(crate) fn parse_priority(value: &str) -> Result<u8, String> {
    match value.trim().parse::<u8>() {
        Ok(p @ 1..=99) => Ok(p),
        _ => Err(format!(
            "invalid real-time priority `{value}`: use a number from 1 to 99"
        )),
    }
}

/// Sets the real-time priority the proxy thread asks for, before the proxy runtime starts;
/// `None` is the default (normal priority). Fails once the choice has been made.
pub(crate) fn set_realtime(priority: Option<u8>) -> Result<(), String> {
    REALTIME
        .set(priority)
        .map_err(|_| "the proxy's priority is already chosen".to_owned())
}

/// The real-time priority chosen: by [`set_realtime`], else by [`REALTIME_ENV`], else none.
pub(crate) fn realtime() -> Result<Option<u8>, String> {
    if let Some(p) = REALTIME.get() {
        return Ok(*p);
    }
    let from_env = match std::env::var(REALTIME_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            Some(parse_priority(&v).map_err(|e| format!("{REALTIME_ENV}: {e}"))?)
        }
        _ => None,
    };
    Ok(*REALTIME.get_or_init(|| from_env))
}

/// Tunes the calling thread as a proxy thread: timer slack, and `realtime` if given. What the
/// system refuses is logged, never fatal.
pub(crate) fn tune_current_thread(realtime: Option<u8>) {
    if let Err(e) = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS) {
        tracing::warn!("failed to set the proxy thread's timer slack: {e}");
    }
    if let Some(priority) = realtime {
        if let Err(e) = set_fifo(priority) {
            tracing::warn!(
                "real-time priority {priority} for the proxy thread was refused ({e}): it runs at normal priority"
            );
        }
    }
}

/// The calling thread's timer slack in nanoseconds, for the bench to print.
#[cfg(test)]
pub(crate) fn timer_slack() -> Option<i32> {
    nix::sys::prctl::get_timerslack().ok()
}

/// Puts the calling thread in `SCHED_FIFO` at `priority`.
fn set_fifo(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // nix offers no wrapper for sched_setscheduler; this is the crate's second `unsafe` block.
    #[expect(
        unsafe_code,
        reason = "sched_setscheduler has no safe wrapper in nix or std"
    )]
    // SAFETY: `sched_setscheduler` only reads the `sched_param` behind the pointer, which is a
    // valid, initialised value on this stack frame for the whole call; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_is_between_1_and_99() {
        assert_eq!(parse_priority("1"), Ok(1));
        assert_eq!(parse_priority(" 99 "), Ok(99));
        for bad in ["0", "100", "-1", "high", ""] {
            let err = parse_priority(bad).unwrap_err();
            assert!(err.contains("from 1 to 99"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_tuned_thread_has_a_timer_slack_of_one_nanosecond() {
        let slack = std::thread::spawn(|| {
            tune_current_thread(None);
            timer_slack()
        })
        .join()
        .unwrap();
        assert_eq!(slack, Some(1));
    }
}
