//! Network agents end to end: the real `faultline agent` daemon over TLS, driven by the real
//! coordinator — token checks and audit, the dead-man switch after a coordinator SIGKILL, journal
//! recovery after an agent SIGKILL, the halt switch, and seeded target groups across three hosts
//! that each live in their own network and pid namespace.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::{AgentOptions, Certs, TlsAgent, proxy_config, spawn_logged};
use crate::support::{self, BIN, Proc, ProcState, poll_until as until, state_of};

fn inventory(dir: &Path, certs: &Certs, agents: &[(&str, String, &str)]) -> PathBuf {
    let mut text = format!(
        "ca = \"{}\"\ntoken_file = \"{}\"\n",
        certs.ca().display(),
        certs.file("token").display()
    );
    for (name, address, role) in agents {
        text.push_str(&format!("\n[[agent]]\nname = \"{name}\"\naddress = \"{address}\"\ntags = {{ role = \"{role}\" }}\n"));
    }
    let path = dir.join("inventory.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An experiment that pauses (or kills) `select` on group `on` and probes nothing of interest.
fn experiment(targets: &str, faults: &str) -> String {
    support::always_steady_experiment("agents", targets, faults)
}

#[test]
fn requests_without_the_right_token_get_401_apply_nothing_and_are_audited() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let mut victim = Proc::spawn(&["sleep", "300"]);
    let url = "/v1/faults/t-1";
    let body = format!(
        r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}},"duration_ms":60000,"lease_ms":5000,"seed":1}}"#,
        victim.pid()
    );

    let (status, answer) = agent.request_as(None, "PUT", url, Some(&body));
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = agent.request_as(Some("not-the-token-at-all"), "PUT", url, Some(&body));
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("missing or wrong bearer token"), "{answer}");

    // A body with an unknown field is refused with a message naming it, and changes nothing.
    let sloppy = body.replace(r#""seed":1"#, r#""seed":1,"sede":2"#);
    let (status, answer) = agent.request("PUT", url, Some(&sloppy));
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("unknown field `sede`"), "{answer}");

    assert_eq!(
        state_of(victim.pid()),
        ProcState::Awake,
        "the victim must not have been stopped"
    );
    assert!(victim.alive());
    let (status, active) = agent.request("GET", "/v1/faults", None);
    assert_eq!((status, active.trim()), (200, "[]"));

    let audit = std::fs::read_to_string(agent.state.join("audit.jsonl")).unwrap();
    let refused: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .filter(|l: &serde_json::Value| l["status"] == 401)
        .collect();
    assert_eq!(refused.len(), 2, "{audit}");
    for line in refused {
        assert_eq!(line["request"], "PUT /v1/faults/t-1");
        assert!(
            line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert!(line["time"].as_str().is_some());
    }
}

#[test]
fn killing_the_coordinator_mid_pause_lets_the_victim_run_again_within_the_lease() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let inv = inventory(dir.path(), &agent.certs, &[("a1", agent.url(""), "web")]);
    let victim = Proc::spawn(&["sleep", "300"]);
    let exp = dir.path().join("pause.toml");
    let fault = format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\non = \"web\"\nselect = {{ pid = {} }}\nduration = \"60s\"",
        victim.pid()
    );
    std::fs::write(
        &exp,
        experiment("[targets.web]\ntags = { role = \"web\" }", &fault),
    )
    .unwrap();
    let lease = Duration::from_secs(2);
    let mut coordinator = Command::new(BIN)
        .args([
            "run",
            exp.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
            "--lease",
            "2s",
        ])
        .env("FAULTLINE_STATE_DIR", dir.path().join("coordinator-state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stopped = until(Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    assert!(stopped.is_some(), "the victim was never stopped");

    coordinator.kill().unwrap();
    let killed_at = Instant::now();
    coordinator.wait().unwrap();
    let resumed = until(Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    });
    let after = resumed.map(|_| killed_at.elapsed());
    eprintln!("coordinator SIGKILL -> victim running again: {after:?} (lease {lease:?})");
    assert!(
        after.is_some_and(|d| d <= lease + Duration::from_secs(1)),
        "victim still stopped: {after:?}"
    );
}

