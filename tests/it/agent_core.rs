//! The agent core's hardening, end to end against the real `faultline agent` daemon and the real
//! embedded run: an agent never stops or kills its own threads, a process that is pid 2 inside a
//! pid namespace is an ordinary victim, a pidfile's content never leaks into answers or the audit
//! log, and an embedded run never selects its own watchdog.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::agent::{AgentOptions, TlsAgent, proxy_config};
use crate::support::{self, BIN, ProcState, state_of};

/// Whether the daemon still answers `/v1/health` and is not stopped.
fn healthy(agent: &mut TlsAgent) -> bool {
    agent.proc.alive()
        && state_of(agent.pid()) != ProcState::Stopped
        && agent.request("GET", "/v1/health", None).0 == 200
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

/// An apply request body for `kind` (`process-pause` or `process-kill`) with `select` as JSON.
fn apply_body(kind: &str, select: &str) -> String {
    let extra = if kind == "process-kill" {
        r#","signal":"SIGKILL""#
    } else {
        ""
    };
    let duration = if kind == "process-kill" {
        "null"
    } else {
        "60000"
    };
    format!(
        r#"{{"run_id":"r1","spec":{{"kind":"{kind}","select":{select},"pick":null{extra}}},"duration_ms":{duration},"lease_ms":60000,"seed":1}}"#
    )
}

#[test]
fn an_agent_asked_to_pause_or_kill_one_of_its_own_threads_refuses_and_stays_alive() {
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(dir.path());
    let pid = agent.proc.pid();
    let tid: u32 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .find(|tid| *tid != pid)
        .expect("the agent runs more than one thread");
    for (i, kind) in ["process-pause", "process-kill"].iter().enumerate() {
        let (status, answer) = agent.request(
            "PUT",
            &format!("/v1/faults/own-thread-{i}"),
            Some(&apply_body(kind, &format!(r#"{{"pid":{tid}}}"#))),
        );
        assert!(
            (400..500).contains(&status),
            "{kind} of the agent's own thread {tid} got {status}: {answer}"
        );
        assert!(
            answer.contains(&format!(
                "refusing to signal pid {tid} (a thread of pid {pid}): it is faultline itself"
            )),
            "{answer}"
        );
        assert!(
            healthy(&mut agent),
            "the agent is gone or stopped after {kind} of its own thread"
        );
    }
}

#[test]
fn a_process_at_pid_2_of_the_agents_pid_namespace_can_be_paused() {
    if !support::privileged("a_process_at_pid_2_of_the_agents_pid_namespace_can_be_paused") {
        return;
    }
    let dir = support::tempdir();
    // In a new pid namespace with its own /proc: `sleep` becomes pid 2, then the shell execs
    // the agent, which becomes pid 1. The script is constant; the agent's argv is passed as data.
    let mut agent = TlsAgent::start_with(
        dir.path(),
        &AgentOptions {
            prefix: &[
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                "sleep 600 & exec \"$@\"",
                "sh",
            ],
            ..AgentOptions::default()
        },
    );
    // A pidfile, because experiment validation refuses `pid <= 2` before any agent sees it.
    let pidfile = dir.path().join("pid2");
    std::fs::write(&pidfile, "2\n").unwrap();
    let select = format!(r#"{{"pidfile":"{}"}}"#, pidfile.display());
    let (status, answer) = agent.request(
        "PUT",
        "/v1/faults/pid-two-0",
        Some(&apply_body("process-pause", &select)),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("pid 2 (sleep)"), "{answer}");
    let (status, answer) = agent.request("DELETE", "/v1/faults/pid-two-0", None);
    assert_eq!(status, 200, "{answer}");
    assert!(healthy(&mut agent));
}

#[test]
fn a_pidfile_that_holds_a_secret_leaks_it_into_neither_the_answer_nor_the_audit_log() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let secret = dir.path().join("shadow");
    std::fs::write(&secret, "root:$6$TOPSECRETHASH:19000:0:99999:7:::\n").unwrap();
    let select = format!(r#"{{"pidfile":"{}"}}"#, secret.display());
    let (status, answer) = agent.request(
        "PUT",
        "/v1/faults/secret-0",
        Some(&apply_body("process-pause", &select)),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains(&format!("pidfile {} does not hold a pid", secret.display())),
        "{answer}"
    );
    assert!(!answer.contains("TOPSECRET"), "{answer}");
    let audit = std::fs::read_to_string(agent.state.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("secret-0"),
        "the request is not audited: {audit}"
    );
    assert!(!audit.contains("TOPSECRET"), "{audit}");
}

#[test]
fn an_embedded_run_never_selects_its_own_watchdog() {
    let dir = support::tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let state = state.canonicalize().unwrap();
    // Only this run's watchdog has this state directory on its command line.
    let pattern = format!(
        "watchdog --parent [0-9]+ .*--state-dir {}( |$)",
        regex_escape(&path_arg(&state))
    );
    let fault = format!(
        r#"[[fault]]
name = "pause-the-watchdog"
kind = "process-pause"
select = {{ cmdline = '{pattern}' }}
duration = "1s""#
    );
    let toml = support::always_steady_experiment("watchdog", "", &fault);
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, toml).unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(BIN)
        .args(["run", file.to_str().unwrap(), "--quiet", "--report-json"])
        .arg(&report)
        .env("FAULTLINE_STATE_DIR", &state)
        .env_remove("FAULTLINE_NO_WATCHDOG")
        .stdin(Stdio::null())
        .output()
        .expect("run faultline");
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(
        report.contains("no process matched")
            && report.contains("1 protected process(es) left out"),
        "the watchdog was selected or the run failed otherwise: exit {:?}\n{report}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Escapes regex metacharacters in a path (tempdir names are plain, but be exact).
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[test]
fn a_fault_whose_code_panics_leaves_revert_halt_and_sigterm_working() {
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(dir.path());
    // `workers = 0` divided by zero inside the kind's prepare. Once the request is validated
    // on arrival it is refused as a bad request instead; either way nothing may stay wedged.
    let body = r#"{"run_id":"r1","spec":{"kind":"memory-stress","workers":0,"size":1048576},"duration_ms":60000,"lease_ms":60000,"seed":1}"#;
    let (status, answer) = agent.request("PUT", "/v1/faults/zero-workers", Some(body));
    assert!(
        status == 500 && answer.contains("panicked") || status == 400,
        "{status}: {answer}"
    );
    let (status, answer) = agent.request("DELETE", "/v1/faults/zero-workers", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("not active on this agent"), "{answer}");
    let (status, answer) = agent.request("POST", "/v1/halt", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""failed":[]"#), "{answer}");
    let (status, answer) = agent.request("POST", "/v1/resume", None);
    assert_eq!(status, 200, "{answer}");
    let term = Command::new("kill")
        .args(["-TERM", &agent.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = agent.proc.child.wait().unwrap();
    assert!(
        exit.success(),
        "the agent did not exit cleanly after SIGTERM: {exit:?}; its log:\n{}",
        agent.log_text()
    );
}

#[test]
fn a_run_cannot_open_or_close_the_agents_persistent_proxy() {
    let dir = support::tempdir();
    let persistent = format!("127.0.0.1:{}", support::free_port());
    let upstream = format!("127.0.0.1:{}", support::free_port());
    let config = proxy_config(dir.path(), &persistent, &upstream);
    let agent = TlsAgent::start_with(
        dir.path(),
        &AgentOptions {
            extra: &["--config", &path_arg(&config)],
            ..AgentOptions::default()
        },
    );
    support::wait_for_port(
        persistent.rsplit_once(':').unwrap().1.parse().unwrap(),
        Duration::from_secs(5),
    );
    // The same name, listen address and upstream: once "already listening", and journaled
    // with an undo that closes it.
    let body = format!(
        r#"{{"run_id":"r1","resource":{{"resource":"proxy","name":"db","listen":"{persistent}","upstream":"{upstream}"}},"lease_ms":60000}}"#
    );
    let (status, answer) = agent.request("PUT", "/v1/resources/steal-db", Some(&body));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.contains("proxy `db` is one of this agent's persistent proxies"),
        "{answer}"
    );
    let (status, answer) = agent.request("DELETE", "/v1/resources/steal-db", None);
    assert_eq!(status, 200, "{answer}");
    assert!(
        TcpStream::connect(&persistent).is_ok(),
        "the persistent proxy on {persistent} was closed by a run"
    );
}
