//! Owns finding containers and cgroups without a runtime socket: parsing `/proc/PID/cgroup` (cgroup
//! v1 and v2 lines), the cgroup path forms of runc, containerd/CRI, CRI-O, Docker and Podman, the
//! cgroup mounts in `/proc/self/mountinfo`, and runc's state files (for container names). The
//! parsing is pure and unit-tested over every form; the few reads of `/proc` and `/run` that
//! resolve an id prefix or a name to processes are at the end.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`. Cgroup v2's line is
/// `0::/path` (no controllers); v1 lines name their controllers (`6:freezer:/abc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupLine {
    pub(crate) hierarchy: u32,
    pub(crate) controllers: Vec<String>,
    pub(crate) path: String,
}

impl CgroupLine {
    /// Whether this is the cgroup v2 (unified) line.
    pub(crate) fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }
}

/// Parses the text of `/proc/PID/cgroup`. Lines that do not have the three fields are skipped.
pub(crate) fn parse_cgroup_file(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            Some(CgroupLine {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Which runtime's path form a container id was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    Runc,
    Docker,
    /// containerd's CRI plugin, or any runtime under a kubelet's `kubepods` hierarchy.
    Cri,
    CriO,
    Podman,
}

/// A container a cgroup path belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) id: String,
    pub(crate) runtime: Runtime,
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container a cgroup path belongs to, if any, reading the deepest component first (a
/// container's own sub-cgroups, like systemd's `init.scope` inside it, belong to it).
///
/// Forms: Docker `/docker/<id>` and `docker-<id>.scope`; containerd/CRI
/// `/kubepods[/burstable|/besteffort]/pod<uid>/<id>`, `kubepods-…-pod<uid>.slice/cri-containerd-<id>.scope`;
/// CRI-O `crio-<id>.scope`; Podman `libpod-<id>.scope` and `/libpod_parent/libpod-<id>`; runc
/// with the systemd driver `runc-<id>.scope`; runc with its default cgroupfs path, `/<id>` (below
/// whatever cgroup runc itself ran in), which is recognised only for an id in `runc_ids` (the
/// containers runc's state directories hold), since any cgroup could have such a name. A
/// runtime's monitor (`libpod-conmon-<id>.scope`, `crio-conmon-<id>.scope`) is not the container.
pub(crate) fn container_in_path(path: &str, runc_ids: &HashSet<String>) -> Option<Found> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (depth, component) in components.iter().enumerate().rev() {
        if component.starts_with("libpod-conmon-") || component.starts_with("crio-conmon-") {
            return None;
        }
        let base = component.strip_suffix(".scope").unwrap_or(component);
        let prefixed = [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Cri),
            ("crio-", Runtime::CriO),
            ("libpod-", Runtime::Podman),
        ];
        for (prefix, runtime) in prefixed {
            if let Some(id) = base.strip_prefix(prefix).filter(|id| is_full_id(id)) {
                return Some(Found {
                    id: id.to_owned(),
                    runtime,
                });
            }
        }
        if let Some(id) = component
            .strip_suffix(".scope")
            .and_then(|b| b.strip_prefix("runc-"))
            .filter(|id| check_container_ref(id).is_ok())
        {
            return Some(Found {
                id: id.to_owned(),
                runtime: Runtime::Runc,
            });
        }
        if is_full_id(component) {
            let parent = depth.checked_sub(1).map(|d| components[d]);
            if parent == Some("docker") {
                return Some(Found {
                    id: (*component).to_owned(),
                    runtime: Runtime::Docker,
                });
            }
            if components[..depth]
                .iter()
                .any(|c| c.starts_with("kubepods"))
                && parent.is_some_and(|p| p.starts_with("pod"))
            {
                return Some(Found {
                    id: (*component).to_owned(),
                    runtime: Runtime::Cri,
                });
            }
        }
        if runc_ids.contains(*component) {
            return Some(Found {
                id: (*component).to_owned(),
                runtime: Runtime::Runc,
            });
        }
    }
    None
}

/// The container of a process, from its cgroup lines: the v2 line first, then the v1 lines.
pub(crate) fn container_of(lines: &[CgroupLine], runc_ids: &HashSet<String>) -> Option<Found> {
    lines
        .iter()
        .filter(|l| l.is_v2())
        .chain(lines.iter().filter(|l| !l.is_v2()))
        .find_map(|l| container_in_path(&l.path, runc_ids))
}

/// The shortest id prefix accepted: shorter ones pick a container by chance.
pub(crate) const MIN_PREFIX: usize = 4;
/// The longest container id or name accepted (runc allows any length; 64-hex ids are the norm).
pub(crate) const MAX_ID: usize = 128;

/// A container id or prefix as users write it: the characters runc allows in an id
/// (`[A-Za-z0-9_+.-]`), at least [`MIN_PREFIX`] and at most [`MAX_ID`] of them.
pub(crate) fn check_container_ref(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() < MIN_PREFIX {
        return Err(format!(
            "is too short (`{id}`): give at least {MIN_PREFIX} characters of the container id, so it cannot pick a container by chance"
        ));
    }
    if id.len() > MAX_ID {
        return Err(format!(
            "is longer than {MAX_ID} characters, longer than any container id"
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-')))
    {
        return Err(format!(
            "holds `{bad}` (`{id}`): a container id has only letters, digits, `_`, `+`, `.` and `-`"
        ));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(format!("must not start with `.` or `-` (`{id}`)"));
    }
    Ok(())
}

/// A container name as users write it: not empty, at most [`MAX_ID`] characters, printable,
/// no `/` (names are matched exactly, never as paths).
pub(crate) fn check_container_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_ID {
        return Err(format!("is longer than {MAX_ID} characters"));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err("must not hold `/` or control characters".to_owned());
    }
    Ok(())
}

/// The longest cgroup path accepted (the kernel's `PATH_MAX`).
const MAX_CGROUP_PATH: usize = 4096;

/// A cgroup path as users write it: absolute, not the root (which holds every process), no `.`
/// or `..` component, no empty component, no control characters.
pub(crate) fn check_cgroup_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !path.starts_with('/') {
        return Err(format!(
            "is not absolute (`{path}`): write the cgroup path from the hierarchy's root, e.g. `/system.slice/nginx.service`"
        ));
    }
    if path.len() > MAX_CGROUP_PATH {
        return Err(format!("is longer than {MAX_CGROUP_PATH} bytes"));
    }
    if path.chars().any(char::is_control) {
        return Err("must not hold control characters".to_owned());
    }
    let components: Vec<&str> = path[1..].split('/').collect();
    if components.iter().all(|c| c.is_empty()) {
        return Err(
            "must not be `/`, the root cgroup: it holds every process on the host, faultline included"
                .to_owned(),
        );
    }
    let trimmed = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    for component in trimmed.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!(
                "has an empty, `.` or `..` component (`{path}`): write the cgroup's plain path"
            ));
        }
    }
    Ok(())
}

