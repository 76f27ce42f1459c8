//! The action kinds end to end: a `command` fault whose `run` makes a marker file and whose
//! `revert` removes it — present while the fault holds, gone after a normal run, after Ctrl-C,
//! after a SIGKILL of the run (its watchdog), and after a SIGKILL of a network agent and its
//! restart (journal recovery); an `http` fault flipping a flag on a real server and back; the
//! programs' exit codes and output in the JSON report; network agents refusing both kinds unless
//! `allowed_kinds` lists them, and refusing bad requests naming the field.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::support::agent::{AgentOptions, Certs, TlsAgent, spawn_logged};
use crate::support::{
    self, BIN, Proc, always_steady_experiment, free_port, spawn_run_with_watchdog, wait_for_port,
    wait_until,
};

/// A `command` fault on `on` (or the embedded agent) that makes `marker` and removes it on revert.
fn marker_fault(marker: &Path, duration: &str, on: Option<&str>) -> String {
    let on = on.map_or_else(String::new, |g| format!("on = \"{g}\"\n"));
    let m = marker.display();
    format!(
        r#"[[fault]]
name = "maintenance flag"
kind = "command"
{on}run = ["/bin/sh", "-c", "echo making the marker; touch \"$1\"", "sh", "{m}"]
verify = ["test", "-e", "{m}"]
revert = ["rm", "-f", "{m}"]
timeout = "10s"
duration = "{duration}"
"#
    )
}

fn write_experiment(dir: &Path, faults: &str, targets: &str) -> PathBuf {
    let file = dir.join("actions.toml");
    std::fs::write(&file, always_steady_experiment("actions", targets, faults)).unwrap();
    file
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the JSON report")).unwrap()
}

/// Sends `signal` (e.g. `-INT`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits for `child` to exit, at most `within`; its exit code (-1 for a signal).
fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let mut code = None;
    wait_until("the run to exit", within, || {
        code = child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
        code.is_some()
    });
    code.unwrap()
}

