//! Agents validate what they receive: a real TLS agent sent out-of-bounds fault requests directly
//! on its API refuses each with a 4xx naming the field (the words `faultline validate` uses), stays
//! healthy, and the same fault id can then be applied normally.

use std::time::Duration;

use crate::support::agent::TlsAgent;
use crate::support::{self, Proc};

/// A thread of `pid` that is not its main thread (the agent runs a tokio runtime, so it has some).
fn agent_thread_other_than_main(pid: i32) -> i32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|tid| *tid != pid)
        .expect("the agent has a thread besides its main one")
}

/// A kernel thread visible in /proc: its stat flags carry PF_KTHREAD.
fn kernel_thread() -> i32 {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
                    .is_some_and(|flags| flags & PF_KTHREAD != 0)
            })
        })
        .expect("no kernel thread is visible in /proc: run the tests on a host")
}

/// An apply request body around `spec`.
fn request(spec: &str, duration_ms: u64, lease_ms: u64) -> String {
    format!(
        r#"{{"run_id":"r1","spec":{spec},"duration_ms":{duration_ms},"lease_ms":{lease_ms},"seed":1}}"#
    )
}

/// The `error` of an agent's error body.
fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"));
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn an_agent_refuses_out_of_bounds_requests_by_field_stays_healthy_and_applies_the_id_afterwards() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let victim = Proc::spawn(&["sleep", "300"]);
    let pause = format!(
        r#"{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}}"#,
        victim.pid()
    );
    let pause_pid =
        |pid: i32| format!(r#"{{"kind":"process-pause","select":{{"pid":{pid}}},"pick":null}}"#);
    let agent_pid = agent.pid() as i32;
    let agent_thread = agent_thread_other_than_main(agent_pid);
    let kthread = kernel_thread();
    let (agent_thread_says, kthread_says) = (
        format!("refusing to signal pid {agent_thread} (a thread of pid {agent_pid})"),
        format!("refusing to signal pid {kthread} ("),
    );
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "pid 1",
            request(&pause_pid(1), 1000, 60_000),
            "refusing to target pid 1: it is init",
        ),
        (
            "a kernel thread",
            request(&pause_pid(kthread), 1000, 60_000),
            &kthread_says,
        ),
        (
            "the agent's own thread id",
            request(&pause_pid(agent_thread), 1000, 60_000),
            &agent_thread_says,
        ),
        (
            "workers 0",
            request(
                r#"{"kind":"memory-stress","workers":0,"size":1048576}"#,
                1000,
                5000,
            ),
            "`workers` must be at least 1",
        ),
        (
            "workers 4294967295",
            request(
                r#"{"kind":"cpu-stress","workers":4294967295,"load":1.0}"#,
                1000,
                5000,
            ),
            "`workers` must be at most 1024",
        ),
        (
            "guard 500%",
            request(
                r#"{"kind":"disk-fill","path":"/tmp","amount":{"size":1},"guard":5.0}"#,
                1000,
                5000,
            ),
            "`guard` must be above 0% and at most 100% (got 500%)",
        ),
        (
            "loss -100%",
            request(
                r#"{"kind":"network-loss","percent":-1.0,"match":{"port":80,"direction":"both"}}"#,
                1000,
                5000,
            ),
            "`percent` must be above 0% and at most 100% (got -100%)",
        ),
        (
            "empty peers",
            request(r#"{"kind":"partition","peers":[]}"#, 1000, 5000),
            "`peers` must not be empty",
        ),
        (
            "empty match",
            request(
                r#"{"kind":"network-loss","percent":0.5,"match":{}}"#,
                1000,
                5000,
            ),
            "`match` needs at least one of",
        ),
        (
            "huge duration_ms",
            request(&pause, u64::MAX, 5000),
            "`duration_ms` must be at most 1day",
        ),
        (
            "huge lease_ms",
            request(&pause, 1000, u64::MAX),
            "`lease_ms` must be at most 3600000 ms",
        ),
    ];
    let quick = Duration::from_secs(1);
    for (i, (what, body, says)) in bad.iter().enumerate() {
        let id = format!("bad-{i}");
        let path = format!("/v1/faults/{id}");
        let (status, answer) = agent.request_within("PUT", &path, Some(body), quick);
        assert!(
            (400..500).contains(&status),
            "{what}: expected a 4xx within 1 s, got {status}: {answer}"
        );
        let error = error_of(&answer);
        assert!(error.contains(says), "{what}: {error}");
        let (status, health) = agent.request_within("GET", "/v1/health", None, quick);
        assert_eq!(
            status, 200,
            "{what}: the agent is not healthy after it: {health}"
        );
        assert!(health.contains("\"ok\":true"), "{what}: {health}");
        // The refused request claimed nothing: the same id applies (and reverts) normally.
        let good = request(&pause, 60_000, 60_000);
        let (status, answer) =
            agent.request_within("PUT", &path, Some(&good), Duration::from_secs(10));
        assert_eq!(
            status, 200,
            "{what}: the id {id} was not usable after: {answer}"
        );
        let (status, answer) = agent.request_within("DELETE", &path, None, Duration::from_secs(10));
        assert_eq!(status, 200, "{what}: revert of {id}: {answer}");
    }
}

#[test]
fn an_agent_refuses_a_run_resource_with_a_zero_port_or_a_huge_lease() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let open = |listen: &str, lease_ms: u64| {
        format!(
            r#"{{"run_id":"r1","resource":{{"resource":"proxy","name":"listen-x","listen":"{listen}","upstream":"127.0.0.1:9"}},"lease_ms":{lease_ms}}}"#
        )
    };
    for (what, body, says) in [
        (
            "port 0",
            open("127.0.0.1:0", 5000),
            "`listen` must not be 0",
        ),
        (
            "huge lease",
            open("127.0.0.1:8", u64::MAX),
            "`lease_ms` must be at most 3600000 ms",
        ),
    ] {
        let (status, answer) = agent.request_within(
            "PUT",
            "/v1/resources/res-1",
            Some(&body),
            Duration::from_secs(1),
        );
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(error_of(&answer).starts_with(says), "{what}: {answer}");
    }
    let (status, health) = agent.request_within("GET", "/v1/health", None, Duration::from_secs(1));
    assert_eq!(status, 200, "{health}");
}

#[test]
fn an_agent_answers_with_the_words_validate_prints_for_the_same_fault() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let (status, answer) = agent.request_within(
        "PUT",
        "/v1/faults/same-words",
        Some(&request(
            r#"{"kind":"memory-stress","workers":0,"size":1048576}"#,
            1000,
            5000,
        )),
        Duration::from_secs(1),
    );
    assert_eq!(status, 400, "{answer}");
    let from_agent = error_of(&answer);

    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "title = \"t\"\n[steady_state]\nwindow = \"1s\"\n[[steady_state.probe]]\nname = \"p\"\ntcp = \"127.0.0.1:1\"\n[recovery]\nwithin = \"5s\"\n[[fault]]\nname = \"f\"\nkind = \"memory-stress\"\nduration = \"1s\"\nsize = \"1MiB\"\nworkers = 0\n",
    )
    .unwrap();
    let out = support::faultline(
        &["validate", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.trim_end().ends_with(&format!(
            "bad.toml: line 14, column 1: fault `f`: {from_agent}"
        )),
        "validate and the agent disagree:\nvalidate: {stderr}\nagent:    {from_agent}"
    );
}
