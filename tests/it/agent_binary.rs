//! The dedicated agent executable, `faultline-agent`: a real agent that a run drives (inject and
//! revert, stress workers started from its own executable), exactly `faultline agent`'s flags and
//! errors, and guarded like one against the faults of other agents.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::agent::{AgentOptions, Certs, TlsAgent};
use crate::support::{self, AGENT_BIN, BIN, ProcState, state_of};

const DEDICATED: AgentOptions<'static> = AgentOptions {
    prefix: &[],
    extra: &[],
    dedicated: true,
};

fn inventory(dir: &Path, agent: &TlsAgent) -> std::path::PathBuf {
    let text = format!(
        "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"dedicated\"\naddress = \"{}\"\ntags = {{ role = \"web\" }}\n",
        agent.certs.ca().display(),
        agent.certs.file("token").display(),
        agent.url("")
    );
    let path = dir.join("inventory.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Live processes running the dedicated executable in its `stress-worker` mode.
fn dedicated_workers() -> Vec<u32> {
    let exe = std::fs::canonicalize(AGENT_BIN).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"stress-worker"))
                && state_of(*pid) != ProcState::Gone
        })
        .collect()
}

#[test]
fn a_run_injects_and_reverts_through_the_dedicated_agent_executable() {
    let dir = support::tempdir();
    let agent = TlsAgent::start_with(dir.path(), &DEDICATED);
    let fill = dir.path().join("fill");
    std::fs::create_dir(&fill).unwrap();
    let inv = inventory(dir.path(), &agent);
    let faults = format!(
        "[[fault]]\nname = \"fill\"\nkind = \"disk-fill\"\non = \"web\"\npath = \"{}\"\nsize = \"4KiB\"\nduration = \"400ms\"\n\
         [[fault]]\nname = \"burn\"\nkind = \"cpu-stress\"\non = \"web\"\nworkers = 1\nload = \"10%\"\nduration = \"400ms\"",
        fill.display()
    );
    let exp = support::always_steady_experiment(
        "dedicated agent",
        "[targets.web]\ntags = { role = \"web\" }",
        &faults,
    );
    let run = support::run_experiment(dir.path(), &exp, &["--agents", inv.to_str().unwrap()]);
    assert_eq!(run.verdict(), "passed", "{}", run.explain());
    let report = run.report.as_ref().unwrap();
    let records = report["faults"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{report}");
    for fault in records {
        assert_eq!(fault["agent"], "dedicated", "{fault}");
        assert_eq!(fault["status"], "reverted", "{fault}");
    }
    // The stress fault is verified only once its workers run: they are the dedicated executable
    // started again in its `stress-worker` mode, and none is left after the revert.
    let burn = records.iter().find(|f| f["name"] == "burn").unwrap();
    assert!(
        burn["detail"].as_str().unwrap().contains("worker"),
        "{burn}"
    );
    assert!(
        support::poll_until(std::time::Duration::from_secs(5), || dedicated_workers()
            .is_empty())
        .is_some(),
        "stress workers left: {:?}",
        dedicated_workers()
    );
    assert_eq!(
        std::fs::read_dir(&fill).unwrap().count(),
        0,
        "the fill file must be gone"
    );
    // The agent audited both injections and both reverts.
    let audit = agent.audit();
    assert_eq!(audit.matches("PUT /v1/faults/").count(), 2, "{audit}");
    assert_eq!(audit.matches("DELETE /v1/faults/").count(), 2, "{audit}");
}

fn output(argv0: &str, args: &[&str]) -> Output {
    Command::new(argv0)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `faultline agent ARGS` and `faultline-agent ARGS`.
fn both(args: &[&str]) -> (Output, Output) {
    let mut sub = vec!["agent"];
    sub.extend_from_slice(args);
    (output(BIN, &sub), output(AGENT_BIN, args))
}

#[test]
fn the_dedicated_agent_takes_exactly_the_agent_flags_and_refuses_bad_ones_naming_them() {
    let dir = support::tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    let path = |name: &str| certs.file(name).to_str().unwrap().to_owned();
    let (token, cert, key) = (path("token"), path("agent.pem"), path("agent-key.pem"));

    // A bad value: the same error from both, naming the flag.
    let bad = [
        "--listen",
        "not-an-address",
        "--token-file",
        &token,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let (main, dedicated) = both(&bad);
    assert_eq!(dedicated.status.code(), Some(2), "{}", stderr(&dedicated));
    let first = |out: &Output| stderr(out).lines().next().unwrap_or_default().to_owned();
    assert!(
        first(&dedicated).contains("invalid value 'not-an-address' for '--listen <ADDR>'"),
        "{}",
        stderr(&dedicated)
    );
    assert_eq!(first(&dedicated), first(&main));
    assert_eq!(main.status.code(), Some(2));

    // An unknown flag, a missing one, and the subcommand word itself are refused by name.
    let (_, unknown) = both(&["--bogus", "1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("'--bogus'"),
        "{}",
        stderr(&unknown)
    );
    let (_, missing) = both(&["--token-file", &token]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("--listen <ADDR>"),
        "{}",
        stderr(&missing)
    );
    let word = output(AGENT_BIN, &["agent", "--listen", "127.0.0.1:1"]);
    assert_eq!(word.status.code(), Some(2));
    assert!(stderr(&word).contains("'agent'"), "{}", stderr(&word));

    // A token file that cannot be read: the same start-up check, exit 5, naming the file.
    let absent = dir.path().join("no-token").to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let state = dir.path().join("state").to_str().unwrap().to_owned();
    let unreadable = [
        "--listen",
        &listen,
        "--token-file",
        &absent,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--state-dir",
        &state,
    ];
    let (main, dedicated) = both(&unreadable);
    assert_eq!(dedicated.status.code(), Some(5), "{}", stderr(&dedicated));
    assert!(
        stderr(&dedicated).contains(&absent),
        "{}",
        stderr(&dedicated)
    );
    assert_eq!(stderr(&dedicated), stderr(&main));

    // --help lists the same options (the dedicated executable also has --version).
    let options = |out: &Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = text.find("Options:").expect("an Options section");
        text[start..]
            .lines()
            .filter(|l| !l.contains("--version"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (main, dedicated) = both(&["--help"]);
    assert_eq!(dedicated.status.code(), Some(0));
    assert!(options(&dedicated).contains("--token-file <PATH>"));
    assert_eq!(options(&dedicated), options(&main));
    let version = output(AGENT_BIN, &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("faultline-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn agents_of_either_executable_cannot_pause_each_other() {
    let (dir1, dir2) = (support::tempdir(), support::tempdir());
    let main = TlsAgent::start(dir1.path());
    let dedicated = TlsAgent::start_with(dir2.path(), &DEDICATED);
    for (from, to) in [(&main, &dedicated), (&dedicated, &main)] {
        let body = format!(
            r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#,
            to.pid()
        );
        let (status, answer) = from.request("PUT", "/v1/faults/freeze", Some(&body));
        let _ = from.request("DELETE", "/v1/faults/freeze", None);
        assert_eq!(state_of(to.pid()), ProcState::Awake);
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer.contains(&format!(
                "refusing to signal pid {}: it is a faultline agent, run, watchdog or fixture guard",
                to.pid()
            )),
            "{answer}"
        );
    }
}
