//! Owns the agent's crash-safe journal: one file per fault holding what undoes it, written and
//! fsynced before the host is changed, removed only after the change is undone.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fault::Undo;
use crate::process::ProcRef;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) kind: String,
    pub(crate) undo: Undo,
    /// The process that wrote the entry. Recovery leaves alone entries whose writer still runs,
    /// so two runs sharing a state directory never revert each other's faults.
    pub(crate) owner: ProcRef,
    pub(crate) written_at: Timestamp,
    /// When the fault's duration ends: an embedded run's watchdog reverts it past this even while
    /// the run still exists (stopped, stalled). `None` for run resources; absent in older entries.
    #[serde(default)]
    pub(crate) deadline: Option<Timestamp>,
    /// The run's secrets that the undo holds (a `command` revert's argv, say). Reading the entry
    /// registers them (`secrets.rs`), so whatever process reverts it masks them in its output
    /// and in the history. Empty (and absent) for most entries and on remote agents, which are
    /// never told which values are secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) secrets: Vec<String>,
    /// The kernel boot the entry was written in ([`boot_id`]). Recovery knows from it that the
    /// host restarted since: what the fault made in the kernel went with the restart, and the
    /// pid and start time its undo names may now be an unrelated process's. `None` where the
    /// boot id cannot be read, and in older entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) boot: Option<String>,
}

impl Entry {
    /// The registered secrets that `undo` holds, for [`Entry::secrets`].
    pub(crate) fn secrets_in(undo: &Undo) -> Vec<String> {
        crate::secrets::occurring_in(&serde_json::to_string(undo).unwrap_or_default())
    }

    /// Whether the entry was written before the host last restarted: both boots are known and
    /// they differ.
    pub(crate) fn written_before_a_restart(&self) -> bool {
        self.boot
            .as_deref()
            .is_some_and(|then| boot_id().is_some_and(|now| now != then))
    }
}

/// This boot of the kernel (`/proc/sys/kernel/random/boot_id`, a new random id at every boot),
/// read once; `None` where it cannot be read.
pub(crate) fn boot_id() -> Option<String> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
    })
    .clone()
}

/// Creates (or truncates) `path` for writing with mode 0600, whatever the umask: every file in the
/// state directory is readable by the agent's user alone.
fn private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file left by an older agent keeps the mode it was created with: tighten it.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Writes `bytes` to `path` as a private (0600) file: for state files other than entries.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    private(path)?.write_all(bytes)
}

/// How [`Journal::remove`] forgets an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forget {
    /// Synced: gone even after a crash of the host.
    Durably,
    /// Gone for every process now; on disk by the filesystem's next commit.
    Lazily,
}

/// Whether `bytes` are an entry whose write a crash cut short: nothing, only zeros (a file
/// whose size reached the disk before its data), or JSON that ends before the entry does.
fn is_torn(bytes: &[u8]) -> bool {
    if bytes.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_err_and(|e| e.is_eof())
}

