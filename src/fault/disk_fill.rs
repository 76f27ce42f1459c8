//! Owns the `disk-fill` fault: allocate one file on a filesystem until it reaches a target usage,
//! refuse to pass a guard, and delete the file on revert.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read as _, Seek as _, Write};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FallocateFlags, OFlag, fallocate};
use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
use nix::sys::statvfs::statvfs;
use serde::{Deserialize, Serialize};

use super::Context;
use super::check::FieldError;
use crate::units::{ByteSize, Percent, format_bytes};

/// The largest `size` or `leave_free` a fill takes: a pebibyte is beyond any filesystem an
/// experiment fills, and keeps every sum of sizes far from overflowing.
pub(crate) const MAX_FILL: u64 = 1 << 50;

/// The start of every fill file's name; the fault id and a random suffix follow.
const FILL_PREFIX: &str = ".faultline-fill-";

/// Directories no fill may be made in: agents' state directories, whose journal files (temp files
/// included) must never meet a fill file. Registered by each agent core as it opens.
static FORBIDDEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Forbids fills inside `dir` (an agent's state directory) for the rest of this process.
pub(crate) fn forbid_fills_in(dir: &Path) {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut forbidden = FORBIDDEN.lock().unwrap_or_else(PoisonError::into_inner);
    if !forbidden.contains(&dir) {
        forbidden.push(dir);
    }
}

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
    /// Held from prepare to the end of verify: see [`DiskFill::prepare`].
    _fs_lock: super::serial::Held,
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
        let after = u.used.saturating_add(bytes) as f64 / size;
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
            FillAmount::Size(b) if b > MAX_FILL => {
                return Err(FieldError::new(
                    "size",
                    format!("must be at most {} (got {b} bytes)", format_bytes(MAX_FILL)),
                ));
            }
            FillAmount::LeaveFree(b) if b > MAX_FILL => {
                return Err(FieldError::new(
                    "leave_free",
                    format!("must be at most {} (got {b} bytes)", format_bytes(MAX_FILL)),
                ));
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
        let real = fs::canonicalize(&self.path)
            .map_err(|e| format!("failed to fill {}: {e}", self.path.display()))?;
        let forbidden = FORBIDDEN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(state) = forbidden.iter().find(|dir| real.starts_with(dir)) {
            return Err(format!(
                "refusing to fill {}: it is inside the agent's state directory {}, whose journal must never meet a fill file",
                self.path.display(),
                state.display()
            ));
        }
        // Fills of one filesystem take turns from here to the end of verify, so each one's guard
        // sees what the others allocated.
        let lock = super::serial::hold(format!("fill-fs:{}", meta.dev()));
        let usage = Usage::of(&self.path)?;
        let bytes = self.bytes_needed(usage)?;
        if on_memory(&self.path)? {
            let (total, available) = super::stress::meminfo()?;
            memory_left(bytes, total, available).map_err(|e| {
                format!(
                    "refusing to fill {}: it is a memory filesystem (tmpfs or ramfs), so the fill takes RAM: {e}",
                    self.path.display()
                )
            })?;
        }
        let target = usage.used.saturating_add(bytes) as f64 / usage.size() as f64;
        // A random suffix decided here: nobody can create the file before the fault does, so the
        // `create_new` in inject fails only on a real collision, and revert deletes only a file
        // that carries this exact name in its first bytes (see `remove`).
        let suffix = format!("{:016x}", rand::random::<u64>());
        let file = self
            .path
            .join(format!("{FILL_PREFIX}{}-{suffix}", ctx.fault_id));
        Ok(Prepared {
            file,
            bytes,
            target,
            _fs_lock: lock,
        })
    }
}

/// Whether `path` is on a filesystem that lives in memory (tmpfs, ramfs), by `statfs`'s type.
fn on_memory(path: &Path) -> Result<bool, String> {
    let st = statfs(path).map_err(|e| {
        format!(
            "failed to read the filesystem type of {}: {e}",
            path.display()
        )
    })?;
    let kind = st.filesystem_type();
    // nix names no constant for ramfs; its magic is RAMFS_MAGIC of linux/magic.h.
    Ok(kind == TMPFS_MAGIC || kind == FsType(0x8584_58f6))
}

/// Refuses taking `bytes` of memory when that would leave less available than memory-stress
/// keeps free (a tenth of the host's memory, at least 256 MiB).
fn memory_left(bytes: u64, total: u64, available: u64) -> Result<(), String> {
    let reserve = super::stress::memory_reserve(total);
    if bytes.saturating_add(reserve) > available {
        return Err(format!(
            "allocating {} would leave less than {} of the host's memory available (now {} available of {})",
            format_bytes(bytes),
            format_bytes(reserve),
            format_bytes(available),
            format_bytes(total)
        ));
    }
    Ok(())
}