/// Kills the child (if still running) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_command_fault_holds_its_marker_while_active_and_its_revert_removes_it_after_the_run() {
    let dir = support::tempdir();
    let marker = dir.path().join("marker");
    let file = write_experiment(dir.path(), &marker_fault(&marker, "1500ms", None), "");
    let json = dir.path().join("report.json");
    let mut run = Reaped(spawn_run_with_watchdog(
        &file,
        &dir.path().join("state"),
        &["--report-json", json.to_str().unwrap()],
    ));
    wait_until("the marker made by `run`", Duration::from_secs(20), || {
        marker.exists()
    });
    let code = wait_exit(&mut run.0, Duration::from_secs(30));
    assert_eq!(code, 0, "the run should pass");
    assert!(!marker.exists(), "`revert` did not remove the marker");
    let report = report(&json);
    let fault = &report["faults"][0];
    assert_eq!(fault["kind"], "command");
    assert_eq!(fault["status"], "reverted");
    let actions = fault["actions"].as_array().expect("actions in the report");
    let steps: Vec<&str> = actions
        .iter()
        .map(|a| a["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["run", "verify", "revert"], "{fault}");
    assert_eq!(actions[0]["exit_code"], 0);
    assert_eq!(actions[0]["stdout"], "making the marker\n");
    assert_eq!(actions[0]["ok"], true);
    // A bare name is resolved on the agent and reported with its path.
    let revert = actions[2]["command"].as_str().unwrap();
    assert!(
        revert.starts_with('/') && revert.contains("/rm -f "),
        "{revert}"
    );
    assert_eq!(actions[2]["exit_code"], 0);
}

#[test]
fn a_failing_run_is_an_error_with_its_stderr_in_the_report_and_the_revert_still_runs() {
    let dir = support::tempdir();
    let undone = dir.path().join("undone");
    let fault = format!(
        r#"[[fault]]
name = "broken action"
kind = "command"
run = ["/bin/sh", "-c", "echo no such flag >&2; exit 7"]
revert = ["touch", "{}"]
duration = "1s"
"#,
        undone.display()
    );
    let run = support::run_experiment(
        dir.path(),
        &always_steady_experiment("actions", "", &fault),
        &[],
    );
    assert_eq!(run.code, 5, "{}", run.explain());
    let report = run.report.as_ref().expect("report");
    let fault = &report["faults"][0];
    assert_eq!(fault["status"], "inject_failed", "{fault}");
    let detail = fault["detail"].as_str().unwrap();
    assert!(
        detail.contains("`run` `/bin/sh -c \"echo no such flag >&2; exit 7\"` failed: exit 7; stderr: no such flag"),
        "{detail}"
    );
    assert!(
        undone.exists(),
        "the journaled revert must run after a failed `run`"
    );
}

#[test]
fn ctrl_c_of_the_run_runs_the_revert() {
    let dir = support::tempdir();
    let marker = dir.path().join("marker");
    let file = write_experiment(dir.path(), &marker_fault(&marker, "60s", None), "");
    let json = dir.path().join("report.json");
    let mut run = Reaped(spawn_run_with_watchdog(
        &file,
        &dir.path().join("state"),
        &["--report-json", json.to_str().unwrap()],
    ));
    wait_until("the marker made by `run`", Duration::from_secs(20), || {
        marker.exists()
    });
    signal(run.0.id(), "-INT");
    wait_exit(&mut run.0, Duration::from_secs(30));
    assert!(!marker.exists(), "Ctrl-C left the marker");
    let report = report(&json);
    let actions = report["faults"][0]["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["step"] == "revert" && a["ok"] == true),
        "{actions:?}"
    );
}

#[test]
fn an_abort_runs_the_revert_early() {
    let dir = support::tempdir();
    let marker = dir.path().join("marker");
    let m = marker.display();
    // The probe fails while the marker exists, so the abort rule fires during the fault.
    let toml = format!(
        r#"title = "abort"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "no marker"
command = ["/bin/sh", "-c", "! test -e \"$1\"", "sh", "{m}"]
every = "100ms"
{fault}
[[abort]]
probe = "no marker"
when = {{ success_below = "50%", over = "300ms" }}
[recovery]
within = "5s"
"#,
        fault = marker_fault(&marker, "60s", None)
    );
    let run = support::run_experiment(dir.path(), &toml, &[]);
    assert_eq!(run.code, 3, "the abort rule must fire: {}", run.explain());
    assert!(!marker.exists(), "the abort left the marker");
    let report = run.report.as_ref().unwrap();
    let actions = report["faults"][0]["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["step"] == "revert" && a["ok"] == true),
        "{actions:?}"
    );
}

#[test]
fn a_sigkilled_run_s_watchdog_runs_the_revert() {
    let dir = support::tempdir();
    let marker = dir.path().join("marker");
    let file = write_experiment(dir.path(), &marker_fault(&marker, "60s", None), "");
    let mut run = Reaped(spawn_run_with_watchdog(
        &file,
        &dir.path().join("state"),
        &[],
    ));
    wait_until("the marker made by `run`", Duration::from_secs(20), || {
        marker.exists()
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    wait_until(
        "the watchdog running `revert`",
        Duration::from_secs(20),
        || !marker.exists(),
    );
}

/// Writes an inventory with one agent `a1` (role `web`) at `agent`.
fn inventory(dir: &Path, certs: &Certs, address: &str) -> PathBuf {
    let path = dir.join("inventory.toml");
    std::fs::write(
        &path,
        format!(
            "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"a1\"\naddress = \"{address}\"\ntags = {{ role = \"web\" }}\n",
            certs.ca().display(),
            certs.file("token").display()
        ),
    )
    .unwrap();
    path
}

/// A network agent whose agent.toml allows `kinds`.
fn agent_allowing(dir: &Path, kinds: &str) -> TlsAgent {
    let config = dir.join("agent.toml");
    std::fs::write(&config, format!("allowed_kinds = [{kinds}]\n")).unwrap();
    TlsAgent::start_with(
        dir,
        &AgentOptions {
            extra: &["--config", config.to_str().unwrap()],
            ..AgentOptions::default()
        },
    )
}

/// Waits for the marker a coordinator's `command` fault makes on `agent`; on failure, says what
/// the coordinator and the agent logged.
fn wait_for_marker_on_agent(marker: &Path, agent: &TlsAgent, dir: &Path) {
    let made = support::poll_until(Duration::from_secs(60), || marker.exists());
    assert!(
        made.is_some(),
        "no marker within 60 s; the coordinator's log:\n{}\nthe agent's log:\n{}",
        std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default(),
        agent.log_text()
    );
}

#[test]
fn a_sigkilled_network_agent_runs_the_revert_when_it_restarts() {
    let dir = support::tempdir();
    let mut agent = agent_allowing(dir.path(), "\"command\"");
    let inv = inventory(dir.path(), &agent.certs, &agent.url(""));
    let marker = dir.path().join("marker");
    let file = write_experiment(
        dir.path(),
        &marker_fault(&marker, "60s", Some("web")),
        "[targets.web]\ntags = { role = \"web\" }",
    );
    let _coordinator = spawn_logged(
        &[
            BIN,
            "run",
            file.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
        ],
        Some(&dir.path().join("coordinator-state")),
        &dir.path().join("coordinator.log"),
    );
    wait_for_marker_on_agent(&marker, &agent, dir.path());
    agent.kill();
    assert!(
        marker.exists(),
        "the marker must outlive the SIGKILLed agent until it restarts"
    );
    // `restart` returns once the agent listens, and it reverts its journal before that.
    agent.restart();
    assert!(
        !marker.exists(),
        "the restarted agent served before running the journaled revert; its log:\n{}",
        agent.log_text()
    );
}

#[test]
fn a_network_agent_runs_the_revert_when_a_killed_coordinator_s_lease_lapses() {
    let dir = support::tempdir();
    let agent = agent_allowing(dir.path(), "\"command\"");
    let inv = inventory(dir.path(), &agent.certs, &agent.url(""));
    let marker = dir.path().join("marker");
    let file = write_experiment(
        dir.path(),
        &marker_fault(&marker, "60s", Some("web")),
        "[targets.web]\ntags = { role = \"web\" }",
    );
    let mut coordinator = spawn_logged(
        &[
            BIN,
            "run",
            file.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
            "--lease",
            "2s",
        ],
        Some(&dir.path().join("coordinator-state")),
        &dir.path().join("coordinator.log"),
    );
    wait_for_marker_on_agent(&marker, &agent, dir.path());
    coordinator.child.kill().unwrap();
    coordinator.child.wait().unwrap();
    assert!(marker.exists(), "only the lapsed lease may remove it");
    wait_until(
        "the agent running `revert` once the lease lapsed",
        Duration::from_secs(20),
        || !marker.exists(),
    );
    // The agent logs why once the revert has run and left its journal: a moment after the marker
    // is gone.
    wait_until(
        "the agent logging the lapsed lease",
        Duration::from_secs(10),
        || agent.log_text().contains("the lease lapsed"),
    );
}

#[test]
fn a_network_agent_refuses_action_kinds_unless_allowed_kinds_lists_them() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let marker = dir.path().join("marker");
    let body = format!(
        r#"{{"run_id":"r1","spec":{{"kind":"command","run":["touch",{m:?}],"revert":["rm","-f",{m:?}],"timeout_ms":5000}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#,
        m = marker.to_str().unwrap()
    );
    let (status, answer) = agent.request("PUT", "/v1/faults/cmd-1", Some(&body));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains(
            "this agent does not allow `command` faults: a network agent runs programs and HTTP requests from a coordinator only when its agent.toml lists the kind in `allowed_kinds`"
        ),
        "{answer}"
    );
    let http = r#"{"run_id":"r1","spec":{"kind":"http","request":{"method":"PUT","url":"http://127.0.0.1:9/on","timeout_ms":1000},"revert":{"method":"PUT","url":"http://127.0.0.1:9/off","timeout_ms":1000}},"duration_ms":60000,"lease_ms":60000,"seed":1}"#;
    let (status, answer) = agent.request("PUT", "/v1/faults/http-1", Some(http));
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("`allowed_kinds`"), "{answer}");
    assert!(!marker.exists(), "a refused command ran");
}

