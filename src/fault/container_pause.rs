//! Owns the `container-pause` fault: freeze a container's whole cgroup (or any cgroup) with the
//! kernel's freezer — v1 `freezer.state` or v2 `cgroup.freeze` — for the fault's duration, and
//! thaw it on revert, also from the journal after a crash. Also owns [`Target`], the container
//! (by id prefix or name) or cgroup that both container kinds act on.

use std::fmt;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Context;
use super::check::{Checked, FieldError};
use crate::container::{self, Index};
use crate::process::{self, ProcInfo, ProcRef};

/// The keys of a `container-pause` table, as written (`duration` is common to every fault).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    container: Option<String>,
    container_name: Option<String>,
    cgroup: Option<String>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<ContainerPause, FieldError> {
        Ok(ContainerPause {
            target: target(self.container, self.container_name, self.cgroup)?,
        })
    }
}

/// What a container fault acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Target {
    /// A container id, or a prefix of exactly one running container's id.
    Container(String),
    /// A container's name, where its runtime records one.
    ContainerName(String),
    /// A cgroup path (`container-pause` only).
    Cgroup(String),
}

/// Exactly one of the keys given; `cgroup` is `None` for kinds that do not take it.
pub(crate) fn target(
    container: Option<String>,
    container_name: Option<String>,
    cgroup: Option<String>,
) -> Result<Target, FieldError> {
    let mut given: Vec<Target> = [
        container.map(Target::Container),
        container_name.map(Target::ContainerName),
        cgroup.map(Target::Cgroup),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        return Err(FieldError::raw(
            "container",
            "give exactly one of `container` (an id or a unique prefix of one), `container_name` or, for `container-pause`, `cgroup`".to_owned(),
        ));
    }
    Ok(given.remove(0))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Container(c) => write!(f, "container `{c}`"),
            Target::ContainerName(n) => write!(f, "the container named `{n}`"),
            Target::Cgroup(g) => write!(f, "cgroup `{g}`"),
        }
    }
}

impl Target {
    pub(crate) fn check(&self) -> Checked {
        match self {
            Target::Container(c) => {
                container::check_container_ref(c).map_err(|e| FieldError::new("container", e))
            }
            Target::ContainerName(n) => {
                container::check_container_name(n).map_err(|e| FieldError::new("container_name", e))
            }
            Target::Cgroup(g) => {
                container::check_cgroup_path(g).map_err(|e| FieldError::new("cgroup", e))
            }
        }
    }

    /// The container this target names now: its full id and its processes.
    fn container(&self) -> Result<(String, Vec<ProcInfo>), String> {
        let procs = process::all();
        let index = Index::scan(procs.iter().map(|p| p.pid));
        let id = match self {
            Target::Container(c) => index.resolve(c)?,
            Target::ContainerName(n) => index.resolve_name(n)?,
            Target::Cgroup(_) => return Err(format!("{self} is not a container")),
        };
        let Some(id) = id else {
            return Err(format!(
                "no running container matches {self} (read from the cgroups of every process): nothing to inject"
            ));
        };
        let members = index.members(&id);
        let procs = procs
            .into_iter()
            .filter(|p| members.binary_search(&p.pid).is_ok())
            .collect();
        Ok((id, procs))
    }

    /// The container's full id and its init: pid 1 of its pid namespace. Refused when that is
    /// a process faultline protects (the agent's own namespace init, faultline, its ancestors).
    pub(crate) fn init(&self) -> Result<(String, ProcRef), String> {
        let (id, procs) = self.container()?;
        let members: Vec<(i32, i32, Vec<i32>)> = procs
            .iter()
            .map(|p| (p.pid, p.ppid, container::nspid_of(p.pid)))
            .collect();
        let Some(pid) = container::init_of(&members) else {
            return Err(format!(
                "container {id} has no process left: nothing to inject"
            ));
        };
        let info = procs
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| format!("container {id}'s init (pid {pid}) exited"))?;
        refuse_protected(&info, &process::protected())?;
        Ok((id, info.to_ref()))
    }
}

