//! The agent daemon's network edge against an unauthenticated or careless peer: idle connections
//! that try to starve token holders, 401 floods that try to fill the journal's disk through the
//! audit log, error messages that try to carry file contents out, file modes of the state the
//! agent writes, the protocol version in the health answer, handshake floods from many addresses,
//! held-open authenticated connections, the bearer scheme's case and oversized bodies.

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::{AgentOptions, TlsAgent};
use crate::support::{self, Proc};

/// A real `faultline agent` on 127.0.0.1 with fresh certificates and a state directory that it
/// creates itself; killed, and its directory removed, on drop.
struct EdgeAgent {
    // Declared before `dir` so the agent is killed before its directory goes.
    agent: TlsAgent,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for EdgeAgent {
    type Target = TlsAgent;

    fn deref(&self) -> &TlsAgent {
        &self.agent
    }
}

impl EdgeAgent {
    fn start() -> EdgeAgent {
        EdgeAgent::start_in(support::tempdir(), &[])
    }

    /// Starts an agent whose files live in `dir`, with `extra` arguments.
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> EdgeAgent {
        let agent = TlsAgent::start_with(
            dir.path(),
            &AgentOptions {
                extra,
                ..AgentOptions::default()
            },
        );
        EdgeAgent { agent, dir }
    }

    /// SIGTERM, then waits (bounded) for the agent to finish its shutdown.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.agent.pid().to_string()])
            .status();
        support::wait_until("the agent exiting", Duration::from_secs(20), || {
            !self.agent.proc.alive()
        });
    }

    /// The value of one line of `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let (status, text) = self.request("GET", "/metrics", None);
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }
}

#[test]
fn three_hundred_idle_connections_from_one_address_do_not_lock_out_the_token_holder() {
    let mut agent = EdgeAgent::start();
    // Plain TCP, no TLS, no token: each one would hold an accept slot until the handshake timeout.
    let idle: Vec<TcpStream> = (0..300)
        .map(|i| {
            TcpStream::connect(&agent.listen)
                .unwrap_or_else(|e| panic!("idle connection {i} to {} failed: {e}", agent.listen))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // A correctness bound, not a speed figure: the handshake timeout (3 s) plus a margin. With
    // every slot held for 10 s, the token holder waited behind the idle connections.
    let started = Instant::now();
    let (status, body) = agent.request_within("POST", "/v1/halt", None, Duration::from_secs(6));
    assert_eq!(
        status,
        200,
        "halt with 300 idle connections open failed after {:?}: {body}\n{}",
        started.elapsed(),
        agent.log_text()
    );
    let (status, body) = agent.request_within("GET", "/v1/faults", None, Duration::from_secs(6));
    assert_eq!((status, body.trim()), (200, "[]"), "{}", agent.log_text());
    assert!(agent.audit().contains("POST /v1/halt"), "{}", agent.audit());
    // Most of the 300 idle connections were evicted (the rest stay, or time out on a slow host).
    let evicted = agent.metric("faultline_agent_connections_evicted_total");
    assert!(
        (100..=303).contains(&evicted),
        "{evicted} connections evicted"
    );
    drop(idle);
    agent.stop();
}

#[test]
fn a_token_holder_gets_in_while_its_address_keeps_opening_idle_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mut agent = EdgeAgent::start();
    let (stop, open) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (flooding, counting) = (Arc::clone(&stop), Arc::clone(&open));
    let listen = agent.listen.clone();
    // About a thousand new idle connections a second, all held (up to 900, within the usual
    // limit of 1024 open files), for the whole time the token holder calls.
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !flooding.load(Ordering::SeqCst) {
            if held.len() < 900 {
                if let Ok(c) = TcpStream::connect(&listen) {
                    held.push(c);
                    counting.store(held.len(), Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    support::wait_until("300 idle connections", Duration::from_secs(20), || {
        open.load(Ordering::SeqCst) >= 300
    });
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(agent.request_within("GET", "/v1/faults", None, Duration::from_secs(6)));
    }
    let opened = open.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    for (status, body) in answers {
        assert_eq!(
            (status, body.trim()),
            (200, "[]"),
            "a call while {opened} idle connections were open failed\n{}",
            agent.log_text()
        );
    }
    agent.stop();
}

#[test]
fn a_stuck_audit_log_does_not_stop_the_agent_from_answering() {
    let dir = support::tempdir();
    // The audit log is a pipe nobody reads: once its 64 KiB buffer is full, every write blocks,
    // as on a disk that hangs.
    let fifo = dir.path().join("audit.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("audit_log = \"{}\"\n", fifo.display())).unwrap();
    // Opening a pipe blocks until the other end is opened: the agent opens it for writing.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || File::open(fifo).expect("open the pipe for reading"))
    };
    let mut agent = EdgeAgent::start_in(dir, &["--config", config.to_str().unwrap()]);
    let _unread = reader.join().unwrap();

    // 2000 requests of about 120 audit bytes each: far more than the pipe holds. curl's
    // --max-time bounds each request, not all of them, so the whole call is bounded here.
    let curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "--max-time",
            "10",
        ])
        .args([
            "-H",
            &format!("Authorization: Bearer {}", agent.certs.token()),
        ])
        .arg("--cacert")
        .arg(agent.certs.ca())
        .arg(format!("https://{}/v1/faults?n=[1-2000]", agent.listen))
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run curl");
    let mut curl = Proc { child: curl };
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = !curl.alive();
    let mut codes = String::new();
    if finished {
        use std::io::Read as _;
        curl.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut codes)
            .unwrap();
    }
    assert!(
        finished,
        "2000 requests were not answered within 60 s while the audit log was stuck:\n{}",
        agent.log_text()
    );
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        2000,
        "requests went unanswered while the audit log was stuck:\n{}",
        agent.log_text()
    );
    // Shutdown does not wait for the stuck writer for ever either.
    agent.stop();
}