#[test]
fn an_agent_killed_mid_fill_removes_the_file_before_it_serves_again() {
    if !support::privileged("an_agent_killed_mid_fill_removes_the_file_before_it_serves_again") {
        return;
    }
    let tmpfs = support::Tmpfs::mount("16m");
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(dir.path());
    let inv = inventory(dir.path(), &agent.certs, &[("a1", agent.url(""), "db")]);
    let fault = format!(
        "[[fault]]\nname = \"fill\"\nkind = \"disk-fill\"\non = \"db\"\npath = \"{}\"\nsize = \"4MiB\"\nduration = \"60s\"",
        tmpfs.path().display()
    );
    let exp = dir.path().join("fill.toml");
    std::fs::write(
        &exp,
        experiment("[targets.db]\ntags = { role = \"db\" }", &fault),
    )
    .unwrap();
    let _coordinator = spawn_logged(
        &[
            BIN,
            "run",
            exp.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
        ],
        None,
        &dir.path().join("coordinator.log"),
    );
    let fill_file = || {
        std::fs::read_dir(tmpfs.path())
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".faultline-fill-")
            })
            .map(|e| e.path())
    };
    assert!(
        until(Duration::from_secs(20), || fill_file().is_some()).is_some(),
        "no fill file appeared"
    );
    let file = fill_file().unwrap();

    agent.kill();
    assert!(
        file.exists(),
        "the fill file must outlive the SIGKILLed agent until it restarts"
    );

    let restarted = Instant::now();
    // `restart` returns the first moment the agent accepts connections: the fill must be gone.
    agent.restart();
    assert!(
        !file.exists(),
        "the agent served requests before reverting its journal"
    );
    eprintln!(
        "agent restart -> serving with the fill reverted: {:?}",
        restarted.elapsed()
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(2),
        "recovery took {:?}",
        restarted.elapsed()
    );
    assert!(
        agent
            .log_text()
            .contains("reverted a fault left by an earlier run")
    );
}

#[test]
fn halt_reverts_every_fault_and_runs_are_refused_until_resume() {
    let dir = support::tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    let [a1, a2] = [1, 2].map(|i| {
        TlsAgent::start_on(
            certs.clone(),
            &format!("127.0.0.1:{}", support::free_port()),
            &dir.path().join(format!("s{i}")),
            &dir.path().join(format!("a{i}.log")),
            &AgentOptions::default(),
        )
    });
    let inv = inventory(
        dir.path(),
        &certs,
        &[("a1", a1.url(""), "one"), ("a2", a2.url(""), "two")],
    );
    let (v1, v2) = (
        Proc::spawn(&["sleep", "300"]),
        Proc::spawn(&["sleep", "300"]),
    );
    let faults = format!(
        "[[fault]]\nname = \"p1\"\nkind = \"process-pause\"\non = \"one\"\nselect = {{ pid = {} }}\nduration = \"60s\"\n\
         [[fault]]\nname = \"p2\"\nkind = \"process-pause\"\non = \"two\"\nselect = {{ pid = {} }}\nduration = \"60s\"",
        v1.pid(),
        v2.pid()
    );
    let targets =
        "[targets.one]\ntags = { role = \"one\" }\n[targets.two]\ntags = { role = \"two\" }";
    let exp = dir.path().join("pause.toml");
    std::fs::write(&exp, experiment(targets, &faults)).unwrap();
    let _coordinator = spawn_logged(
        &[
            BIN,
            "run",
            exp.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
        ],
        None,
        &dir.path().join("coordinator.log"),
    );
    let both_stopped =
        || state_of(v1.pid()) == ProcState::Stopped && state_of(v2.pid()) == ProcState::Stopped;
    assert!(
        until(Duration::from_secs(20), both_stopped).is_some(),
        "the victims were never stopped"
    );

    let started = Instant::now();
    let halt = support::faultline(
        &["halt", "--agents", inv.to_str().unwrap()],
        &dir.path().join("x"),
    );
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&halt.stdout);
    assert!(
        halt.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&halt.stderr)
    );
    eprintln!("faultline halt on 2 agents took {took:?}");
    assert_eq!(state_of(v1.pid()), ProcState::Awake, "{out}");
    assert_eq!(state_of(v2.pid()), ProcState::Awake, "{out}");
    assert!(
        out.contains("a1: halted; reverted 1 fault(s)")
            && out.contains("a2: halted; reverted 1 fault(s)"),
        "{out}"
    );

    let short = faults.replace("60s", "300ms");
    let refused = support::run_experiment(
        dir.path(),
        &experiment(targets, &short),
        &["--agents", inv.to_str().unwrap()],
    );
    assert_eq!(refused.code, 5, "{}", refused.explain());
    assert!(
        refused.stderr.contains("is halted"),
        "{}",
        refused.explain()
    );
    assert_eq!(state_of(v1.pid()), ProcState::Awake);

    let resume = support::faultline(
        &["resume", "--agents", inv.to_str().unwrap()],
        &dir.path().join("x"),
    );
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stdout)
    );
    let ran = support::run_experiment(
        dir.path(),
        &experiment(targets, &short),
        &["--agents", inv.to_str().unwrap()],
    );
    assert_eq!(ran.verdict(), "passed", "{}", ran.explain());
}

