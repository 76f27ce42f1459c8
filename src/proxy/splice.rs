//! Owns the proxy's zero-copy path: one pipe per direction of a connection, which bytes are
//! spliced into from one socket and out of to the other (`splice(2)`), so they cross the proxy
//! without ever entering its memory. A delay needs no copy either: the bytes wait in the pipe
//! until their release time.
//!
//! A pipe starts at the kernel's default size and grows (`F_SETPIPE_SZ`, doubling) when it fills,
//! up to `/proc/sys/fs/pipe-max-size`: an idle or chatty connection keeps a small pipe, a bulk
//! stream under a delay gets a large one. Where splicing is refused (`EINVAL`, `ENOSYS`: a kernel
//! or a sandbox without it), the caller falls back to copying; that is logged once per process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Never block on the pipe (the sockets are non-blocking already); move pages, don't copy them.
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// The largest pipe a direction may grow to: `/proc/sys/fs/pipe-max-size` (1 MiB by default),
/// read once.
fn max_pipe_size() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    })
}

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
    /// Doubles the pipe, up to `pipe-max-size`; false when it cannot grow (already at the
    /// maximum, or refused: an unprivileged user past `pipe-user-pages-soft`).
    pub(crate) fn grow(&mut self) -> bool {
        let want = (self.size * 2).min(max_pipe_size());
        if want <= self.size {
            return false;
        }
        match fcntl(&self.fd, FcntlArg::F_SETPIPE_SZ(want as i32)) {
            Ok(set) if set as usize > self.size => {
                self.size = set as usize;
                true
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

    #[test]
    fn a_pipe_grows_by_doubling_up_to_the_system_maximum() {
        let (_read, mut write) = pipe().unwrap();
        let first = write.size;
        assert!(first > 0);
        let mut steps = 0;
        while write.grow() {
            steps += 1;
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