/// The first bytes of every fill file: its own name, so a revert recognises a file the fault made.
fn marker(path: &Path) -> Vec<u8> {
    let name = path
        .file_name()
        .map_or_else(Vec::new, |n| n.as_encoded_bytes().to_vec());
    let mut marker = b"faultline fill ".to_vec();
    marker.extend_from_slice(&name);
    marker.push(b'\n');
    marker
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        // `create_new` is O_EXCL, which also refuses a symlink at the path; O_NOFOLLOW says so.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&self.file)
            .map_err(|e| format!("failed to create {}: {e}", self.file.display()))?;
        file.write_all_at(&marker(&self.file), 0)
            .map_err(|e| format!("failed to write to {}: {e}", self.file.display()))?;
        let len = i64::try_from(self.bytes).map_err(|_| {
            format!(
                "fill size {} does not fit a file offset",
                format_bytes(self.bytes)
            )
        })?;
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

fn write_zeros(mut file: File, bytes: u64) -> std::io::Result<()> {
    // The marker is already at the start; fill the rest after it.
    let mut bytes = bytes.saturating_sub(file.metadata()?.len());
    file.seek(std::io::SeekFrom::End(0))?;
    let chunk = vec![0_u8; 1 << 20];
    while bytes > 0 {
        let n = bytes.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        bytes -= n as u64;
    }
    file.sync_all()
}

/// Deletes the fill file; a file that is already gone counts as deleted. Only a regular file
/// that starts with the fault's marker is deleted: a file someone else put at the path (or a
/// symlink) was not made by the fault, and is left alone. An empty file at the path is the
/// fault's own whose marker could not be written (no space left): nobody else can know the name.
pub(super) fn remove(path: &Path) -> Result<String, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(format!("{} was already gone", path.display()));
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Ok(format!(
                "{} is a symlink, not the fill file: left alone",
                path.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "failed to open fill file {} to check it: {e}",
                path.display()
            ));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("failed to check fill file {}: {e}", path.display()))?;
    let want = marker(path);
    let mut head = Vec::new();
    if meta.is_file() {
        file.take(want.len() as u64)
            .read_to_end(&mut head)
            .map_err(|e| format!("failed to read fill file {}: {e}", path.display()))?;
    }
    // A file of zeros is a fill an older faultline made (it wrote no marker, under the name
    // `.faultline-fill-ID`) and journaled before an upgrade; new names cannot be guessed, so
    // nobody else can have put zeros there.
    let zeros = !head.is_empty() && head.iter().all(|b| *b == 0);
    let ours = meta.is_file() && (meta.len() == 0 || head == want || zeros);
    if !ours {
        return Ok(format!(
            "{} is not a file this fault made (no fill marker): left alone",
            path.display()
        ));
    }
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

    #[test]
    fn sizes_near_the_top_of_u64_are_refused_and_never_overflow() {
        let e = fill(FillAmount::Size(u64::MAX)).check().unwrap_err();
        assert_eq!(e.field, "size");
        assert!(e.message.contains("must be at most 1024.0 TiB"), "{e}");
        let e = fill(FillAmount::LeaveFree(u64::MAX)).check().unwrap_err();
        assert_eq!(e.field, "leave_free");
        assert_eq!(fill(FillAmount::Size(MAX_FILL)).check(), Ok(()));
        let u = Usage {
            used: 100,
            avail: 900,
        };
        let err = fill(FillAmount::Size(u64::MAX))
            .bytes_needed(u)
            .unwrap_err();
        assert!(err.contains("above the guard"), "{err}");
    }

    #[test]
    fn a_fill_on_memory_must_leave_the_memory_stress_floor() {
        let gib = 1_u64 << 30;
        assert_eq!(memory_left(gib, 16 * gib, 8 * gib), Ok(()));
        let err = memory_left(7 * gib, 16 * gib, 8 * gib).unwrap_err();
        assert!(
            err.contains("would leave less than 1.6 GiB of the host's memory available"),
            "{err}"
        );
    }

    #[test]
    fn revert_leaves_alone_a_file_or_symlink_the_fault_did_not_make() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join(".faultline-fill-pre1");
        std::fs::write(&precious, "precious\n").unwrap();
        let said = remove(&precious).unwrap();
        assert!(said.ends_with("left alone"), "{said}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
        let link = dir.path().join(".faultline-fill-pre2");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let said = remove(&link).unwrap();
        assert!(said.ends_with("left alone"), "{said}");
        assert!(link.symlink_metadata().is_ok(), "the symlink was deleted");
        let legacy = dir.path().join(".faultline-fill-old1");
        std::fs::write(&legacy, vec![0_u8; 8192]).unwrap();
        assert!(remove(&legacy).unwrap().starts_with("deleted"));

        let spec = DiskFill {
            path: dir.path().to_owned(),
            amount: FillAmount::Size(4096),
            guard: 1.0,
        };
        let ctx = Context {
            fault_id: "pre1",
            seed: 1,
            control_port: None,
        };
        let prepared = spec.prepare(&ctx).unwrap();
        let name = prepared
            .file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(name.starts_with(".faultline-fill-pre1-"), "{name}");
        prepared.inject().unwrap();
        assert!(remove(&prepared.file).unwrap().starts_with("deleted"));
        assert!(!prepared.file.exists());
        drop(prepared);
        let again = spec.prepare(&ctx).unwrap();
        assert_ne!(again.file.file_name().unwrap(), name.as_str());
    }
}