/// Whether cgroup `path` is `prefix` or below it, comparing whole components: `/a/b` is under
/// `/a` and `/a/b`, not under `/a/bc`'s sibling `/a/b` ... nor is `/a/bc` under `/a/b`.
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    let mut have = path.split('/').filter(|c| !c.is_empty());
    prefix
        .split('/')
        .filter(|c| !c.is_empty())
        .all(|want| have.next() == Some(want))
}

/// The pid-namespace pids of a process, from the `NSpid:` line of `/proc/PID/status` (outermost
/// namespace first, its own namespace last).
pub(crate) fn parse_nspid(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

/// A container's init among its processes, each given as (pid, ppid, NSpid): the process that
/// is pid 1 of its own pid namespace, the outermost such one when the container nests
/// namespaces; or, when the container shares a pid namespace with its host, the root of its
/// process tree (a process whose parent is outside the container), the lowest pid first.
pub(crate) fn init_of(members: &[(i32, i32, Vec<i32>)]) -> Option<i32> {
    let mut inits: Vec<&(i32, i32, Vec<i32>)> = members
        .iter()
        .filter(|(_, _, ns)| ns.len() > 1 && ns.last() == Some(&1))
        .collect();
    inits.sort_by_key(|(pid, _, ns)| (ns.len(), *pid));
    if let Some((pid, _, _)) = inits.first() {
        return Some(*pid);
    }
    let pids: HashSet<i32> = members.iter().map(|m| m.0).collect();
    members
        .iter()
        .filter(|(_, ppid, _)| !pids.contains(ppid))
        .map(|m| m.0)
        .min()
}

/// Where the cgroup hierarchies this process sees are mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mounts {
    /// The v1 hierarchy with the `freezer` controller: (mount point, root of the mount).
    pub(crate) v1_freezer: Option<(PathBuf, String)>,
    /// The cgroup v2 (unified) hierarchy: (mount point, root of the mount).
    pub(crate) v2: Option<(PathBuf, String)>,
}