#[test]
fn an_allowing_agent_refuses_bad_action_requests_naming_the_field() {
    let dir = support::tempdir();
    let agent = agent_allowing(dir.path(), "\"command\", \"http\"");
    let put = |spec: &str| {
        let body = format!(
            r#"{{"run_id":"r1","spec":{spec},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#
        );
        agent.request("PUT", "/v1/faults/bad-1", Some(&body))
    };
    for (spec, expected) in [
        (
            r#"{"kind":"command","run":[],"revert":["true"],"timeout_ms":1000}"#,
            "`run` must not be empty",
        ),
        (
            r#"{"kind":"command","run":["true"],"revert":["bin/rm","x"],"timeout_ms":1000}"#,
            "`revert` program `bin/rm` is a relative path",
        ),
        (
            r#"{"kind":"command","run":["true"],"revert":["true"],"timeout_ms":3600000}"#,
            "`timeout` must be at most 5m (got 1h)",
        ),
        (
            r#"{"kind":"http","request":{"method":"PUT","url":"file:///etc/passwd","timeout_ms":1000},"revert":{"method":"PUT","url":"http://127.0.0.1:9/","timeout_ms":1000}}"#,
            "`url` must be an http:// or https:// URL with a host (got `file:///etc/passwd`)",
        ),
        (
            r#"{"kind":"http","request":{"method":"PUT","url":"http://127.0.0.1:9/","timeout_ms":1000},"revert":{"method":"BREW","url":"http://127.0.0.1:9/","timeout_ms":1000}}"#,
            "`revert.method` must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got `BREW`)",
        ),
    ] {
        let (status, answer) = put(spec);
        assert_eq!(status, 400, "{spec}: {answer}");
        assert!(answer.contains(expected), "{spec}: {answer}");
    }
    let (_, faults) = agent.request("GET", "/v1/faults", None);
    assert_eq!(faults.trim(), "[]", "nothing may be held after refusals");
}

