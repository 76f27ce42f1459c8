//! Owns the proxy's precise timer: a `timerfd` (nanosecond resolution, woken through tokio's
//! reactor) instead of tokio's timer wheel, whose one-millisecond ticks add 1–2 ms of error to
//! every delayed chunk.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The timer as registered with tokio's reactor. `AsyncFd` wants `AsRawFd`; nix's `TimerFd` only
/// offers `AsFd`. The field is private and never replaced, so the descriptor this returns is the
/// same, and open, for as long as the `AsyncFd` that owns the `Fd` — what `register` requires.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A one-shot timer on `CLOCK_MONOTONIC` — the clock `Instant` reads — so a deadline computed
/// from `Instant` is honoured to the microsecond and never early.
pub(crate) struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    /// Needs a tokio runtime with IO enabled.
    pub(crate) fn new() -> io::Result<PreciseTimer> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // `AsyncFd::new` is deprecated as unsound (tokio#8587): it accepted any `AsRawFd`, whose
        // descriptor could be closed while still registered. `register` is the supported way and
        // is `unsafe` because the caller must vouch for the descriptor; this is the crate's one
        // `unsafe` block.
        #[expect(
            unsafe_code,
            reason = "AsyncFd::register is tokio's only supported way to poll a timerfd"
        )]
        // SAFETY: the descriptor belongs to the `TimerFd` created just above, which `Fd` owns and
        // which moves into the `AsyncFd`: it stays open until the `AsyncFd` drops it, after
        // deregistering. `Fd::as_raw_fd` returns that same descriptor on every call, and nothing
        // swaps the `TimerFd` out: this module never calls `get_mut` or `into_inner`.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }?;
        Ok(PreciseTimer { fd })
    }

    /// Returns at `deadline` or just after it; never before.
    pub(crate) async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            // Arming relative to `now` can only make the timer fire later than `deadline`, never
            // earlier; a zero value would disarm it, which the check above rules out.
            let remaining = TimeSpec::from_duration(deadline - now);
            self.fd
                .get_ref()
                .0
                .set(Expiration::OneShot(remaining), TimerSetTimeFlags::empty())?;
            loop {
                let mut ready = self.fd.readable().await?;
                // The read consumes the expiry; EAGAIN means the readiness was stale.
                match ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                    Ok(result) => {
                        result?;
                        break;
                    }
                    Err(_would_block) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::PreciseTimer;

    #[tokio::test]
    async fn the_timer_is_never_early() {
        let timer = PreciseTimer::new().unwrap();
        for micros in [0, 50, 300, 1500] {
            let deadline = std::time::Instant::now() + Duration::from_micros(micros);
            timer.sleep_until(deadline).await.unwrap();
            assert!(std::time::Instant::now() >= deadline);
        }
    }
}
