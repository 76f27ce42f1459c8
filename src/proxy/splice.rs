//! Owns the proxy's zero-copy path: one pipe per direction of a connection, which bytes are
//! spliced into from one socket and out of to the other (`splice(2)`), so they cross the proxy
//! without ever entering its memory. A delay needs no copy either: the bytes wait in the pipe
//! until their release time.
//!
//! A pipe starts at the kernel's default size and grows (`F_SETPIPE_SZ`, doubling) when it fills,
//! up to `/proc/sys/fs/pipe-max-size`: an idle or chatty connection keeps a small pipe, a bulk
//! stream under a delay gets a large one. Where splicing is refused (`EINVAL`, `ENOSYS`: a kernel
//! or a sandbox without it), the caller falls back to copying; that is logged once per process.
//!
//! Bytes waiting in pipes are kernel pages, outside this process's RSS, so they are bounded by a
//! process-wide budget, [`PIPE_BYTES_ENV`] (256 MiB by default), on top of each direction's own
//! bound: a delay holds `rate × delay` bytes (15 MB for 1.5 GB/s under 10 ms), and a thousand
//! delayed connections must not hold a thousand times that. Each direction may hold
//! [`LANE_RESERVE`] without touching the budget, so connections that stop reading cannot starve
//! the others; beyond it a direction waits for budget, and its sender meets TCP back-pressure.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::units::ByteSize;

/// The environment variable that sets the process-wide budget of bytes waiting in the proxies'
/// pipes (a size: `256MiB`, `1GiB`).
pub(crate) const PIPE_BYTES_ENV: &str = "FAULTLINE_PROXY_PIPE_BYTES";
/// The default of [`PIPE_BYTES_ENV`]: 16 bulk streams at 1.6 GB/s under a 10 ms delay.
const DEFAULT_POOL_BYTES: u64 = 256 << 20;
/// The bounds of [`PIPE_BYTES_ENV`]: below 1 MiB a single delayed stream crawls; above 64 GiB is
/// beyond any machine this runs on, and a typo.
const POOL_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(64 << 30);
/// Bytes each direction may hold in its pipes without drawing on the process-wide budget: what a
/// connection's socket buffers hold anyway, so every connection keeps moving however many others
/// fill the budget. 1024 connections hold at most 512 MiB of reserves.
pub(crate) const LANE_RESERVE: usize = 256 << 10;

/// Parses [`PIPE_BYTES_ENV`]'s value.
pub(crate) fn parse_pool_bytes(value: &str) -> Result<usize, String> {
    let bytes = value
        .parse::<ByteSize>()
        .map_err(|e| format!("{PIPE_BYTES_ENV}: {e}"))?
        .0;
    if !POOL_BYTES_RANGE.contains(&bytes) {
        return Err(format!(
            "{PIPE_BYTES_ENV}: {value} is out of range: use 1MiB to 64GiB"
        ));
    }
    usize::try_from(bytes).map_err(|_| format!("{PIPE_BYTES_ENV}: {value} is too large here"))
}

/// The process-wide budget of bytes in pipes beyond the directions' reserves, sized once from
/// [`PIPE_BYTES_ENV`]; an invalid value is an error naming it, every time it is asked for.
pub(crate) fn pool() -> Result<&'static Pool, String> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let size = match std::env::var(PIPE_BYTES_ENV) {
            Ok(v) if !v.trim().is_empty() => parse_pool_bytes(v.trim())?,
            _ => DEFAULT_POOL_BYTES as usize,
        };
        Ok(Pool::new(size))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A budget of pipe bytes shared by directions: [`Pool::take`] waits for room, [`Pool::give`]
