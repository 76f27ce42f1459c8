//! Every report, every time: the files a `faultline run` was asked for (JSON, JUnit, HTML, Markdown)
//! exist and say why for a run that ended before its baseline (an unreachable agent, a halted
//! one, an unusable inventory) as for a failed run, and the run is in the history with that
//! reason. Also: the CI examples under `examples/ci/` parse and use only flags `run` has.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::agent::{Certs, TlsAgent};
use crate::support::{self, BIN, free_port, http_server, tempdir};

/// What one run wrote: its exit code and output, and the text of each report file (None when
/// the file does not exist).
struct Written {
    run: support::Run,
    junit: Option<String>,
    html: Option<String>,
    markdown: Option<String>,
}

impl Written {
    fn json(&self) -> &Value {
        self.run
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report: {}", self.run.explain()))
    }

    fn junit(&self) -> &str {
        self.junit
            .as_deref()
            .unwrap_or_else(|| panic!("no JUnit report: {}", self.run.explain()))
    }

    fn html(&self) -> &str {
        self.html
            .as_deref()
            .unwrap_or_else(|| panic!("no HTML report: {}", self.run.explain()))
    }

    fn markdown(&self) -> &str {
        self.markdown
            .as_deref()
            .unwrap_or_else(|| panic!("no Markdown summary: {}", self.run.explain()))
    }
}

