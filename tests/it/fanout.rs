//! The coordinator's fan-out to remote agents: a whole run's requests to an agent (preflight,
//! apply, every lease renewal, revert) ride kept-alive connections, and a connection opened while
//! another is busy resumes the TLS session instead of doing a full handshake.

use crate::support::{self, agent::TlsAgent};

/// The value of one line of the agent's `/metrics` (read with curl: one full handshake itself).
fn metric(agent: &TlsAgent, name: &str) -> u64 {
    let (status, text) = agent.request("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// (full, resumed) TLS handshakes the agent has completed, the reading's own included.
fn handshakes(agent: &TlsAgent) -> (u64, u64) {
    let full = metric(agent, "faultline_agent_tls_handshakes_full_total");
    let resumed = metric(agent, "faultline_agent_tls_handshakes_resumed_total");
    (full, resumed)
}

#[test]
fn a_whole_run_reaches_an_agent_with_one_full_tls_handshake_however_many_requests_it_sends() {
    let dir = support::tempdir();
    let agent = TlsAgent::start(dir.path());
    let fill = dir.path().join("fill");
    std::fs::create_dir(&fill).unwrap();
    let inv = dir.path().join("inventory.toml");
    std::fs::write(
        &inv,
        format!(
            "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"a1\"\naddress = \"{}\"\ntags = {{ role = \"db\" }}\n",
            agent.certs.ca().display(),
            agent.certs.file("token").display(),
            agent.url("")
        ),
    )
    .unwrap();
    // Held 2 s with a 600 ms lease: a renewal every 200 ms, so the run sends about ten of them
    // besides its preflight, apply and revert.
    let exp = support::always_steady_experiment(
        "fan-out",
        "[targets.db]\ntags = { role = \"db\" }",
        &format!(
            "[[fault]]\nname = \"fill\"\nkind = \"disk-fill\"\non = \"db\"\npath = \"{}\"\nsize = \"4KiB\"\nduration = \"2s\"",
            fill.display()
        ),
    );
    let (full_before, resumed_before) = handshakes(&agent);
    let run = support::run_experiment(
        dir.path(),
        &exp,
        &["--agents", inv.to_str().unwrap(), "--lease", "600ms"],
    );
    assert_eq!(run.verdict(), "passed", "{}", run.explain());
    let (full_after, resumed_after) = handshakes(&agent);
    // Two curl readings after the first two: each is one full handshake of its own.
    let full = full_after - full_before - 2;
    let resumed = resumed_after - resumed_before;
    let audit = std::fs::read_to_string(agent.state.join("audit.jsonl")).unwrap();
    let renewals = audit.matches("/v1/leases/renew").count();
    let requests = audit.matches("/v1/").count();
    assert!(
        renewals >= 3,
        "the run renewed its lease only {renewals} time(s):\n{audit}"
    );
    // Every request after the first rides a kept-alive connection; a renewal that overlaps the
    // revert may open a second one, which resumes the session of the first.
    assert_eq!(
        full, 1,
        "{requests} requests of the run took {full} full TLS handshakes:\n{audit}"
    );
    assert!(
        resumed <= 1,
        "{requests} requests of the run opened {resumed} more connections:\n{audit}"
    );
}