/// returns it. Also counts every byte in the proxies' pipes, reserves included, and its
/// high-water mark, for `faultline bench proxy`.
pub(crate) struct Pool {
    free: Semaphore,
    size: usize,
    in_pipes: AtomicUsize,
    peak: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Pool {
        Pool {
            free: Semaphore::new(size),
            size,
            in_pipes: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes of budget, waiting until they are free; false if the pool is closed
    /// (never: it lives as long as the process). `n` is at most one splice, and so never more
    /// than the smallest pool.
    pub(crate) async fn take(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        debug_assert!(n <= self.size, "a take beyond the whole pool waits forever");
        let Ok(permit) = self.free.acquire_many(n as u32).await else {
            return false;
        };
        permit.forget();
        true
    }

    /// Returns `n` bytes taken before.
    pub(crate) fn give(&self, n: usize) {
        if n > 0 {
            self.free.add_permits(n);
        }
    }

    /// Bytes free now.
    pub(crate) fn available(&self) -> usize {
        self.free.available_permits()
    }

    /// Counts `n` more bytes charged to some direction's pipes (within its reserve or not).
    pub(crate) fn charged(&self, n: usize) {
        let now = self.in_pipes.fetch_add(n, Ordering::AcqRel) + n;
        self.peak.fetch_max(now, Ordering::AcqRel);
    }

    /// Counts `n` bytes fewer in some direction's pipes.
    pub(crate) fn discharged(&self, n: usize) {
        self.in_pipes.fetch_sub(n, Ordering::AcqRel);
    }

    /// (bytes in every direction's pipes now, the most at once since the last call, the budget
    /// beyond the reserves); starts a new high-water mark.
    pub(crate) fn usage(&self) -> (usize, usize, usize) {
        let now = self.in_pipes.load(Ordering::Acquire);
        let peak = self.peak.swap(now, Ordering::AcqRel);
        (now, peak.max(now), self.size)
    }
}

/// Never block on the pipe (the sockets are non-blocking already); move pages, don't copy them.
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// The largest pipe a direction may grow to without privilege: `/proc/sys/fs/pipe-max-size`
/// (1 MiB by default), read once.
fn max_pipe_size() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    })
}

/// The largest a pipe grows to when the kernel allows more than `pipe-max-size`: 4096 page slots
/// (160 KiB of slot array in the kernel), which under a delay hold 16 MiB when the socket gave
/// whole pages, and a quarter of that when it gave quarter pages.
const PRIVILEGED_PIPE_SIZE: usize = 16 << 20;

/// Whether `e` says splicing is not possible here at all, rather than that this call failed.
fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
}

/// Logs, once per process, that a splice was refused and the proxy copies instead.
pub(crate) fn warn_unsupported(e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the proxy cannot splice on this system ({e}): it copies bytes instead, which costs CPU and throughput"
        );
    }
}

/// A new pipe: (read end, write end), both non-blocking and close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, PipeIn)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = fcntl(&write, FcntlArg::F_GETPIPE_SZ).map_or(64 << 10, |s| s as usize);
    Ok((read, PipeIn { fd: write, size }))
}

/// The write end of a direction's pipe, held by its reader.
pub(crate) struct PipeIn {
    fd: OwnedFd,
    /// The pipe's capacity as last set (in bytes of whole pages; a page slot may hold less).
    size: usize,
}

/// What one splice from a socket into the pipe did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpliceIn {
    /// This many bytes moved into the pipe.
    Moved(usize),
    /// The peer closed its side: no more bytes come.
    Eof,
    /// The socket has bytes but the pipe has no room: wait until the writer drains it.
    PipeFull,
}

impl PipeIn {
    /// Doubles the pipe, up to `pipe-max-size`, or up to [`PRIVILEGED_PIPE_SIZE`] when the
    /// kernel lets this process past it (`CAP_SYS_RESOURCE`, as root has); false when it cannot
    /// grow (at its maximum, or refused: an unprivileged user past `pipe-user-pages-soft`).
    pub(crate) fn grow(&mut self) -> bool {
        static PAST_MAX_REFUSED: AtomicBool = AtomicBool::new(false);
        let cap = if PAST_MAX_REFUSED.load(Ordering::Relaxed) {
            max_pipe_size()
        } else {
            PRIVILEGED_PIPE_SIZE.max(max_pipe_size())
        };
        let want = (self.size * 2).min(cap);
        if want <= self.size {
            return false;
        }
        match fcntl(&self.fd, FcntlArg::F_SETPIPE_SZ(want as i32)) {
            Ok(set) if set as usize > self.size => {
                self.size = set as usize;
                true
            }
            Err(Errno::EPERM) if want > max_pipe_size() => {
                // Not privileged: `pipe-max-size` is the limit from now on.
                PAST_MAX_REFUSED.store(true, Ordering::Relaxed);
                self.grow()
            }
            _ => false,
        }
    }

