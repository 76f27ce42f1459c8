//! Owns the `disk-fill` fault: allocate one file on a filesystem until it reaches a target usage,
//! refuse to pass a guard, and delete the file on revert.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::statvfs::statvfs;
use serde::{Deserialize, Serialize};

use super::Context;
use super::check::FieldError;
use crate::units::{ByteSize, Percent, format_bytes};

/// The keys of a `disk-fill` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    path: Option<PathBuf>,
    fill_to: Option<Percent>,
    size: Option<ByteSize>,
    leave_free: Option<ByteSize>,
    guard: Option<Percent>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<DiskFill, FieldError> {
        let Some(path) = self.path else {
            return Err(FieldError::raw(
                "path",
                "disk-fill needs `path`, a directory on the filesystem to fill".to_owned(),
            ));
        };
        let amount = match (self.fill_to, self.size, self.leave_free) {
            (Some(p), None, None) => FillAmount::FillTo(p.0),
            (None, Some(s), None) => FillAmount::Size(s.0),
            (None, None, Some(l)) => FillAmount::LeaveFree(l.0),
            _ => {
                return Err(FieldError::raw(
                    "fill_to",
                    "disk-fill takes exactly one of `fill_to`, `size` or `leave_free`".to_owned(),
                ));
            }
        };
        Ok(DiskFill {
            path,
            amount,
            guard: self.guard.map_or(DEFAULT_GUARD, |g| g.0),
        })
    }
}

/// The usage a fill never pushes a filesystem above unless `guard` says otherwise.
const DEFAULT_GUARD: f64 = 0.98;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskFill {
    /// A directory on the filesystem to fill; the fill file is created inside it.
    pub(crate) path: PathBuf,
    pub(crate) amount: FillAmount,
    /// The usage (fraction) the fill must never push the filesystem above.
    pub(crate) guard: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FillAmount {
    /// Target total usage, as a fraction.
    FillTo(f64),
    /// Bytes to allocate.
    Size(u64),
    /// Allocate until only this many bytes are left available.
    LeaveFree(u64),
}

/// Usage of a filesystem as `df` computes it: used / (used + available to unprivileged users).
#[derive(Clone, Copy, Debug)]
struct Usage {
    used: u64,
    avail: u64,
}

impl Usage {
    fn of(path: &Path) -> Result<Usage, String> {
        let st = statvfs(path)
            .map_err(|e| format!("failed to read filesystem usage of {}: {e}", path.display()))?;
        let frsize = st.fragment_size();
        let used = (st.blocks() - st.blocks_free()) * frsize;
        let avail = st.blocks_available() * frsize;
        Ok(Usage { used, avail })
    }

    fn size(self) -> u64 {
        self.used + self.avail
    }

    fn ratio(self) -> f64 {
        if self.size() == 0 {
            1.0
        } else {
            self.used as f64 / self.size() as f64
        }
    }
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) file: PathBuf,
    bytes: u64,
    target: f64,
}

impl DiskFill {
    pub(crate) fn describe(&self) -> String {
        let amount = match self.amount {
            FillAmount::FillTo(p) => format!("until it is {} full", Percent(p)),
            FillAmount::Size(b) => format!("with {}", format_bytes(b)),
            FillAmount::LeaveFree(b) => format!("until only {} is free", format_bytes(b)),
        };
        format!(
            "fill the filesystem of {} {amount} (one file, never above {}); delete the file on revert",
            self.path.display(),
            Percent(self.guard)
        )
    }

    pub(crate) fn preview(&self) -> String {
        match Usage::of(&self.path).and_then(|u| self.bytes_needed(u).map(|b| (u, b))) {
            Ok((u, bytes)) => format!(
                "now {} used of {}; would allocate {}",
                Percent(u.ratio()),
                format_bytes(u.size()),
                format_bytes(bytes)
            ),
            Err(e) => e,
        }
    }

