//! Every file in `experiments/` is valid, and the self-contained ones (those that start their own
//! system under test with `[[setup]]`) pass when run.

use crate::support::{faultline, free_port, run_experiment, tempdir};

fn experiment_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir("experiments")
        .expect("experiments/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "experiments/ holds no .toml file");
    files
}

#[test]
fn every_example_experiment_validates() {
    let dir = tempdir();
    for file in experiment_files() {
        let out = faultline(
            &["validate", file.to_str().unwrap()],
            &dir.path().join("state"),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_game_day_validates() {
    let dir = tempdir();
    let mut files: Vec<_> = std::fs::read_dir("gamedays")
        .expect("gamedays/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "gamedays/ holds no .toml file");
    for file in files {
        let out = faultline(
            &["validate", file.to_str().unwrap()],
            &dir.path().join("state"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(": ok (") && stdout.contains("schedule(s)"),
            "{} was not read as a game day: {stdout}",
            file.display()
        );
    }
}

#[test]
fn self_contained_examples_pass_when_run() {
    let mut ran = 0;
    for file in experiment_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains("[[setup]]") {
            continue;
        }
        let dir = tempdir();
        let run = run_experiment(dir.path(), &text, &[]);
        assert_eq!(
            run.code,
            0,
            "{} did not pass: {}",
            file.display(),
            run.explain()
        );
        ran += 1;
    }
    assert!(ran > 0, "no self-contained example was run");
}

#[test]
fn the_quickstart_passes_with_a_measured_time_to_recover() {
    let dir = tempdir();
    // On a port of its own, so it cannot collide with the run of every example.
    let port = free_port().to_string();
    let text = std::fs::read_to_string("experiments/quickstart.toml")
        .unwrap()
        .replace("18080", &port);
    let junit = dir.path().join("junit.xml");
    let run = run_experiment(
        dir.path(),
        &text,
        &["--seed", "7", "--junit", junit.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    let report = run.report.as_ref().expect("report");
    assert_eq!(report["verdict"], "passed");
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["seed"], 7);
    let ttr = report["time_to_recover_ms"]
        .as_f64()
        .expect("time_to_recover_ms is a number");
    // The restart loop waits 0.5 s before restarting the server, so recovery cannot be quicker.
    assert!(ttr >= 500.0, "time_to_recover_ms = {ttr}");
    assert_eq!(report["faults"][0]["status"], "completed");
    assert_eq!(report["faults"][0]["agent"], "local");
    for key in [
        "run_id",
        "experiment",
        "started_at",
        "ended_at",
        "reason",
        "phases",
        "faults",
        "aborted_by",
        "exit_code",
    ] {
        assert!(report.get(key).is_some(), "report lacks `{key}`");
    }
    assert!(report["phases"]["before"][0]["p99_ms"].is_number());
    let xml = std::fs::read_to_string(&junit).expect("the JUnit report was written");
    assert!(xml.contains(r#"tests="3" failures="0""#), "{xml}");
    assert!(
        xml.contains(r#"<property name="verdict" value="passed"/>"#),
        "{xml}"
    );
}