/// One "host": a network namespace joined to this one by a veth pair. Deleting the namespace
/// also deletes the pair; the guard does both, and kills what still runs inside, even on failure.
struct NetHost {
    ns: String,
    addr: String,
    /// The veth end in this namespace: setting it down cuts the host off.
    host_if: String,
}

impl NetHost {
    fn create(ns: &str, link: &str, subnet: u8) -> NetHost {
        let host_if = format!("{link}h");
        let ns_if = format!("{link}n");
        let guard = NetHost {
            ns: ns.to_owned(),
            addr: format!("10.203.{subnet}.2"),
            host_if: host_if.clone(),
        };
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", ns]);
        ip(&[
            "addr",
            "add",
            &format!("10.203.{subnet}.1/24"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("10.203.{subnet}.2/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        guard
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        // Deleting our end of the pair deletes both, even while the namespace lingers (a socket
        // the cut link left retransmitting keeps a dead namespace alive for minutes).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Pids of processes whose command line is exactly `cmdline`, as seen from this namespace.
fn pids_with_cmdline(cmdline: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
        if text.trim_end() == cmdline && state_of(pid) != ProcState::Gone {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_count_of_two_kills_the_victims_of_exactly_two_of_three_hosts_and_the_seed_reproduces_it() {
    if !support::privileged(
        "a_count_of_two_kills_the_victims_of_exactly_two_of_three_hosts_and_the_seed_reproduces_it",
    ) {
        return;
    }
    let dir = support::tempdir();
    let tag = std::process::id() % 100_000;
    // A subnet per test process, so parallel runs of this test never share routes.
    let subnet_base = (tag % 80) as u8 * 3;
    let hosts: Vec<NetHost> = (0..3)
        .map(|i| {
            NetHost::create(
                &format!("flagents-{tag}-{i}"),
                &format!("agt{tag}{i}"),
                subnet_base + i,
            )
        })
        .collect();
    let addrs: Vec<&str> = hosts.iter().map(|h| h.addr.as_str()).collect();
    let certs = Certs::make(dir.path(), &addrs);
    let mut agents = Vec::new();
    let mut victim_cmdlines = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        // Each host runs its victim under a restart loop (a supervisor), and the agent as the init
        // of its own pid namespace: it sees only its host's processes. The script is constant;
        // the victim's seconds and the agent's argv are passed to it as data.
        let seconds = (1_000_000 + tag * 10 + i as u32).to_string();
        agents.push(TlsAgent::start_on(
            certs.clone(),
            &format!("{}:7443", host.addr),
            &dir.path().join(format!("state-{i}")),
            &dir.path().join(format!("agent-{i}.log")),
            &AgentOptions {
                prefix: &[
                    "ip",
                    "netns",
                    "exec",
                    &host.ns,
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "sh",
                    "-c",
                    "seconds=$1; shift; (while :; do sleep \"$seconds\"; done) & exec \"$@\"",
                    "sh",
                    &seconds,
                ],
                ..AgentOptions::default()
            },
        ));
        victim_cmdlines.push(format!("sleep {seconds}"));
    }
    let entries: Vec<(String, String)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("host-{i}"), format!("https://{}:7443", h.addr)))
        .collect();
    let inv = inventory(
        dir.path(),
        &certs,
        &entries
            .iter()
            .map(|(n, a)| (n.as_str(), a.clone(), "web"))
            .collect::<Vec<_>>(),
    );
    let exp = experiment(
        "[targets.web]\ntags = { role = \"web\" }\ncount = 2",
        "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\non = \"web\"\nselect = { name = \"sleep\" }",
    );

    let mut choices = Vec::new();
    for attempt in 0..2 {
        let before: Vec<Vec<u32>> = victim_cmdlines
            .iter()
            .map(|c| pids_with_cmdline(c))
            .collect();
        assert!(
            before.iter().all(|p| p.len() == 1),
            "each host runs one victim: {before:?}"
        );
        let run = support::run_experiment(
            dir.path(),
            &exp,
            &["--agents", inv.to_str().unwrap(), "--seed", "42"],
        );
        assert_eq!(
            run.verdict(),
            "passed",
            "attempt {attempt}: {}",
            run.explain()
        );
        let report = run.report.unwrap();
        let mut named: Vec<String> = report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["agent"].as_str().unwrap().to_owned())
            .collect();
        named.sort();
        assert_eq!(report["seed"], 42);
        let killed: Vec<String> = (0..3)
            .filter(|&i| state_of(before[i][0]) == ProcState::Gone)
            .map(|i| format!("host-{i}"))
            .collect();
        assert_eq!(
            killed.len(),
            2,
            "exactly two hosts' victims must die: {killed:?}"
        );
        assert_eq!(
            named, killed,
            "the report names the agents whose victims died"
        );
        choices.push(killed);
        // Let the restart loops bring the victims back before the next attempt.
        assert!(
            until(Duration::from_secs(5), || victim_cmdlines
                .iter()
                .all(|c| pids_with_cmdline(c).len() == 1))
            .is_some()
        );
    }
    assert_eq!(
        choices[0], choices[1],
        "the same --seed must choose the same hosts"
    );
    let plan = support::faultline(
        &[
            "plan",
            dir.path().join("experiment.toml").to_str().unwrap(),
            "--agents",
            inv.to_str().unwrap(),
            "--seed",
            "42",
        ],
        &dir.path().join("x"),
    );
    let plan = String::from_utf8_lossy(&plan.stdout);
    for name in &choices[0] {
        assert!(
            plan.contains(&format!("- {name} at")),
            "plan must show the resolved agents: {plan}"
        );
    }
    drop(agents);
}

/// One agent tagged `role = "web"` on a network-namespace host of its own (`link` names the veth,
/// `subnet` its /24), in the test's pid namespace so it can act on processes the test watches.
/// Its inventory names it `name`.
fn agent_on_its_own_host(dir: &Path, name: &str, link: &str, subnet: u8) -> OwnHost {
    let host = NetHost::create(&format!("flagents-{link}"), link, subnet);
    let agent = TlsAgent::start_on(
        Certs::make(dir, &[&host.addr]),
        &format!("{}:7443", host.addr),
        &dir.join("agent-state"),
        &dir.join("agent.log"),
        &AgentOptions {
            prefix: &["ip", "netns", "exec", &host.ns],
            ..AgentOptions::default()
        },
    );
    let inv = inventory(dir, &agent.certs, &[(name, agent.url(""), "web")]);
    OwnHost { host, agent, inv }
}

struct OwnHost {
    host: NetHost,
    agent: TlsAgent,
    inv: PathBuf,
}

#[test]
fn cutting_the_link_to_the_agent_mid_pause_lets_the_victim_run_again_within_the_lease() {
    if !support::privileged(
        "cutting_the_link_to_the_agent_mid_pause_lets_the_victim_run_again_within_the_lease",
    ) {
        return;
    }
    let dir = support::tempdir();
    let tag = std::process::id() % 100_000;
    // Subnets 240..=249 are this test's; the three-host test uses 0..240.
    let OwnHost {
        host,
        agent: _agent,
        inv,
    } = agent_on_its_own_host(
        dir.path(),
        "cut",
        &format!("agc{tag}"),
        240 + (tag % 10) as u8,
    );
    let victim = Proc::spawn(&["sleep", "300"]);
    let fault = format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\non = \"web\"\nselect = {{ pid = {} }}\nduration = \"60s\"",
        victim.pid()
    );
    let exp = dir.path().join("pause.toml");
    std::fs::write(
        &exp,
        experiment("[targets.web]\ntags = { role = \"web\" }", &fault),
    )
    .unwrap();
    let _coordinator = spawn_logged(
        &[
            BIN,
            "run",
            exp.to_str().unwrap(),
            "--quiet",
            "--agents",
            inv.to_str().unwrap(),
            "--lease",
            "2s",
        ],
        None,
        &dir.path().join("coordinator.log"),
    );
    assert!(
        until(Duration::from_secs(20), || state_of(victim.pid())
            == ProcState::Stopped)
        .is_some(),
        "never stopped"
    );

    let st = Command::new("ip")
        .args(["link", "set", &host.host_if, "down"])
        .status()
        .unwrap();
    assert!(st.success());
    let cut_at = Instant::now();
    let resumed = until(Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    })
    .map(|_| cut_at.elapsed());
    eprintln!("link cut -> victim running again: {resumed:?} (lease 2s)");
    assert!(
        resumed.is_some_and(|d| d <= Duration::from_secs(3)),
        "victim still stopped: {resumed:?}"
    );
}

#[test]
fn the_safety_envelope_refuses_long_faults_and_protected_processes() {
    let dir = support::tempdir();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "max_duration = \"10s\"\nprotected_processes = [\"^sleep$\"]\n",
    )
    .unwrap();
    let agent = TlsAgent::start_with(
        dir.path(),
        &AgentOptions {
            extra: &["--config", config.to_str().unwrap()],
            ..AgentOptions::default()
        },
    );
    let victim = Proc::spawn(&["sleep", "300"]);
    let put = |id: &str, duration_ms: u64| {
        let body = format!(
            r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}},"duration_ms":{duration_ms},"lease_ms":5000,"seed":1}}"#,
            victim.pid()
        );
        agent.request("PUT", &format!("/v1/faults/{id}"), Some(&body))
    };
    let (status, answer) = put("long", 60_000);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("above this agent's maximum of 10s"),
        "{answer}"
    );
    let (status, answer) = put("protected", 5_000);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("is protected on this agent (matches /^sleep$/)"),
        "{answer}"
    );
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
    let (_, metrics) = agent.request("GET", "/metrics", None);
    assert!(
        metrics.contains("faultline_agent_faults_refused_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("faultline_agent_active_faults 0"),
        "{metrics}"
    );
}

