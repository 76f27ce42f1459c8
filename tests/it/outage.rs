//! The outage check from outside: the Alertmanager the outage tests start
//! (`support/alertmanager.rs`) lists a posted alert at once, forgets a resolved one and leaves
//! nothing running; a coordinator that cannot ask Alertmanager runs nothing (fail safe). The
//! client is tested in `src/outage.rs` against the same binary, the skip while an alert fires in
//! `coordinator.rs`.

use std::process::Command;
use std::time::Duration;

use crate::support::agent::spawn_logged;
use crate::support::alertmanager::Alertmanager;
use crate::support::{
    BIN, Proc, ProcState, always_steady_experiment, faultline, free_port, state_of, tempdir,
    wait_until,
};

#[test]
fn alertmanager_lists_a_posted_alert_at_once_and_forgets_it_once_resolved() {
    let am = Alertmanager::start();
    let critical = [("alertname", "DiskFull"), ("severity", "critical")];
    assert_eq!(am.active_names(), Vec::<String>::new(), "{}", am.log());
    am.fire(&critical);
    am.fire(&[("alertname", "HighLatency"), ("severity", "warning")]);
    assert_eq!(
        am.active_names(),
        ["DiskFull", "HighLatency"],
        "{}",
        am.log()
    );
    am.resolve(&critical);
    assert_eq!(am.active_names(), ["HighLatency"], "{}", am.log());
    assert_eq!(
        am.outage_toml(&[r#"severity="critical""#]),
        format!(
            r#"outage = {{ alertmanager = "{}", matchers = ['severity="critical"'] }}"#,
            am.url
        )
    );

    let pid = am.pid();
    drop(am);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "alertmanager (pid {pid}) outlived its guard"
    );
}

/// Fail safe: with the outage check configured and Alertmanager unreachable, a coordinator runs
/// nothing, and every skip says why, naming the address it could not reach.
#[test]
fn fires_are_skipped_while_alertmanager_cannot_be_asked() {
    let dir = tempdir();
    // Bound a moment ago and released: nothing listens there.
    let port = free_port();
    let victim = Proc::spawn(&["sleep", "600"]);
    let experiment = dir.path().join("pause.toml");
    std::fs::write(
        &experiment,
        always_steady_experiment(
            "pause",
            "",
            &format!(
                "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {} }}\nduration = \"100ms\"",
                victim.pid()
            ),
        ),
    )
    .unwrap();
    let gameday = dir.path().join("gameday.toml");
    std::fs::write(
        &gameday,
        format!(
            r#"[coordinator]
state_dir = "state"
timezone = "UTC"
lease = "2s"
outage = {{ alertmanager = "http://127.0.0.1:{port}", matchers = ['severity="critical"'] }}

[[schedule]]
name = "guarded"
experiments = ["{}"]
cron = "*/2 * * * * *"
"#,
            experiment.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("coordinator.log");
    let mut coordinator =
        spawn_logged(&[BIN, "coordinator", gameday.to_str().unwrap()], None, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let reason = format!(
        "outage check failed: Alertmanager at http://127.0.0.1:{port} is unreachable: connection refused"
    );
    wait_until("two skipped fires", Duration::from_secs(20), || {
        read_log().matches(&reason).count() >= 2
    });
    let stopped = Command::new("kill")
        .args(["-TERM", &coordinator.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    wait_until("the coordinator stopped", Duration::from_secs(15), || {
        !coordinator.alive()
    });

    let history = faultline(
        &[
            "history",
            "--json",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
        &dir.path().join("unused"),
    );
    let stdout = String::from_utf8_lossy(&history.stdout);
    assert!(history.status.success(), "{stdout}\n{}", read_log());
    let runs: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("history --json");
    assert!(
        runs.is_empty(),
        "ran while the outage check failed: {runs:#?}\n{}",
        read_log()
    );
    assert_eq!(
        state_of(victim.pid()),
        ProcState::Awake,
        "the victim was paused"
    );
}
