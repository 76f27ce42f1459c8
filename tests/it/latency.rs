//! The `latency` fault through the userspace proxy, end to end: the proxy listens for the whole
//! run, delays only while the fault is active (never early), and is gone when the run ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::support::{faultline, free_port, run_experiment, tempdir};

/// An echo server on a free port, one thread per connection; it stops when the test process ends.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = [0_u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn experiment(listen: u16, upstream: u16, extra: &str) -> String {
    format!(
        r#"
title = "latency through the proxy"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "through the proxy"
tcp = "127.0.0.1:{listen}"
every = "100ms"
timeout = "500ms"
[[fault]]
name = "slow replies"
kind = "latency"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
delay = "10ms"
at = "0s"
duration = "3s"
{extra}
[recovery]
within = "5s"
"#
    )
}

/// One round trip: when it started (wall clock, to compare with the report) and how long it took.
struct RoundTrip {
    started: SystemTime,
    rtt: Duration,
}

/// Round trips of 64 bytes on one persistent connection through `port`, until `stop` is set.
fn client(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<Vec<RoundTrip>> {
    std::thread::spawn(move || {
        let mut conn = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(_) if !stop.load(Ordering::Relaxed) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the proxy never listened on {port}: {e}"),
            }
        };
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = [7_u8; 64];
        let mut reply = [0_u8; 64];
        let mut trips = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = SystemTime::now();
            let t = Instant::now();
            if conn.write_all(&request).is_err() || conn.read_exact(&mut reply).is_err() {
                break;
            }
            trips.push(RoundTrip {
                started,
                rtt: t.elapsed(),
            });
            assert_eq!(reply, request, "the proxy changed the bytes");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = conn.shutdown(Shutdown::Both);
        trips
    })
}

fn timestamp(report: &serde_json::Value, key: &str) -> SystemTime {
    let text = report["faults"][0][key]
        .as_str()
        .unwrap_or_else(|| panic!("fault has no {key}: {report}"));
    let ts: jiff::Timestamp = text.parse().unwrap();
    SystemTime::from(ts)
}

