//! Real TLS `faultline agent` daemons for the tests: certificates from `faultline certs`, an agent
//! started (optionally under a command prefix such as `unshare` or `ip netns exec`) with its own
//! state directory and log, restarted on the same state, and asked with curl.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{AGENT_BIN, BIN, Proc};

/// A CA, agent certificate, client certificate and token made by `faultline certs`.
#[derive(Clone)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Writes certificates for `hosts` into `dir/certs`.
    pub fn make(dir: &Path, hosts: &[&str]) -> Certs {
        let out = dir.join("certs");
        let mut args = vec!["certs", "--out", out.to_str().unwrap()];
        for h in hosts {
            args.extend(["--host", h]);
        }
        let run = super::faultline(&args, &dir.join("unused-state"));
        assert!(
            run.status.success(),
            "faultline certs failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        Certs { dir: out }
    }

    /// A file the certificates directory holds (`ca.pem`, `token`, `client.pem`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// The bearer token, without its trailing newline.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.file("token"))
            .expect("read the token")
            .trim()
            .to_owned()
    }

    /// One request to `url` with curl (a real, independent HTTPS client) that trusts this CA and
    /// gives up after `max`; returns (status, body). When no answer came the status is 0 and the
    /// body is what curl said instead, which explains the failure.
    pub fn curl(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<&str>,
        max: Duration,
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", &max.as_secs_f64().to_string()])
            .arg("--cacert")
            .arg(self.ca())
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd.arg(url).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse() {
            Ok(code) if code != 0 => (code, body.to_owned()),
            _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

/// Starts `argv` in its own process group with stdout and stderr in `log` (truncated first) and,
/// when given, `FAULTLINE_STATE_DIR=state`; killed with its group on drop.
pub fn spawn_logged(argv: &[&str], state: Option<&Path>, log: &Path) -> Proc {
    let out = File::create(log).expect("create the log");
    let mut command = Command::new(argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the log handle"))
        .stderr(out)
        .process_group(0);
    if let Some(state) = state {
        command.env("FAULTLINE_STATE_DIR", state);
    }
    Proc {
        child: command.spawn().expect("spawn"),
    }
}

/// Writes `dir/agent.toml`, an agent configuration with one persistent proxy named `db` from
/// `listen` to `upstream`, and returns its path (for `--config`).
pub fn proxy_config(dir: &Path, listen: &str, upstream: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[[proxy]]\nname = \"db\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n"),
    )
    .expect("write the agent configuration");
    config
}

/// How to start a [`TlsAgent`] beyond the defaults (no prefix, no extra arguments).
#[derive(Default)]
pub struct AgentOptions<'a> {
    /// A command the agent runs under, e.g. `["unshare", "--pid", ...]` or `["ip", "netns",
    /// "exec", NS]`.
    pub prefix: &'a [&'a str],
    /// Arguments after the standard ones, e.g. `["--config", FILE]`.
    pub extra: &'a [&'a str],
    /// Run the dedicated `faultline-agent` executable instead of `faultline agent`.
    pub dedicated: bool,
}

/// A `faultline agent` over TLS with certificates, token, state directory and log of its own;
/// killed (with its process group) when dropped.
pub struct TlsAgent {
    pub proc: Proc,
    /// `host:port` it listens on.
    pub listen: String,
    pub certs: Certs,
    pub state: PathBuf,
    pub log: PathBuf,
    argv: Vec<String>,
}

impl TlsAgent {
    /// An agent on a free port of 127.0.0.1 with certificates in `dir/certs`, state in
    /// `dir/agent-state` and its log in `dir/agent.log`, started and listening.
    pub fn start(dir: &Path) -> TlsAgent {
        TlsAgent::start_with(dir, &AgentOptions::default())
    }

    /// [`TlsAgent::start`] with a command prefix or extra arguments.
    pub fn start_with(dir: &Path, options: &AgentOptions<'_>) -> TlsAgent {
        TlsAgent::start_with_certs(Certs::make(dir, &["127.0.0.1"]), dir, options)
    }

    /// [`TlsAgent::start_with`] with certificates made beforehand (whose files the options may
    /// name, e.g. `--client-ca`).
    pub fn start_with_certs(certs: Certs, dir: &Path, options: &AgentOptions<'_>) -> TlsAgent {
        let listen = format!("127.0.0.1:{}", super::free_port());
        TlsAgent::start_on(
            certs,
            &listen,
            &dir.join("agent-state"),
            &dir.join("agent.log"),
            options,
        )
    }

    /// An agent with the given certificates, listen address, state directory and log, started
    /// and listening (the address must be reachable from the test, even under a prefix).
    pub fn start_on(
        certs: Certs,
        listen: &str,
        state: &Path,
        log: &Path,
        options: &AgentOptions<'_>,
    ) -> TlsAgent {
        let arg = |p: PathBuf| p.to_str().expect("test paths are UTF-8").to_owned();
        let mut argv: Vec<String> = options.prefix.iter().map(ToString::to_string).collect();
        if options.dedicated {
            argv.push(AGENT_BIN.to_owned());
        } else {
            argv.extend([BIN.to_owned(), "agent".to_owned()]);
        }
        argv.extend([
            "--listen".to_owned(),
            listen.to_owned(),
            "--token-file".to_owned(),
            arg(certs.file("token")),
            "--tls-cert".to_owned(),
            arg(certs.file("agent.pem")),
            "--tls-key".to_owned(),
            arg(certs.file("agent-key.pem")),
            "--state-dir".to_owned(),
            arg(state.to_owned()),
        ]);
        argv.extend(options.extra.iter().map(ToString::to_string));
        let proc = Self::spawn(&argv, log);
        let agent = TlsAgent {
            proc,
            listen: listen.to_owned(),
            certs,
            state: state.to_owned(),
            log: log.to_owned(),
            argv,
        };
        agent.wait_until_listening();
        agent
    }

    fn spawn(argv: &[String], log: &Path) -> Proc {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        spawn_logged(&argv, None, log)
    }

    fn wait_until_listening(&self) {
        let addr: SocketAddr = self.listen.parse().expect("a socket address");
        let within = Duration::from_secs(15);
        let deadline = Instant::now() + within;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not listen on {addr} within {within:?}; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the agent (no shutdown, so its journal stays as it was) and starts it again with
    /// the same arguments and state directory; returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        self.proc = Self::spawn(&self.argv, &self.log);
        self.wait_until_listening();
    }

    /// SIGKILLs the agent and reaps it; nothing to do when it has exited already.
    pub fn kill(&mut self) {
        if self.proc.alive() {
            self.proc.child.kill().expect("kill the agent");
        }
        self.proc.child.wait().expect("reap the agent");
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `https://LISTEN` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.listen)
    }

    /// One request with the token, given 10 s to answer: (status, body), status 0 when none came.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.request_within(method, path, body, Duration::from_secs(10))
    }

    /// [`TlsAgent::request`] given at most `max` to answer.
    pub fn request_within(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        max: Duration,
    ) -> (u16, String) {
        let token = self.certs.token();
        self.certs
            .curl(method, &self.url(path), Some(&token), body, max)
    }

    /// One request with `token` instead of the agent's own (`None`: no token at all), given 10 s.
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        self.certs.curl(
            method,
            &self.url(path),
            token,
            body,
            Duration::from_secs(10),
        )
    }

    /// The audit log in the state directory, empty when there is none yet.
    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.state.join("audit.jsonl")).unwrap_or_default()
    }

    /// What the agent printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
