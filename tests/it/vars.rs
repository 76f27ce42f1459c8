//! `[vars]`, `--var`, `--vars` and `[secrets]`: one experiment run against two servers by a var,
//! unresolved names reported where they are written, and a secret that never reaches any output.

use std::path::Path;
use std::process::Command;

use crate::support::{BIN, faultline, free_port, http_server, run_experiment, tempdir};

/// Pauses whatever listens on `${port}` for 300 ms; the HTTP probe on the same port must hold
/// before and come back after. The default port is closed, so without `--var` nothing is met.
const BY_PORT: &str = r#"title = "the server on ${port} comes back after a pause"

[vars]
port = 1
host = "127.0.0.1"
base = "http://${host}:${port}"

[steady_state]
window = "500ms"

[[steady_state.probe]]
name = "front page"
http = { url = "${base}/" }
every = "100ms"
timeout = "1s"

[[fault]]
name = "pause the server"
kind = "process-pause"
select = { port = "${port}" }
duration = "300ms"

[recovery]
within = "5s"
"#;

#[test]
fn the_same_experiment_passes_against_two_ports_given_by_var() {
    let dir = tempdir();
    let (a, b) = (free_port(), free_port());
    let server_a = http_server(a, dir.path());
    let server_b = http_server(b, dir.path());
    for (port, server, other) in [(a, &server_a, &server_b), (b, &server_b, &server_a)] {
        let var = format!("port={port}");
        let run = run_experiment(dir.path(), BY_PORT, &["--var", &var]);
        assert_eq!(run.code, 0, "port {port}: {}", run.explain());
        let report = run.report.as_ref().unwrap();
        assert_eq!(
            report["experiment"]["title"],
            format!("the server on {port} comes back after a pause")
        );
        // The fault acted on this run's server (`select.port` became the integer), not the other.
        let targets = report["faults"][0]["target"].to_string();
        assert!(
            targets.contains(&server.pid().to_string())
                && !targets.contains(&other.pid().to_string()),
            "port {port}: targets {targets}, servers {} and {}",
            server.pid(),
            other.pid()
        );
    }
    // The default (a closed port) is used without --var: the steady state is not met.
    let closed = run_experiment(dir.path(), BY_PORT, &[]);
    assert_eq!(closed.code, 4, "{}", closed.explain());
    assert_eq!(closed.verdict(), "not_run");
}

#[test]
fn a_vars_file_is_overridden_by_var_and_a_typed_var_refuses_text() {
    let dir = tempdir();
    let file = dir.path().join("e.toml");
    std::fs::write(&file, BY_PORT).unwrap();
    let vars = dir.path().join("staging.toml");
    std::fs::write(&vars, "port = 4242\nunused_elsewhere = \"fine\"\n").unwrap();
    let state = dir.path().join("state");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        faultline(&args, &state)
    };
    let out = plan(&["--vars", vars.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("http://127.0.0.1:4242/"), "{stdout}");
    let out = plan(&["--vars", vars.to_str().unwrap(), "--var", "port=4343"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("http://127.0.0.1:4343/"), "{stdout}");
    let out = plan(&["--var", "port=http"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--var port: `port` is an integer (its default in `[vars]` is 1), so `http` cannot be its value"),
        "{stderr}"
    );
    let out = plan(&["--var", "prot=80"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `port`?"), "{stderr}");
}

#[test]
fn an_unknown_var_is_exit_2_with_line_column_and_the_closest_name() {
    let dir = tempdir();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        BY_PORT.replace("url = \"${base}/\"", "url = \"${bsae}/\""),
    )
    .unwrap();
    let state = dir.path().join("state");
    for command in ["validate", "plan", "run"] {
        let out = faultline(&[command, file.to_str().unwrap()], &state);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{}: line 13, column 17: unknown var `bsae`",
                file.display()
            )),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("did you mean `base`?"),
            "{command}: {stderr}"
        );
    }
    assert!(!state.exists(), "nothing ran");
}