#[test]
fn a_flood_of_long_path_401s_keeps_the_audit_log_short() {
    let mut agent = EdgeAgent::start();
    // One curl, 400 requests over kept-alive connections, each with a 32 KiB path and no token.
    let long = "A".repeat(32 * 1024);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--cacert"])
        .arg(agent.certs.ca())
        .arg(format!("https://{}/v1/[1-400]/{long}", agent.listen))
        .output()
        .expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "401").count(),
        400,
        "every request must be refused: {codes}"
    );
    let suppressed = agent.metric("faultline_agent_audit_refusals_suppressed_total");
    assert_eq!(suppressed, 380, "20 of 400 refusals are logged one by one");
    agent.stop();

    let audit = agent.audit();
    assert!(
        audit.len() < 64 * 1024,
        "400 refused requests grew the audit log to {} bytes",
        audit.len()
    );
    for line in audit.lines() {
        assert!(line.len() <= 1024, "an audit line of {} bytes", line.len());
        let _: serde_json::Value = serde_json::from_str(line).expect("audit lines are JSON");
    }
    let refused = audit
        .lines()
        .filter(|l| l.contains(r#""status":401"#))
        .count();
    assert!(
        (1..=40).contains(&refused),
        "{refused} 401 lines for 400 refused requests:\n{audit}"
    );
    assert!(
        audit.contains("more 401s from 127.0.0.1 suppressed"),
        "no line accounts for the suppressed 401s:\n{audit}"
    );
}

#[test]
fn a_pidfile_full_of_secrets_reaches_neither_the_answer_nor_the_audit_log() {
    let agent = EdgeAgent::start();
    let secret: String = (0..4096)
        .map(|i| char::from(b"SECRETsecret0123456789"[i % 22]))
        .collect();
    let pidfile = agent.dir.path().join("shadow");
    // A control sequence in the file must not reach a terminal that prints the answer either.
    std::fs::write(&pidfile, format!("\x1b[2J{secret}\n")).unwrap();
    let body = format!(
        r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pidfile":"{}"}},"pick":null}},"duration_ms":60000,"lease_ms":5000,"seed":1}}"#,
        pidfile.display()
    );
    let (status, answer) = agent.request("PUT", "/v1/faults/leak-1", Some(&body));
    assert!((400..500).contains(&status), "{status}: {answer}");
    let error: serde_json::Value = serde_json::from_str(&answer).expect("the answer is JSON");
    let message = error["error"].as_str().expect("an error message");
    assert!(
        !message.contains(&secret),
        "the answer leaks the file: {message}"
    );
    assert!(
        message.chars().count() <= 400,
        "an error message of {} characters",
        message.chars().count()
    );
    assert!(
        !message.chars().any(char::is_control),
        "control characters in {message:?}"
    );
    let audit = agent.audit();
    assert!(
        audit.contains("leak-1"),
        "the apply is not audited:\n{audit}"
    );
    assert!(!audit.contains(&secret), "the audit log leaks the file");
    assert!(!audit.contains("\\u001b"), "control characters in {audit}");
}

/// The mode bits of every entry under `dir` (the directory itself included), by path.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        out.push((path, mode));
    }
    out
}