#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens the journal in `dir`, creating it (mode 0700: entries name processes and paths) if
    /// it does not exist. An existing directory keeps its mode: the operator chose it.
    pub(crate) fn open(dir: &Path) -> Result<Journal, String> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("failed to create state directory {}: {e}", dir.display()))?;
        Ok(Journal {
            dir: dir.to_owned(),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the entry durably: temp file, rename, fsync the file, fsync the directory. Readers
    /// (recovery, a watchdog, another run sharing the directory) only ever see a whole entry: it
    /// is complete in the temp file before the rename. The fsync comes after the rename so that
    /// one journal commit carries the data, the new name and the rename together (on ext4 an
    /// fsync commits the file's latest metadata change, the rename): the old order, fsync then
    /// rename then the directory, paid a second commit for the rename. The directory fsync stays
    /// for filesystems that do not order a rename with the file; where the commit already
    /// carried it, it costs no second commit. The caller changes the host only after this
    /// returns. A crash of the host before it returns may leave the entry empty or cut short:
    /// its fault was never made, and [`Journal::discard_torn`] drops it at the next start.
    pub(crate) fn record(&self, entry: &Entry) -> Result<(), String> {
        let fail = |e: std::io::Error| {
            format!(
                "failed to journal fault {} in {}: {e}",
                entry.id,
                self.dir.display()
            )
        };
        let tmp = self.dir.join(format!(".{}.tmp", entry.id));
        let body = serde_json::to_vec_pretty(entry)
            .map_err(|e| format!("failed to encode journal entry: {e}"))?;
        let mut file = private(&tmp).map_err(fail)?;
        file.write_all(&body).map_err(fail)?;
        let path = self.path(&entry.id);
        fs::rename(&tmp, &path).map_err(fail)?;
        file.sync_all()
            .and_then(|()| self.sync_dir())
            .inspect_err(|_| {
                // The fault will not be made: a whole entry left behind would have the next
                // start run its undo (an operator's revert program, say) for nothing.
                let _ = fs::remove_file(&path);
            })
            .map_err(fail)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.dir).and_then(|d| d.sync_all())
    }

    /// Forgets an entry once its fault is undone. Removing a missing entry succeeds.
    ///
    /// [`Forget::Durably`] syncs the directory, so the entry stays gone even if the host crashes
    /// right after. [`Forget::Lazily`] leaves that to the filesystem's next commit (seconds): no
    /// process ever sees the entry again, only a crash of the whole host can bring it back, and
    /// then the next start runs its undo once more. That is fine for an undo that is safe to run
    /// again after a reboot, and the caller decides which undo is (see `core.rs`).
    pub(crate) fn remove(&self, id: &str, how: Forget) -> Result<(), String> {
        match fs::remove_file(self.path(id)) {
            Ok(()) if how == Forget::Lazily => Ok(()),
            Ok(()) => self
                .sync_dir()
                .map_err(|e| format!("failed to sync {}: {e}", self.dir.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("failed to remove journal entry {id}: {e}")),
        }
    }

    /// Deletes the entries a crash of the host cut short while they were being recorded (empty,
    /// zeros, or JSON that ends early), and returns their paths. Such an entry's fault was never
    /// made: [`Journal::record`] returns only after the whole entry is durable, and the host is
    /// changed only after that. No running process ever sees a torn entry (entries are renamed
    /// into place whole), so this is safe while other writers share the directory. An entry
    /// that is whole but wrong is left alone and reported by [`Journal::entries`].
    pub(crate) fn discard_torn(&self) -> Vec<PathBuf> {
        let mut discarded = Vec::new();
        for path in self.entry_paths() {
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            if is_torn(&bytes) && fs::remove_file(&path).is_ok() {
                discarded.push(path);
            }
        }
        discarded
    }

    fn entry_paths(&self) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|item| item.path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "json")
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    }

    /// Every entry on disk. Unreadable entries are returned as errors so they are reported, not lost.
    pub(crate) fn entries(&self) -> Vec<Result<Entry, String>> {
        let mut entries = Vec::new();
        for path in self.entry_paths() {
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
                .map_err(|e| format!("unreadable journal entry {}: {e}", path.display()));
            if let Ok(entry) = &parsed {
                for secret in &entry.secrets {
                    crate::secrets::register(secret);
                }
            }
            entries.push(parsed);
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, undo: Undo) -> Entry {
        Entry {
            id: id.to_owned(),
            run_id: "r".to_owned(),
            kind: "disk-fill".to_owned(),
            undo,
            owner: ProcRef {
                pid: 1,
                start_time: 1,
                comm: "gone".to_owned(),
            },
            written_at: Timestamp::now(),
            deadline: None,
            secrets: Vec::new(),
            boot: boot_id(),
        }
    }

    #[test]
    fn a_recorded_entry_is_whole_leaves_no_temp_file_and_is_forgotten_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let undo = Undo::RemoveFile {
            path: dir.path().join("fill"),
        };
        journal.record(&entry("f-0", undo.clone())).unwrap();
        journal.record(&entry("f-1", undo.clone())).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["f-0.json", "f-1.json"]);
        let read = journal.entries();
        assert_eq!(read.len(), 2);
        for e in &read {
            assert_eq!(e.as_ref().unwrap().undo, undo);
        }
        assert!(journal.discard_torn().is_empty());
        journal.remove("f-0", Forget::Lazily).unwrap();
        journal.remove("f-1", Forget::Durably).unwrap();
        // A missing entry is forgotten already, whichever way.
        journal.remove("f-0", Forget::Lazily).unwrap();
        journal.remove("f-1", Forget::Durably).unwrap();
        assert!(journal.entries().is_empty());
    }

    #[test]
    fn only_entries_a_crash_cut_short_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let whole = serde_json::to_vec_pretty(&entry(
            "whole",
            Undo::RemoveFile {
                path: dir.path().join("fill"),
            },
        ))
        .unwrap();
        let write = |name: &str, bytes: &[u8]| fs::write(dir.path().join(name), bytes).unwrap();
        write("empty.json", b"");
        write("zeros.json", &[0; 512]);
        write("cut.json", &whole[..whole.len() / 2]);
        write("cut-at-the-brace.json", &whole[..whole.len() - 1]);
        write("whole.json", &whole);
        // Whole JSON that is not an entry, and bytes that are not JSON: damaged, not torn.
        write("wrong.json", b"{\"id\": 1}");
        write("garbage.json", b"not json at all");
        let mut discarded: Vec<String> = journal
            .discard_torn()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        discarded.sort();
        assert_eq!(
            discarded,
            [
                "cut-at-the-brace.json",
                "cut.json",
                "empty.json",
                "zeros.json"
            ]
        );
        let entries = journal.entries();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries.iter().filter(|e| e.is_ok()).count(), 1);
        let mut errors: Vec<&String> = entries.iter().filter_map(|e| e.as_ref().err()).collect();
        errors.sort();
        assert!(errors[0].contains("garbage.json"), "{errors:?}");
        assert!(errors[1].contains("wrong.json"), "{errors:?}");
    }
}
