//! `[[notify]]` webhooks: a real HTTP receiver on loopback (a std `TcpListener` thread that answers
//! from a script and records every request) told of real runs of the `faultline` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::{BIN, Proc, always_steady_experiment, free_port, http_server, tempdir};

/// One request the receiver read, and the status it answered.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
    answered: u16,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("the webhook body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1: answers the n-th request with `script[n]` (the last entry
/// for every request past the script), records each. Stopped and joined on drop.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = script.to_vec();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let n = seen.lock().unwrap().len();
                            let status = *script.get(n).or(script.last()).unwrap();
                            if let Some(request) = serve(stream, status) {
                                seen.lock().unwrap().push(request);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Receiver {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one HTTP/1.1 request and answers `status` with an empty body, closing the connection.
fn serve(stream: TcpStream, status: u16) -> Option<Request> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).ok()?;
    Some(Request {
        path,
        headers,
        body: String::from_utf8(body).ok()?,
        answered: status,
    })
}

/// Runs `faultline run FILE --quiet --report-json` with `env`; (exit code, stderr, report).
fn run(dir: &Path, toml: &str, env: &[(&str, &str)]) -> (i32, String, serde_json::Value) {
    let file = dir.join("experiment.toml");
    std::fs::write(&file, toml).expect("write the experiment");
    let report = dir.join("report.json");
    let out = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .args(["--quiet", "--report-json"])
        .arg(&report)
        .env("FAULTLINE_STATE_DIR", dir.join("state"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run faultline");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{stderr}"));
    (
        out.status.code().unwrap_or(-1),
        stderr,
        serde_json::from_str(&text).expect("the report is JSON"),
    )
}

#[test]
fn a_failed_run_is_posted_once_even_after_the_receiver_answered_500() {
    let dir = tempdir();
    let receiver = Receiver::start(&[500, 200]);
    let port = free_port();
    let _server = http_server(port, dir.path());
    // Nobody restarts the server, so the run fails; short windows keep it under two seconds.
    let toml = format!(
        r#"title = "webhook on failure"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "front page"
tcp = "127.0.0.1:{port}"
every = "100ms"
[[fault]]
name = "kill"
kind = "process-kill"
select = {{ port = {port} }}
[recovery]
within = "300ms"
[[notify]]
webhook = "{url}"
secret_env = "FAULTLINE_TEST_HOOK_TOKEN"
link = "https://chaos.example.com/runs/{{run_id}}"
"#,
        url = receiver.url()
    );
    let (code, stderr, report) = run(
        dir.path(),
        &toml,
        &[("FAULTLINE_TEST_HOOK_TOKEN", "hook-s3cret")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(report["verdict"], "failed");
    // The CLI waits for its deliveries (up to 10 s) before it exits, so they are all in.
    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(
        statuses,
        [500, 200],
        "two attempts, the second delivered: {requests:#?}\n{stderr}"
    );
    let run_id = report["run_id"].as_str().unwrap();
    for r in &requests {
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("authorization"), Some("Bearer hook-s3cret"));
        assert_eq!(
            r.header("idempotency-key"),
            Some(format!("faultline-{run_id}").as_str()),
            "a retry carries the same key"
        );
        assert_eq!(r.body, requests[0].body, "a retry sends the same body");
    }
    let body = requests[1].json();
    assert_eq!(body["verdict"], "failed");
    assert_eq!(body["exit_code"], 1);
    assert_eq!(body["run_id"], run_id);
    assert_eq!(body["reason"], report["reason"]);
    assert_eq!(body["experiment"]["title"], "webhook on failure");
    assert_eq!(body["experiment"]["file"], report["experiment"]["file"]);
    assert_eq!(body["experiment"]["sha256"], report["experiment"]["sha256"]);
    assert!(
        body["started_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    assert!(body["ended_at"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(body["time_to_recover_ms"].is_null(), "{body}");
    let link = format!("https://chaos.example.com/runs/{run_id}");
    assert_eq!(body["link"], link.as_str());
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "faultline: FAILED — webhook on failure (run {run_id}): front page success was 0%"
        )),
        "{text}"
    );
    assert!(text.ends_with(&format!("<{link}|details>")), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert!(
        stderr.contains(&format!(
            "warning: notification for run {run_id} to http://127.0.0.1:{}/hook failed: HTTP 500 Internal Server Error (attempt 1 of 5); trying again in 1s",
            receiver.port
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hook-s3cret"), "the token is never logged");
}

#[test]
fn a_passed_run_is_posted_only_where_on_lists_passed_and_a_4xx_is_not_retried() {
    let dir = tempdir();
    let by_default = Receiver::start(&[200]);
    let on_passed = Receiver::start(&[200]);
    let refusing = Receiver::start(&[404]);
    let victim = Proc::spawn(&["sleep", "300"]);
    let faults = format!(
        r#"[[fault]]
name = "kill"
kind = "process-kill"
select = {{ pid = {} }}
[[notify]]
webhook = "{}"
[[notify]]
webhook = "{}"
on = ["passed"]
[[notify]]
webhook = "{}"
on = ["passed", "failed"]
"#,
        victim.pid(),
        by_default.url(),
        on_passed.url(),
        refusing.url()
    );
    let toml = always_steady_experiment("webhook on pass", "", &faults);
    let (code, stderr, report) = run(dir.path(), &toml, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["verdict"], "passed");
    assert!(
        by_default.requests().is_empty(),
        "the default `on` (failed, aborted, error) leaves a pass out: {:#?}",
        by_default.requests()
    );
    let posted = on_passed.requests();
    assert_eq!(posted.len(), 1, "{posted:#?}\n{stderr}");
    assert_eq!(posted[0].json()["verdict"], "passed");
    assert!(posted[0].json()["link"].is_null());
    assert_eq!(refusing.requests().len(), 1, "a 404 is not retried");
    assert!(
        stderr.contains(&format!(
            "notification for run {} refused by http://127.0.0.1:{}/hook: HTTP 404 Not Found (attempt 1); not retried",
            report["run_id"].as_str().unwrap(),
            refusing.port
        )),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_a_bad_notify_table_with_its_position() {
    let dir = tempdir();
    let file = dir.path().join("bad.toml");
    let toml = always_steady_experiment(
        "bad notify",
        "",
        "[[fault]]\nname = \"k\"\nkind = \"process-kill\"\nselect = { name = \"nothing\" }\n[[notify]]\nwebhook = \"https://hooks.example.com/x\"\non = [\"failed\", \"broken\"]\n",
    );
    std::fs::write(&file, &toml).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&file)
        .env("FAULTLINE_STATE_DIR", dir.path().join("state"))
        .output()
        .expect("run faultline validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = toml.lines().position(|l| l.starts_with("on = ")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "bad.toml: line {line}, column 17: `on`: unknown variant `broken`, expected one of `passed`, `failed`, `aborted`, `not_run`, `error`"
        )),
        "{stderr}"
    );
}

/// A `faultline coordinator` process, its log (stderr) in a file; dropped while running, it gets
/// two SIGTERMs (the second reverts at once) and then SIGKILL.
struct Coordinator {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Coordinator {
    fn start(gameday: &Path) -> Coordinator {
        let log = gameday.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("create the coordinator log");
        let child = Command::new(BIN)
            .arg("coordinator")
            .arg(gameday)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start faultline coordinator");
        Coordinator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then waits up to `within` for the exit; the exit code, if it exited.
    fn stop(&mut self, within: Duration) -> Option<i32> {
        self.term();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.term();
        std::thread::sleep(Duration::from_millis(100));
        self.term();
        let _ = self.stop(Duration::from_secs(10));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (run id, schedule, verdict) of every finished run in a coordinator's SQLite history.
fn finished_runs(db: &Path) -> Vec<(String, Option<String>, String)> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let Ok(mut q) =
        conn.prepare("SELECT run_id, schedule, verdict FROM runs WHERE verdict IS NOT NULL")
    else {
        return Vec::new();
    };
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[test]
fn a_coordinator_posts_each_run_once_to_a_webhook_named_by_the_game_day_and_the_experiment() {
    let dir = tempdir();
    let receiver = Receiver::start(&[500, 200]);
    let victim = Proc::spawn(&["sleep", "600"]);
    // The same webhook in the experiment and in the game day: each run is posted once.
    let fault = format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {} }}\nduration = \"200ms\"\n[[notify]]\nwebhook = \"{}\"\non = [\"passed\"]\n",
        victim.pid(),
        receiver.url()
    );
    let exp = dir.path().join("pause.toml");
    std::fs::write(&exp, always_steady_experiment("paused", "", &fault)).unwrap();
    let gameday = dir.path().join("gameday.toml");
    std::fs::write(
        &gameday,
        format!(
            r#"[coordinator]
state_dir = "state"
name = "notify-coordinator"
lease = "2s"

[[notify]]
webhook = "{}"
on = ["passed", "failed"]

[[schedule]]
name = "every 2s"
experiments = ["{}"]
cron = "*/2 * * * * *"
"#,
            receiver.url(),
            exp.display()
        ),
    )
    .unwrap();
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&gameday);
    let delivered = |r: &Receiver| r.requests().iter().filter(|q| q.answered == 200).count();
    crate::support::wait_until("two delivered posts", Duration::from_secs(30), || {
        delivered(&receiver) >= 2
    });
    let code = coordinator.stop(Duration::from_secs(15));
    let log = coordinator.log();
    assert_eq!(code, Some(0), "{log}");
    let runs = finished_runs(&db);
    let requests = receiver.requests();
    assert_eq!(requests[0].answered, 500, "{requests:#?}");
    let mut posted = std::collections::BTreeSet::new();
    for r in requests.iter().filter(|r| r.answered == 200) {
        let body = r.json();
        let id = body["run_id"].as_str().unwrap().to_owned();
        assert!(
            posted.insert(id.clone()),
            "run {id} posted twice: {requests:#?}"
        );
        let run = runs
            .iter()
            .find(|(run, _, _)| *run == id)
            .unwrap_or_else(|| panic!("posted run {id} is not in the history {runs:?}\n{log}"));
        assert_eq!(body["verdict"], run.2.as_str());
        assert_eq!(body["verdict"], "passed");
        assert_eq!(body["schedule"], "every 2s");
        assert_eq!(run.1.as_deref(), Some("every 2s"));
        assert_eq!(body["experiment"]["title"], "paused");
    }
    // The first attempt (answered 500) was retried: its run is among the delivered ones.
    let first = requests[0].json()["run_id"].as_str().unwrap().to_owned();
    assert!(posted.contains(&first), "{requests:#?}");
    assert!(
        log.contains(&format!(
            "notification for run {first} to http://127.0.0.1:{}/hook failed: HTTP 500",
            receiver.port
        )),
        "{log}"
    );
}

#[test]
fn a_webhook_nobody_answers_is_given_up_after_the_cli_bound_and_the_exit_code_stands() {
    let dir = tempdir();
    let victim = Proc::spawn(&["sleep", "300"]);
    // Nothing listens on this port: every attempt is refused and retried with backoff, past the
    // 10 s the CLI waits.
    let closed = free_port();
    let faults = format!(
        "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\nselect = {{ pid = {} }}\n[[notify]]\nwebhook = \"http://user:hunter2@127.0.0.1:{closed}/hook/secret-path?token=t0ken\"\non = [\"passed\"]\n",
        victim.pid()
    );
    let toml = always_steady_experiment("nobody listens", "", &faults);
    let (code, stderr, report) = run(dir.path(), &toml, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["verdict"], "passed");
    let run_id = report["run_id"].as_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "warning: notification for run {run_id} to http://127.0.0.1:{closed}/hook/… failed: connection failed (attempt 1 of 5); trying again in 1s"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: notifications not delivered within 10s of the verdict were abandoned (the run's exit code is unaffected)"),
        "{stderr}"
    );
    for secret in ["hunter2", "secret-path", "t0ken"] {
        assert!(!stderr.contains(secret), "`{secret}` is logged: {stderr}");
    }
}

#[test]
fn a_run_stopped_before_its_baseline_by_an_unreachable_agent_is_posted_as_an_error() {
    let dir = tempdir();
    let receiver = Receiver::start(&[200]);
    let certs = crate::support::agent::Certs::make(dir.path(), &["127.0.0.1"]);
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"w1\"\naddress = \"https://127.0.0.1:{}\"\ntags = {{ role = \"web\" }}\n",
            certs.ca().display(),
            certs.file("token").display(),
            free_port()
        ),
    )
    .unwrap();
    let toml = always_steady_experiment(
        "agent away",
        "[targets.web]\ntags = { role = \"web\" }",
        &format!(
            "[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\non = \"web\"\nselect = {{ name = \"nothing\" }}\n[[notify]]\nwebhook = \"{}\"\n",
            receiver.url()
        ),
    );
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .arg("--quiet")
        .arg("--agents")
        .arg(&inventory)
        .env("FAULTLINE_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .expect("run faultline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}\n{stderr}");
    let body = requests[0].json();
    assert_eq!(body["verdict"], "error");
    assert_eq!(body["exit_code"], 5);
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("nothing was injected"), "{reason}");
    assert!(
        reason.contains("w1"),
        "the reason names the agent: {reason}"
    );
}
