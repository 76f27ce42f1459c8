//! The kernel network faults on real network namespaces: two namespaces joined by a veth pair, a
//! server in one, `faultline run` inside it (`ip netns exec`), and a client in the other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{BIN, Proc, faultline, privileged, tempdir};

/// The address of the server's side (namespace `a`) and of the client's side (namespace `b`). Each
/// test has its own pair of namespaces, so every test can use the same addresses and ports.
const ADDR_A: &str = "10.99.0.1";
const ADDR_B: &str = "10.99.0.2";
const PORT: u16 = 8080;

/// Two network namespaces joined by a veth pair (`va` in `a`, `vb` in `b`), deleted on drop —
/// which also deletes the veth pair, any qdisc on it and any nft table inside.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn new() -> NetnsPair {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("fl-{}-{n}", std::process::id());
        let pair = NetnsPair {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [(&pair.a, "va", ADDR_A), (&pair.b, "vb", ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Starts `argv` inside namespace `ns`, killed on drop.
    fn spawn_in(ns: &str, argv: &[&str]) -> Proc {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        Proc::spawn(&full)
    }

    /// A Python HTTP server in namespace `a` on `ADDR_A:PORT`, serving `dir`.
    fn server(&self, dir: &Path) -> Proc {
        let port = PORT.to_string();
        let server = NetnsPair::spawn_in(
            &self.a,
            &[
                "python3",
                "-m",
                "http.server",
                &port,
                "--bind",
                ADDR_A,
                "--directory",
                dir.to_str().unwrap(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.connects_from_b(Duration::from_millis(500)) {
            assert!(
                Instant::now() < deadline,
                "the server in {} never listened",
                self.a
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Whether a TCP connection from namespace `b` to the server succeeds within `timeout`.
    fn connects_from_b(&self, timeout: Duration) -> bool {
        let script = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()";
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.b,
                "python3",
                "-c",
                script,
                ADDR_A,
                &PORT.to_string(),
            ])
            .arg(timeout.as_secs_f64().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run python3 in the client namespace")
            .success()
    }

    /// Downloads `url` from namespace `b` and returns (bytes, seconds).
    fn download_from_b(&self, url: &str) -> (usize, f64) {
        let script = "import sys, time, urllib.request\nt = time.monotonic()\nn = len(urllib.request.urlopen(sys.argv[1], timeout=60).read())\nprint(n, time.monotonic() - t)";
        let out = Command::new("ip")
            .args(["netns", "exec", &self.b, "python3", "-c", script, url])
            .output()
            .expect("run python3 in the client namespace");
        assert!(
            out.status.success(),
            "download failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        (
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().parse().unwrap(),
        )
    }

    /// `nft list ruleset` inside namespace `a`.
    fn ruleset_a(&self) -> String {
        output(&["ip", "netns", "exec", &self.a, "nft", "list", "ruleset"])
    }

    /// `tc -s -j qdisc show dev va` inside namespace `a`, parsed.
    fn qdiscs_a(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&output(&[
            "tc", "-n", &self.a, "-s", "-j", "qdisc", "show", "dev", "va",
        ]))
        .expect("tc -j prints JSON")
    }

    /// Starts `faultline run FILE` inside namespace `a`, in the background.
    fn start_run(&self, file: &Path, state: &Path, report: &Path) -> Running {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.a,
                BIN,
                "run",
                file.to_str().unwrap(),
                "--quiet",
                "--report-json",
            ])
            .arg(report)
            .env("FAULTLINE_STATE_DIR", state)
            // The crash tests are about the journal the next run recovers, not the watchdog.
            .env("FAULTLINE_NO_WATCHDOG", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start faultline in the server namespace");
        Running(Some(child))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn output(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An experiment probing the server from inside namespace `a`, with one fault.
fn experiment(fault: &str, duration: &str) -> String {
    format!(
        r#"
title = "network fault in a namespace"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "server"
tcp = "{ADDR_A}:{PORT}"
every = "100ms"
timeout = "300ms"
[[fault]]
name = "net"
duration = "{duration}"
{fault}
[recovery]
within = "5s"
"#
    )
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(toml: &str) -> Files {
        let dir = tempdir();
        std::fs::write(dir.path().join("experiment.toml"), toml).unwrap();
        Files { dir }
    }
    fn experiment(&self) -> PathBuf {
        self.dir.path().join("experiment.toml")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn report(&self) -> PathBuf {
        self.dir.path().join("report.json")
    }
    fn read_report(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.report()).expect("a report was written"))
            .unwrap()
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `faultline run` in the background, killed if the test ends before it does.
struct Running(Option<Child>);

impl Running {
    fn kill(&mut self) {
        if let Some(child) = self.0.as_mut() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits for the run to end; returns its exit code and standard error.
    fn finish(mut self) -> (i32, String) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn full_loss_on_a_port_blocks_connections_while_held_and_leaves_no_table() {
    if !privileged("full_loss_on_a_port_blocks_connections_while_held_and_leaves_no_table") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    // Someone else's table, which the fault's revert must leave alone.
    let theirs = "table inet someone_else {\n\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n\t\ttcp dport 9 counter accept\n\t}\n}\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &net.a, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), theirs.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());
    let files = Files::new(&experiment(
        &format!("kind = \"network-loss\"\npercent = \"100%\"\nmatch = {{ port = {PORT} }}"),
        "3s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    wait_until(
        "the fault's nft table exists",
        Duration::from_secs(15),
        || net.ruleset_a().contains("table inet faultline_"),
    );
    assert!(
        !net.connects_from_b(Duration::from_secs(1)),
        "a connection got through while every packet on the port is dropped"
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(files.read_report()["faults"][0]["status"], "reverted");
    assert!(
        !net.ruleset_a().contains("faultline_"),
        "a table was left behind:\n{}",
        net.ruleset_a()
    );
    assert!(
        net.connects_from_b(Duration::from_secs(2)),
        "connections still fail after the fault"
    );
    assert!(
        net.ruleset_a().contains("table inet someone_else"),
        "the revert touched another table:\n{}",
        net.ruleset_a()
    );
}

#[test]
fn a_loss_table_left_by_a_killed_run_is_deleted_by_the_next_run() {
    if !privileged("a_loss_table_left_by_a_killed_run_is_deleted_by_the_next_run") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        &format!(
            "kind = \"network-loss\"\npercent = \"100%\"\nmatch = {{ port = {PORT}, direction = \"ingress\" }}"
        ),
        "60s",
    ));
    let mut run = net.start_run(&files.experiment(), &files.state(), &files.report());
    wait_until(
        "the fault's nft table exists",
        Duration::from_secs(15),
        || net.ruleset_a().contains("table inet faultline_"),
    );
    // `ip netns exec` execs faultline, so this is the agent's own process.
    run.kill();
    assert!(
        net.ruleset_a().contains("table inet faultline_"),
        "the table should survive a SIGKILL of the run"
    );
    assert!(
        !net.connects_from_b(Duration::from_secs(1)),
        "the fault should still hold after the kill"
    );

    let out = dry_run_in_a(&net, &files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reverted a fault left by an earlier crashed run"),
        "{stderr}"
    );
    assert!(
        !net.ruleset_a().contains("faultline_"),
        "the next run left the table:\n{}",
        net.ruleset_a()
    );
    assert!(
        net.connects_from_b(Duration::from_secs(2)),
        "connections still fail after recovery"
    );
}

#[test]
fn a_partition_cuts_off_the_peer_both_ways_until_reverted() {
    if !privileged("a_partition_cuts_off_the_peer_both_ways_until_reverted") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    // The experiment's own probe stays inside namespace `a`, so the steady state holds throughout.
    let files = Files::new(&experiment(
        &format!("kind = \"partition\"\npeers = [\"{ADDR_B}\"]"),
        "3s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    wait_until(
        "the fault's nft table exists",
        Duration::from_secs(15),
        || net.ruleset_a().contains("table inet faultline_"),
    );
    assert!(
        !net.connects_from_b(Duration::from_secs(1)),
        "the peer got through the partition"
    );
    let ping = |ns: &str, to: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    if let Ok(reached) = ping(&net.a, ADDR_B) {
        assert!(!reached, "namespace a reached the partitioned peer");
    }
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !net.ruleset_a().contains("faultline_"),
        "a table was left behind:\n{}",
        net.ruleset_a()
    );
    assert!(
        net.connects_from_b(Duration::from_secs(2)),
        "the peer is still cut off after the fault"
    );
}

#[test]
fn bandwidth_shapes_a_bulk_transfer_and_removes_its_qdisc() {
    if !privileged("bandwidth_shapes_a_bulk_transfer_and_removes_its_qdisc") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    std::fs::write(www.path().join("bulk"), vec![7_u8; 384 * 1024]).unwrap();
    let _server = net.server(www.path());
    let url = format!("http://{ADDR_A}:{PORT}/bulk");
    let (bytes, unshaped) = net.download_from_b(&url);
    assert_eq!(bytes, 384 * 1024);

    let files = Files::new(&experiment(
        "kind = \"bandwidth\"\ndevice = \"va\"\nrate = \"1mbit\"",
        "8s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    let ours =
        |q: &serde_json::Value| q["root"] == true && q["kind"] == "tbf" && q["handle"] != "0:";
    wait_until(
        "the fault's tbf qdisc exists",
        Duration::from_secs(15),
        || net.qdiscs_a().iter().any(ours),
    );
    let (_, shaped) = net.download_from_b(&url);
    let qdiscs = net.qdiscs_a();
    let tbf = qdiscs
        .iter()
        .find(|q| ours(q))
        .expect("the tbf is still there during the transfer");
    eprintln!(
        "bandwidth: {} KiB in {unshaped:.3} s unshaped, {shaped:.3} s at 1mbit (tbf overlimits {}, drops {})",
        bytes / 1024,
        tbf["overlimits"],
        tbf["drops"]
    );
    assert!(
        tbf["overlimits"].as_u64().unwrap_or(0) > 0,
        "the tbf never held a packet back: {tbf}"
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !net.qdiscs_a()
            .iter()
            .any(|q| q["root"] == true && q["handle"] != "0:"),
        "a qdisc was left behind: {:?}",
        net.qdiscs_a()
    );
}

#[test]
fn bandwidth_refuses_a_device_whose_root_qdisc_someone_else_configured() {
    if !privileged("bandwidth_refuses_a_device_whose_root_qdisc_someone_else_configured") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    ip(&["-n", &net.a, "link", "set", "va", "down"]);
    let theirs = [
        "qdisc", "add", "dev", "va", "root", "handle", "7:", "tbf", "rate", "100mbit", "burst",
        "64k", "latency", "50ms",
    ];
    let status = Command::new("tc")
        .arg("-n")
        .arg(&net.a)
        .args(theirs)
        .status()
        .unwrap();
    assert!(status.success());
    ip(&["-n", &net.a, "link", "set", "va", "up"]);
    let files = Files::new(&experiment(
        "kind = \"bandwidth\"\ndevice = \"va\"\nrate = \"1mbit\"\nmatch = { port = 8080 }",
        "2s",
    ));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.a,
            BIN,
            "run",
            files.experiment().to_str().unwrap(),
            "--quiet",
            "--report-json",
        ])
        .arg(files.report())
        .env("FAULTLINE_STATE_DIR", files.state())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reason = files.read_report()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("refusing to change va: its root qdisc is `tbf 7:`"),
        "{reason}"
    );
    let root: Vec<_> = net
        .qdiscs_a()
        .into_iter()
        .filter(|q| q["root"] == true)
        .collect();
    assert_eq!(root.len(), 1);
    assert_eq!(
        (root[0]["kind"].as_str(), root[0]["handle"].as_str()),
        (Some("tbf"), Some("7:")),
        "their qdisc was touched"
    );
}

#[test]
fn plan_prints_the_exact_ruleset_and_tc_commands() {
    let dir = tempdir();
    let out = faultline(
        &["plan", "experiments/network-loss.toml"],
        &dir.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let expected = "
             exact changes (RUN stands for the run id; the table name and tc handle derive from it):
               nft -f - <<EOF
               table inet faultline_RUN-0 {
               \tchain input {
               \t\ttype filter hook input priority -10; policy accept;
               \t\tip saddr 10.0.5.0/24 meta l4proto { tcp, udp } th dport 5432 numgen random mod 100 < 30 drop
               \t\tip saddr 10.0.5.0/24 meta l4proto { tcp, udp } th sport 5432 th dport != 5432 numgen random mod 100 < 30 drop
               \t}
               \tchain output {
               \t\ttype filter hook output priority -10; policy accept;
               \t\tip daddr 10.0.5.0/24 meta l4proto { tcp, udp } th dport 5432 numgen random mod 100 < 30 drop
               \t\tip daddr 10.0.5.0/24 meta l4proto { tcp, udp } th sport 5432 th dport != 5432 numgen random mod 100 < 30 drop
               \t}
               }
               EOF
";
    assert!(stdout.contains(expected), "{stdout}");

    let out = faultline(
        &["plan", "experiments/latency-netem.toml"],
        &dir.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tc "))
        .collect();
    assert_eq!(commands.len(), 5, "{stdout}");
    assert!(
        commands[0].starts_with("tc qdisc add dev eth0 root handle ")
            && commands[0].ends_with(": htb"),
        "{stdout}"
    );
    assert!(
        commands[2].ends_with("netem delay 100ms 10ms distribution normal"),
        "{stdout}"
    );
    assert!(
        commands[3].contains("u32 match ip dst 10.0.5.0/24 match ip dport 5432 0xffff flowid"),
        "{stdout}"
    );
}

#[test]
fn bandwidth_with_a_port_match_sends_that_port_through_an_htb_class() {
    if !privileged("bandwidth_with_a_port_match_sends_that_port_through_an_htb_class") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    std::fs::write(www.path().join("bulk"), vec![7_u8; 256 * 1024]).unwrap();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        &format!(
            "kind = \"bandwidth\"\ndevice = \"va\"\nrate = \"2mbit\"\nmatch = {{ port = {PORT} }}"
        ),
        "8s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    let ours =
        |q: &serde_json::Value| q["root"] == true && q["kind"] == "htb" && q["handle"] != "0:";
    wait_until(
        "the fault's htb qdisc exists",
        Duration::from_secs(15),
        || net.qdiscs_a().iter().any(ours),
    );
    let (bytes, shaped) = net.download_from_b(&format!("http://{ADDR_A}:{PORT}/bulk"));
    // `tc -j class show` prints no JSON for htb classes in iproute2 6.1, so read "Sent N bytes".
    let classes = output(&["tc", "-n", &net.a, "-s", "class", "show", "dev", "va"]);
    let sent: u64 = classes
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("Sent ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    eprintln!(
        "bandwidth with a port match: {} KiB in {shaped:.3} s at 2mbit; {sent} bytes went through the htb class",
        bytes / 1024
    );
    assert!(
        sent >= 256 * 1024,
        "the transfer did not go through the shaped class:\n{classes}"
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !net.qdiscs_a()
            .iter()
            .any(|q| q["root"] == true && q["handle"] != "0:"),
        "a qdisc was left behind: {:?}",
        net.qdiscs_a()
    );
}

#[test]
fn bandwidth_revert_leaves_alone_a_root_qdisc_that_replaced_its_own() {
    if !privileged("bandwidth_revert_leaves_alone_a_root_qdisc_that_replaced_its_own") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        "kind = \"bandwidth\"\ndevice = \"va\"\nrate = \"10mbit\"",
        "4s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    let ours =
        |q: &serde_json::Value| q["root"] == true && q["kind"] == "tbf" && q["handle"] != "0:";
    wait_until(
        "the fault's tbf qdisc exists",
        Duration::from_secs(15),
        || net.qdiscs_a().iter().any(ours),
    );
    // Someone replaces the root qdisc while the fault holds: revert must not delete theirs (pumba#166).
    let theirs = [
        "qdisc", "replace", "dev", "va", "root", "handle", "7:", "htb",
    ];
    assert!(
        Command::new("tc")
            .arg("-n")
            .arg(&net.a)
            .args(theirs)
            .status()
            .unwrap()
            .success()
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    let report = files.read_report();
    let detail = report["faults"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("not ours") && detail.contains("left alone"),
        "{report}"
    );
    let root: Vec<_> = net
        .qdiscs_a()
        .into_iter()
        .filter(|q| q["root"] == true)
        .collect();
    assert_eq!(
        (root[0]["kind"].as_str(), root[0]["handle"].as_str()),
        (Some("htb"), Some("7:")),
        "their qdisc was touched"
    );
}

#[test]
fn a_qdisc_left_by_a_killed_run_is_deleted_by_the_next_run() {
    if !privileged("a_qdisc_left_by_a_killed_run_is_deleted_by_the_next_run") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        &format!(
            "kind = \"bandwidth\"\ndevice = \"va\"\nrate = \"1mbit\"\nmatch = {{ dst = \"{ADDR_B}\" }}"
        ),
        "60s",
    ));
    let mut run = net.start_run(&files.experiment(), &files.state(), &files.report());
    let ours =
        |q: &serde_json::Value| q["root"] == true && q["kind"] == "htb" && q["handle"] != "0:";
    wait_until(
        "the fault's htb qdisc exists",
        Duration::from_secs(15),
        || net.qdiscs_a().iter().any(ours),
    );
    run.kill();
    assert!(
        net.qdiscs_a().iter().any(ours),
        "the qdisc should survive a SIGKILL of the run"
    );
    let out = dry_run_in_a(&net, &files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reverted a fault left by an earlier crashed run"),
        "{stderr}"
    );
    assert!(
        !net.qdiscs_a()
            .iter()
            .any(|q| q["root"] == true && q["handle"] != "0:"),
        "the next run left the qdisc: {:?}",
        net.qdiscs_a()
    );
}

#[test]
fn partial_loss_drops_about_that_share_of_datagrams() {
    if !privileged("partial_loss_drops_about_that_share_of_datagrams") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        "kind = \"network-loss\"\npercent = \"50%\"\nmatch = { port = 9999, direction = \"ingress\" }",
        "10s",
    ));
    let run = net.start_run(&files.experiment(), &files.state(), &files.report());
    wait_until(
        "the fault's nft table exists",
        Duration::from_secs(15),
        || net.ruleset_a().contains("table inet faultline_"),
    );
    // Counts datagrams until two seconds pass without one.
    let receiver = "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], 9999))\nprint('ready', flush=True)\ns.settimeout(2)\nn = 0\ntry:\n    while True:\n        s.recv(64)\n        n += 1\nexcept socket.timeout:\n    pass\nprint(n)";
    let mut rx = Command::new("ip")
        .args(["netns", "exec", &net.a, "python3", "-c", receiver, ADDR_A])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(rx.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // Paced, so that the receiver's socket buffer never overflows and only the fault drops.
    let sender = "import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(1000):\n    s.sendto(b'x' * 32, (sys.argv[1], 9999))\n    time.sleep(0.0005)";
    let sent = Command::new("ip")
        .args(["netns", "exec", &net.b, "python3", "-c", sender, ADDR_A])
        .status()
        .unwrap();
    assert!(sent.success());
    let received: u32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    rx.wait().unwrap();
    eprintln!("network-loss 50%: {received} of 1000 datagrams arrived");
    // 1000 draws at 50%: the standard deviation is about 16, so 350..650 holds by a wide margin.
    assert!(
        (350..=650).contains(&received),
        "{received} of 1000 datagrams arrived with 50% loss"
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
}

/// The journal can hold the entry of a network fault that was already undone: the agent died
/// between the undo and the entry's removal, or (an entry written before entries named their
/// boot) a crash of the host brought back a removal that was not synced. The next start runs the
/// undo again: with the nft table and the qdisc already gone, recovery succeeds, says so, and
/// empties the journal.
#[test]
fn network_faults_already_undone_but_still_journaled_recover_cleanly() {
    if !privileged("network_faults_already_undone_but_still_journaled_recover_cleanly") {
        return;
    }
    let net = NetnsPair::new();
    let www = tempdir();
    let _server = net.server(www.path());
    let files = Files::new(&experiment(
        "kind = \"network-loss\"\npercent = \"100%\"\nmatch = { port = 9 }",
        "1s",
    ));
    std::fs::create_dir_all(files.state()).unwrap();
    // Written by an agent that is gone: no process has this pid (above any pid_max).
    let owner = r#"{"pid": 4194305, "start_time": 1, "comm": "faultline"}"#;
    let undos = [
        (
            "network-loss",
            r#"{"undo": "delete-nft-table", "table": "faultline_gone_0"}"#,
        ),
        (
            "bandwidth",
            r#"{"undo": "delete-root-qdisc", "device": "va", "handle": 7, "kind": "htb"}"#,
        ),
    ];
    for (i, (kind, undo)) in undos.iter().enumerate() {
        std::fs::write(
            files.state().join(format!("gone-{i}.json")),
            format!(
                r#"{{"id": "gone-{i}", "run_id": "r", "kind": "{kind}", "undo": {undo}, "owner": {owner}, "written_at": "2026-12-02T04:00:00Z"}}"#
            ),
        )
        .unwrap();
    }
    // Which qdiscs there are, without their counters (traffic changes those).
    let qdiscs = || -> Vec<(String, String)> {
        net.qdiscs_a()
            .iter()
            .map(|q| (q["kind"].to_string(), q["handle"].to_string()))
            .collect()
    };
    let qdiscs_before = qdiscs();
    let out = dry_run_in_a(&net, &files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .matches("reverted a fault left by an earlier crashed run")
            .count(),
        2,
        "{stderr}"
    );
    assert!(!stderr.contains("could not be reverted"), "{stderr}");
    let left: Vec<PathBuf> = std::fs::read_dir(files.state())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(left.is_empty(), "journal entries left: {left:?}");
    assert_eq!(qdiscs(), qdiscs_before, "recovery touched the qdiscs");
}

/// A `--dry-run` of the experiment in namespace A with its state directory: it recovers what the
/// journal holds, as every start does, and injects nothing.
fn dry_run_in_a(net: &NetnsPair, files: &Files) -> std::process::Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.a,
            BIN,
            "run",
            files.experiment().to_str().unwrap(),
            "--quiet",
            "--dry-run",
        ])
        .env("FAULTLINE_STATE_DIR", files.state())
        .output()
        .unwrap()
}