#[test]
fn with_a_client_ca_only_coordinators_holding_a_client_certificate_get_in() {
    let dir = support::tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    let ca = certs.ca();
    let agent = TlsAgent::start_with_certs(
        certs,
        dir.path(),
        &AgentOptions {
            extra: &["--client-ca", ca.to_str().unwrap()],
            ..AgentOptions::default()
        },
    );
    let inv = inventory(dir.path(), &agent.certs, &[("m1", agent.url(""), "web")]);

    let without = support::faultline(
        &["resume", "--agents", inv.to_str().unwrap()],
        &dir.path().join("x"),
    );
    assert_eq!(
        without.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&without.stdout)
    );
    assert!(String::from_utf8_lossy(&without.stdout).contains("m1: NOT resumed"));

    let text = std::fs::read_to_string(&inv).unwrap().replacen(
        '\n',
        &format!(
            "\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            agent.certs.file("client.pem").display(),
            agent.certs.file("client-key.pem").display()
        ),
        1,
    );
    std::fs::write(&inv, text).unwrap();
    let with = support::faultline(
        &["resume", "--agents", inv.to_str().unwrap()],
        &dir.path().join("x"),
    );
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(
        with.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(out.contains("m1: resumed"), "{out}");
    let audit = std::fs::read_to_string(agent.state.join("audit.jsonl")).unwrap();
    assert!(audit.contains("(client certificate "), "{audit}");
}