/// A flag server: `PUT /flag` with header `X-Token: let-me-in` stores its body in `state`;
/// anything else is 401. Stopped on drop.
fn flag_server(port: u16, state: &Path) -> Proc {
    let script = r"
import http.server, sys
state = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0))).decode()
        if self.path != '/flag' or self.headers.get('X-Token') != 'let-me-in':
            self.send_response(401); self.end_headers(); return
        with open(state, 'w') as f:
            f.write(body)
        self.send_response(200); self.end_headers()
        self.wfile.write(('flag is ' + body).encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
";
    let p = Proc::spawn(&[
        "python3",
        "-c",
        script,
        &port.to_string(),
        state.to_str().unwrap(),
    ]);
    wait_for_port(port, Duration::from_secs(10));
    p
}

fn flag_fault(port: u16, duration: &str) -> String {
    format!(
        r#"[[fault]]
name = "dark launch"
kind = "http"
method = "PUT"
url = "http://127.0.0.1:{port}/flag"
headers = {{ X-Token = "let-me-in" }}
body = "on"
status = [200]
revert = {{ method = "PUT", url = "http://127.0.0.1:{port}/flag", headers = {{ X-Token = "let-me-in" }}, body = "off" }}
timeout = "5s"
duration = "{duration}"
"#
    )
}

fn flag(state: &Path) -> String {
    std::fs::read_to_string(state).unwrap_or_default()
}

#[test]
fn an_http_fault_flips_the_flag_while_held_and_back_after_the_run() {
    let dir = support::tempdir();
    let port = free_port();
    let state = dir.path().join("flag");
    let _server = flag_server(port, &state);
    let file = write_experiment(dir.path(), &flag_fault(port, "1500ms"), "");
    let json = dir.path().join("report.json");
    let mut run = Reaped(spawn_run_with_watchdog(
        &file,
        &dir.path().join("state"),
        &["--report-json", json.to_str().unwrap()],
    ));
    wait_until("the flag on", Duration::from_secs(20), || {
        flag(&state) == "on"
    });
    let code = wait_exit(&mut run.0, Duration::from_secs(30));
    assert_eq!(code, 0);
    assert_eq!(flag(&state), "off", "the revert request did not land");
    let report = report(&json);
    let actions = report["faults"][0]["actions"].as_array().unwrap();
    assert_eq!(actions[0]["step"], "request");
    assert_eq!(actions[0]["status"], 200);
    assert_eq!(actions[0]["stdout"], "flag is on");
    assert_eq!(
        actions[0]["command"],
        format!("PUT http://127.0.0.1:{port}/flag")
    );
    assert_eq!(actions[1]["step"], "revert");
    assert_eq!(actions[1]["stdout"], "flag is off");
}

