//! netem `latency` on a kernel without netem, made deterministic: a fake `tc` first on `PATH`
//! answers `qdisc add ... netem` the way such a kernel does, and passes everything else to the
//! real `tc`. So the refusal (the scratch-namespace check fails: nothing is changed) and the revert
//! (the check passes but the real add fails halfway: what was added is deleted) run on every
//! kernel, with or without netem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{BIN, Proc, privileged, tempdir};

const PORT: u16 = 8080;

/// The fake `tc`. `FAKE_TC_MODE=kernel`: every netem qdisc fails, in the kernel check's batch
/// (`tc -batch -`, which names the failing line `-:N`) and on the host. `FAKE_TC_MODE=late`: the
/// check's batch succeeds without its netem lines, and only the real add on the host fails. Every
/// call is appended to `FAKE_TC_LOG`.
const FAKE_TC: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_TC_LOG"
for arg in "$@"; do
  if [ "$arg" = "-batch" ]; then
    input=$(cat)
    printf 'batch: %s\n' "$input" >> "$FAKE_TC_LOG"
    n=0
    kept=""
    nl='
'
    while IFS= read -r line; do
      n=$((n + 1))
      case "$line" in
        *" netem"*)
          if [ "$FAKE_TC_MODE" = kernel ]; then
            echo "Error: Specified qdisc kind is unknown." >&2
            echo "Command failed -:$n" >&2
            exit 1
          fi ;;
        *) kept="$kept$line$nl" ;;
      esac
    done <<EOF
$input
EOF
    printf '%s' "$kept" | exec "$FAKE_TC_REAL" "$@"
  fi
done
case " $* " in
  *" qdisc add "*" netem "*)
    echo "Error: Specified qdisc kind is unknown." >&2
    exit 2 ;;
esac
exec "$FAKE_TC_REAL" "$@"
"#;

/// The real `tc`, found on `PATH` before the fake is put in front of it.
fn real_tc() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("tc"))
        .find(|p| p.is_file())
        .expect("tc (iproute2) is installed")
}

/// One network namespace with a veth pair (`va`, `vb`) and a server on 127.0.0.1, deleted on drop
/// with every qdisc in it.
struct Netns {
    name: String,
    server: Option<Proc>,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fl-nonetem-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let mut ns = Netns { name, server: None };
        let n = ns.name.clone();
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &n, "link", "add", "va", "type", "veth", "peer", "name", "vb",
        ]);
        ip(&["-n", &n, "addr", "add", "10.99.7.1/24", "dev", "va"]);
        ip(&["-n", &n, "link", "set", "va", "up"]);
        ip(&["-n", &n, "link", "set", "vb", "up"]);
        let www = std::env::temp_dir();
        ns.server = Some(Proc::spawn(&[
            "ip",
            "netns",
            "exec",
            &n,
            "python3",
            "-m",
            "http.server",
            &PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            www.to_str().unwrap(),
        ]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.listening() {
            assert!(
                Instant::now() < deadline,
                "the server in {n} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ns
    }

    fn listening(&self) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c"])
            .arg(
                "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=0.5).close()",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The root qdiscs on `va` that someone configured (the kernel's defaults have handle `0:`).
    fn configured_roots(&self, tc: &Path) -> Vec<serde_json::Value> {
        let out = Command::new(tc)
            .args(["-n", &self.name, "-j", "qdisc", "show", "dev", "va"])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.into_iter()
            .filter(|q| q["root"] == true && q["handle"] != "0:")
            .collect()
    }

    /// `faultline run` inside the namespace, with the fake `tc` first on its `PATH`.
    fn run(&self, dir: &Path, mode: &str, real: &Path) -> Output {
        let fake_dir = dir.join("bin");
        std::fs::create_dir_all(&fake_dir).unwrap();
        let fake = fake_dir.join("tc");
        std::fs::write(&fake, FAKE_TC).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = std::env::join_paths(std::iter::once(fake_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let experiment = dir.join("experiment.toml");
        std::fs::write(
            &experiment,
            format!(
                r#"
title = "netem on a kernel without it"
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "server"
tcp = "127.0.0.1:{PORT}"
every = "100ms"
[[fault]]
name = "netem"
kind = "latency"
backend = "netem"
device = "va"
delay = "50ms"
jitter = "5ms"
match = {{ port = {PORT} }}
duration = "2s"
[recovery]
within = "5s"
"#
            ),
        )
        .unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.name, BIN, "run"])
            .arg(&experiment)
            .arg("--quiet")
            .arg("--report-json")
            .arg(dir.join("report.json"))
            .env("PATH", path)
            .env("FAKE_TC_MODE", mode)
            .env("FAKE_TC_REAL", real)
            .env("FAKE_TC_LOG", dir.join("tc.log"))
            .env("FAULTLINE_STATE_DIR", dir.join("state"))
            .stdin(Stdio::null())
            .output()
            .expect("run faultline in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.server = None;
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("a report"))
        .unwrap()
}

fn journal_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("state"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn netem_latency_on_a_kernel_without_netem_changes_nothing_and_suggests_the_proxy() {
    if !privileged("netem_latency_on_a_kernel_without_netem_changes_nothing_and_suggests_the_proxy")
    {
        return;
    }
    let real = real_tc();
    let ns = Netns::new();
    let dir = tempdir();
    let out = ns.run(dir.path(), "kernel", &real);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.path().join("tc.log")).unwrap_or_default();
    assert!(
        log.contains("-batch -"),
        "the fake tc was not used for the kernel check (is tc run by absolute path?): {log}"
    );
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let report = report(dir.path());
    assert_eq!(report["verdict"], "error");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("netem is unavailable on this kernel"),
        "{reason}"
    );
    assert!(reason.contains("backend = \"proxy\""), "{reason}");
    assert!(
        !log.lines().any(|l| l.starts_with("qdisc add dev va")),
        "the host was changed although the check failed: {log}"
    );
    assert_eq!(ns.configured_roots(&real), Vec::<serde_json::Value>::new());
    assert_eq!(journal_entries(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_netem_add_failing_halfway_is_reverted_and_nothing_is_left() {
    if !privileged("a_netem_add_failing_halfway_is_reverted_and_nothing_is_left") {
        return;
    }
    let real = real_tc();
    let ns = Netns::new();
    let dir = tempdir();
    let out = ns.run(dir.path(), "late", &real);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.path().join("tc.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(5), "{stderr}\n{log}");
    let report = report(dir.path());
    assert_eq!(report["verdict"], "error");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("Specified qdisc kind is unknown"),
        "{reason}"
    );
    // The htb root and its class went in before the netem leaf failed; the revert took them out.
    let lines: Vec<&str> = log.lines().collect();
    let added = lines
        .iter()
        .position(|l| l.starts_with("qdisc add dev va root handle") && l.ends_with(" htb"))
        .unwrap_or_else(|| panic!("the htb root was never added: {log}"));
    assert!(
        lines[added..]
            .iter()
            .any(|l| l.starts_with("qdisc del dev va root handle")),
        "the half-made change was not reverted: {log}"
    );
    assert_eq!(ns.configured_roots(&real), Vec::<serde_json::Value>::new());
    assert_eq!(journal_entries(dir.path()), Vec::<PathBuf>::new());
}