/// Refuses a process no fault may act on (`protected` is [`process::protected`]).
fn refuse_protected(
    p: &ProcInfo,
    protected: &std::collections::HashMap<i32, &'static str>,
) -> Result<(), String> {
    if p.is_kernel_thread() {
        return Err(format!(
            "refusing to act on pid {} ({}): it is a kernel thread",
            p.pid, p.comm
        ));
    }
    if let Some(reason) = protected.get(&p.pid) {
        return Err(format!(
            "refusing to act on pid {} ({}): it is {reason}",
            p.pid, p.comm
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContainerPause {
    pub(crate) target: Target,
}

/// A cgroup's freezer: the directory of the cgroup in the v1 `freezer` hierarchy (its
/// `freezer.state`), or in the v2 hierarchy (its `cgroup.freeze`, read back from `cgroup.events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Freezer {
    V1 { dir: PathBuf },
    V2 { dir: PathBuf },
}

/// How long the kernel may take to freeze every task before the pause counts as not taken.
const FREEZE_WAIT: Duration = Duration::from_secs(2);

impl fmt::Display for Freezer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Freezer::V1 { dir } => write!(f, "{}", dir.join("freezer.state").display()),
            Freezer::V2 { dir } => write!(f, "{}", dir.join("cgroup.freeze").display()),
        }
    }
}

impl Freezer {
    /// The freezer of a process's cgroup: v1 where the `freezer` hierarchy is mounted (what
    /// runc, Docker and `runc state` use on a hybrid host), else v2.
    pub(crate) fn of_lines(
        lines: &[container::CgroupLine],
        mounts: &container::Mounts,
    ) -> Option<(Freezer, String)> {
        let v1 = mounts.v1_freezer.as_ref().and_then(|(point, root)| {
            let line = lines
                .iter()
                .find(|l| l.controllers.iter().any(|c| c == "freezer"))?;
            let dir = container::dir_in(point, root, &line.path)?;
            Some((Freezer::V1 { dir }, line.path.clone()))
        });
        v1.or_else(|| {
            let (point, root) = mounts.v2.as_ref()?;
            let line = lines.iter().find(|l| l.is_v2())?;
            let dir = container::dir_in(point, root, &line.path)?;
            Some((Freezer::V2 { dir }, line.path.clone()))
        })
    }

    /// The freezer of cgroup `path`: its v1 freezer directory if it exists, else its v2 one.
    fn of_path(path: &str, mounts: &container::Mounts) -> Option<Freezer> {
        let v1 = mounts.v1_freezer.as_ref().and_then(|(point, root)| {
            let dir = container::dir_in(point, root, path)?;
            dir.join("freezer.state")
                .is_file()
                .then_some(Freezer::V1 { dir })
        });
        v1.or_else(|| {
            let (point, root) = mounts.v2.as_ref()?;
            let dir = container::dir_in(point, root, path)?;
            dir.join("cgroup.freeze")
                .is_file()
                .then_some(Freezer::V2 { dir })
        })
    }

    /// Whether a process whose cgroup lines are `lines` is inside the cgroup this freezes
    /// (`path` in its hierarchy).
    fn holds(&self, path: &str, lines: &[container::CgroupLine]) -> bool {
        lines
            .iter()
            .filter(|l| match self {
                Freezer::V1 { .. } => l.controllers.iter().any(|c| c == "freezer"),
                Freezer::V2 { .. } => l.is_v2(),
            })
            .any(|l| container::is_under(&l.path, path))
    }

    fn dir(&self) -> &Path {
        match self {
            Freezer::V1 { dir } | Freezer::V2 { dir } => dir,
        }
    }

    fn write(&self, value: &str) -> Result<(), String> {
        let file = match self {
            Freezer::V1 { dir } => dir.join("freezer.state"),
            Freezer::V2 { dir } => dir.join("cgroup.freeze"),
        };
        // Never created: a cgroup control file exists or the cgroup is gone.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| format!("failed to write `{value}` to {}: {e}", file.display()))
    }

    /// Whether the cgroup is frozen (every task), and what was read.
    fn frozen(&self) -> Result<(bool, String), String> {
        match self {
            Freezer::V1 { dir } => {
                let file = dir.join("freezer.state");
                let state = std::fs::read_to_string(&file)
                    .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
                let state = state.trim().to_owned();
                Ok((state == "FROZEN", state))
            }
            Freezer::V2 { dir } => {
                let file = dir.join("cgroup.events");
                let events = std::fs::read_to_string(&file)
                    .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
                let frozen = events.lines().any(|l| l.trim() == "frozen 1");
                Ok((
                    frozen,
                    if frozen { "frozen 1" } else { "frozen 0" }.to_owned(),
                ))
            }
        }
    }