/// Every way a run is seen afterwards: its files, its terminal output, and the history.
fn every_output(dir: &Path, state: &Path, run_id: &str) -> Vec<(String, String)> {
    let mut outputs = Vec::new();
    for name in ["report.json", "junit.xml", "report.html", "summary.md"] {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name} was not written: {e}"));
        outputs.push((name.to_owned(), text));
    }
    let html = dir.join("shown.html");
    for args in [
        vec!["history", "--json", "--reports"],
        vec!["history"],
        vec!["show", run_id],
        vec!["show", run_id, "--json"],
        vec!["show", run_id, "--html", html.to_str().unwrap()],
    ] {
        let out = faultline(&args, state);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        outputs.push((
            format!("{args:?} stdout"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
        outputs.push((
            format!("{args:?} stderr"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    outputs.push((
        "show --html".to_owned(),
        std::fs::read_to_string(&html).unwrap(),
    ));
    // The database file itself, byte for byte.
    let db = std::fs::read(state.join("history.db")).unwrap();
    outputs.push((
        "history.db".to_owned(),
        String::from_utf8_lossy(&db).into_owned(),
    ));
    outputs
}

#[test]
fn a_secret_from_env_never_appears_in_any_output_but_is_used() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    // Random per run, so no other text can hold it by chance.
    let secret = format!("tok-{:016x}", rand_u64());
    let experiment = format!(
        r#"title = "secret use"

[secrets]
token = {{ env = "FAULTLINE_TEST_TOKEN" }}

[[setup]]
name = "holder"
run = ["sh", "-c", "sleep 300", "${{secret:token}}"]

[steady_state]
window = "300ms"

[[steady_state.probe]]
name = "front page"
http = {{ url = "http://127.0.0.1:{port}/?token=${{secret:token}}" }}
every = "100ms"

[[fault]]
name = "pause nobody"
kind = "process-pause"
select = {{ cmdline = "^no such process ${{secret:token}}$" }}
duration = "1s"

[recovery]
within = "2s"
"#
    );
    let file = dir.path().join("secret.toml");
    std::fs::write(&file, &experiment).unwrap();
    let state = dir.path().join("state");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = Command::new(BIN)
        .args(["run", file.to_str().unwrap(), "--quiet", "--report-json"])
        .arg(path("report.json"))
        .args(["--junit", &path("junit.xml"), "--report-html"])
        .arg(path("report.html"))
        .args(["--summary-md", &path("summary.md")])
        .env("FAULTLINE_STATE_DIR", &state)
        .env("FAULTLINE_TEST_TOKEN", &secret)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    // The probe reached the server with the secret in its URL (so it held), and the fault's
    // selector held it too: the injection failed naming the masked pattern.
    assert_eq!(run.status.code(), Some(5), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("***"), "{reason}");
    assert!(reason.ends_with("; nothing was injected"), "{reason}");
    assert_eq!(report["phases"]["before"][0]["success_ratio"], 1.0);
    let run_id = report["run_id"].as_str().unwrap().to_owned();

    let plan = Command::new(BIN)
        .args(["plan", file.to_str().unwrap()])
        .env("FAULTLINE_TEST_TOKEN", &secret)
        .output()
        .unwrap();
    let plan_out = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(plan.status.code(), Some(0), "{plan:?}");
    assert!(
        plan_out.contains(&format!("http://127.0.0.1:{port}/?token=***")),
        "the plan shows resolved values with the secret masked: {plan_out}"
    );

    let mut outputs = every_output(dir.path(), &state, &run_id);
    outputs.push(("run stdout".to_owned(), stdout));
    outputs.push(("run stderr".to_owned(), stderr));
    outputs.push(("plan stdout".to_owned(), plan_out));
    outputs.push((
        "plan stderr".to_owned(),
        String::from_utf8_lossy(&plan.stderr).into_owned(),
    ));
    for (what, text) in &outputs {
        assert!(!text.contains(&secret), "{what} shows the secret:\n{text}");
    }
    // Markdown escapes the mask's asterisks, so that it renders as `***`.
    for (masked, mask) in [
        ("report.json", "***"),
        ("junit.xml", "***"),
        ("report.html", "***"),
        ("summary.md", "\\*\\*\\*"),
        ("run stdout", "***"),
    ] {
        let (_, text) = outputs.iter().find(|(w, _)| w == masked).unwrap();
        assert!(
            text.contains(mask),
            "{masked} does not show the mask:\n{text}"
        );
    }

    // Unset, the secret is a validation error naming it.
    let out = faultline(&["validate", file.to_str().unwrap()], &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 4, column 9: secret `token`: environment variable `FAULTLINE_TEST_TOKEN` is not set"),
        "{err}"
    );
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}
