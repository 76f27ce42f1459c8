//! The `http` probe against a real HTTP server (Python's http.server, `support/probe_http_server.py`)
//! that checks what it is sent: a POST with a header and a JSON body, response checks on status,
//! body and a JSON pointer, TLS with the test's own CA (from `faultline certs`) and client
//! certificates, redirects, and the latency split kept in the samples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Proc, Run, faultline, free_port, run_experiment, tempdir, wait_for_port};

const SERVER: &str = include_str!("support/probe_http_server.py");

/// The test server and the directory holding its script, status file and certificates.
struct Server {
    // Field order is drop order: the processes go before their directory.
    _proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

/// The files `faultline certs` wrote: a CA, a server certificate for 127.0.0.1 and a client one.
struct Certs {
    ca: PathBuf,
    server: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
}

fn certs(dir: &Path, name: &str) -> Certs {
    let out = dir.join(name);
    let made = faultline(
        &["certs", "--out", out.to_str().unwrap()],
        &dir.join("state"),
    );
    assert!(
        made.status.success(),
        "faultline certs failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    Certs {
        ca: out.join("ca.pem"),
        server: out.join("agent.pem"),
        server_key: out.join("agent-key.pem"),
        client: out.join("client.pem"),
        client_key: out.join("client-key.pem"),
    }
}

impl Server {
    /// `tls`: serve HTTPS with these certificates; `client_ca`: and require a client certificate.
    fn start(tls: Option<&Certs>, require_client_cert: bool) -> Server {
        let dir = tempdir();
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let status = dir.path().join("status.json");
        std::fs::write(&status, r#"{"status": "ok", "version": 3}"#).unwrap();
        let port = free_port();
        let port_text = port.to_string();
        let mut argv = vec![
            "python3",
            script.to_str().unwrap(),
            &port_text,
            "--status-file",
            status.to_str().unwrap(),
        ];
        if let Some(c) = tls {
            argv.extend([
                "--cert",
                c.server.to_str().unwrap(),
                "--key",
                c.server_key.to_str().unwrap(),
            ]);
            if require_client_cert {
                argv.extend(["--client-ca", c.ca.to_str().unwrap()]);
            }
        }
        let proc = Proc::spawn(&argv);
        wait_for_port(port, Duration::from_secs(10));
        Server {
            _proc: proc,
            port,
            dir,
        }
    }

    fn set_status(&self, json: &str) {
        std::fs::write(self.dir.path().join("status.json"), json).unwrap();
    }

    /// Runs an experiment whose one probe is `http = { <http> }`. An experiment needs a fault:
    /// it kills a `sleep` started for this run alone.
    fn run(&self, http: &str) -> Run {
        let victim = bystander_seconds(self.port);
        let _bystander = Proc::spawn(&["sleep", &victim]);
        let text = format!(
            r#"title = "http probe"
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "shop"
http = {{ {http} }}
every = "100ms"
timeout = "2s"
[[fault]]
name = "kill the bystander"
kind = "process-kill"
select = {{ cmdline = "^sleep {victim}$" }}
[recovery]
within = "3s"
"#
        );
        run_experiment(self.dir.path(), &text, &[])
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

/// A command line no other test's process has: `sleep` for a number of seconds made from the port.
fn bystander_seconds(port: u16) -> String {
    (800_000 + u32::from(port)).to_string()
}

/// The samples of the report, and the before phase of the one probe.
fn samples(run: &Run) -> Vec<serde_json::Value> {
    let report = run.report.as_ref().expect("a JSON report");
    report["samples"].as_array().expect("samples").clone()
}

const ORDER: &str = r#"method = "POST", headers = { X-Probe-Token = "s3cret" }, json_body = { item = "tea", count = 2 }"#;

#[test]
fn a_post_with_a_header_and_a_json_body_passes_the_server_that_checks_them() {
    let server = Server::start(None, false);
    let url = server.url("http", "/order");
    let run = server.run(&format!(
        r#"url = "{url}", {ORDER}, status = "2xx", body_matches = '"items": \["tea"\]', json = {{ pointer = "/order/id", equals = 7 }}"#
    ));
    assert_eq!(run.code, 0, "{}", run.explain());
    assert_eq!(run.verdict(), "passed");
    let samples = samples(&run);
    assert!(samples.len() >= 4, "{samples:?}");
    // Every answered sample knows its time to first byte; a connection kept between samples
    // makes no new connect, so connect times exist but are never zero-filled.
    for s in &samples {
        assert!(
            s["first_byte_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{s}"
        );
        assert!(
            s.get("connect_ms")
                .is_none_or(|c| c.as_f64().is_some_and(|ms| ms > 0.0)),
            "{s}"
        );
    }
    assert!(
        samples.iter().any(|s| s.get("connect_ms").is_some()),
        "the first sample opened a connection: {samples:?}"
    );
    let before = &run.report.as_ref().unwrap()["phases"]["before"][0];
    assert!(
        before["first_byte"]["samples"].as_u64().unwrap() >= 4,
        "{before}"
    );
    assert!(
        before["first_byte"]["p99_ms"].as_f64().unwrap() > 0.0,
        "{before}"
    );
    assert!(
        before["connect"]["samples"].as_u64().unwrap() >= 1,
        "{before}"
    );
}

#[test]
fn the_same_post_without_its_header_fails_with_the_status_seen_and_expected() {
    let server = Server::start(None, false);
    let url = server.url("http", "/order");
    let run = server.run(&format!(
        r#"url = "{url}", method = "POST", json_body = {{ item = "tea", count = 2 }}"#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(run.verdict(), "not_run");
    let reason = run.report.as_ref().unwrap()["reason"].as_str().unwrap();
    assert!(reason.contains("status 400 in"), "{reason}");
    let first = &samples(&run)[0];
    assert_eq!(first["error"], "HTTP 400, expected 2xx", "{first}");
}

#[test]
fn a_json_pointer_mismatch_names_the_pointer_and_the_value_seen() {
    let server = Server::start(None, false);
    server.set_status(r#"{"status": "degraded", "version": 3}"#);
    let url = server.url("http", "/status");
    let run = server.run(&format!(
        r#"url = "{url}", json = {{ pointer = "/status", equals = "ok" }}"#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    let first = &samples(&run)[0];
    assert_eq!(
        first["error"], r#"JSON pointer /status is "degraded", expected "ok""#,
        "{first}"
    );
    let reason = run.report.as_ref().unwrap()["reason"].as_str().unwrap();
    assert!(
        reason.contains(r#"json /status was "degraded" in"#),
        "{reason}"
    );

    // Back to "ok": the same probe passes, so the failure was the value and nothing else.
    server.set_status(r#"{"status": "ok", "version": 3}"#);
    let run = server.run(&format!(
        r#"url = "{url}", json = {{ pointer = "/status", equals = "ok" }}"#
    ));
    assert_eq!(run.code, 0, "{}", run.explain());
}

#[test]
fn a_missing_pointer_and_an_unmatched_body_are_named() {
    let server = Server::start(None, false);
    let url = server.url("http", "/status");
    let run = server.run(&format!(
        r#"url = "{url}", json = {{ pointer = "/health/db" }}"#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(
        samples(&run)[0]["error"],
        "JSON pointer /health/db found nothing in the response body"
    );
    let run = server.run(&format!(r#"url = "{url}", body_matches = "version.: 4""#));
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(
        samples(&run)[0]["error"],
        "the response body did not match `body_matches` /version.: 4/"
    );
}

#[test]
fn redirects_are_a_response_unless_followed() {
    let server = Server::start(None, false);
    let url = server.url("http", "/moved");
    let run = server.run(&format!(r#"url = "{url}""#));
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(samples(&run)[0]["error"], "HTTP 302, expected 2xx");
    let run = server.run(&format!(r#"url = "{url}", status = 302"#));
    assert_eq!(run.code, 0, "{}", run.explain());
    let run = server.run(&format!(
        r#"url = "{url}", redirects = true, json = {{ pointer = "/version", equals = 3 }}"#
    ));
    assert_eq!(run.code, 0, "{}", run.explain());
}

#[test]
fn a_tls_server_with_the_tests_own_ca_passes_with_ca_and_fails_clearly_without() {
    let dir = tempdir();
    let ours = certs(dir.path(), "ours");
    let server = Server::start(Some(&ours), false);
    let url = server.url("https", "/status");

    let run = server.run(&format!(r#"url = "{url}", ca = "{}""#, ours.ca.display()));
    assert_eq!(run.code, 0, "{}", run.explain());
    let s = &samples(&run)[0];
    assert!(
        s["connect_ms"].as_f64().is_some(),
        "the TLS handshake is timed: {s}"
    );

    let run = server.run(&format!(r#"url = "{url}""#));
    assert_eq!(run.code, 4, "{}", run.explain());
    let error = samples(&run)[0]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );

    // Another CA is not ours: `ca` replaces the built-in roots, it does not add to any.
    let other = certs(dir.path(), "other");
    let run = server.run(&format!(r#"url = "{url}", ca = "{}""#, other.ca.display()));
    assert_eq!(run.code, 4, "{}", run.explain());

    // `insecure = true` passes, and says so loudly.
    let run = server.run(&format!(r#"url = "{url}", insecure = true"#));
    assert_eq!(run.code, 0, "{}", run.explain());
    assert!(
        run.stdout
            .contains("warning: probe `shop` has `insecure = true`"),
        "the terminal report says it too: {}",
        run.explain()
    );
    let warnings = &run.report.as_ref().unwrap()["warnings"];
    assert_eq!(
        warnings[0],
        "probe `shop` has `insecure = true`: its server's TLS certificate is not checked, so it may be talking to anyone"
    );
    assert!(
        run.stderr
            .contains("warning: probe `shop` has `insecure = true`"),
        "{}",
        run.explain()
    );
}

#[test]
fn a_server_that_requires_a_client_certificate_passes_with_client_cert_and_key() {
    let dir = tempdir();
    let ours = certs(dir.path(), "ours");
    let server = Server::start(Some(&ours), true);
    let url = server.url("https", "/order");
    let ca = ours.ca.display();
    let run = server.run(&format!(r#"url = "{url}", {ORDER}, ca = "{ca}""#));
    assert_eq!(
        run.code,
        4,
        "without a client certificate: {}",
        run.explain()
    );
    let run = server.run(&format!(
        r#"url = "{url}", {ORDER}, ca = "{ca}", client_cert = "{}", client_key = "{}""#,
        ours.client.display(),
        ours.client_key.display()
    ));
    assert_eq!(run.code, 0, "{}", run.explain());
}

#[test]
fn plan_and_validate_show_the_request_but_never_a_header_value() {
    let dir = tempdir();
    let file = dir.path().join("e.toml");
    std::fs::write(
        &file,
        format!(
            r#"title = "t"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "shop"
http = {{ url = "https://127.0.0.1:1/order", {ORDER}, status = ["2xx", 304], insecure = true }}
[[fault]]
name = "k"
kind = "process-kill"
select = {{ name = "nothing-here" }}
[recovery]
within = "1s"
"#
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = faultline(&["plan", file.to_str().unwrap()], &state);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("POST https://127.0.0.1:1/order with headers X-Probe-Token, a JSON body, expect status 2xx, 304"),
        "{stdout}"
    );
    assert!(stdout.contains("INSECURE"), "{stdout}");
    assert!(
        !stdout.contains("s3cret") && !stderr.contains("s3cret"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("`insecure = true`"), "{stderr}");
    let out = faultline(&["validate", file.to_str().unwrap()], &state);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: probe `shop` has `insecure = true`")
    );
}