#[test]
fn proxied_round_trips_are_delayed_while_the_fault_is_active_and_never_early() {
    let dir = tempdir();
    let (upstream, listen) = (echo_server(), free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let trips = client(listen, Arc::clone(&stop));
    let run = run_experiment(dir.path(), &experiment(listen, upstream, ""), &[]);
    stop.store(true, Ordering::Relaxed);
    let trips = trips.join().expect("client thread");
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    assert_eq!(
        report["phases"]["before"][0]["success_ratio"], 1.0,
        "the probe goes through the proxy before the fault"
    );
    assert_eq!(
        report["phases"]["after"][0]["slo_met"], true,
        "and after it"
    );

    // Round trips wholly inside the fault (margins for the instants the report records around
    // the switch) were all delayed by at least the 10 ms asked for: never early.
    let (injected, reverted) = (
        timestamp(report, "injected_at"),
        timestamp(report, "reverted_at"),
    );
    let inside: Vec<&RoundTrip> = trips
        .iter()
        .filter(|t| {
            t.started >= injected + Duration::from_millis(50)
                && t.started + t.rtt + Duration::from_millis(300) <= reverted
        })
        .collect();
    assert!(
        inside.len() >= 50,
        "only {} round trips fell inside the fault",
        inside.len()
    );
    let early: Vec<Duration> = inside
        .iter()
        .map(|t| t.rtt)
        .filter(|rtt| *rtt < Duration::from_millis(10))
        .collect();
    assert!(
        early.is_empty(),
        "round trips faster than the delay during the fault: {early:?}"
    );

    // The same connection carried on after the revert, and went back to undelayed round trips.
    let after: Vec<&RoundTrip> = trips
        .iter()
        .filter(|t| t.started >= reverted + Duration::from_millis(50))
        .collect();
    assert!(
        !after.is_empty(),
        "the connection did not survive the revert"
    );
    assert!(
        after.iter().any(|t| t.rtt < Duration::from_millis(10)),
        "no round trip after the revert was faster than the delay"
    );
    let before: Vec<&RoundTrip> = trips
        .iter()
        .filter(|t| t.started + t.rtt < injected)
        .collect();
    assert!(
        before.iter().any(|t| t.rtt < Duration::from_millis(10)),
        "the proxy delayed before the fault"
    );
}

#[test]
fn the_listen_port_is_closed_after_the_run() {
    let dir = tempdir();
    let (upstream, listen) = (echo_server(), free_port());
    let run = run_experiment(
        dir.path(),
        &experiment(listen, upstream, "jitter = \"30ms\""),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    assert!(
        run.stderr
            .contains(&format!("closed the proxy on 127.0.0.1:{listen}")),
        "{}",
        run.explain()
    );
    let err = TcpStream::connect(("127.0.0.1", listen))
        .expect_err("the proxy port still accepts connections");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn a_port_that_is_taken_is_an_error_before_anything_is_injected() {
    let dir = tempdir();
    let upstream = echo_server();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().port();
    let run = run_experiment(dir.path(), &experiment(listen, upstream, ""), &[]);
    assert_eq!(run.code, 5, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!("failed to listen on 127.0.0.1:{listen}")),
        "{reason}"
    );
    assert!(reason.contains("nothing was injected"), "{reason}");
}

#[test]
fn latency_keys_are_checked_by_name() {
    let dir = tempdir();
    let check = |extra: &str, replace: (&str, &str)| {
        let text = experiment(1111, 2222, extra).replace(replace.0, replace.1);
        let file = dir.path().join("x.toml");
        std::fs::write(&file, text).unwrap();
        let out = faultline(
            &["validate", file.to_str().unwrap()],
            &dir.path().join("state"),
        );
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = check("direction = \"sideways\"", ("", ""));
    assert!(e.contains("invalid direction `sideways`"), "{e}");
    let e = check(
        "",
        ("listen = \"127.0.0.1:1111\"", "listen = \"localhost:1111\""),
    );
    assert!(e.contains("`listen` must be an IP address and port"), "{e}");
    let e = check("backend = \"ebpf\"", ("", ""));
    assert!(e.contains("unknown `backend` `ebpf`"), "{e}");
    let e = check("", ("delay = \"10ms\"", ""));
    assert!(e.contains("give `delay`"), "{e}");
    let e = check("signal = \"SIGKILL\"", ("", ""));
    assert!(
        e.contains("`signal` does not apply to kind `latency`"),
        "{e}"
    );
}

fn journal_entries(state: &std::path::Path) -> usize {
    std::fs::read_dir(state).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    })
}

#[test]
fn a_proxy_and_its_toxics_left_by_a_killed_run_are_cleared_from_the_journal() {
    use std::process::{Command, Stdio};
    let dir = tempdir();
    let (upstream, listen) = (echo_server(), free_port());
    let file = dir.path().join("latency.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &file,
        experiment(listen, upstream, "").replace("duration = \"3s\"", "duration = \"60s\""),
    )
    .unwrap();
    let mut child = Command::new(crate::support::BIN)
        .args(["run", file.to_str().unwrap(), "--quiet"])
        .env("FAULTLINE_STATE_DIR", &state)
        // This test is about the journal the next run recovers, not the watchdog.
        .env("FAULTLINE_NO_WATCHDOG", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Both the proxy (a run resource) and the fault's toxics are journaled.
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal_entries(&state) < 2 {
        assert!(Instant::now() < deadline, "the fault never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let err =
        TcpStream::connect(("127.0.0.1", listen)).expect_err("the proxy outlived its process");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let out = faultline(
        &["run", file.to_str().unwrap(), "--quiet", "--dry-run"],
        &state,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("(proxy, run "), "{stderr}");
    assert!(stderr.contains("(latency, run "), "{stderr}");
    assert_eq!(
        journal_entries(&state),
        0,
        "the journal still holds entries: {stderr}"
    );
}

#[test]
fn plan_shows_the_proxy_for_the_whole_run_and_the_toxics_on_the_timeline() {
    let dir = tempdir();
    let file = dir.path().join("x.toml");
    std::fs::write(
        &file,
        experiment(1111, 2222, "jitter = \"2ms\"\ndirection = \"both\""),
    )
    .unwrap();
    let out = faultline(&["plan", file.to_str().unwrap()], &dir.path().join("state"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "run resources (opened after setup, before the steady state; closed when the run ends):\n  - proxy 127.0.0.1:1111 -> 127.0.0.1:2222: no toxics until a fault turns them on\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "inject `slow replies` (latency) on local: delay 10 ms ± 2 ms (uniform, never below 0) both in the proxy 127.0.0.1:1111 -> 127.0.0.1:2222"
        ),
        "{stdout}"
    );
}

#[test]
fn a_persistent_proxy_the_agent_does_not_host_is_an_error_naming_it() {
    let dir = tempdir();
    let probe_port = echo_server();
    let text = experiment(probe_port, 1, "proxy = \"db\"")
        .replace(&format!("listen = \"127.0.0.1:{probe_port}\"\n"), "")
        .replace("upstream = \"127.0.0.1:1\"\n", "");
    let run = run_experiment(dir.path(), &text, &[]);
    assert_eq!(run.code, 5, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("this agent has no persistent proxy `db`"),
        "{reason}"
    );

    let file = dir.path().join("both.toml");
    std::fs::write(&file, experiment(1111, 2222, "proxy = \"db\"")).unwrap();
    let out = faultline(
        &["validate", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("give `proxy` (a persistent proxy of the agent) or `listen` and `upstream`"),
        "{stderr}"
    );
}

#[test]
fn bench_proxy_prints_every_figure() {
    let dir = tempdir();
    let out = faultline(
        &[
            "bench",
            "proxy",
            "--round-trips",
            "20",
            "--delays-ms",
            "1",
            "--bulk-bytes",
            "1000000",
            "--connections",
            "20",
        ],
        &dir.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in [
        "through faultline",
        "faultline (timerfd)             1ms",
        "baseline (tokio sleep)          1ms",
        "OS floor (thread::sleep)        1ms",
        "through faultline, copying",
        "through the proxy, spliced, no toxic",
        "through the proxy, spliced, 10 ms delay",
        "through the proxy, copying, no toxic",
        "through the proxy, copying, 10 ms delay",
        "20 proxied connections",
        "direct (same load)",
        "no toxic (proxy hop cost)",
        "proxy vs direct under the same load",
        "0 of 80 delayed round trips took less than 10 ms",
        // The proxy's timers spin by default, so its floors are printed for a spinning
        // sleeper too, beside the plain one.
        "timerfd+spin, no proxy          1ms",
        "OS floor, sleep + spin          1ms",
        "sleep echo (floor+hand-off)     1ms",
        "of which the proxy's own release (timer wake-up to write)",
        "per round trip, µs on a CPU",
    ] {
        assert!(stdout.contains(figure), "no `{figure}` in:\n{stdout}");
    }
    // The figures themselves: numbers, in the order a distribution has them, of a sane size. No
    // timing thresholds: how fast this machine is does not decide the test.
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no line starting `{label}` in:\n{stdout}"))
    };
    for label in [
        "direct  ",
        "through faultline",
        "through faultline, copying",
        "through the sleep proxy",
        "faultline (timerfd)             1ms",
        "baseline (tokio sleep)",
        "OS floor (thread::sleep)",
        "timerfd+spin, no proxy",
        "OS floor, sleep + spin",
        "sleep echo (floor+hand-off)",
        "direct (same load)",
        "no toxic (proxy hop cost)",
        "faultline (timerfd)            10ms",
    ] {
        let [p50, p99, max, min] = last_numbers::<4>(line(label));
        assert!(
            min <= p50 && p50 <= p99 && p99 <= max,
            "`{label}`: not min <= p50 <= p99 <= max: {}",
            line(label)
        );
        // An hour in microseconds: anything above is a unit or overflow bug, not a slow machine.
        assert!(max.abs() < 3.6e9 && min.abs() < 3.6e9, "{}", line(label));
    }
    for label in ["direct  ", "through faultline", "through the sleep proxy"] {
        let [_, _, _, min] = last_numbers::<4>(line(label));
        assert!(min > 0.0, "a round trip took no time: {}", line(label));
    }
    let rate_line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label) && l.contains("MB/s"))
            .unwrap_or_else(|| panic!("no throughput line `{label}` in:\n{stdout}"))
    };
    let direct = throughput(rate_line("direct"));
    for (label, path) in [
        ("through the proxy, spliced, no toxic", "spliced"),
        ("through the proxy, spliced, 10 ms delay", "spliced"),
        ("through the proxy, copying, no toxic", "copying"),
        ("through the proxy, copying, 10 ms delay", "copying"),
    ] {
        let l = rate_line(label);
        let rate = throughput(l);
        let ratio: f64 = l
            .split("ratio to direct ")
            .nth(1)
            .and_then(|r| r.split(';').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no ratio in `{l}`"));
        // The proxy's own counters: the spliced path moved the gibibyte through the pipe (a
        // stream copies only its start, until a read fills the largest buffer), the copying
        // one spliced nothing, so a splice path that silently never engages shows here.
        let (spliced, copied) = (moved_bytes(l, "spliced"), moved_bytes(l, "copied"));
        let took_path = if path == "spliced" {
            // The bench's stream is short: its copied start (until the first full read) shows.
            spliced > 0.0 && copied <= spliced / 4.0
        } else {
            spliced == 0.0 && copied > 0.0
        };
        assert!(took_path, "`{l}`: bytes did not take the {path} path");
        assert!(rate.is_finite() && rate > 0.0, "{l}");
        assert!(ratio.is_finite() && ratio > 0.0, "{l}");
        // Both are printed rounded: the rate to 1 MB/s, the ratio to 0.01.
        assert!(
            (ratio - rate / direct).abs() <= 0.006 + 0.5 / direct,
            "`{l}`: the ratio is not the rate over the direct rate ({direct} MB/s)"
        );
    }
    let rss = line("RSS:");
    let kib: Vec<f64> = rss
        .split(" KiB")
        .filter_map(|part| part.rsplit(['+', ' ', '(']).next()?.parse().ok())
        .collect();
    assert!(kib.len() >= 3, "too few figures in `{rss}`");
    assert!(kib.iter().all(|k| k.is_finite() && k.abs() < 1e9), "{rss}");
}

/// The last `N` whitespace-separated numbers of a line.
fn last_numbers<const N: usize>(line: &str) -> [f64; N] {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() >= N, "fewer than {N} figures in `{line}`");
    let mut out = [0.0_f64; N];
    for (slot, word) in out.iter_mut().zip(&words[words.len() - N..]) {
        *slot = word
            .parse()
            .unwrap_or_else(|_| panic!("`{word}` is not a number in `{line}`"));
        assert!(slot.is_finite(), "`{word}` in `{line}`");
    }
    out
}

/// The MB/s figure of a throughput line.
fn throughput(line: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "MB/s")
        .unwrap_or_else(|| panic!("no MB/s in `{line}`"));
    let rate: f64 = words[at - 1]
        .parse()
        .unwrap_or_else(|_| panic!("`{}` is not a number in `{line}`", words[at - 1]));
    assert!(rate.is_finite() && rate > 0.0, "{line}");
    rate
}

/// The bytes a bench throughput line says went `how` ("spliced" or "copied"): `1.0 GiB spliced`.
fn moved_bytes(line: &str, how: &str) -> f64 {
    let counts = line
        .split("ratio to direct ")
        .nth(1)
        .unwrap_or_else(|| panic!("no counts in `{line}`"));
    let before = counts
        .split(&format!(" {how}"))
        .next()
        .unwrap_or_else(|| panic!("no `{how}` in `{line}`"));
    let mut words = before.rsplit([' ', ';', '(']).filter(|w| !w.is_empty());
    let unit = words
        .next()
        .unwrap_or_else(|| panic!("no unit in `{line}`"));
    let value: f64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no amount {how} in `{line}`"));
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit `{other}` in `{line}`"),
    };
    value * scale
}

