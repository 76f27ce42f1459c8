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
