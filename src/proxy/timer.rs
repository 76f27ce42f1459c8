//! Owns the proxy's precise timer: a `timerfd` (nanosecond resolution, woken through tokio's
//! reactor) instead of tokio's timer wheel, whose one-millisecond ticks add 1–2 ms of error to
//! every delayed chunk.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// `AsyncFd` wants `AsRawFd`; nix's `TimerFd` only offers `AsFd`.
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
        // `AsyncFd::new` is deprecated because a borrowed descriptor could be closed while tokio
        // still polls it; `Fd` owns its descriptor, which lives exactly as long as the `AsyncFd`.
        // The safe spelling would need `unsafe { register }`, which this crate forbids.
        #[expect(deprecated, reason = "the descriptor is owned by the registered value")]
        let fd = AsyncFd::new(Fd(fd))?;
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