#[test]
fn every_file_the_agent_writes_in_its_state_directory_is_private() {
    let agent = EdgeAgent::start();
    let mut victim = Proc::spawn(&["sleep", "300"]);
    let body = format!(
        r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#,
        victim.pid()
    );
    let (status, answer) = agent.request("PUT", "/v1/faults/modes-1", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let during = modes(&agent.state);
    assert!(
        during.iter().any(|(p, _)| p.ends_with("modes-1.json")),
        "no journal entry while the fault holds: {during:?}"
    );
    let (status, answer) = agent.request("POST", "/v1/halt", None);
    assert_eq!(status, 200, "{answer}");
    assert!(victim.alive());
    let after = modes(&agent.state);
    assert!(
        after.iter().any(|(p, _)| p.ends_with("HALTED")),
        "no HALTED file after halt: {after:?}"
    );
    assert!(
        after.iter().any(|(p, _)| p.ends_with("audit.jsonl")),
        "no audit log: {after:?}"
    );
    for (path, mode) in during.iter().chain(&after) {
        let want = if path == &agent.state { 0o700 } else { 0o600 };
        assert_eq!(
            *mode,
            want,
            "{} has mode {mode:o}, not {want:o}",
            path.display()
        );
    }
}

#[test]
fn the_health_answer_names_the_protocol_version() {
    let agent = EdgeAgent::start();
    let (status, answer) = agent.request("GET", "/v1/health", None);
    assert_eq!(status, 200, "{answer}");
    let health: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(health["protocol"], "1.0", "{answer}");
}

/// A raw TLS client for the tests below, where curl cannot do what an attacker does: choose its
/// source address among many, hold connections open, and finish a handshake without a request.
mod raw {
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    pub(super) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }

    /// A connector that trusts only the test CA in `ca`.
    pub(super) fn connector(ca: &Path) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots
                .add(cert.expect("a CA certificate"))
                .expect("add the CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// Connects from `from` to `to` and finishes the TLS handshake, within 5 s.
    pub(super) async fn connect(
        connector: &TlsConnector,
        from: IpAddr,
        to: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            let tcp = socket.connect(to).await?;
            let name = ServerName::from(to.ip());
            connector.connect(name, tcp).await
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .map_err(|_| std::io::Error::other("no handshake within 5 s"))?
    }

    /// One kept-alive `method path` request with `authorization` (a whole header value), and
    /// its status; the connection stays usable for the next request.
    pub(super) async fn request(
        tls: &mut TlsStream<TcpStream>,
        method: &str,
        path: &str,
        authorization: &str,
    ) -> std::io::Result<u16> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: {authorization}\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0_u8; 4096];
        let closed = || std::io::Error::other("the connection closed before the answer");
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let headers = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = headers
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {headers:?}")))?;
        let length: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        while buf.len() < end + length {
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(status)
    }
}

/// The `i`th of 400 loopback addresses from 127.0.1.2 on, none of them 127.0.0.1.
fn flood_address(i: usize) -> std::net::IpAddr {
    let n = 256 + 2 + i;
    std::net::IpAddr::from([127, 0, (n / 256) as u8, (n % 256) as u8])
}