    /// Splices up to `len` bytes from `src` into the pipe, once `src` is readable. `in_pipe` is
    /// how many bytes the pipe holds now: an empty pipe always has room, so a refusal then means
    /// the socket had nothing after all (and its readiness is cleared); a refusal with bytes in
    /// the pipe may be a full pipe, which a peek at the socket tells apart.
    pub(crate) fn splice_from(
        &self,
        src: &TcpStream,
        len: usize,
        in_pipe: usize,
    ) -> io::Result<SpliceIn> {
        src.try_io(Interest::READABLE, || {
            match splice(src.as_fd(), None, self.fd.as_fd(), None, len, flags()) {
                Ok(0) => Ok(SpliceIn::Eof),
                Ok(n) => Ok(SpliceIn::Moved(n)),
                Err(Errno::EAGAIN) if in_pipe == 0 => Err(io::ErrorKind::WouldBlock.into()),
                Err(Errno::EAGAIN) => {
                    let mut probe = [0_u8; 1];
                    match recv(
                        src.as_raw_fd(),
                        &mut probe,
                        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
                    ) {
                        // Bytes (or the end of the stream) are waiting: the pipe is what is full.
                        Ok(_) => Ok(SpliceIn::PipeFull),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Splices up to `len` bytes from the pipe `from` into `dst`, once `dst` is writable; returns how
/// many moved. `WouldBlock` means `dst`'s send buffer is full (its readiness is then cleared).
pub(crate) fn splice_to(from: &OwnedFd, dst: &TcpStream, len: usize) -> io::Result<usize> {
    dst.try_io(Interest::WRITABLE, || {
        splice(from.as_fd(), None, dst.as_fd(), None, len, flags()).map_err(io::Error::from)
    })
}

/// Whether an error from [`PipeIn::splice_from`] or [`splice_to`] means this system cannot splice
/// (so the caller should copy) rather than that the connection failed.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|code| unsupported(Errno::from_raw(code)))
}

/// Reads up to `buf.len()` bytes out of the pipe: the way out for bytes already in a pipe when
/// splicing to the destination is refused.
pub(crate) fn read_pipe(from: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(from, buf).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process holds `CAP_SYS_RESOURCE` (bit 24 of `CapEff`), which lets a pipe
    /// grow past `pipe-max-size`.
    fn has_cap_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff in /proc/self/status");
        u64::from_str_radix(eff.trim(), 16).unwrap() & (1 << 24) != 0
    }

    #[test]
    fn a_pipe_grows_by_doubling_up_to_the_system_maximum_or_beyond_when_privileged() {
        let (_read, mut write) = pipe().unwrap();
        let first = write.size;
        assert!(first > 0);
        let mut steps = 0;
        while write.grow() {
            steps += 1;
            assert!(write.size <= PRIVILEGED_PIPE_SIZE.max(max_pipe_size()));
        }
        if has_cap_sys_resource() {
            assert_eq!(write.size, PRIVILEGED_PIPE_SIZE.max(max_pipe_size()));
        } else {
            assert!(write.size <= max_pipe_size());
        }
        assert!(steps > 0 || first >= max_pipe_size());
        assert_eq!(
            fcntl(&write.fd, FcntlArg::F_GETPIPE_SZ).unwrap() as usize,
            write.size,
            "the size this side believes is the kernel's"
        );
        assert!(!write.grow(), "a pipe at its maximum stays there");
    }
}