    fn bytes_needed(&self, u: Usage) -> Result<u64, String> {
        let size = u.size() as f64;
        let bytes = match self.amount {
            FillAmount::FillTo(p) => {
                let want = (p * size) as u64;
                if want <= u.used {
                    return Err(format!(
                        "{} is already {} full, at or above the requested {}: nothing to fill",
                        self.path.display(),
                        Percent(u.ratio()),
                        Percent(p)
                    ));
                }
                want - u.used
            }
            FillAmount::Size(b) => b,
            FillAmount::LeaveFree(free) => u.avail.checked_sub(free).filter(|b| *b > 0).ok_or_else(|| {
                format!(
                    "{} has only {} available, not more than the {} to leave free: nothing to fill",
                    self.path.display(),
                    format_bytes(u.avail),
                    format_bytes(free)
                )
            })?,
        };
        let after = (u.used + bytes) as f64 / size;
        if after > self.guard || bytes > u.avail {
            return Err(format!(
                "refusing to fill {}: allocating {} would take it from {} to {}, above the guard of {} (free {})",
                self.path.display(),
                format_bytes(bytes),
                Percent(u.ratio()),
                Percent(after.min(9.99)),
                Percent(self.guard),
                format_bytes(u.avail)
            ));
        }
        Ok(bytes)
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        use super::check::{FieldError, share};
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("path", "must name a directory"));
        }
        share("guard", self.guard)?;
        match self.amount {
            FillAmount::FillTo(p) => {
                share("fill_to", p)?;
                if p > self.guard {
                    return Err(FieldError::new(
                        "fill_to",
                        format!(
                            "of {} is above the guard of {}",
                            Percent(p),
                            Percent(self.guard)
                        ),
                    ));
                }
            }
            FillAmount::Size(0) => {
                return Err(FieldError::new("size", "must be above zero"));
            }
            FillAmount::Size(_) | FillAmount::LeaveFree(_) => {}
        }
        Ok(())
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let meta = fs::metadata(&self.path)
            .map_err(|e| format!("failed to fill {}: {e}", self.path.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "failed to fill {}: not a directory",
                self.path.display()
            ));
        }
        let usage = Usage::of(&self.path)?;
        let bytes = self.bytes_needed(usage)?;
        let target = (usage.used + bytes) as f64 / usage.size() as f64;
        let file = self.path.join(format!(".faultline-fill-{}", ctx.fault_id));
        Ok(Prepared {
            file,
            bytes,
            target,
        })
    }
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.file)
            .map_err(|e| format!("failed to create {}: {e}", self.file.display()))?;
        let len = i64::try_from(self.bytes).map_err(|_| "fill size too large".to_owned())?;
        match fallocate(&file, FallocateFlags::empty(), 0, len) {
            Ok(()) => {}
            // Some filesystems cannot preallocate; writing zeros has the same effect, only slower.
            Err(nix::errno::Errno::EOPNOTSUPP) => write_zeros(file, self.bytes)
                .map_err(|e| format!("failed to fill {}: {e}", self.file.display()))?,
            Err(e) => {
                return Err(format!(
                    "failed to allocate {} in {}: {e}",
                    format_bytes(self.bytes),
                    self.file.display()
                ));
            }
        }
        Ok(format!(
            "allocated {} in {}",
            format_bytes(self.bytes),
            self.file.display()
        ))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        let dir = self.file.parent().unwrap_or(Path::new("/"));
        let usage = Usage::of(dir)?;
        // Allow half a percent for metadata and rounding to blocks.
        if usage.ratio() + 0.005 < self.target {
            return Err(format!(
                "{} is {} full after the fill, short of the intended {}",
                dir.display(),
                Percent(usage.ratio()),
                Percent(self.target)
            ));
        }
        Ok(format!(
            "{} is now {} full",
            dir.display(),
            Percent(usage.ratio())
        ))
    }
}

fn write_zeros(mut file: File, mut bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0_u8; 1 << 20];
    while bytes > 0 {
        let n = bytes.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        bytes -= n as u64;
    }
    file.sync_all()
}

/// Deletes the fill file; a file that is already gone counts as deleted.
pub(super) fn remove(path: &Path) -> Result<String, String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(format!("deleted {}", path.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Ok(format!("{} was already gone", path.display()))
        }
        Err(e) => Err(format!(
            "failed to delete fill file {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(amount: FillAmount) -> DiskFill {
        DiskFill {
            path: "/data".into(),
            amount,
            guard: 0.98,
        }
    }

    #[test]
    fn fill_to_counts_only_what_is_missing() {
        let u = Usage {
            used: 100,
            avail: 900,
        };
        assert_eq!(fill(FillAmount::FillTo(0.9)).bytes_needed(u).unwrap(), 800);
        assert_eq!(
            fill(FillAmount::LeaveFree(100)).bytes_needed(u).unwrap(),
            800
        );
        assert_eq!(fill(FillAmount::Size(50)).bytes_needed(u).unwrap(), 50);
    }

    #[test]
    fn the_guard_refuses_and_says_why() {
        let u = Usage {
            used: 100,
            avail: 900,
        };
        let err = fill(FillAmount::FillTo(0.99)).bytes_needed(u).unwrap_err();
        assert!(err.contains("above the guard of 98%"), "{err}");
        let err = fill(FillAmount::FillTo(0.05)).bytes_needed(u).unwrap_err();
        assert!(err.contains("already 10% full"), "{err}");
    }
}