/// Reads the cgroup mounts out of the text of `/proc/self/mountinfo`: field 4 is the root of the
/// mount inside its filesystem, field 5 the mount point; after ` - ` come the filesystem type,
/// the source and the super options (which name a v1 hierarchy's controllers).
pub(crate) fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mut rest = right.split(' ');
        let fstype = rest.next().unwrap_or_default();
        let options = rest.nth(1).unwrap_or_default();
        let point = PathBuf::from(unescape_mount(point));
        let root = unescape_mount(root);
        match fstype {
            "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some((point, root)),
            "cgroup"
                if mounts.v1_freezer.is_none() && options.split(',').any(|o| o == "freezer") =>
            {
                mounts.v1_freezer = Some((point, root));
            }
            _ => {}
        }
    }
    mounts
}

/// `mountinfo` escapes spaces and a few other bytes as `\ooo` octal.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            out.push(u8::try_from(n).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` with mount root `root`, if
/// the path is inside what the mount shows.
pub(crate) fn dir_in(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    if !is_under(path, root) {
        return None;
    }
    let skip = root.split('/').filter(|c| !c.is_empty()).count();
    let mut dir = point.to_path_buf();
    for component in path.split('/').filter(|c| !c.is_empty()).skip(skip) {
        dir.push(component);
    }
    Some(dir)
}

// ---- What reads the host ----

/// The cgroup mounts of this process.
pub(crate) fn mounts() -> Mounts {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The cgroup lines of a process, or none when it is gone.
pub(crate) fn cgroups_of(pid: i32) -> Vec<CgroupLine> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| parse_cgroup_file(&t))
        .unwrap_or_default()
}

/// Where runc keeps a state directory per container: runc's own default root, containerd's
/// runc shims (one directory per containerd namespace) and Docker's.
const RUNC_ROOTS: [&str; 1] = ["/run/runc"];
const RUNC_NAMESPACED_ROOTS: [&str; 2] = ["/run/containerd/runc", "/run/docker/runtime-runc"];

/// The annotations that runtimes set to a container's name, in the order they are looked at:
/// containerd's CRI plugin, CRI-O, nerdctl, and faultline's own (for plain runc, whose only
/// name is the id).
pub(crate) const NAME_ANNOTATIONS: [&str; 4] = [
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
    "nerdctl/name",
    "faultline/name",
];

/// At most this much of a runc `state.json` is read.
const STATE_MAX: u64 = 4 << 20;

/// A runc container as its state directory tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuncState {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
}

