//! `faultline fuzz`: every input parser survives a fixed, seeded run of mutated inputs without a
//! panic. A panic fails the test and names the input, which the same seed reproduces.

use std::process::Command;

use crate::support::{BIN, tempdir};

/// Executions per target: about 10 s for all of them in a debug build on two busy cores.
const ITERATIONS: &str = "30000";
const SEED: &str = "1";

fn fuzz_without_panics(target: &str) {
    let dir = tempdir();
    let out = Command::new(BIN)
        .args(["fuzz", target, "--iterations", ITERATIONS, "--seed", SEED])
        .arg("--crash-dir")
        .arg(dir.path())
        .output()
        .expect("run faultline fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("fuzz {target}: {ITERATIONS} executions in ")),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && stdout.contains(", 0 panics (0 distinct)"),
        "`faultline fuzz {target} --iterations {ITERATIONS} --seed {SEED}` found panics:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fuzzed_experiment_files_never_panic_the_parser() {
    fuzz_without_panics("experiment");
}

#[test]
fn fuzzed_inventories_never_panic_the_loader() {
    fuzz_without_panics("inventory");
}

#[test]
fn fuzzed_agent_tomls_never_panic_the_envelope() {
    fuzz_without_panics("agent-toml");
}

#[test]
fn fuzzed_apply_bodies_never_panic_the_agent() {
    fuzz_without_panics("apply-request");
}

#[test]
fn fuzzed_open_bodies_never_panic_the_agent() {
    fuzz_without_panics("open-request");
}

#[test]
fn fuzzed_renew_bodies_never_panic_the_agent() {
    fuzz_without_panics("renew-request");
}

#[test]
fn fuzzed_journal_entries_never_panic_recovery() {
    fuzz_without_panics("journal-entry");
}

#[test]
fn the_fuzz_targets_are_listed() {
    let out = Command::new(BIN)
        .args(["fuzz", "--list"])
        .output()
        .expect("run faultline fuzz --list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let targets: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        targets,
        [
            "experiment",
            "inventory",
            "agent-toml",
            "apply-request",
            "open-request",
            "renew-request",
            "journal-entry",
            "game-day",
            "stored-report",
        ]
    );
}

#[test]
fn fuzzed_game_days_never_panic_the_loader_or_the_calendar() {
    fuzz_without_panics("game-day");
}

#[test]
fn fuzzed_stored_reports_never_panic_show() {
    fuzz_without_panics("stored-report");
}
