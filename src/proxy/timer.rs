//! Owns the proxy's precise timer: a `timerfd` (nanosecond resolution, woken through tokio's
//! reactor) instead of tokio's timer wheel, whose one-millisecond ticks add 1–2 ms of error to
//! every delayed chunk.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    /// Returns at `deadline` or just after it; never before. With a spin window (see
    /// [`spin_window`]) and spin budget left, the timer fires that much early and the thread
    /// spins on the clock for the rest, so the VM's wake-up latency is spent before the
    /// deadline instead of after it.
    pub(crate) async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        self.sleep_until_spinning(deadline, spin_window()).await
    }

    /// [`PreciseTimer::sleep_until`] with a spin window of `window`.
    async fn sleep_until_spinning(&self, deadline: Instant, window: Duration) -> io::Result<()> {
        let wake = match deadline.checked_sub(window) {
            Some(early) if !window.is_zero() && spin_budget_left() => early,
            _ => deadline,
        };
        self.fire_at(wake).await?;
        let now = Instant::now();
        if now < deadline {
            // Woken early on purpose; the window bounds this spin.
            spin_until(now, deadline);
        }
        Ok(())
    }

    /// Returns at `at` or just after it, by the timerfd alone.
    async fn fire_at(&self, at: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= at {
                return Ok(());
            }
            // Arming relative to `now` can only make the timer fire later than `at`, never
            // earlier; a zero value would disarm it, which the check above rules out.
            let remaining = TimeSpec::from_duration(at - now);
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

/// The environment variable that sets the spin window, in microseconds (`0` turns spinning off).
pub(crate) const SPIN_ENV: &str = "FAULTLINE_PROXY_SPIN_US";
/// The spin window when [`SPIN_ENV`] is unset: on, because a latency fault is asked for a delay
/// and the VM's wake-up latency (p50 ~50-120 µs here, 5x that in a noisy hour) is error on top
/// of it; the budget below bounds what it costs (`faultline bench proxy`, issue 12: p50 error
/// 38-123 µs with a 150 µs spin against 107-393 µs without, in the same windows).
const DEFAULT_SPIN_US: u64 = 150;
/// The largest spin window accepted: a spin holds the proxy thread, and every other connection
/// with it, for up to this long.
const MAX_SPIN_US: u64 = 1000;
/// CPU time a thread may spend spinning per second, across all its timers: 2% of a core. Past
/// it, timers fire at their deadline and take the wake-up latency, so a thousand delayed
/// connections cannot turn the proxy thread into a busy loop.
const SPIN_BUDGET_PER_SECOND: Duration = Duration::from_millis(20);

/// Parses a spin window in microseconds: `0` to [`MAX_SPIN_US`].
pub(crate) fn parse_spin(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(us) if us <= MAX_SPIN_US => Ok(Duration::from_micros(us)),
        _ => Err(format!(
            "{SPIN_ENV}: invalid spin window `{value}`: use microseconds from 0 to {MAX_SPIN_US}"
        )),
    }
}

static SPIN: OnceLock<Duration> = OnceLock::new();

/// Reads [`SPIN_ENV`] once; the proxy runtime calls this before it starts, so a bad value is an
/// error there rather than a silent default.
pub(crate) fn configure_spin() -> Result<Duration, String> {
    if let Some(window) = SPIN.get() {
        return Ok(*window);
    }
    let window = match std::env::var(SPIN_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_spin(&v)?,
        _ => Duration::from_micros(DEFAULT_SPIN_US),
    };
    Ok(*SPIN.get_or_init(|| window))
}

/// How long before a deadline the timer fires so that the thread spins the rest of the way.
pub(crate) fn spin_window() -> Duration {
    SPIN.get().copied().unwrap_or_default()
}

thread_local! {
    /// The start of this thread's current one-second spin account and what it has spent in it.
    static SPENT: Cell<(Option<Instant>, Duration)> = const { Cell::new((None, Duration::ZERO)) };
}

/// Whether this thread's spin account for the current second has room left.
fn spin_budget_left() -> bool {
    let (start, spent) = SPENT.get();
    match start {
        Some(start) if start.elapsed() < Duration::from_secs(1) => spent < SPIN_BUDGET_PER_SECOND,
        _ => true,
    }
}

/// Spins from `now` until `deadline`, charged to this thread's spin account.
fn spin_until(now: Instant, deadline: Instant) {
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
    let (start, spent) = SPENT.get();
    let cost = deadline.saturating_duration_since(now);
    SPUN_NS.fetch_add(cost.as_nanos() as u64, Ordering::Relaxed);
    SPENT.set(match start {
        Some(start) if start.elapsed() < Duration::from_secs(1) => (Some(start), spent + cost),
        _ => (Some(now), cost),
    });
}

/// Nanoseconds spent spinning by every thread since the process started, for the bench.
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// Time spent spinning by every thread of this process so far.
pub(crate) fn spun() -> Duration {
    Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed))
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

    #[tokio::test]
    async fn a_spinning_timer_is_never_early() {
        let timer = PreciseTimer::new().unwrap();
        for micros in [0, 50, 300, 1500, 5000] {
            let deadline = std::time::Instant::now() + Duration::from_micros(micros);
            timer
                .sleep_until_spinning(deadline, Duration::from_micros(400))
                .await
                .unwrap();
            assert!(std::time::Instant::now() >= deadline);
        }
    }

    #[test]
    fn a_spin_ends_at_its_deadline_and_is_charged_to_the_thread_budget() {
        let spun = super::spun();
        let now = std::time::Instant::now();
        let deadline = now + Duration::from_micros(200);
        super::spin_until(now, deadline);
        assert!(std::time::Instant::now() >= deadline);
        assert!(super::spun().saturating_sub(spun) >= Duration::from_micros(200));
        // A second's worth of budget spent: the next timer fires at its deadline, unspun.
        super::spin_until(now, now + super::SPIN_BUDGET_PER_SECOND);
        assert!(!super::spin_budget_left());
    }

    #[test]
    fn a_spin_window_is_between_0_and_1000_microseconds() {
        assert_eq!(super::parse_spin("0"), Ok(Duration::ZERO));
        assert_eq!(super::parse_spin(" 150 "), Ok(Duration::from_micros(150)));
        for bad in ["1001", "-1", "fast", "1.5", ""] {
            let err = super::parse_spin(bad).unwrap_err();
            assert!(
                err.contains("FAULTLINE_PROXY_SPIN_US") && err.contains("from 0 to 1000"),
                "{bad}: {err}"
            );
        }
    }
}