#[test]
fn a_target_group_matching_no_agent_refuses_to_run() {
    let dir = support::tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    // Nothing listens there: the run must stop at selection, before contacting any agent.
    let inv = inventory(
        dir.path(),
        &certs,
        &[("w1", "https://127.0.0.1:9".to_owned(), "web")],
    );
    let exp = experiment(
        "[targets.db]\ntags = { role = \"db\" }\npercent = \"50%\"",
        "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\non = \"db\"\nselect = { name = \"postgres\" }",
    );
    let run = support::run_experiment(dir.path(), &exp, &["--agents", inv.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.explain());
    assert!(
        run.stderr
            .contains("target group `db` (tags role=db) matches none of the 1 agent(s)"),
        "{}",
        run.explain()
    );
    // Nothing ran, yet the report asked for exists and says why, with the exit code of invalid
    // input.
    let report = run.report.as_ref().expect("the JSON report was written");
    assert_eq!(
        (report["verdict"].as_str(), report["exit_code"].as_u64()),
        (Some("error"), Some(2))
    );
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("matches none of the 1 agent(s)"),
        "{report:#}"
    );
}

#[test]
fn sigterm_makes_the_agent_revert_every_fault_before_it_exits() {
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(dir.path());
    let victim = Proc::spawn(&["sleep", "300"]);
    let body = format!(
        r#"{{"run_id":"r1","spec":{{"kind":"process-pause","select":{{"pid":{}}},"pick":null}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#,
        victim.pid()
    );
    let (status, answer) = agent.request("PUT", "/v1/faults/held", Some(&body));
    assert_eq!(status, 200, "{answer}");
    // Applying the same id again applies once.
    let (status, answer) = agent.request("PUT", "/v1/faults/held", Some(&body));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("already applied"), "{answer}");
    assert_eq!(state_of(victim.pid()), ProcState::Stopped);

    let st = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let exit = agent.proc.child.wait().unwrap();
    assert!(
        exit.success(),
        "the agent exits cleanly after reverting: {exit:?}"
    );
    assert_eq!(
        state_of(victim.pid()),
        ProcState::Awake,
        "the victim runs again once the agent is gone"
    );
    let journal: Vec<_> = std::fs::read_dir(&agent.state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(
        journal.is_empty(),
        "nothing is left in the journal: {journal:?}"
    );
}