/// The name a runc `state.json` records, from its labels (runc stores the OCI annotations there
/// as `key=value`), by [`NAME_ANNOTATIONS`].
pub(crate) fn name_in_state(state: &serde_json::Value) -> Option<String> {
    let labels: Vec<&str> = state["config"]["labels"]
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    NAME_ANNOTATIONS.iter().find_map(|key| {
        labels.iter().find_map(|label| {
            label
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    })
}

/// Every runc container whose state directory is on this host.
pub(crate) fn runc_states() -> Vec<RuncState> {
    let mut dirs: Vec<PathBuf> = RUNC_ROOTS.iter().map(PathBuf::from).collect();
    for root in RUNC_NAMESPACED_ROOTS {
        if let Ok(entries) = std::fs::read_dir(root) {
            dirs.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(file) = std::fs::File::open(entry.path().join("state.json")) else {
                continue;
            };
            let mut text = Vec::new();
            if file.take(STATE_MAX).read_to_end(&mut text).is_err() {
                continue;
            }
            let name = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| name_in_state(&v));
            found.push(RuncState { id, name });
        }
    }
    found
}

/// The containers on this host: which container each process is in.
pub(crate) struct Index {
    by_pid: HashMap<i32, Found>,
    names: Vec<RuncState>,
}

impl Index {
    /// Reads the cgroups of `pids` (and runc's state directories).
    pub(crate) fn scan(pids: impl Iterator<Item = i32>) -> Index {
        let names = runc_states();
        let runc_ids: HashSet<String> = names.iter().map(|s| s.id.clone()).collect();
        let by_pid = pids
            .filter_map(|pid| container_of(&cgroups_of(pid), &runc_ids).map(|f| (pid, f)))
            .collect();
        Index { by_pid, names }
    }

    pub(crate) fn container_of(&self, pid: i32) -> Option<&Found> {
        self.by_pid.get(&pid)
    }

    /// The one container whose id is `reference` or starts with it. `Ok(None)` when none has
    /// a process now; an error naming them when the prefix fits several.
    pub(crate) fn resolve(&self, reference: &str) -> Result<Option<String>, String> {
        let ids: BTreeSet<&str> = self.by_pid.values().map(|f| f.id.as_str()).collect();
        if ids.contains(reference) {
            return Ok(Some(reference.to_owned()));
        }
        let fits: Vec<&str> = ids
            .into_iter()
            .filter(|id| id.starts_with(reference))
            .collect();
        match fits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).to_owned())),
            many => Err(format!(
                "container `{reference}` is ambiguous: it is a prefix of {}; give more of the id",
                many.iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    /// The one container named `name` (see [`NAME_ANNOTATIONS`]); an error when several are.
    pub(crate) fn resolve_name(&self, name: &str) -> Result<Option<String>, String> {
        let running: HashSet<&str> = self.by_pid.values().map(|f| f.id.as_str()).collect();
        let ids: BTreeSet<&str> = self
            .names
            .iter()
            .filter(|s| s.name.as_deref() == Some(name) && running.contains(s.id.as_str()))
            .map(|s| s.id.as_str())
            .collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.into_iter().next().map(str::to_owned)),
            _ => Err(format!(
                "container name `{name}` is ambiguous: containers {} carry it",
                ids.iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    /// The pids in container `id`, lowest first.
    pub(crate) fn members(&self, id: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .by_pid
            .iter()
            .filter(|(_, f)| f.id == id)
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }
}

/// The NSpid list of a process, or an empty list.
pub(crate) fn nspid_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_nspid(&s))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f1e2d3c";

    fn found(path: &str) -> Option<Found> {
        container_in_path(path, &HashSet::new())
    }

    #[test]
    fn cgroup_lines_of_v1_and_v2_parse() {
        let lines = parse_cgroup_file(
            "9:name=systemd:/abc1\n6:freezer:/abc1\n4:memory:/process_api/8fc6/abc1\n1:cpu,cpuacct:/abc1\n0::/abc1\nnonsense\n",
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0].controllers, ["name=systemd"]);
        assert_eq!(lines[1].controllers, ["freezer"]);
        assert_eq!(lines[3].controllers, ["cpu", "cpuacct"]);
        assert!(lines[4].is_v2());
        assert_eq!(lines[4].path, "/abc1");
        assert!(!lines[1].is_v2());
    }

    #[test]
    fn docker_paths_give_the_id() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope/init.scope"),
        ] {
            assert_eq!(
                found(&path),
                Some(Found {
                    id: ID.to_owned(),
                    runtime: Runtime::Docker
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn kubepods_paths_of_every_qos_class_give_the_id() {
        let uid = "pod8a5e2c64-1f0b-4a6e-9d53-0c2b7e1f4a90";
        for path in [
            format!("/kubepods/{uid}/{ID}"),
            format!("/kubepods/burstable/{uid}/{ID}"),
            format!("/kubepods/besteffort/{uid}/{ID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a5e2c64_1f0b.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod8a5e.slice/cri-containerd-{ID}.scope"),
        ] {
            let f = found(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(f.id, ID, "{path}");
            assert_eq!(f.runtime, Runtime::Cri, "{path}");
        }
        assert_eq!(
            found(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/x.slice/crio-{ID}.scope"
            ))
            .unwrap()
            .runtime,
            Runtime::CriO
        );
        // The pod's own cgroup and the 64-hex name outside a pod are not containers.
        assert_eq!(found(&format!("/kubepods/burstable/{uid}")), None);
        assert_eq!(found(&format!("/system.slice/{ID}")), None);
    }

    #[test]
    fn podman_containers_are_found_and_their_conmon_is_not() {
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            ),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            let f = found(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((f.id.as_str(), f.runtime), (ID, Runtime::Podman), "{path}");
        }
        assert_eq!(
            found(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            found(&format!("/system.slice/crio-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn runc_paths_are_found_by_the_ids_runc_holds() {
        let ids: HashSet<String> = ["web-1".to_owned()].into();
        // `runc run` with the default cgroupsPath: `/<id>` below the cgroup runc ran in.
        for path in [
            "/web-1",
            "/process_api/8fc61ebae781/web-1",
            "/user.slice/web-1",
        ] {
            assert_eq!(
                container_in_path(path, &ids),
                Some(Found {
                    id: "web-1".to_owned(),
                    runtime: Runtime::Runc
                }),
                "{path}"
            );
        }
        assert_eq!(container_in_path("/web-2", &ids), None);
        assert_eq!(container_in_path("/", &ids), None);
        // The systemd cgroup driver's form needs no state lookup.
        assert_eq!(
            container_in_path("/system.slice/runc-web-9.scope", &HashSet::new()),
            Some(Found {
                id: "web-9".to_owned(),
                runtime: Runtime::Runc
            })
        );
    }

    #[test]
    fn a_process_container_is_read_from_v2_first_then_v1() {
        let ids: HashSet<String> = ["abc1".to_owned()].into();
        let lines = parse_cgroup_file("6:freezer:/abc1\n0::/\n");
        assert_eq!(container_of(&lines, &ids).unwrap().id, "abc1");
        let host = parse_cgroup_file("6:freezer:/\n0::/init.scope\n");
        assert_eq!(container_of(&host, &ids), None);
    }

    #[test]
    fn container_references_are_bounded() {
        assert!(check_container_ref("abcd").is_ok());
        assert!(check_container_ref(ID).is_ok());
        assert!(check_container_ref("web_1.a+b-c").is_ok());
        assert_eq!(check_container_ref("").unwrap_err(), "must not be empty");
        assert!(
            check_container_ref("abc")
                .unwrap_err()
                .contains("too short")
        );
        assert!(
            check_container_ref("ab/cd")
                .unwrap_err()
                .contains("holds `/`")
        );
        assert!(check_container_ref("-abcd").is_err());
        assert!(check_container_ref(&"a".repeat(129)).is_err());
        assert!(check_container_name("web").is_ok());
        assert!(check_container_name("").is_err());
        assert!(check_container_name("a/b").is_err());
    }

    #[test]
    fn cgroup_paths_are_absolute_plain_and_not_the_root() {
        assert!(check_cgroup_path("/system.slice/nginx.service").is_ok());
        assert!(check_cgroup_path("/a/").is_ok());
        for bad in [
            "",
            "system.slice",
            "/",
            "//",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a\n",
        ] {
            assert!(check_cgroup_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            check_cgroup_path("relative/x")
                .unwrap_err()
                .contains("not absolute")
        );
    }

    #[test]
    fn cgroup_prefixes_match_whole_components() {
        assert!(is_under("/a/b", "/a/b"));
        assert!(is_under("/a/b/c", "/a/b"));
        assert!(is_under("/a/b/c", "/a/b/"));
        assert!(!is_under("/a/bc", "/a/b"));
        assert!(!is_under("/a", "/a/b"));
        assert!(is_under("/anything", "/"));
    }

    #[test]
    fn nspid_lines_and_the_containers_init() {
        assert_eq!(
            parse_nspid("Name:\thttpd\nNSpid:\t6687\t1\nPPid:\t1\n"),
            Some(vec![6687, 1])
        );
        assert_eq!(parse_nspid("Name:\tx\n"), None);
        // pid 1 of the container's namespace wins over a nested namespace's init.
        let members = vec![
            (700, 650, vec![700, 1]),
            (701, 700, vec![701, 2]),
            (702, 701, vec![702, 3, 1]),
        ];
        assert_eq!(init_of(&members), Some(700));
        // Without a pid namespace: the root of the container's process tree.
        let shared = vec![
            (900, 5, vec![900]),
            (901, 900, vec![901]),
            (950, 6, vec![950]),
        ];
        assert_eq!(init_of(&shared), Some(900));
        assert_eq!(init_of(&[]), None);
    }

    #[test]
    fn mountinfo_gives_the_freezer_and_the_unified_mounts() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(
            m.v1_freezer,
            Some((PathBuf::from("/sys/fs/cgroup/freezer"), "/".to_owned()))
        );
        assert_eq!(
            m.v2,
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned()))
        );
        let v2_only = parse_mountinfo(
            "30 22 0:26 /ns /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(v2_only.v1_freezer, None);
        let (point, root) = v2_only.v2.unwrap();
        assert_eq!(
            dir_in(&point, &root, "/ns/web/x"),
            Some(PathBuf::from("/sys/fs/cgroup/web/x"))
        );
        assert_eq!(dir_in(&point, &root, "/other"), None);
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
    }

    #[test]
    fn names_come_from_runcs_labels() {
        let state = serde_json::json!({"config": {"labels": [
            "bundle=/tmp/x",
            "io.kubernetes.cri.container-name=web",
        ]}});
        assert_eq!(name_in_state(&state).as_deref(), Some("web"));
        let none = serde_json::json!({"config": {"labels": ["bundle=/tmp/x"]}});
        assert_eq!(name_in_state(&none), None);
    }

    #[test]
    fn a_prefix_of_two_containers_is_ambiguous_and_names_both() {
        let a = format!("abcd{}", &ID[4..]);
        let b = format!("abce{}", &ID[4..]);
        let index = Index {
            by_pid: HashMap::from([
                (
                    10,
                    Found {
                        id: a.clone(),
                        runtime: Runtime::Docker,
                    },
                ),
                (
                    11,
                    Found {
                        id: b.clone(),
                        runtime: Runtime::Docker,
                    },
                ),
            ]),
            names: Vec::new(),
        };
        let e = index.resolve("abc").unwrap_err();
        assert!(e.contains(&a) && e.contains(&b), "{e}");
        assert_eq!(index.resolve("abcd").unwrap(), Some(a.clone()));
        assert_eq!(index.resolve("ffff").unwrap(), None);
        assert_eq!(index.members(&a), [10]);
    }
}
