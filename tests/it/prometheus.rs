//! The `prometheus` probe and the error-budget gate against a real Prometheus (the Debian
//! `prometheus` package) scraping a tiny exporter on loopback whose numbers each test writes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Proc, faultline, free_port, run_experiment, tempdir, wait_for_port};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Prometheus starts in a second or two; this bounds a slow start on a busy machine.
const STARTUP: Duration = Duration::from_secs(40);

/// Serves the file `metrics` as `/metrics`, re-read on every scrape so a test can change it.
const EXPORTER: &str = r#"
import http.server, sys
port, path = int(sys.argv[1]), sys.argv[2]
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Metrics).serve_forever()
"#;

/// A Prometheus scraping a test exporter every second; both are killed when this is dropped.
struct Prom {
    // Field order is drop order: the processes go before their directory.
    _prometheus: Proc,
    _exporter: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prom {
    /// Starts the exporter serving `metrics`, then Prometheus, and waits until `ready_query`
    /// (a metric of `metrics`) has been scraped.
    fn start(metrics: &str, ready_query: &str) -> Prom {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: apt-get install prometheus (the Debian package)"
        );
        let dir = tempdir();
        let metrics_file = dir.path().join("metrics");
        std::fs::write(&metrics_file, metrics).unwrap();
        let script = dir.path().join("exporter.py");
        std::fs::write(&script, EXPORTER).unwrap();
        let exporter_port = free_port();
        let exporter = Proc::spawn(&[
            "python3",
            script.to_str().unwrap(),
            &exporter_port.to_string(),
            metrics_file.to_str().unwrap(),
        ]);
        wait_for_port(exporter_port, Duration::from_secs(10));
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        let prometheus = Proc::spawn(&[
            PROMETHEUS,
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=error",
        ]);
        let prom = Prom {
            _prometheus: prometheus,
            _exporter: exporter,
            port,
            dir,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            let answer = prom.query(ready_query).unwrap_or_default();
            if answer.contains("\"result\":[{") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus on port {port} had not scraped `{ready_query}` within {STARTUP:?}; last answer: {answer}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prom
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// An instant query over a bare HTTP/1.0 request; `query` must need no URL escaping.
    fn query(&self, query: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /api/v1/query?query={query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }
}

/// An experiment whose only probes are `probes`; its fault is never reached in a dry run.
fn probing(probes: &str) -> String {
    format!(
        r#"
title = "prometheus probe"
[steady_state]
window = "1500ms"
{probes}
[[fault]]
name = "kill nothing"
kind = "process-kill"
select = {{ name = "no-such-process-here" }}
[recovery]
within = "1s"
"#
    )
}

fn phase<'a>(report: &'a serde_json::Value, phase: &str, probe: &str) -> &'a serde_json::Value {
    report["phases"][phase]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == probe)
        .unwrap_or_else(|| panic!("no {phase} entry for probe `{probe}` in {report}"))
}

/// The distinct sample errors of one probe.
fn errors(report: &serde_json::Value, probe: &str) -> Vec<String> {
    let mut all: Vec<String> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["probe"] == probe)
        .filter_map(|s| s["error"].as_str().map(str::to_owned))
        .collect();
    all.dedup();
    all
}

