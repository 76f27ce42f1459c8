//! The agent core's hardening, end to end against the real `faultline agent` daemon and the real
//! embedded run: an agent never stops or kills its own threads, a process that is pid 2 inside a
//! pid namespace is an ordinary victim, a pidfile's content never leaks into answers or the audit
//! log, and an embedded run never selects its own watchdog.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, BIN, Proc};

/// A `faultline agent` daemon on 127.0.0.1 with certificates, token and state of its own, killed
/// (with its process group) when dropped.
struct Agent {
    certs: PathBuf,
    listen: String,
    state: PathBuf,
    log: PathBuf,
    proc: Proc,
}

impl Agent {
    /// Starts `prefix... faultline agent ...` and waits until it listens.
    fn start(dir: &Path, prefix: &[&str]) -> Agent {
        Agent::start_with(dir, prefix, &[])
    }

    /// [`Agent::start`] with `extra` arguments for the agent.
    fn start_with(dir: &Path, prefix: &[&str], extra: &[&str]) -> Agent {
        let certs = dir.join("certs");
        let made = support::faultline(
            &[
                "certs",
                "--out",
                certs.to_str().unwrap(),
                "--host",
                "127.0.0.1",
            ],
            &dir.join("unused-state"),
        );
        assert!(
            made.status.success(),
            "faultline certs failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let listen = format!("127.0.0.1:{}", support::free_port());
        let state = dir.join("agent-state");
        let log = dir.join("agent.log");
        let mut argv: Vec<String> = prefix.iter().map(ToString::to_string).collect();
        argv.push(BIN.to_owned());
        for (flag, value) in [
            ("--listen", listen.clone()),
            ("--token-file", path_arg(&certs.join("token"))),
            ("--tls-cert", path_arg(&certs.join("agent.pem"))),
            ("--tls-key", path_arg(&certs.join("agent-key.pem"))),
            ("--state-dir", path_arg(&state)),
        ] {
            argv.push(flag.to_owned());
            argv.push(value);
        }
        argv.extend(extra.iter().map(ToString::to_string));
        argv.insert(prefix.len() + 1, "agent".to_owned());
        let out = File::create(&log).expect("create the agent log");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start the agent");
        let agent = Agent {
            certs,
            listen,
            state,
            log,
            proc: Proc { child },
        };
        agent.wait_until_listening();
        agent
    }

    fn wait_until_listening(&self) {
        let addr: SocketAddr = self.listen.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not listen on {addr}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request with curl (a real, independent HTTPS client): (status, body). Status 0 means
    /// no answer within 10 s.
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let token = std::fs::read_to_string(self.certs.join("token")).unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.certs.join("ca.pem"))
            .args(["-X", method, "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("https://{}{path}", self.listen))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Whether the daemon still answers `/v1/health` and is not stopped.
    fn healthy(&mut self) -> bool {
        self.proc.alive()
            && state_of(self.proc.pid()) != Some('T')
            && self.request("GET", "/v1/health", None).0 == 200
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

/// The state letter of a process (`S`, `T`, ...), or `None` when it is gone or a zombie.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    (state != 'Z' && state != 'X').then_some(state)
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
    let mut agent = Agent::start(dir.path(), &[]);
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
            agent.healthy(),
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
    let mut agent = Agent::start(
        dir.path(),
        &[
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            "sleep 600 & exec \"$@\"",
            "sh",
        ],
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
    assert!(agent.healthy());
}

#[test]
fn a_pidfile_that_holds_a_secret_leaks_it_into_neither_the_answer_nor_the_audit_log() {
    let dir = support::tempdir();
    let agent = Agent::start(dir.path(), &[]);
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
    let toml = format!(
        r#"title = "watchdog"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "always"
command = ["true"]
every = "100ms"
[[fault]]
name = "pause-the-watchdog"
kind = "process-pause"
select = {{ cmdline = '{pattern}' }}
duration = "1s"
[recovery]
within = "5s"
"#
    );
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
    let mut agent = Agent::start(dir.path(), &[]);
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
        std::fs::read_to_string(&agent.log).unwrap_or_default()
    );
}

#[test]
fn a_run_cannot_open_or_close_the_agents_persistent_proxy() {
    let dir = support::tempdir();
    let persistent = format!("127.0.0.1:{}", support::free_port());
    let upstream = format!("127.0.0.1:{}", support::free_port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[[proxy]]\nname = \"db\"\nlisten = \"{persistent}\"\nupstream = \"{upstream}\"\n"),
    )
    .unwrap();
    let agent = Agent::start_with(dir.path(), &[], &["--config", &path_arg(&config)]);
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
