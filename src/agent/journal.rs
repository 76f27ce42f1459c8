//! Owns the agent's crash-safe journal: one file per fault holding what undoes it, written and
//! fsynced before the host is changed, removed only after the change is undone.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

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
}

impl Entry {
    /// The registered secrets that `undo` holds, for [`Entry::secrets`].
    pub(crate) fn secrets_in(undo: &Undo) -> Vec<String> {
        crate::secrets::occurring_in(&serde_json::to_string(undo).unwrap_or_default())
    }
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

    /// Writes the entry durably: temp file, fsync, rename, fsync the directory.
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
        file.sync_all().map_err(fail)?;
        fs::rename(&tmp, self.path(&entry.id)).map_err(fail)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }

    /// Forgets an entry once its fault is undone. Removing a missing entry succeeds.
    pub(crate) fn remove(&self, id: &str) -> Result<(), String> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("failed to sync {}: {e}", self.dir.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("failed to remove journal entry {id}: {e}")),
        }
    }

    /// Every entry on disk. Unreadable entries are returned as errors so they are reported, not lost.
    pub(crate) fn entries(&self) -> Vec<Result<Entry, String>> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for item in dir.filter_map(Result::ok) {
            let path = item.path();
            let is_entry = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_entry {
                continue;
            }
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
