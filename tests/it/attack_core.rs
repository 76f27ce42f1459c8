//! Findings of an attack review of the agent core, end to end against the real `faultline agent`
//! daemon: a proxy that forwards to itself is refused, a connection flood on a proxy leaves the
//! API answering, ids and proxy names are never shared silently, a `reset_after` time is bounded
//! and a run id may not be empty.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::agent::{AgentOptions, TlsAgent};
use crate::support::{self, free_port};

/// An open request body for the run proxy `listen` -> `upstream`.
fn open_body(run_id: &str, listen: &str, upstream: &str) -> String {
    format!(
        r#"{{"run_id":"{run_id}","resource":{{"resource":"proxy","name":"listen-{listen}","listen":"{listen}","upstream":"{upstream}"}},"lease_ms":60000}}"#
    )
}

/// An apply body for a proxy latency fault on the run proxy `listen`: a delay of `delay_ms` and
/// `reset_after` as JSON (`null`, or e.g. `{"time":{"secs":2,"nanos":0}}`).
fn latency_body(
    run_id: &str,
    listen: &str,
    upstream: &str,
    delay_ms: u64,
    reset_after: &str,
) -> String {
    let nanos = delay_ms * 1_000_000;
    format!(
        r#"{{"run_id":"{run_id}","spec":{{"kind":"latency-proxy","via":{{"run":{{"listen":"{listen}","upstream":"{upstream}"}}}},"toxics":{{"direction":"downstream","delay":{{"secs":0,"nanos":{nanos}}},"jitter":{{"secs":0,"nanos":0}},"rate":null,"corrupt":0.0,"timeout":null,"slow_close":null,"reset_after":{reset_after}}}}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#
    )
}

/// An upstream that accepts connections and holds them open until dropped.
struct Upstream {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        listener
            .set_nonblocking(true)
            .expect("nonblocking upstream");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_proxy_that_forwards_to_itself_is_refused_naming_upstream() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let port = free_port();
    for (i, (listen, upstream)) in [
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
        (format!("127.0.0.1:{port}"), format!("localhost:{port}")),
    ]
    .iter()
    .enumerate()
    {
        let (status, answer) = agent.request(
            "PUT",
            &format!("/v1/resources/loop{i}"),
            Some(&open_body("r", listen, upstream)),
        );
        assert_eq!(status, 400, "{listen} -> {upstream}: {answer}");
        assert!(
            answer.contains("upstream"),
            "{listen} -> {upstream}: {answer}"
        );
        assert!(
            TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "{listen} -> {upstream} was opened"
        );
    }
    let (status, answer) = agent.request("GET", "/v1/health", None);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_connection_flood_on_a_proxy_leaves_the_agent_answering() {
    let dir = support::tempdir();
    // 512 descriptors: 300 proxied connections (two sockets each) would take them all. The proxy
    // stops accepting well before, so later connections wait in (or overflow) its backlog.
    let agent = TlsAgent::start_with(
        dir.path(),
        &AgentOptions {
            prefix: &["prlimit", "--nofile=512:512", "--"],
            ..AgentOptions::default()
        },
    );
    let upstream = Upstream::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, answer) = agent.request(
        "PUT",
        "/v1/resources/flood",
        Some(&open_body("r", &listen, &upstream.addr)),
    );
    assert_eq!(status, 200, "{answer}");
    let addr = listen.parse().unwrap();
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(20)).ok())
        .collect();
    assert!(
        flood.len() >= 150,
        "only {} connections got in",
        flood.len()
    );
    // Give the proxy time to take what it will.
    std::thread::sleep(Duration::from_secs(1));
    let listed = agent.request("GET", "/v1/faults", None).1;
    assert!(
        listed.contains("\"flood\""),
        "the proxy is no longer open: {listed}"
    );
    // With one descriptor left the API may still squeeze an answer through, but not journal a
    // fault or write its audit log: the proxies must leave a reserve.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .expect("list the agent's descriptors")
        .count();
    assert!(
        fds <= 512 - 128,
        "under a flood of {} connections the agent holds {fds} of its 512 descriptors",
        flood.len()
    );
    let (status, answer) = agent.request("GET", "/v1/health", None);
    assert_eq!(
        status,
        200,
        "health did not answer under a flood of {}: {answer}",
        flood.len()
    );
    let (status, answer) = agent.request("DELETE", "/v1/resources/flood", None);
    assert_eq!(status, 200, "{answer}");
    drop(flood);
}