/// `faultline bench proxy` with `FAULTLINE_PROXY_PIPE_BYTES` set, `--only throughput`.
fn bench_throughput_with_pipe_budget(budget: &str) -> std::process::Output {
    bench_throughput_with("FAULTLINE_PROXY_PIPE_BYTES", budget)
}

/// `faultline bench proxy --only throughput` on a short transfer, with `var` set to `value`.
fn bench_throughput_with(var: &str, value: &str) -> std::process::Output {
    let dir = tempdir();
    std::process::Command::new(crate::support::BIN)
        .args([
            "bench",
            "proxy",
            "--only",
            "throughput",
            "--bulk-bytes",
            "50000000",
        ])
        .env("FAULTLINE_STATE_DIR", dir.path().join("state"))
        .env(var, value)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the faultline binary")
}

#[test]
fn proxy_pipes_stay_within_the_process_wide_budget_under_a_delay() {
    let out = bench_throughput_with_pipe_budget("1MiB");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("through the proxy, spliced, 10 ms delay"),
        "{stdout}"
    );
    for other in ["precision", "scale:"] {
        assert!(
            !stdout.contains(other),
            "`--only throughput` ran `{other}`:\n{stdout}"
        );
    }
    // Under a 10 ms delay a stream of hundreds of MB/s would hold megabytes in the pipes; the
    // budget holds them to 1 MiB beyond each direction's 256 KiB reserve (the bench's one
    // connection has two directions; allow the one before it, still closing, two more: 2 MiB).
    let peaks: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split("pipes at most ").nth(1))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let value: f64 = words.next().and_then(|v| v.parse().ok()).expect("a number");
            let scale = match words.next() {
                Some("B") => 1.0,
                Some("KiB") => 1024.0,
                Some("MiB") => 1024.0 * 1024.0,
                Some("GiB") => 1024.0 * 1024.0 * 1024.0,
                other => panic!("unit {other:?} in:\n{stdout}"),
            };
            value * scale
        })
        .collect();
    assert_eq!(peaks.len(), 2, "no pipe peaks in:\n{stdout}");
    let delayed = peaks[1];
    assert!(
        delayed > 0.0,
        "the delayed stream held nothing in pipes:\n{stdout}"
    );
    assert!(
        delayed <= 2.0 * 1024.0 * 1024.0,
        "pipes held {delayed} bytes, beyond the budget:\n{stdout}"
    );
}

#[test]
fn an_invalid_proxy_pipe_budget_is_refused_with_its_name() {
    refuses_naming("FAULTLINE_PROXY_PIPE_BYTES", &["0", "lots", "100GiB"]);
}

/// Each of `bad` in `var` stops the proxy with an error naming the variable and the value.
fn refuses_naming(var: &str, bad: &[&str]) {
    for bad in bad {
        let out = bench_throughput_with(var, bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{var}=`{bad}` was accepted");
        assert!(
            stderr.contains(var) && stderr.contains(bad),
            "{var}=`{bad}`: {stderr}"
        );
    }
}

#[test]
fn an_invalid_proxy_spin_window_is_refused_with_its_name() {
    refuses_naming("FAULTLINE_PROXY_SPIN_US", &["1001", "-5", "fast"]);
}

#[test]
fn bench_proxy_refuses_an_unknown_section() {
    let dir = tempdir();
    let out = faultline(
        &["bench", "proxy", "--only", "everything"],
        &dir.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--only") && stderr.contains("throughput"),
        "{stderr}"
    );
}