/// Attackers, one per address in `from`, that each finish a TLS handshake, send nothing, and
/// reconnect as soon as the agent closes the connection; stopped (and their runtime shut down)
/// on drop.
struct HandshakeFlood {
    rt: Option<tokio::runtime::Runtime>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HandshakeFlood {
    fn start(agent: &EdgeAgent, from: &[std::net::IpAddr]) -> HandshakeFlood {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let rt = raw::runtime();
        let connector = raw::connector(&agent.certs.ca());
        let to: std::net::SocketAddr = agent.listen.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        for &address in from {
            let (connector, stop, handshakes) = (
                connector.clone(),
                Arc::clone(&stop),
                Arc::clone(&handshakes),
            );
            rt.spawn(async move {
                use tokio::io::AsyncReadExt;
                while !stop.load(Ordering::SeqCst) {
                    match raw::connect(&connector, address, to).await {
                        Ok(mut tls) => {
                            handshakes.fetch_add(1, Ordering::SeqCst);
                            let mut byte = [0_u8; 1];
                            let _ =
                                tokio::time::timeout(Duration::from_secs(20), tls.read(&mut byte))
                                    .await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            });
        }
        HandshakeFlood {
            rt: Some(rt),
            stop,
            handshakes,
        }
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HandshakeFlood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Ten calls with the token from 127.0.0.1 during `flood`, after it made `warm_up` handshakes;
/// asserts that every one is answered.
fn ten_calls_succeed_during(agent: &EdgeAgent, flood: &HandshakeFlood, warm_up: u64) {
    support::wait_until("the flood's handshakes", Duration::from_secs(30), || {
        flood.handshakes() >= warm_up
    });
    let answers: Vec<(u16, String)> = (0..10)
        .map(|_| agent.request_within("GET", "/v1/health", None, Duration::from_secs(6)))
        .collect();
    let during = flood.handshakes();
    let failed: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of 10 calls by a recent token holder failed during a flood of {during} handshakes: {failed:?}",
        failed.len()
    );
}

#[test]
fn a_handshake_flood_from_four_hundred_addresses_does_not_lock_out_a_recent_token_holder() {
    let mut agent = EdgeAgent::start();
    // The coordinator's address has shown the token before the flood starts.
    let (status, body) = agent.request("GET", "/v1/health", None);
    assert_eq!(status, 200, "{body}");
    let from: Vec<std::net::IpAddr> = (0..400).map(flood_address).collect();
    let flood = HandshakeFlood::start(&agent, &from);
    ten_calls_succeed_during(&agent, &flood, 400);
    drop(flood);
    agent.stop();
}

#[test]
fn a_handshake_flood_from_the_token_holders_own_address_does_not_lock_it_out() {
    let mut agent = EdgeAgent::start();
    let (status, body) = agent.request("GET", "/v1/health", None);
    assert_eq!(status, 200, "{body}");
    // Sixteen attackers on 127.0.0.1, the token holder's address: its whole per-address share.
    let from = vec![std::net::IpAddr::from([127, 0, 0, 1]); 16];
    let flood = HandshakeFlood::start(&agent, &from);
    ten_calls_succeed_during(&agent, &flood, 32);
    drop(flood);
    agent.stop();
}

#[test]
fn halt_is_served_while_every_authenticated_connection_is_held_open() {
    let mut agent = EdgeAgent::start();
    let rt = raw::runtime();
    let connector = raw::connector(&agent.certs.ca());
    let to: std::net::SocketAddr = agent.listen.parse().unwrap();
    let bearer = format!("Bearer {}", agent.certs.token());
    // 256 kept-alive connections that each showed the token once and then stay idle (the
    // agent's limit of authenticated connections).
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..256 {
            let mut tls = raw::connect(&connector, [127, 0, 0, 1].into(), to)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let status = raw::request(&mut tls, "GET", "/v1/health", &bearer)
                .await
                .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
            assert_eq!(status, 200, "request on connection {i}");
            held.push(tls);
        }
        held
    });
    let (status, body) = agent.request_within("POST", "/v1/halt", None, Duration::from_secs(6));
    assert_eq!(
        status, 200,
        "halt with 256 idle authenticated connections open: {body}"
    );
    drop(held);
    rt.shutdown_timeout(Duration::from_secs(5));
    agent.stop();
}

#[test]
fn a_lower_case_bearer_scheme_is_accepted() {
    let mut agent = EdgeAgent::start();
    for scheme in ["bearer", "BEARER"] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(agent.certs.ca())
            .args([
                "-H",
                &format!("Authorization: {scheme} {}", agent.certs.token()),
            ])
            .arg(agent.url("/v1/health"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("\n200"), "{scheme}: {text}");
    }
    agent.stop();
}

#[test]
fn refused_requests_from_many_addresses_are_logged_at_most_two_hundred_a_minute() {
    let mut agent = EdgeAgent::start();
    let rt = raw::runtime();
    let connector = raw::connector(&agent.certs.ca());
    let to: std::net::SocketAddr = agent.listen.parse().unwrap();
    // 40 addresses, each within its own share of 20 logged refusals a minute: 800 in all.
    let long = "A".repeat(300);
    let statuses: Vec<u16> = rt.block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (connector, path) = (connector.clone(), format!("/v1/{long}"));
                tokio::spawn(async move {
                    let mut tls = raw::connect(&connector, flood_address(i), to)
                        .await
                        .expect("connect");
                    let mut statuses = Vec::new();
                    for _ in 0..20 {
                        statuses.push(
                            raw::request(&mut tls, "GET", &path, "Bearer wrong-token")
                                .await
                                .expect("a request with a wrong token"),
                        );
                    }
                    statuses
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("a client task"));
        }
        all
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(statuses.len(), 800);
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    agent.stop();
    let audit = agent.audit();
    let logged = audit
        .lines()
        .filter(|l| l.contains(r#""status":401"#))
        .count();
    assert_eq!(logged, 200, "401 lines for 800 refused requests");
    assert!(
        audit.contains("600 more 401s suppressed (at most 200 per 60 s"),
        "no line accounts for the suppressed 401s:\n{audit}"
    );
}

#[test]
fn an_oversized_body_is_refused_by_its_length_before_the_agent_asks_for_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut agent = EdgeAgent::start();
    let rt = raw::runtime();
    let connector = raw::connector(&agent.certs.ca());
    let to: std::net::SocketAddr = agent.listen.parse().unwrap();
    let token = agent.certs.token();
    // Headers only, as a client that waits for `100 Continue` sends them: the first answer must
    // be the refusal, so the client never sends the body (and never races the refusal with it).
    let head = rt.block_on(async {
        let mut tls = raw::connect(&connector, [127, 0, 0, 1].into(), to)
            .await
            .expect("connect");
        let request = format!(
            "PUT /v1/faults/f1 HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await.expect("send the headers");
        let mut answer = vec![0_u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read the answer");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    agent.stop();
    assert!(
        agent.audit().contains("body of 100000 bytes"),
        "{}",
        agent.audit()
    );
}