#[test]
fn an_http_fault_s_revert_is_sent_after_a_sigkill_of_the_run() {
    let dir = support::tempdir();
    let port = free_port();
    let state = dir.path().join("flag");
    let _server = flag_server(port, &state);
    let file = write_experiment(dir.path(), &flag_fault(port, "60s"), "");
    let mut run = Reaped(spawn_run_with_watchdog(
        &file,
        &dir.path().join("state"),
        &[],
    ));
    wait_until("the flag on", Duration::from_secs(20), || {
        flag(&state) == "on"
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    wait_until(
        "the watchdog sending the revert request",
        Duration::from_secs(20),
        || flag(&state) == "off",
    );
}

#[test]
fn an_unexpected_status_fails_the_injection_and_the_revert_is_still_sent() {
    let dir = support::tempdir();
    let port = free_port();
    let state = dir.path().join("flag");
    let _server = flag_server(port, &state);
    // No token on the action: the server answers 401.
    let fault = flag_fault(port, "1s").replacen("headers = { X-Token = \"let-me-in\" }\n", "", 1);
    let run = support::run_experiment(
        dir.path(),
        &always_steady_experiment("actions", "", &fault),
        &[],
    );
    assert_eq!(run.code, 5, "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    let detail = report["faults"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "`PUT http://127.0.0.1:{port}/flag` failed: status 401 (expected 200)"
        )),
        "{detail}"
    );
    assert_eq!(flag(&state), "off", "the revert was not sent");
}

/// A secret in a `command` fault's `revert` argv, and the run SIGKILLed: the watchdog, a process
/// that never read the experiment, reverts the fault and ends the run's history row, and neither
/// its output nor the history shows the secret (the journal entry names which values to mask).
#[test]
fn a_secret_in_a_revert_never_reaches_the_watchdogs_output_or_the_history() {
    const SECRET: &str = "watchdog-secret-8c1f";
    let dir = support::tempdir();
    let state = dir.path().join("state");
    let marker = dir.path().join(format!("marker-{SECRET}"));
    let written = PathBuf::from(format!("{}/marker-${{secret:S}}", dir.path().display()));
    let file = write_experiment(
        dir.path(),
        &marker_fault(&written, "60s", None),
        "[secrets]\nS = { env = \"FL_ACTION_SECRET\" }\n",
    );
    let stderr = dir.path().join("run.err");
    let mut run = Reaped(
        Command::new(BIN)
            .args(["run", file.to_str().unwrap(), "--quiet"])
            .env("FAULTLINE_STATE_DIR", &state)
            .env("FL_ACTION_SECRET", SECRET)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // The watchdog inherits it.
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("the marker made by `run`", Duration::from_secs(20), || {
        marker.exists()
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let history = || {
        let out = Command::new(BIN)
            .args(["history", "--json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    wait_until(
        "the watchdog ended the run",
        Duration::from_secs(20),
        || serde_json::from_str::<serde_json::Value>(&history()).unwrap()[0]["verdict"] == "error",
    );
    assert!(!marker.exists(), "the watchdog ran `revert`");
    let rows = history();
    let reason = serde_json::from_str::<serde_json::Value>(&rows).unwrap()[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("the watchdog reverted its faults") && reason.contains("marker-***"),
        "{reason}"
    );
    let printed = std::fs::read_to_string(&stderr).unwrap();
    assert!(printed.contains("marker-***"), "{printed}");
    let mut seen = vec![
        ("stderr".to_owned(), printed.into_bytes()),
        ("history --json".to_owned(), rows.into_bytes()),
    ];
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("history.db")
        {
            seen.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    for (what, bytes) in seen {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in {what}"
        );
    }
}
