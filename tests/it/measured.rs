//! Measured verdicts on real servers: latency percentiles per phase and golden-signal roles.

use crate::support::{Proc, free_port, run_experiment, tempdir, wait_for_port};

/// Answers every GET after sleeping 50 ms, like a service with a fixed cost per request.
const SLOW_SERVER: &str = r#"
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"#;

#[test]
fn a_server_answering_in_50ms_has_a_baseline_p50_near_50ms() {
    let dir = tempdir();
    let script = dir.path().join("slow.py");
    std::fs::write(&script, SLOW_SERVER).unwrap();
    let port = free_port();
    let _server = Proc::spawn(&["python3", script.to_str().unwrap(), &port.to_string()]);
    wait_for_port(port, std::time::Duration::from_secs(10));
    let toml = format!(
        r#"
title = "slow server"
[steady_state]
window = "2s"
[[steady_state.probe]]
name = "slow page"
http = {{ url = "http://127.0.0.1:{port}/" }}
every = "100ms"
timeout = "1s"
signal = "latency"
slo = {{ success = "99%", p99 = "2x baseline" }}
[[steady_state.probe]]
name = "load"
command = ["echo", "0.42"]
value = true
every = "200ms"
signal = "saturation"
[[fault]]
name = "kill nothing"
kind = "process-kill"
select = {{ name = "no-such-process-here" }}
[recovery]
within = "1s"
"#
    );
    let run = run_experiment(dir.path(), &toml, &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    let before = &report["phases"]["before"][0];
    assert_eq!(before["probe"], "slow page");
    assert_eq!(before["signal"], "latency");
    let p50 = before["p50_ms"].as_f64().unwrap();
    eprintln!("before p50 = {p50} ms over {} samples", before["samples"]);
    assert!((45.0..=80.0).contains(&p50), "p50 {p50} ms: {before}");
    let load = &report["phases"]["before"][1];
    assert_eq!(load["signal"], "saturation");
    assert_eq!(load["values"]["mean"], 0.42, "{load}");
    // The terminal shows the roles side by side per phase.
    let table = run
        .stdout
        .split("golden signals:")
        .nth(1)
        .expect("a golden signals table");
    assert!(table.contains("latency"), "{table}");
    assert!(table.contains("saturation"), "{table}");
    assert!(table.contains("0.42"), "{table}");
}

/// The 50 ms server, started for one test and killed when dropped.
fn slow_server(dir: &std::path::Path) -> (Proc, u16) {
    let script = dir.join("slow.py");
    std::fs::write(&script, SLOW_SERVER).unwrap();
    let port = free_port();
    let server = Proc::spawn(&["python3", script.to_str().unwrap(), &port.to_string()]);
    wait_for_port(port, std::time::Duration::from_secs(10));
    (server, port)
}

/// Pauses the slow server for `duration`: while it is stopped every request times out.
fn pause_slow_server(port: u16, duration: &str, extra: &str) -> String {
    format!(
        r#"
title = "pause the slow server"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "slow page"
http = {{ url = "http://127.0.0.1:{port}/" }}
every = "100ms"
timeout = "500ms"
slo = {{ success = "99%", p99 = "3x baseline" }}
{extra}
[[fault]]
name = "pause"
kind = "process-pause"
select = {{ cmdline = "slow.py {port}$" }}
duration = "{duration}"
[recovery]
within = "3s"
"#
    )
}

#[test]
fn an_abort_rule_reverts_the_fault_long_before_its_duration() {
    let dir = tempdir();
    let (_server, port) = slow_server(dir.path());
    let abort = "[[abort]]\nprobe = \"slow page\"\nwhen = { p99_above = \"200ms\", over = \"1s\" }";
    let toml = pause_slow_server(port, "30s", abort);
    let started = std::time::Instant::now();
    let run = run_experiment(dir.path(), &toml, &[]);
    assert_eq!(run.code, 3, "{}", run.explain());
    assert_eq!(run.verdict(), "aborted");
    assert!(
        started.elapsed().as_secs() < 20,
        "the 30 s pause was not cut short"
    );
    let report = run.report.as_ref().unwrap();
    assert_eq!(report["aborted_by"], "slow page p99 above 200 ms over 1s");
    let tta = report["time_to_abort_ms"]
        .as_f64()
        .expect("time_to_abort_ms");
    eprintln!("time_to_abort_ms = {tta}");
    assert!(tta <= 2000.0, "time_to_abort_ms = {tta}");
    assert_eq!(report["faults"][0]["status"], "reverted");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("abort rule `slow page p99 above 200 ms over 1s` fired, faults reverted "),
        "{reason}"
    );
}