#[test]
fn prometheus_probe_passes_while_the_value_is_under_the_threshold() {
    let prom = Prom::start("queue_depth 3\n", "queue_depth");
    let probes = format!(
        r#"
[[steady_state.probe]]
name = "queue"
prometheus = {{ url = "{}", query = "queue_depth", below = 5 }}
every = "200ms"
signal = "saturation"
"#,
        prom.url()
    );
    let run = run_experiment(&prom.path(), &probing(&probes), &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    let before = phase(report, "before", "queue");
    assert_eq!(before["slo_met"], true, "{before}");
    assert_eq!(before["success_ratio"], 1.0, "{before}");
    assert!(before["samples"].as_u64().unwrap() >= 5, "{before}");
    assert_eq!(before["signal"], "saturation");
    assert_eq!(before["values"]["min"], 3.0, "{before}");
    assert_eq!(before["values"]["max"], 3.0, "{before}");
    assert!(run.stdout.contains("golden signals:"), "{}", run.stdout);
}

#[test]
fn prometheus_probe_fails_its_samples_above_the_threshold_and_explains_bad_queries() {
    let prom = Prom::start(
        "queue_depth 7\nshard_load{shard=\"a\"} 1\nshard_load{shard=\"b\"} 2\n",
        "queue_depth",
    );
    let url = prom.url();
    let probe = |name: &str, query: &str| {
        format!(
            "[[steady_state.probe]]\nname = \"{name}\"\nprometheus = {{ url = \"{url}\", query = '{query}', below = 5 }}\nevery = \"250ms\"\n"
        )
    };
    let probes = [
        probe("above", "queue_depth"),
        probe("bad query", "sum(queue_depth"),
        probe("empty", "no_such_metric"),
        probe("several", "shard_load"),
    ]
    .concat();
    let run = run_experiment(&prom.path(), &probing(&probes), &["--dry-run"]);
    assert_eq!(run.code, 4, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    for name in ["above", "bad query", "empty", "several"] {
        let before = phase(report, "before", name);
        assert_eq!(before["success_ratio"], 0.0, "{name}: {before}");
        assert_eq!(before["slo_met"], false, "{name}: {before}");
    }
    assert_eq!(errors(report, "above"), ["value 7 is not below 5"]);
    assert_eq!(phase(report, "before", "above")["values"]["mean"], 7.0);
    let bad = errors(report, "bad query");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("Prometheus rejected the query `sum(queue_depth`: bad_data: "),
        "{bad:?}"
    );
    assert_eq!(
        errors(report, "empty"),
        ["the query `no_such_metric` returned no series (an empty result counts as a failure)"]
    );
    let several = errors(report, "several");
    assert!(
        several[0].starts_with("the query `shard_load` returned 2 series ("),
        "{several:?}"
    );
    assert!(several[0].contains("shard=\"a\""), "{several:?}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("above success was 0%"), "{reason}");
}

#[test]
fn prometheus_probe_says_when_the_server_is_down() {
    let dir = tempdir();
    let port = free_port();
    let probes = format!(
        "[[steady_state.probe]]\nname = \"queue\"\nprometheus = {{ url = \"http://127.0.0.1:{port}\", query = \"queue_depth\", below = 5 }}\nevery = \"250ms\"\n"
    );
    let run = run_experiment(dir.path(), &probing(&probes), &["--dry-run"]);
    assert_eq!(run.code, 4, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    let errs = errors(report, "queue");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "Prometheus at http://127.0.0.1:{port} is unreachable: "
        )),
        "{errs:?}"
    );
    assert!(errs[0].to_lowercase().contains("refused"), "{errs:?}");
}

/// An experiment gated on the budget of `requests_total{code}` counters, pausing a sleeping
/// fixture (listening on port `tag` once it is up) for a moment so a run that goes ahead has a real fault to inject and revert.
fn gated(prometheus: &str, tag: u16) -> String {
    format!(
        r#"
title = "gated on the error budget"
[slo_budget]
prometheus = "{prometheus}"
target = "99.9%"
good = 'sum(requests_total{{code!~"5.."}})'
total = 'sum(requests_total)'
min_remaining = "10%"
[[setup]]
name = "sleeper"
run = ["python3", "-c", "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)", "{tag}"]
# Listening says the interpreter is up, so the first sample never races its start.
ready = {{ tcp = "127.0.0.1:{tag}" }}
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "sleeper alive"
command = ["pgrep", "-f", "time.sleep\\(60\\) {tag}$"]
every = "100ms"
[[fault]]
name = "pause the sleeper"
kind = "process-pause"
select = {{ cmdline = "time.sleep\\(60\\) {tag}$" }}
duration = "300ms"
[recovery]
within = "2s"
"#
    )
}