/// Runs `toml` in `dir` (state in `dir/state`) asking for every report, after removing any
/// earlier ones, so a file found was written by this run.
fn run_with_reports(dir: &Path, toml: &str, extra: &[&str]) -> Written {
    let junit = dir.join("junit.xml");
    let html = dir.join("report.html");
    let markdown = dir.join("summary.md");
    for file in [&junit, &html, &markdown] {
        let _ = std::fs::remove_file(file);
    }
    let mut args = vec![
        "--junit",
        junit.to_str().unwrap(),
        "--report-html",
        html.to_str().unwrap(),
        "--summary-md",
        markdown.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = support::run_experiment(dir, toml, &args);
    Written {
        run,
        junit: std::fs::read_to_string(&junit).ok(),
        html: std::fs::read_to_string(&html).ok(),
        markdown: std::fs::read_to_string(&markdown).ok(),
    }
}

/// An inventory of agents (name, address, role), trusting `certs`.
fn inventory(dir: &Path, certs: &Certs, agents: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = format!(
        "ca = \"{}\"\ntoken_file = \"{}\"\n",
        certs.ca().display(),
        certs.file("token").display()
    );
    for (name, address, role) in agents {
        text.push_str(&format!(
            "\n[[agent]]\nname = \"{name}\"\naddress = \"{address}\"\ntags = {{ role = \"{role}\" }}\n"
        ));
    }
    let path = dir.join("inventory.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A steady experiment that would pause a process on the agents of group `web`; its victim
/// never matters, since these runs stop before they inject anything.
fn pause_on_web(title: &str) -> String {
    support::always_steady_experiment(
        title,
        "[targets.web]\ntags = { role = \"web\" }",
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\non = \"web\"\nselect = { name = \"nothing-by-this-name\" }\nduration = \"300ms\"",
    )
}

/// The runs recorded in `state`, newest first, as `faultline history --json` prints them.
fn history(state: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["history", "--json", "--state-dir"])
        .arg(state)
        .output()
        .expect("run faultline history");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("history --json is JSON") {
        Value::Array(list) => list,
        other => panic!("history --json is not an array: {other}"),
    }
}

/// The checks every run that stopped before its baseline must pass: `exit`, verdict `error`, a
/// reason containing `why` in the JSON, the JUnit, the HTML and the Markdown, nothing measured,
/// every fault skipped, and the run in the history with the same reason.
fn assert_stopped_before_baseline(dir: &Path, written: &Written, exit: i32, why: &str) -> String {
    let run = &written.run;
    assert_eq!(run.code, exit, "{}", run.explain());
    let json = written.json();
    assert_eq!(json["verdict"], "error", "{json:#}");
    assert_eq!(json["exit_code"], exit, "{json:#}");
    let reason = json["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains(why), "{reason}");
    assert!(reason.ends_with("; nothing was injected"), "{reason}");
    for phase in ["before", "during", "after"] {
        assert_eq!(json["phases"][phase], Value::Array(Vec::new()), "{json:#}");
    }
    assert!(
        json["faults"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "skipped"),
        "{json:#}"
    );

    let junit = written.junit();
    assert!(
        junit.contains("<property name=\"verdict\" value=\"error\"/>"),
        "{junit}"
    );
    // The steady state was never measured, so its test case fails with the reason; the XML
    // escapes the reason's quotes and brackets, the words that say why are plain.
    let before = junit
        .split("<testcase ")
        .find(|case| case.contains("name=\"steady state before the method\""))
        .unwrap_or_else(|| panic!("no baseline test case: {junit}"));
    assert!(
        before.contains("<failure type=\"error\" message=\"") && before.contains(why),
        "{junit}"
    );

    let html = written.html();
    assert!(html.contains("nothing was injected"), "{html}");
    assert!(html.contains(json["run_id"].as_str().unwrap()), "{html}");

    let markdown = written.markdown();
    assert!(markdown.starts_with("### ERROR: "), "{markdown}");
    assert!(
        markdown.contains(&format!("**ERROR** (exit {exit}) — ")),
        "{markdown}"
    );
    assert!(
        markdown.contains(&why.replace('`', "\\`")),
        "the summary quotes the reason: {markdown}"
    );
    assert!(
        markdown.contains("No steady state was measured: the run ended before its baseline."),
        "{markdown}"
    );

    let runs = history(&dir.join("state"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["run_id"], json["run_id"]);
    assert_eq!(runs[0]["verdict"], "error");
    assert_eq!(runs[0]["exit_code"], exit);
    assert_eq!(runs[0]["reason"].as_str(), Some(reason.as_str()));
    // The stored report reads back: `show` prints what the run printed.
    let shown = Command::new(BIN)
        .args(["show", json["run_id"].as_str().unwrap(), "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .expect("run faultline show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.ends_with(&format!("verdict: ERROR (exit {exit}) — {reason}\n")),
        "{shown}"
    );
    assert!(run.stdout.ends_with(&*shown), "{}", run.explain());
    reason
}

#[test]
fn an_unreachable_agent_exits_5_and_every_report_says_why() {
    let dir = tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    // Nothing listens on a port just freed: the health check is refused at once.
    let address = format!("https://127.0.0.1:{}", free_port());
    let inv = inventory(dir.path(), &certs, &[("web-1", &address, "web")]);
    let written = run_with_reports(
        dir.path(),
        &pause_on_web("unreachable agent"),
        &["--agents", inv.to_str().unwrap()],
    );
    let reason = assert_stopped_before_baseline(dir.path(), &written, 5, "web-1");
    assert!(
        written.run.stderr.contains(&reason),
        "{}",
        written.run.explain()
    );
    let json = written.json();
    assert_eq!(json["faults"][0]["agent"], "web-1", "{json:#}");
    assert!(
        written
            .markdown()
            .contains("| `pause` (process-pause) | web-1 | - | skipped | - |"),
        "{}",
        written.markdown()
    );
}

#[test]
fn a_halted_agent_exits_5_and_every_report_says_why() {
    let dir = tempdir();
    let agent = TlsAgent::start(dir.path());
    let inv = inventory(
        dir.path(),
        &agent.certs,
        &[("web-1", &agent.url(""), "web")],
    );
    let halt = support::faultline(
        &["halt", "--agents", inv.to_str().unwrap()],
        &dir.path().join("halt-state"),
    );
    assert!(
        halt.status.success(),
        "{}",
        String::from_utf8_lossy(&halt.stderr)
    );
    let written = run_with_reports(
        dir.path(),
        &pause_on_web("halted agent"),
        &["--agents", inv.to_str().unwrap()],
    );
    assert_stopped_before_baseline(dir.path(), &written, 5, "agent `web-1` is halted");
}

#[test]
fn an_inventory_whose_group_matches_no_agent_exits_2_with_every_report() {
    let dir = tempdir();
    let certs = Certs::make(dir.path(), &["127.0.0.1"]);
    // The only agent is a `db`: group `web` matches nothing, so no agent is ever contacted.
    let inv = inventory(dir.path(), &certs, &[("db-1", "https://127.0.0.1:9", "db")]);
    let written = run_with_reports(
        dir.path(),
        &pause_on_web("no agent in the group"),
        &["--agents", inv.to_str().unwrap()],
    );
    assert_stopped_before_baseline(
        dir.path(),
        &written,
        2,
        "target group `web` (tags role=web) matches none of the 1 agent(s)",
    );
    // The selection never happened: no fault is listed for an agent it would have chosen.
    assert_eq!(written.json()["faults"], Value::Array(Vec::new()));
}

#[test]
fn the_summary_of_a_failed_run_names_the_probe_the_numbers_and_the_threshold() {
    let dir = tempdir();
    let port = free_port();
    let _server = http_server(port, dir.path());
    let toml = format!(
        r#"title = "web server comes back after being killed"
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "front page"
http = {{ url = "http://127.0.0.1:{port}/" }}
every = "100ms"
timeout = "500ms"
slo = {{ success = "99%", p99 = "250ms" }}
[[fault]]
name = "kill"
kind = "process-kill"
select = {{ port = {port} }}
[recovery]
within = "1s"
"#
    );
    let written = run_with_reports(dir.path(), &toml, &[]);
    assert_eq!(written.run.code, 1, "{}", written.run.explain());
    let md = written.markdown();
    let json = written.json();
    assert!(
        md.starts_with("### FAILED: web server comes back after being killed\n"),
        "{md}"
    );
    // The reason names the probe, its success ratio with the counts, and the threshold it missed.
    assert!(
        md.contains("**FAILED** (exit 1) — front page success was 0% (0/"),
        "{md}"
    );
    assert!(md.contains(", below 99%"), "{md}");
    assert!(md.contains("not recovered within the allowed 1 s"), "{md}");
    assert!(
        md.contains("| time to recover | **not recovered** (allowed 1 s) |"),
        "{md}"
    );
    // The table row carries the same numbers as the JSON report.
    let after = &json["phases"]["after"][0];
    let row = format!(
        "| after | front page | 0% (0/{}) | - (limit 250 ms) | **NOT met** |",
        after["samples"]
    );
    assert!(md.contains(&row), "{row} missing from\n{md}");
    let before = &json["phases"]["before"][0];
    let row = format!(
        "| before | front page | 100% ({0}/{0}) |",
        before["samples"]
    );
    assert!(md.contains(&row), "{row} missing from\n{md}");
    let before_p99 = before["p99_ms"].as_f64().unwrap();
    assert!(before_p99 < 250.0, "{json:#}");
    assert!(
        md.lines()
            .any(|l| l.starts_with("| before |") && l.contains(" (limit 250 ms) | met |")),
        "{md}"
    );
    assert!(
        md.contains(&format!("| run | `{}` |", json["run_id"].as_str().unwrap())),
        "{md}"
    );
    assert!(
        md.contains("| `kill` (process-kill) | local | pid "),
        "{md}"
    );
}

/// Every YAML document of `file`, as JSON (python3 with PyYAML, a real YAML parser).
fn yaml(file: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

/// Every `--flag` the shell scripts of an example pass to `faultline run`.
fn run_flags(script: &str) -> Vec<String> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| l.contains("faultline run "))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap().to_owned())
        .collect()
}

fn assert_flags_exist(file: &str, script: &str) {
    let help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run faultline run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags = run_flags(script);
    for flag in [
        "--agents",
        "--report-json",
        "--junit",
        "--report-html",
        "--summary-md",
    ] {
        assert!(
            flags.iter().any(|f| f == flag),
            "{file} does not pass {flag}"
        );
    }
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{file} passes {flag}, which `faultline run` does not have"
        );
    }
}

#[test]
fn the_github_actions_example_gates_on_the_exit_code_and_always_uploads_the_reports() {
    let file = "examples/ci/github-actions.yml";
    let doc = yaml(Path::new(file));
    let jobs = doc["jobs"].as_object().expect("jobs");
    let steps: Vec<&Value> = jobs
        .values()
        .flat_map(|j| j["steps"].as_array().into_iter().flatten())
        .collect();
    let script: String = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert_flags_exist(file, &script);
    assert!(script.contains("$GITHUB_STEP_SUMMARY"), "{script}");
    for code in ["0)", "1)", "3)", "4)", "5)"] {
        assert!(script.contains(code), "{file} does not handle exit {code}");
    }
    let upload = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        })
        .expect("a step uploads the reports");
    assert_eq!(upload["if"], "always()", "{upload}");
    let paths = upload["with"]["path"].as_str().unwrap();
    for report in ["report.json", "junit.xml", "report.html", "summary.md"] {
        assert!(paths.contains(report), "{paths}");
    }
}

#[test]
fn the_gitlab_example_gates_on_the_exit_code_and_always_keeps_the_reports() {
    let file = "examples/ci/gitlab-ci.yml";
    let doc = yaml(Path::new(file));
    let job = doc
        .as_object()
        .unwrap()
        .values()
        .find(|j| j["script"].is_array())
        .expect("a job with a script");
    let script: String = job["script"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    assert_flags_exist(file, &script);
    for code in ["0)", "1)", "3)", "4)", "5)"] {
        assert!(script.contains(code), "{file} does not handle exit {code}");
    }
    let artifacts = &job["artifacts"];
    assert_eq!(artifacts["when"], "always", "{artifacts}");
    assert_eq!(
        artifacts["reports"]["junit"], "reports/junit.xml",
        "{artifacts}"
    );
    let paths = artifacts["paths"].to_string();
    for report in ["report.json", "report.html", "summary.md"] {
        assert!(paths.contains(report), "{paths}");
    }
}