#[test]
fn an_slo_during_the_faults_fails_a_run_that_recovers() {
    let dir = tempdir();
    let (_server, port) = slow_server(dir.path());
    let during = "slo_during = { success = \"baseline - 1%\" }";
    let run = run_experiment(dir.path(), &pause_slow_server(port, "1s", during), &[]);
    assert_eq!(run.code, 1, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    assert!(!report["time_to_recover_ms"].is_null(), "it recovered");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("during the faults slow page success was "),
        "{reason}"
    );
    assert!(reason.contains("(relative to the baseline)"), "{reason}");
    assert_eq!(report["phases"]["during"][0]["slo_met"], false);
}

#[test]
fn the_sampling_bench_prints_its_figures() {
    let dir = tempdir();
    let out = crate::support::faultline(
        &[
            "bench", "probes", "--probes", "3", "--every", "20ms", "--for", "500ms",
        ],
        &dir.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "samples:",
        "CPU, probing:",
        "µs per sample",
        "CPU, listener:",
        "connect time:",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    // The figures: numbers that agree with each other, of a sane size (no timing thresholds).
    let figures = |label: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"));
        let numbers: Vec<f64> = line[label.len()..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|w| !w.is_empty() && *w != ".")
            .map(|w| w.parse().unwrap_or_else(|_| panic!("`{w}` in `{line}`")))
            .collect();
        assert!(numbers.iter().all(|n| n.is_finite()), "{line}");
        numbers
    };
    // samples: N in S s = R per second (P% of the Q/s asked), F failed
    let s = figures("samples:");
    let (count, secs, rate, percent, asked, failed) = (s[0], s[1], s[2], s[3], s[4], s[5]);
    assert!(count > 0.0 && secs > 0.0, "{s:?}");
    assert!(
        (rate - count / secs).abs() <= 0.5 + 0.01 * rate,
        "{s:?}: rate is not N/S"
    );
    assert!(
        (asked - 150.0).abs() < 1e-9,
        "3 probes every 20 ms ask for 150 per second, not {asked}"
    );
    // The rate is printed rounded to one per second, the percentage from the exact rate, capped at
    // 100% (probes fire at once when they start, so a short run can sample a little above the ask).
    assert!(
        (percent - (100.0 * rate / asked).min(100.0)).abs() <= 100.0 * 0.5 / asked + 0.01,
        "{s:?}"
    );
    assert!(failed <= count, "{s:?}");
    // CPU, probing: C s = P% of one core; U µs per sample
    let c = figures("CPU, probing:");
    assert!(c.iter().all(|n| *n >= 0.0) && c[1] <= 100.0 * 64.0, "{c:?}");
    let l = figures("CPU, listener:");
    assert!(l[0] >= 0.0, "{l:?}");
    // connect time: p50 A ms, p99 B ms, max C ms
    let t = figures("connect time:");
    let (p50, p99, max) = (t[1], t[3], t[4]);
    assert!(p50 <= p99 && p99 <= max && max < 3.6e6, "{t:?}");
    let rss = figures("peak RSS:");
    assert!(rss[0] > 1.0 && rss[0] < 1e6, "peak RSS of {} MiB", rss[0]);
}

#[test]
fn a_500ms_latency_fault_on_the_probed_path_is_aborted_by_a_p99_rule() {
    let dir = tempdir();
    let upstream = free_port();
    let _server = crate::support::http_server(upstream, dir.path());
    let listen = free_port();
    let toml = format!(
        r#"
title = "500 ms of latency on the probed path"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "through the proxy"
http = {{ url = "http://127.0.0.1:{listen}/" }}
every = "100ms"
# Longer than the delay, so delayed answers are slow successes, not timeouts.
timeout = "2s"
slo = {{ success = "99%" }}
[[fault]]
name = "slow replies"
kind = "latency"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
delay = "500ms"
duration = "30s"
[[abort]]
probe = "through the proxy"
when = {{ p99_above = "200ms", over = "1s" }}
[recovery]
within = "5s"
"#
    );
    let run = run_experiment(dir.path(), &toml, &[]);
    assert_eq!(run.code, 3, "{}", run.explain());
    assert_eq!(run.verdict(), "aborted");
    let report = run.report.as_ref().unwrap();
    assert_eq!(
        report["aborted_by"],
        "through the proxy p99 above 200 ms over 1s"
    );
    let tta = report["time_to_abort_ms"]
        .as_f64()
        .expect("time_to_abort_ms");
    eprintln!("time_to_abort_ms = {tta}");
    assert!(tta <= 2000.0, "time_to_abort_ms = {tta}");
    let fault = &report["faults"][0];
    assert_eq!(fault["status"], "reverted");
    let at = |key: &str| {
        fault[key]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let held = at("reverted_at")
        .duration_since(at("injected_at"))
        .as_secs_f64();
    assert!(held < 10.0, "the 30 s fault was held {held} s");
    // The during phase saw the delay the rule reacted to.
    let p99 = report["phases"]["during"][0]["p99_ms"].as_f64().unwrap();
    assert!(p99 >= 500.0, "during p99 = {p99} ms");
}