#[test]
fn revert_by_run_id_undoes_only_that_runs_faults_and_all_undoes_the_rest() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let inv = inventory(dir.path(), &agent.certs, &[("r", agent.url(""), "web")]);
    let (v1, v2) = (
        Proc::spawn(&["sleep", "300"]),
        Proc::spawn(&["sleep", "300"]),
    );
    for (id, run, pid) in [("f1", "run-one", v1.pid()), ("f2", "run-two", v2.pid())] {
        let body = format!(
            r#"{{"run_id":"{run}","spec":{{"kind":"process-pause","select":{{"pid":{pid}}},"pick":null}},"duration_ms":60000,"lease_ms":60000,"seed":1}}"#
        );
        let (status, answer) = agent.request("PUT", &format!("/v1/faults/{id}"), Some(&body));
        assert_eq!(status, 200, "{answer}");
    }
    // An oversized body is refused before it is read (with `Expect: 100-continue`, so curl does not
    // race the refusal by sending the body).
    let huge = format!(r#"{{"run_id":"{}"}}"#, "x".repeat(100_000));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            agent.certs.ca().to_str().unwrap(),
            "-X",
            "PUT",
        ])
        .args([
            "-H",
            &format!("Authorization: Bearer {}", agent.certs.token()),
            "-H",
            "Expect: 100-continue",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &huge,
            "-w",
            "\n%{http_code}",
        ])
        .arg(agent.url("/v1/faults/f3"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n413"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("length limit exceeded"), "{text}");

    let one = support::faultline(
        &[
            "revert",
            "--agents",
            inv.to_str().unwrap(),
            "--run",
            "run-one",
        ],
        &dir.path().join("x"),
    );
    let out = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success(), "{out}");
    assert!(
        out.contains("reverted f1 (process-pause, run run-one)"),
        "{out}"
    );
    assert_eq!(
        (state_of(v1.pid()), state_of(v2.pid())),
        (ProcState::Awake, ProcState::Stopped),
        "{out}"
    );

    let all = support::faultline(
        &["revert", "--agents", inv.to_str().unwrap(), "--all"],
        &dir.path().join("x"),
    );
    let out = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success(), "{out}");
    assert!(
        out.contains("reverted f2 (process-pause, run run-two)"),
        "{out}"
    );
    assert_eq!(state_of(v2.pid()), ProcState::Awake);
    let again = support::faultline(
        &["revert", "--agents", inv.to_str().unwrap(), "--all"],
        &dir.path().join("x"),
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("r: nothing to revert"));
}