    /// Whether the freeze was asked for (v1 `FREEZING`/`FROZEN`, v2 `cgroup.freeze` 1), as
    /// opposed to taken effect.
    fn asked(&self) -> Result<bool, String> {
        match self {
            Freezer::V1 { .. } => self.frozen().map(|(_, s)| s != "THAWED"),
            Freezer::V2 { dir } => {
                let file = dir.join("cgroup.freeze");
                std::fs::read_to_string(&file)
                    .map(|s| s.trim() == "1")
                    .map_err(|e| format!("failed to read {}: {e}", file.display()))
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) freezer: Freezer,
    /// What is frozen, for reports (`container 3f1c… (cgroup /3f1c…)`).
    what: String,
    /// The processes in the cgroup when it was prepared, for the agent's envelope.
    pub(crate) procs: Vec<ProcRef>,
}

impl ContainerPause {
    pub(crate) fn describe(&self) -> String {
        format!(
            "freeze every process of {} with the cgroup freezer; thaw them on revert",
            self.target
        )
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        self.target.check()
    }

    pub(crate) fn prepare(&self, _ctx: &Context<'_>) -> Result<Prepared, String> {
        let mounts = container::mounts();
        let (freezer, path, what) = match &self.target {
            Target::Cgroup(path) => {
                let freezer = Freezer::of_path(path, &mounts).ok_or_else(|| {
                    format!(
                        "cgroup `{path}` does not exist on this host, or has no freezer (neither a v1 freezer.state nor a v2 cgroup.freeze): nothing to inject"
                    )
                })?;
                (freezer, path.clone(), format!("cgroup {path}"))
            }
            Target::Container(_) | Target::ContainerName(_) => {
                let (id, procs) = self.target.container()?;
                let lines = procs
                    .iter()
                    .map(|p| container::cgroups_of(p.pid))
                    .find(|l| !l.is_empty())
                    .ok_or_else(|| {
                        format!("container {id} has no process left: nothing to inject")
                    })?;
                let (freezer, path) = Freezer::of_lines(&lines, &mounts).ok_or_else(|| {
                    format!("container {id}'s cgroup has no freezer on this host (no v1 freezer hierarchy and no cgroup v2 mount)")
                })?;
                (
                    freezer,
                    path.clone(),
                    format!("container {id} (cgroup {path})"),
                )
            }
        };
        // Every process the freeze would hold, and a refusal if faultline or what it protects
        // is among them: a frozen agent or watchdog could never thaw anything.
        let protected = process::protected();
        let mut procs = Vec::new();
        for p in process::all() {
            if freezer.holds(&path, &container::cgroups_of(p.pid)) {
                refuse_protected(&p, &protected)?;
                procs.push(p.to_ref());
            }
        }
        if procs.is_empty() {
            return Err(format!("no process is in {what}: nothing to inject"));
        }
        if freezer.asked()? {
            return Err(format!(
                "{what} is already frozen ({freezer}), not by this fault: thawing it on revert would undo someone else's pause"
            ));
        }
        Ok(Prepared {
            freezer,
            what,
            procs,
        })
    }
}

impl Prepared {
    pub(crate) fn targets(&self) -> Vec<String> {
        vec![self.what.clone()]
    }

    pub(crate) fn inject(&self) -> Result<String, String> {
        let value = match self.freezer {
            Freezer::V1 { .. } => "FROZEN",
            Freezer::V2 { .. } => "1",
        };
        self.freezer.write(value)?;
        Ok(format!(
            "froze {} ({} process(es)) through {}",
            self.what,
            self.procs.len(),
            self.freezer
        ))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        let deadline = Instant::now() + FREEZE_WAIT;
        loop {
            let (frozen, seen) = self.freezer.frozen()?;
            if frozen {
                return Ok(format!("the freezer reads {seen}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} is not frozen {} s after the freeze: the freezer reads {seen}",
                    self.what,
                    FREEZE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Thaws a cgroup; from the journal alone, idempotent, harmless when the cgroup is gone (its
/// container was deleted). The directory must be a plain absolute path inside a cgroup mount of
/// this host, so a journal entry cannot make the agent write elsewhere.
pub(super) fn thaw(freezer: &Freezer) -> Result<String, String> {
    let dir = freezer.dir();
    let plain = dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let mounts = container::mounts();
    let mount = match freezer {
        Freezer::V1 { .. } => mounts.v1_freezer.map(|(p, _)| p),
        Freezer::V2 { .. } => mounts.v2.map(|(p, _)| p),
    };
    if !plain || !mount.is_some_and(|m| dir.starts_with(m)) {
        return Err(format!(
            "refusing to thaw {}: it is not a cgroup directory of this host's freezer",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Ok(format!("{} is gone: nothing to thaw", dir.display()));
    }
    let value = match freezer {
        Freezer::V1 { .. } => "THAWED",
        Freezer::V2 { .. } => "0",
    };
    match freezer.write(value) {
        Ok(()) => Ok(format!("thawed {}", dir.display())),
        // Removed between the check and the write: nothing is frozen any more.
        Err(_) if !dir.is_dir() => Ok(format!("{} is gone: nothing to thaw", dir.display())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{Mounts, parse_cgroup_file};

    fn hybrid() -> Mounts {
        Mounts {
            v1_freezer: Some((PathBuf::from("/sys/fs/cgroup/freezer"), "/".to_owned())),
            v2: Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned())),
        }
    }

    #[test]
    fn a_hybrid_host_freezes_through_v1_and_a_v2_host_through_cgroup_freeze() {
        let lines = parse_cgroup_file("6:freezer:/web-1\n4:memory:/x/web-1\n0::/web-1\n");
        let (f, path) = Freezer::of_lines(&lines, &hybrid()).unwrap();
        assert_eq!(
            f,
            Freezer::V1 {
                dir: PathBuf::from("/sys/fs/cgroup/freezer/web-1")
            }
        );
        assert_eq!(path, "/web-1");
        assert_eq!(f.to_string(), "/sys/fs/cgroup/freezer/web-1/freezer.state");
        let v2 = Mounts {
            v1_freezer: None,
            v2: Some((PathBuf::from("/sys/fs/cgroup"), "/".to_owned())),
        };
        let lines = parse_cgroup_file("0::/system.slice/docker-ab.scope\n");
        let (f, path) = Freezer::of_lines(&lines, &v2).unwrap();
        assert_eq!(
            f,
            Freezer::V2 {
                dir: PathBuf::from("/sys/fs/cgroup/system.slice/docker-ab.scope")
            }
        );
        assert_eq!(path, "/system.slice/docker-ab.scope");
        assert_eq!(Freezer::of_lines(&lines, &Mounts::default()), None);
    }

    #[test]
    fn a_freezer_holds_processes_below_its_cgroup_by_whole_components() {
        let f = Freezer::V2 {
            dir: PathBuf::from("/sys/fs/cgroup/a/b"),
        };
        assert!(f.holds("/a/b", &parse_cgroup_file("0::/a/b/c\n")));
        assert!(!f.holds("/a/b", &parse_cgroup_file("0::/a/bc\n")));
        // A v2 freezer does not look at v1 lines.
        assert!(!f.holds("/a/b", &parse_cgroup_file("6:freezer:/a/b\n0::/\n")));
    }

    #[test]
    fn thaw_refuses_a_journaled_path_outside_the_freezers() {
        for dir in ["/etc", "/sys/fs/cgroup/freezer/../../../etc", "relative"] {
            let e = thaw(&Freezer::V1 {
                dir: PathBuf::from(dir),
            })
            .unwrap_err();
            assert!(e.starts_with("refusing to thaw"), "{dir}: {e}");
        }
    }

    #[test]
    fn init_of_this_namespace_and_faultline_itself_are_never_targets() {
        let protected = process::protected();
        let init = process::read(1).expect("pid 1 is visible");
        let e = refuse_protected(&init, &protected).unwrap_err();
        assert!(e.ends_with("it is init of this pid namespace"), "{e}");
        let me = process::read(std::process::id() as i32).unwrap();
        let e = refuse_protected(&me, &protected).unwrap_err();
        assert!(e.ends_with("it is faultline itself"), "{e}");
        // Any other process, such as a container's init seen from the host, is not protected.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = process::read(child.id() as i32).unwrap();
        let verdict = refuse_protected(&other, &protected);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn exactly_one_target_key_is_taken() {
        assert_eq!(
            target(Some("abcd".into()), None, None).unwrap(),
            Target::Container("abcd".into())
        );
        assert!(target(None, None, None).is_err());
        assert!(target(Some("abcd".into()), Some("web".into()), None).is_err());
        let bad = Target::Cgroup("/a/../b".into()).check().unwrap_err();
        assert_eq!(bad.field, "cgroup");
        let rel = Target::Cgroup("a/b".into()).check().unwrap_err();
        assert!(rel.message.contains("not absolute"), "{rel}");
    }
}