#[test]
fn ids_and_proxy_names_are_not_shared_silently() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let upstream = Upstream::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let body = open_body("r", &listen, &upstream.addr);
    let (status, answer) = agent.request("PUT", "/v1/resources/rsA", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = agent.request("PUT", "/v1/resources/rsB", Some(&body));
    assert_eq!(status, 409, "a second id on the same proxy: {answer}");
    assert!(answer.contains("rsA"), "{answer}");
    let (status, answer) = agent.request("PUT", "/v1/resources/rsA", Some(&body));
    assert_eq!(status, 200, "the same request again is a repeat: {answer}");
    let other_run = open_body("other", &listen, &upstream.addr);
    let (status, answer) = agent.request("PUT", "/v1/resources/rsA", Some(&other_run));
    assert_eq!(status, 409, "rsA under another run: {answer}");
    assert!(answer.contains("run_id"), "{answer}");

    let fault = latency_body("r", &listen, &upstream.addr, 10, "null");
    let (status, answer) = agent.request("PUT", "/v1/faults/f1", Some(&fault));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = agent.request("PUT", "/v1/faults/f1", Some(&fault));
    assert_eq!(status, 200, "the same fault again is a repeat: {answer}");
    let changed = latency_body("r", &listen, &upstream.addr, 20, "null");
    let (status, answer) = agent.request("PUT", "/v1/faults/f1", Some(&changed));
    assert_eq!(status, 409, "f1 with another delay: {answer}");
    assert!(answer.contains("spec"), "{answer}");
    let moved = latency_body("other", &listen, &upstream.addr, 10, "null");
    let (status, answer) = agent.request("PUT", "/v1/faults/f1", Some(&moved));
    assert_eq!(status, 409, "f1 under another run: {answer}");
    assert!(answer.contains("run_id"), "{answer}");

    for path in ["/v1/faults/f1", "/v1/resources/rsA"] {
        let (status, answer) = agent.request("DELETE", path, None);
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, answer) = agent.request("GET", "/v1/faults", None);
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains("rsB"), "rsB is listed: {answer}");
    assert!(
        TcpStream::connect(&listen).is_err(),
        "the proxy still listens"
    );
}

#[test]
fn a_reset_after_time_beyond_the_longest_hold_is_refused() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let upstream = Upstream::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, answer) = agent.request(
        "PUT",
        "/v1/resources/rs",
        Some(&open_body("r", &listen, &upstream.addr)),
    );
    assert_eq!(status, 200, "{answer}");
    let body = latency_body(
        "r",
        &listen,
        &upstream.addr,
        10,
        r#"{"time":{"secs":18446744073709551615,"nanos":0}}"#,
    );
    let (status, answer) = agent.request("PUT", "/v1/faults/far-reset", Some(&body));
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("reset_after"), "{answer}");
    let (status, answer) = agent.request("DELETE", "/v1/resources/rs", None);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn an_empty_run_id_is_refused() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let upstream = Upstream::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, answer) = agent.request(
        "PUT",
        "/v1/resources/no-run",
        Some(&open_body("", &listen, &upstream.addr)),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("run_id"), "{answer}");
    let body = latency_body("", &listen, &upstream.addr, 10, "null");
    let (status, answer) = agent.request("PUT", "/v1/faults/no-run", Some(&body));
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("run_id"), "{answer}");
}
