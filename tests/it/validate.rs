//! `faultline validate` and `plan`: bad input is named by file, line and key; nothing is touched.

use crate::support::{faultline, tempdir};

#[test]
fn a_typo_on_line_three_is_named_with_its_line() {
    let dir = tempdir();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "title = \"t\"\ndescription = \"d\"\ntimeout_typo = \"5s\"\n",
    )
    .unwrap();
    let out = faultline(
        &["validate", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("timeout_typo"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("typo.toml"), "{stderr}");
}

#[test]
fn a_bad_duration_is_named_with_its_value() {
    let dir = tempdir();
    let file = dir.path().join("bad.toml");
    let text = std::fs::read_to_string("experiments/quickstart.toml")
        .unwrap()
        .replace("within = \"5s\"", "within = \"5 parsecs\"");
    std::fs::write(&file, text).unwrap();
    let out = faultline(
        &["validate", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid duration `5 parsecs`"), "{stderr}");
}

#[test]
fn validate_has_no_side_effects_and_needs_no_target() {
    // The quickstart names a server that is not running: validation must not care, start nothing
    // and create no state directory.
    let dir = tempdir();
    let state = dir.path().join("state");
    let out = faultline(&["validate", "experiments/quickstart.toml"], &state);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!state.exists(), "validate created the state directory");
}

#[test]
fn plan_prints_the_timeline_without_running_anything() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let out = faultline(&["plan", "experiments/quickstart.toml"], &state);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("inject `kill the server` (process-kill) on local: send SIGKILL to the process listening on TCP port 18080"), "{stdout}");
    assert!(
        stdout.contains("recovery: the steady state must hold again within 5s"),
        "{stdout}"
    );
    assert!(!state.exists(), "plan created the state directory");
}

#[test]
fn a_missing_inventory_is_refused_with_its_path() {
    let dir = tempdir();
    let out = faultline(
        &[
            "run",
            "experiments/quickstart.toml",
            "--agents",
            "inventory.toml",
        ],
        &dir.path().join("state"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("failed to read the agent inventory inventory.toml"),
        "{stderr}"
    );
}

#[test]
fn plan_refuses_an_at_beyond_a_day_instead_of_panicking() {
    let dir = tempdir();
    let file = dir.path().join("late.toml");
    let text = std::fs::read_to_string("experiments/quickstart.toml")
        .unwrap()
        .replace("at = \"0s\"", "at = \"18446744073709551615s\"");
    assert!(text.contains("18446744073709551615s"));
    std::fs::write(&file, text).unwrap();
    for command in ["plan", "validate"] {
        let out = faultline(
            &[command, file.to_str().unwrap()],
            &dir.path().join("state"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("fault `kill the server`: `at` must be at most 1day"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }
}

/// Writes the quickstart with `from` replaced by `to` and runs `faultline validate` on it.
fn validate_quickstart_with(from: &str, to: &str) -> (Option<i32>, String) {
    let dir = tempdir();
    let file = dir.path().join("edited.toml");
    let text = std::fs::read_to_string("experiments/quickstart.toml").unwrap();
    assert!(text.contains(from), "the quickstart has no `{from}`");
    std::fs::write(&file, text.replace(from, to)).unwrap();
    let out = faultline(
        &["validate", file.to_str().unwrap()],
        &dir.path().join("state"),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_window_shorter_than_a_probes_every_is_refused_naming_both() {
    let (code, stderr) = validate_quickstart_with("window = \"2s\"", "window = \"10ms\"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 15, column 1: `steady_state.window` (10ms) is shorter than probe `front page`'s `every` (100ms)"),
        "{stderr}"
    );
}

#[test]
fn typos_of_keys_and_kinds_get_the_closest_name() {
    let (code, stderr) = validate_quickstart_with("timeout = \"500ms\"", "timout = \"500ms\"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `timout`"), "{stderr}");
    assert!(stderr.ends_with("did you mean `timeout`?\n"), "{stderr}");
    let (code, stderr) =
        validate_quickstart_with("kind = \"process-kill\"", "kind = \"proces-kill\"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `process-kill`?"), "{stderr}");
    let (code, stderr) = validate_quickstart_with("signal = \"SIGKILL\"", "signl = \"SIGKILL\"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`signl` does not apply to kind `process-kill`; did you mean `signal`?"),
        "{stderr}"
    );
}

#[test]
fn a_missing_experiment_file_says_so_and_exits_2() {
    let dir = tempdir();
    let missing = dir.path().join("nope.toml");
    for command in ["run", "validate", "plan"] {
        let out = faultline(
            &[command, missing.to_str().unwrap()],
            &dir.path().join("state"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "error: {}: cannot read the experiment file: No such file or directory (os error 2)\n",
                missing.display()
            ),
            "{command}"
        );
    }
}
