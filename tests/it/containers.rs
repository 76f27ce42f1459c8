//! Containers and cgroups as targets, against a real OCI runtime: a busybox container run by
//! `runc` (support/runc.rs), and cgroups the tests make themselves. `container-kill` ends the
//! container and a restart brings it back; `container-pause` freezes it for the duration and
//! after a killed run; `cgroup` and `container` selectors pick exactly what they name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::runc::{self, Container};
use crate::support::{
    Proc, ProcState, free_port, run_experiment, spawn_run_with_watchdog, state_of, tempdir,
    wait_until,
};

/// A container id unique to this test run (ids are host-wide), starting with `stem`.
fn unique_id(stem: &str) -> String {
    format!("{stem}{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    // The low bits of the clock and the pid are enough to keep parallel tests apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ (std::process::id() << 12)
}

/// An experiment probing the container's HTTP server, with one fault (TOML lines).
fn web_experiment(port: u16, fault: &str, recovery: &str) -> String {
    format!(
        r#"title = "container target"
[steady_state]
window = "600ms"
[[steady_state.probe]]
name = "web"
http = {{ url = "http://127.0.0.1:{port}/", status = [200] }}
every = "100ms"
timeout = "300ms"
[[fault]]
name = "the fault"
at = "200ms"
{fault}
[recovery]
within = "{recovery}"
"#
    )
}

fn during_ratio(report: &serde_json::Value) -> f64 {
    report["phases"]["during"][0]["success_ratio"]
        .as_f64()
        .expect("a during phase with a success ratio")
}

#[test]
fn container_kill_by_id_prefix_stops_it_and_a_restart_brings_the_run_back_to_pass() {
    if !runc::available("container_kill_by_id_prefix") {
        return;
    }
    let port = free_port();
    let id = unique_id("flkill");
    let container = Container::start(&id, port, &[]);
    let first_init = container
        .init_pid()
        .expect("runc knows the container's init");
    let prefix = &id[..10];
    let dir = tempdir();
    let text = web_experiment(
        port,
        &format!("kind = \"container-kill\"\ncontainer = \"{prefix}\""),
        "10s",
    );
    // The restart policy: when runc says the container stopped, wait a little (so the probe
    // sees it gone), then delete it and run it again under the same id.
    let saw_stopped = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if container.state() == "stopped" {
                    saw_stopped.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(700));
                    container.restart();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let run = run_experiment(dir.path(), &text, &[]);
        done.store(true, Ordering::SeqCst);
        run
    });
    assert!(
        saw_stopped.load(Ordering::SeqCst),
        "runc never showed the container stopped\n{}",
        run.explain()
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    assert_eq!(report["verdict"], "passed");
    // A kill is instant, so the method ends with it: the failures are in the `after` phase,
    // until the restarted container answers again.
    let after = report["phases"]["after"][0]["success_ratio"]
        .as_f64()
        .unwrap();
    assert!(
        after < 1.0,
        "the probe never failed while the container was gone: {}",
        report["phases"]
    );
    assert!(
        report["time_to_recover_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{report}"
    );
    let detail = report["faults"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "container {id}: sent SIGKILL to pid {first_init} (httpd)"
        )),
        "{detail}"
    );
    assert_eq!(container.state(), "running");
    assert_ne!(container.init_pid(), Some(first_init));
}

#[test]
fn container_pause_freezes_it_for_the_duration_and_thaws_it_after() {
    if !runc::available("container_pause_freezes") {
        return;
    }
    let port = free_port();
    let id = unique_id("flpause");
    let name = format!("web-{id}");
    let container = Container::start(&id, port, &[("faultline/name", &name)]);
    let dir = tempdir();
    let text = web_experiment(
        port,
        &format!("kind = \"container-pause\"\ncontainer_name = \"{name}\"\nduration = \"1500ms\""),
        "5s",
    );
    let saw_paused = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if container.state() == "paused" {
                    saw_paused.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let run = run_experiment(dir.path(), &text, &[]);
        done.store(true, Ordering::SeqCst);
        run
    });
    assert!(
        saw_paused.load(Ordering::SeqCst),
        "runc never showed the container paused\n{}",
        run.explain()
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    assert!(
        during_ratio(report) < 1.0,
        "the probe never timed out while the container was frozen: {}",
        report["phases"]["during"]
    );
    let fault = &report["faults"][0];
    assert_eq!(fault["status"], "reverted", "{fault}");
    assert!(
        fault["detail"]
            .as_str()
            .unwrap()
            .contains("the freezer reads FROZEN"),
        "{fault}"
    );
    assert_eq!(container.state(), "running");
    let freezer = std::fs::read_to_string(container.freezer_dir().join("freezer.state")).unwrap();
    assert_eq!(freezer.trim(), "THAWED");
}