#[test]
fn spent_error_budget_refuses_the_run_with_the_numbers() {
    // 50 errors in 10000 against a 99.9% target: five times the allowance, -400% left.
    let prom = Prom::start(
        "requests_total{code=\"200\"} 9950\nrequests_total{code=\"500\"} 50\n",
        "requests_total",
    );
    let tag = free_port();
    let junit = prom.path().join("junit.xml");
    let run = run_experiment(
        &prom.path(),
        &gated(&prom.url(), tag),
        &["--junit", junit.to_str().unwrap()],
    );
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(run.verdict(), "not_run");
    // In CI the gate, not the steady state, is the criterion that failed.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("name=\"error budget\">\n      <failure type=\"not_run\" message=\"error budget too low: -400%"),
        "{xml}"
    );
    assert!(
        xml.contains("name=\"steady state before the method\"/>"),
        "{xml}"
    );
    assert!(xml.contains("tests=\"4\" failures=\"1\""), "{xml}");
    let report = run.report.as_ref().unwrap();
    let reason = report["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "error budget too low: -400% of the error budget remains, below the minimum of 10% \
         (good/total = 9950/10000 = 99.5% against a target of 99.9%: 0.1% of events may fail, \
         500% of that allowance is used); no fault was injected"
    );
    let budget = &report["budget"];
    assert_eq!(budget["enough"], false, "{budget}");
    assert_eq!(budget["good"], 9950.0);
    assert_eq!(budget["total"], 10000.0);
    assert!(
        report["samples"].as_array().unwrap().is_empty(),
        "nothing ran"
    );
    for fault in report["faults"].as_array().unwrap() {
        assert!(fault["injected_at"].is_null(), "{fault}");
    }

    let file = prom.path().join("experiment.toml");
    let out = faultline(
        &["budget", file.to_str().unwrap()],
        &prom.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("good ratio:     99.5%\n"), "{stdout}");
    assert!(stdout.contains("allowed error:  0.1%\n"), "{stdout}");
    assert!(
        stdout.contains("consumed:       500% of the budget\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("remaining:      -400% of the budget (minimum 10%)\n"),
        "{stdout}"
    );
}

#[test]
fn healthy_error_budget_lets_the_run_proceed() {
    // 1 error in 10000 against 99.9%: a tenth of the allowance used, 90% left.
    let prom = Prom::start(
        "requests_total{code=\"200\"} 9999\nrequests_total{code=\"500\"} 1\n",
        "requests_total",
    );
    let tag = free_port();
    let run = run_experiment(&prom.path(), &gated(&prom.url(), tag), &[]);
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    assert_eq!(report["budget"]["enough"], true);
    let remaining = report["budget"]["remaining"].as_f64().unwrap();
    assert!((remaining - 0.9).abs() < 1e-9, "{remaining}");
    assert!(
        !report["faults"][0]["injected_at"].is_null(),
        "the fault ran"
    );
    assert!(
        run.stdout
            .contains("error budget: 90% of the error budget remains"),
        "{}",
        run.stdout
    );

    let file = prom.path().join("experiment.toml");
    let out = faultline(
        &["budget", file.to_str().unwrap()],
        &prom.path().join("state"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("remaining:      90% of the budget (minimum 10%)\n"),
        "{stdout}"
    );
}

#[test]
fn unreachable_budget_server_is_an_error_and_nothing_runs() {
    let dir = tempdir();
    let port = free_port();
    let tag = free_port();
    let run = run_experiment(
        dir.path(),
        &gated(&format!("http://127.0.0.1:{port}"), tag),
        &[],
    );
    assert_eq!(run.code, 5, "{}", run.explain());
    assert_eq!(run.verdict(), "error");
    let reason = run.report.as_ref().unwrap()["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "could not check the error budget: error budget `good` query: Prometheus at http://127.0.0.1:{port} is unreachable: "
        )),
        "{reason}"
    );
    assert!(reason.ends_with("; nothing was injected"), "{reason}");
    let out = faultline(
        &[
            "budget",
            dir.path().join("experiment.toml").to_str().unwrap(),
        ],
        &dir.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is unreachable"));
}

#[test]
fn budget_command_needs_an_slo_budget_table() {
    let dir = tempdir();
    let file = dir.path().join("no-budget.toml");
    std::fs::write(
        &file,
        probing("[[steady_state.probe]]\nname = \"p\"\ntcp = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    let out = faultline(
        &["budget", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no [slo_budget] table"), "{stderr}");
}