#[test]
fn a_network_fault_on_an_agent_spares_its_control_port_so_renewals_and_revert_get_through() {
    if !support::privileged(
        "a_network_fault_on_an_agent_spares_its_control_port_so_renewals_and_revert_get_through",
    ) {
        return;
    }
    let dir = support::tempdir();
    let tag = std::process::id() % 100_000;
    // Subnets 250..=254 are this test's.
    let OwnHost { host, agent, inv } = agent_on_its_own_host(
        dir.path(),
        "isolated",
        &format!("agn{tag}"),
        250 + (tag % 5) as u8,
    );
    // Every packet in or out of the agent's host is dropped for 4 s, with a lease of 1 s: only the
    // exemption of the agent's own port lets the coordinator renew and then revert.
    let exp = experiment(
        "[targets.web]\ntags = { role = \"web\" }",
        "[[fault]]\nname = \"drop everything\"\nkind = \"network-loss\"\non = \"web\"\npercent = \"100%\"\nmatch = { direction = \"both\" }\nduration = \"4s\"",
    );
    let run = support::run_experiment(
        dir.path(),
        &exp,
        &["--agents", inv.to_str().unwrap(), "--lease", "1s"],
    );
    assert_eq!(run.verdict(), "passed", "{}", run.explain());
    let fault = &run.report.as_ref().unwrap()["faults"][0];
    assert_eq!(fault["status"], "reverted", "{fault}");
    assert_eq!(fault["agent"], "isolated");
    let (_, metrics) = agent.request("GET", "/metrics", None);
    assert!(
        metrics.contains("faultline_agent_lease_expiries_total 0"),
        "the lease must never have lapsed: {metrics}"
    );
    // What scripts/bench-agents.sh reads by name: the time the agent spent on the fault. An
    // unsynced unlink may take under a microsecond, so the removal need only be there.
    for (counter, counts) in [
        ("faultline_agent_apply_microseconds_total", true),
        ("faultline_agent_revert_microseconds_total", true),
        ("faultline_agent_journal_record_microseconds_total", true),
        ("faultline_agent_journal_remove_microseconds_total", false),
    ] {
        let spent: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(counter)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{counter}` in {metrics}"));
        assert!(
            spent > 0 || !counts,
            "`{counter}` counted nothing for an applied and reverted fault"
        );
    }
    let tables = Command::new("ip")
        .args(["netns", "exec", &host.ns, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("faultline_"),
        "the fault's nft table is gone"
    );
}

/// An echo server on a free loopback port, for the latency proxy tests.
fn echo_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0_u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_remote_agent_hosts_the_run_proxy_for_the_whole_run_and_its_persistent_proxies_for_good() {
    let dir = support::tempdir();
    let echo = echo_server();
    let (persistent, scoped) = (support::free_port(), support::free_port());
    let config = proxy_config(
        dir.path(),
        &format!("127.0.0.1:{persistent}"),
        &format!("127.0.0.1:{echo}"),
    );
    let agent = TlsAgent::start_with(
        dir.path(),
        &AgentOptions {
            extra: &["--config", config.to_str().unwrap()],
            ..AgentOptions::default()
        },
    );
    support::wait_for_port(persistent, Duration::from_secs(5));
    let inv = inventory(dir.path(), &agent.certs, &[("db-1", agent.url(""), "db")]);
    // The probe goes through the run proxy, which only the agent opens: it passes before the
    // faults only if the agent opened the proxy before the steady state.
    let exp = format!(
        r#"title = "remote latency"
[targets.db]
tags = {{ role = "db" }}
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "through the run proxy"
tcp = "127.0.0.1:{scoped}"
every = "100ms"
[[fault]]
name = "slow run proxy"
kind = "latency"
on = "db"
listen = "127.0.0.1:{scoped}"
upstream = "127.0.0.1:{echo}"
delay = "10ms"
duration = "1s"
[[fault]]
name = "slow persistent proxy"
kind = "latency"
on = "db"
proxy = "db"
delay = "10ms"
duration = "1s"
[recovery]
within = "5s"
"#
    );
    let run = support::run_experiment(dir.path(), &exp, &["--agents", inv.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.explain());
    let faults = run.report.as_ref().unwrap()["faults"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(
        faults.iter().all(|f| f["status"] == "reverted"),
        "{faults:?}"
    );
    // The run proxy closed with the run; the persistent one stays with the agent.
    assert!(
        TcpStream::connect(("127.0.0.1", scoped)).is_err(),
        "the run proxy outlived the run"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", persistent)).is_ok(),
        "the persistent proxy closed with the run"
    );
}