#[test]
fn a_frozen_container_is_thawed_by_the_watchdog_when_the_run_is_killed() {
    if !runc::available("a_frozen_container_is_thawed_by_the_watchdog") {
        return;
    }
    let port = free_port();
    let id = unique_id("flwatch");
    let container = Container::start(&id, port, &[]);
    let dir = tempdir();
    let file = dir.path().join("pause.toml");
    std::fs::write(
        &file,
        web_experiment(
            port,
            &format!("kind = \"container-pause\"\ncontainer = \"{id}\"\nduration = \"60s\""),
            "5s",
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut child = spawn_run_with_watchdog(&file, &state, &[]);
    wait_until(
        "runc showing the container paused",
        Duration::from_secs(20),
        || container.state() == "paused",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // No later run: the watchdog sees its run gone and thaws the cgroup from the journal.
    wait_until(
        "the watchdog thawing the container",
        Duration::from_secs(5),
        || container.state() == "running",
    );
    wait_for_empty_journal(&state);
    // Thawed for real: it answers again.
    crate::support::wait_for_port(port, Duration::from_secs(5));
}

/// The pids of processes whose kernel name (`comm`) is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

fn wait_for_empty_journal(state: &Path) {
    wait_until("the journal emptying", Duration::from_secs(5), || {
        std::fs::read_dir(state).is_ok_and(|d| {
            !d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
    });
}

/// A cgroup made in the v2 hierarchy for one test; its processes are killed and it is removed
/// on drop.
struct Cgroup {
    dir: PathBuf,
    /// The path as `/proc/PID/cgroup` shows it.
    path: String,
}

impl Cgroup {
    fn make(name: &str) -> Cgroup {
        let mount = v2_mount();
        let dir = mount.join(name);
        std::fs::create_dir(&dir).expect("create a cgroup");
        Cgroup {
            dir,
            path: format!("/{name}"),
        }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on a hybrid host, below it).
/// A cgroup of the test's own holding one `sleep` (its argument tells the tests' sleeps apart),
/// and an experiment that freezes that cgroup for `duration`.
struct Freezing {
    group: Cgroup,
    a: Proc,
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Freezing {
    fn new(sleep: &str, duration: &str) -> Freezing {
        let group = Cgroup::make(&format!("faultline-test-{:08x}", rand_u32()));
        let a = Proc::spawn(&["sleep", sleep]);
        group.adopt(a.pid());
        let dir = tempdir();
        let file = dir.path().join("freeze.toml");
        std::fs::write(
            &file,
            crate::support::always_steady_experiment(
                "cgroup freeze",
                "",
                &format!(
                    "[[fault]]\nname = \"freeze\"\nkind = \"container-pause\"\ncgroup = \"{}\"\nduration = \"{duration}\"\n",
                    group.path
                ),
            ),
        )
        .unwrap();
        Freezing {
            group,
            a,
            dir,
            file,
        }
    }
}

fn v2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .expect("a cgroup v2 mount")
}

#[test]
fn a_cgroup_selector_kills_exactly_the_processes_of_that_cgroup() {
    if !crate::support::privileged("a_cgroup_selector_kills_exactly") {
        return;
    }
    let stem = format!("faultline-test-{:08x}", rand_u32());
    let inside = Cgroup::make(&stem);
    // A sibling whose name extends the first: a raw string prefix would wrongly match it.
    let sibling = Cgroup::make(&format!("{stem}b"));
    let a = Proc::spawn(&["sleep", "301.5"]);
    let b = Proc::spawn(&["sleep", "301.5"]);
    let c = Proc::spawn(&["sleep", "301.5"]);
    inside.adopt(a.pid());
    sibling.adopt(b.pid());
    let dir = tempdir();
    let text = crate::support::always_steady_experiment(
        "cgroup kill",
        "",
        &format!(
            "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\nselect = {{ cgroup = \"{}\" }}\n",
            inside.path
        ),
    );
    let run = run_experiment(dir.path(), &text, &[]);
    assert_eq!(run.code, 0, "{}", run.explain());
    wait_until("the cgroup's sleep dying", Duration::from_secs(2), || {
        state_of(a.pid()) == ProcState::Gone
    });
    assert_eq!(
        state_of(b.pid()),
        ProcState::Awake,
        "the sibling's process was killed"
    );
    assert_eq!(
        state_of(c.pid()),
        ProcState::Awake,
        "a process outside was killed"
    );
    let targets = &run.report.as_ref().unwrap()["faults"][0]["detail"];
    assert_eq!(
        targets.as_str().unwrap(),
        format!(
            "sent SIGKILL to pid {} (sleep); every victim has exited",
            a.pid()
        )
    );
}

#[test]
fn container_pause_of_a_cgroup_freezes_it_through_cgroup_v2_and_thaws_it() {
    if !crate::support::privileged("container_pause_of_a_cgroup") {
        return;
    }
    let Freezing {
        group,
        a,
        dir,
        file,
    } = Freezing::new("302.5", "1s");
    let mut child = crate::support::spawn_run(&file, &dir.path().join("state"), &[]);
    wait_until("the cgroup frozen", Duration::from_secs(20), || {
        group.frozen()
    });
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!group.frozen(), "the cgroup is still frozen after the run");
    assert_eq!(state_of(a.pid()), ProcState::Awake);
}

#[test]
fn a_cgroup_frozen_by_a_crashed_run_is_thawed_from_the_journal_by_the_next_start() {
    if !crate::support::privileged("a_cgroup_frozen_by_a_crashed_run") {
        return;
    }
    let Freezing {
        group,
        a: _sleep,
        dir,
        file,
    } = Freezing::new("302.75", "60s");
    let state = dir.path().join("state");
    // No watchdog: what is left is for the journal alone.
    let mut child = crate::support::spawn_run(&file, &state, &[]);
    wait_until("the cgroup frozen", Duration::from_secs(20), || {
        group.frozen()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(group.frozen(), "nothing should have thawed it yet");
    let out = crate::support::faultline(
        &["run", file.to_str().unwrap(), "--quiet", "--dry-run"],
        &state,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reverted a fault left by an earlier crashed run"),
        "{stderr}"
    );
    assert!(!group.frozen(), "the next start did not thaw the cgroup");
    wait_for_empty_journal(&state);
}

#[test]
fn a_frozen_cgroup_is_thawed_when_its_run_stops_renewing_the_lease() {
    if !crate::support::privileged("a_frozen_cgroup_is_thawed_when_its_run_stops") {
        return;
    }
    let Freezing {
        group,
        a: _sleep,
        dir,
        file,
    } = Freezing::new("302.875", "60s");
    let state = dir.path().join("state");
    let mut child = spawn_run_with_watchdog(&file, &state, &["--lease", "1s"]);
    wait_until("the cgroup frozen", Duration::from_secs(20), || {
        group.frozen()
    });
    let stop = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    };
    // A stopped run renews nothing: its lease runs out and the watchdog thaws the cgroup.
    stop("-STOP");
    let thawed = crate::support::poll_until(Duration::from_secs(15), || !group.frozen());
    stop("-CONT");
    let status = child.wait().unwrap();
    assert!(
        thawed.is_some(),
        "the cgroup stayed frozen while its run was stopped"
    );
    assert_eq!(
        status.code(),
        Some(5),
        "a fault that ended early makes the run an error"
    );
    wait_for_empty_journal(&state);
}

#[test]
fn process_kill_combines_container_with_name() {
    if !runc::available("process_kill_combines_container_with_name") {
        return;
    }
    let port = free_port();
    let id = unique_id("flcomb");
    let container = Container::start(&id, port, &[]);
    let init = container.init_pid().unwrap();
    // A second process in the container, and one of the same name on the host.
    let status = std::process::Command::new("runc")
        .args(["exec", "--detach", &id, "sleep", "303"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "runc exec failed");
    let host_sleep = Proc::spawn(&["sleep", "303"]);
    let in_container = || {
        pids_named("sleep")
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&format!("/{id}\n")))
            })
            // A killed sleep stays a zombie until the container's init reaps it.
            .filter(|pid| state_of(*pid) != ProcState::Gone)
            .collect::<Vec<u32>>()
    };
    wait_until("the exec'd sleep", Duration::from_secs(5), || {
        !in_container().is_empty()
    });
    let victim = in_container()[0];
    let dir = tempdir();
    let text = crate::support::always_steady_experiment(
        "container and name",
        "",
        &format!(
            "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\nselect = {{ container = \"{}\", name = \"sleep\" }}\n",
            &id[..9]
        ),
    );
    let run = run_experiment(dir.path(), &text, &[]);
    assert_eq!(run.code, 0, "{}", run.explain());
    let detail = run.report.as_ref().unwrap()["faults"][0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.starts_with(&format!("sent SIGKILL to pid {victim} (sleep);")),
        "{detail}"
    );
    assert!(in_container().is_empty(), "the container's sleep survived");
    assert_eq!(state_of(host_sleep.pid()), ProcState::Awake);
    assert_eq!(container.state(), "running");
    assert_eq!(container.init_pid(), Some(init));
}

#[test]
fn an_ambiguous_or_unknown_container_is_refused_naming_it() {
    if !runc::available("an_ambiguous_or_unknown_container") {
        return;
    }
    let stem = unique_id("flamb");
    let one = Container::start(&format!("{stem}a"), free_port(), &[]);
    let two = Container::start(&format!("{stem}b"), free_port(), &[]);
    let dir = tempdir();
    let text = crate::support::always_steady_experiment(
        "ambiguous",
        "",
        &format!("[[fault]]\nname = \"kill\"\nkind = \"container-kill\"\ncontainer = \"{stem}\"\n"),
    );
    let run = run_experiment(dir.path(), &text, &[]);
    assert_eq!(run.code, 5, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!(
            "container `{stem}` is ambiguous: it is a prefix of `{}` and `{}`",
            one.id, two.id
        )),
        "{reason}"
    );
    assert_eq!(one.state(), "running");
    assert_eq!(two.state(), "running");
}

#[test]
fn bad_container_and_cgroup_values_are_refused_at_validation_naming_the_key() {
    let dir = tempdir();
    let cases = [
        (
            "kind = \"container-kill\"\ncontainer = \"\"",
            "line 12, column 1: fault `bad`: `container` must not be empty",
        ),
        (
            "kind = \"container-kill\"\ncontainer = \"abcd\"\nsignal = \"SIGSTOP\"",
            "line 13, column 1: fault `bad`: `signal` SIGSTOP is not one of the signals a container-kill sends",
        ),
        (
            "kind = \"container-pause\"\nduration = \"1s\"\ncgroup = \"x/y\"",
            "line 13, column 1: fault `bad`: `cgroup` is not absolute (`x/y`)",
        ),
        (
            "kind = \"container-pause\"\nduration = \"1s\"\ncgroup = \"/a/../b\"",
            "line 13, column 1: fault `bad`: `cgroup` has an empty, `.` or `..` component (`/a/../b`)",
        ),
        (
            "kind = \"process-kill\"\nselect = { name = \"x\", cgroup = \"/\" }",
            "fault `bad`: `cgroup` must not be `/`, the root cgroup",
        ),
        (
            "kind = \"process-kill\"\nselect = {}",
            "fault `bad`: `select` needs at least one of `pid`",
        ),
    ];
    for (fault, expected) in cases {
        let text = crate::support::always_steady_experiment(
            "bad",
            "",
            &format!("[[fault]]\nname = \"bad\"\n{fault}\n"),
        );
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let out = crate::support::faultline(
            &["validate", file.to_str().unwrap()],
            &dir.path().join("state"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{fault}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{fault}:\n{stderr}\nexpected: {expected}"
        );
    }
}
