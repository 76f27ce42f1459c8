//! The coordinator's web server (`listen`): real coordinator processes serving the dashboard, the
//! JSON API with its token-gated actions and `/metrics`, driven with curl and scraped by a real
//! Prometheus (the Debian `prometheus` package); the history is read straight from its SQLite file.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::support::{self, BIN, Proc, free_port, wait_for_port, wait_until};

const TOKEN: &str = "s3cret-token-for-tests-0123456789";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A coordinator serving its dashboard on `port` (the shared test coordinator, started and ready).
struct Coordinator {
    process: support::coordinator::Coordinator,
    port: u16,
}

impl Coordinator {
    fn start(gameday: &Path, port: u16) -> Coordinator {
        let process = support::coordinator::Coordinator::start(gameday);
        wait_for_port(port, Duration::from_secs(20));
        Coordinator { process, port }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// One HTTP request by curl: (status, body).
fn curl(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Finished runs in the history file: (run id, schedule, verdict).
fn finished(db: &Path) -> Vec<(String, Option<String>, String)> {
    if !db.exists() {
        return Vec::new();
    }
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let Ok(mut q) = conn.prepare(
        "SELECT run_id, schedule, verdict FROM runs WHERE ended_at_us IS NOT NULL ORDER BY started_at_us",
    ) else {
        return Vec::new();
    };
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("read runs")
        .collect::<Result<_, _>>()
        .expect("read runs")
}

fn started(db: &Path) -> usize {
    let Some(conn) = db
        .exists()
        .then(|| Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok())
        .flatten()
    else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// A game day in `dir` with the web server on `port`, the token in `dir/token`, and one schedule
/// `name` pausing `victim` for 300 ms on `cron`.
fn gameday(dir: &Path, port: u16, extra: &str, name: &str, cron: &str, victim: u32) -> PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let fault = format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {victim} }}\nduration = \"300ms\""
    );
    let exp = dir.join("pause.toml");
    std::fs::write(
        &exp,
        support::always_steady_experiment("pause <web>", "", &fault),
    )
    .unwrap();
    let text = format!(
        r#"[coordinator]
state_dir = "state"
name = "web-test"
lease = "2s"
listen = "127.0.0.1:{port}"
token_file = "token"
{extra}

[[schedule]]
name = "{name}"
experiments = ["pause.toml"]
cron = "{cron}"
"#
    );
    let path = dir.join("gameday.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn actions_without_the_token_are_refused_and_run_nothing_with_it_the_run_is_recorded() {
    let dir = support::tempdir();
    let victim = Proc::spawn(&["sleep", "600"]);
    let port = free_port();
    // A yearly cron: nothing fires in this test but what the API asks for.
    let file = gameday(dir.path(), port, "", "nightly", "0 0 1 1 *", victim.pid());
    let db = dir.path().join("state/history.db");
    let c = Coordinator::start(&file, port);
    let run_url = c.url("/api/v1/schedules/nightly/run");

    let (code, body) = curl("POST", &run_url, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl("POST", &run_url, Some("wrong-token-wrong-token"));
    assert_eq!(code, 401, "{body}");
    let (code, _) = curl("POST", &c.url("/api/v1/schedules/nightly/suspend"), None);
    assert_eq!(code, 401);
    // Refused actions start nothing: give a wrongly started fire time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(started(&db), 0, "a refused action started a run");
    let log = c.log();
    assert!(
        log.contains("api: `run` of schedule `nightly` by 127.0.0.1:")
            && log.contains("refused (missing or wrong bearer token)"),
        "no audit line for the refused action:\n{log}"
    );

    let (code, body) = curl("POST", &c.url("/api/v1/schedules/nope/run"), Some(TOKEN));
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl("POST", &run_url, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["ok"], true, "{body}");
    wait_until("the run asked for ends", Duration::from_secs(30), || {
        !finished(&db).is_empty()
    });
    let runs = finished(&db);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (id, schedule, verdict) = &runs[0];
    assert_eq!(schedule.as_deref(), Some("nightly"));
    assert_eq!(verdict, "passed", "log:\n{}", c.log());
    assert!(
        c.log()
            .contains("api: `run` of schedule `nightly` by 127.0.0.1:")
            && c.log().contains(": 200 `nightly` fires now"),
        "{}",
        c.log()
    );

    // The API lists it, filtered, and serves its stored report.
    let (code, body) = curl(
        "GET",
        &c.url("/api/v1/runs?schedule=nightly&verdict=passed&last=5"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let listed = json(&body);
    assert_eq!(listed["runs"][0]["run_id"], id.as_str(), "{body}");
    let (_, body) = curl("GET", &c.url("/api/v1/runs?verdict=failed"), None);
    assert_eq!(json(&body)["runs"], serde_json::json!([]), "{body}");
    let (code, body) = curl("GET", &c.url("/api/v1/runs?verdict=green"), None);
    assert_eq!(code, 400, "{body}");
    for (last, said) in [("0", "got 0"), ("1001", "got 1001")] {
        let (code, body) = curl("GET", &c.url(&format!("/api/v1/runs?last={last}")), None);
        assert_eq!(code, 400, "{body}");
        assert_eq!(body, format!("last must be from 1 to 1000 ({said})\n"));
    }
    let (code, body) = curl("GET", &c.url("/api/v1/runs?last=-1"), None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl("GET", &c.url(&format!("/api/v1/runs/{id}")), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["verdict"], "passed", "{body}");

    // Suspend and resume are runtime overrides the schedules endpoint shows.
    let (code, body) = curl(
        "POST",
        &c.url("/api/v1/schedules/nightly/suspend"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = curl("GET", &c.url("/api/v1/schedules"), None);
    let s = &json(&body)["schedules"][0];
    assert_eq!(s["suspended"], true, "{body}");
    assert_eq!(s["suspended_at_runtime"], true, "{body}");
    assert_eq!(s["next_fire"], serde_json::Value::Null, "{body}");
    assert!(
        s["skipped_before_next_fire"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("suspended (at runtime")),
        "{body}"
    );
    let (code, body) = curl(
        "POST",
        &c.url("/api/v1/schedules/nightly/resume"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = curl("GET", &c.url("/api/v1/schedules"), None);
    let s = &json(&body)["schedules"][0];
    assert_eq!(s["suspended"], false, "{body}");
    assert!(s["next_fire"]["utc"].as_str().is_some(), "{body}");

    // The pages: the dashboard lists the schedule and the run, the run page its report, the
    // experiment page its chart; markup from the title is escaped.
    let (code, page) = curl("GET", &c.url("/"), None);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<td>nightly</td>"), "{page}");
    assert!(
        page.contains("<span class=\"badge passed\">passed</span>"),
        "{page}"
    );
    assert!(
        page.contains("pause &lt;web&gt;") && !page.contains("pause <web>"),
        "{page}"
    );
    let (code, page) = curl("GET", &c.url(&format!("/runs/{id}")), None);
    assert_eq!(code, 200, "{page}");
    // The run page is the HTML report, the same bytes as `faultline show --html`.
    let shown = dir.path().join("shown.html");
    let out = Command::new(BIN)
        .args(["show", id, "--html"])
        .arg(&shown)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run faultline show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&shown).unwrap() == page,
        "the run page differs from `faultline show --html`"
    );
    let (code, page) = curl("GET", &c.url("/experiments/pause%20%3Cweb%3E"), None);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<svg id=\"ttr-chart\""), "{page}");
    assert!(page.contains("<rect class=\"run passed\""), "{page}");
    let (code, _) = curl("GET", &c.url("/runs/no-such-run"), None);
    assert_eq!(code, 404);

    // Both pages load in a real browser without console errors, with their pictures.
    let dom = chromium(&c.url("/"), "web-dashboard.png");
    assert!(dom.contains("id=\"schedules\""), "{dom}");
    let dom = chromium(&c.url(&format!("/runs/{id}")), "web-run-page.png");
    assert!(dom.contains("<svg"), "no SVG in the run page's DOM:\n{dom}");
    let dom = chromium(
        &c.url("/experiments/pause%20%3Cweb%3E"),
        "web-experiment-page.png",
    );
    assert!(
        dom.contains("id=\"ttr-chart\""),
        "no chart in the experiment page's DOM:\n{dom}"
    );
    assert!(dom.contains("class=\"run passed\""), "{dom}");
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Loads `url` in headless Chromium: returns the DOM after load, keeps a PNG screenshot named
/// `png` under the test target's tmp directory (an artifact), and fails on console messages.
fn chromium(url: &str, png: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh installs it)"
    );
    let profile = support::tempdir();
    let run = |extra: &[&str]| {
        let out = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("run chromium");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(
            console.is_empty(),
            "console messages loading {url}: {console:#?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(png);
    run(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,1400",
    ]);
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    dom
}

/// An instant query over a bare HTTP/1.0 request; `query` must need no URL escaping.
fn prom_query(port: u16, query: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET /api/v1/query?query={query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn prometheus_scrapes_the_coordinators_runs_counter_with_the_token() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: apt-get install prometheus (the Debian package)"
    );
    let dir = support::tempdir();
    let victim = Proc::spawn(&["sleep", "600"]);
    let port = free_port();
    let file = gameday(
        dir.path(),
        port,
        "dashboard_token = true",
        "every 2s",
        "*/2 * * * * *",
        victim.pid(),
    );
    let db = dir.path().join("state/history.db");
    let c = Coordinator::start(&file, port);
    // Reading needs the token too with `dashboard_token = true`.
    assert_eq!(curl("GET", &c.url("/metrics"), None).0, 401);
    assert_eq!(curl("GET", &c.url("/"), None).0, 401);
    wait_until("two finished runs", Duration::from_secs(30), || {
        finished(&db).len() >= 2
    });
    let (code, body) = curl(
        "POST",
        &c.url("/api/v1/schedules/every%202s/suspend"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    // Suspended: nothing new starts; wait for the fire under way, if any, to end.
    wait_until("no fire in progress", Duration::from_secs(30), || {
        let (_, body) = curl("GET", &c.url("/api/v1/schedules"), Some(TOKEN));
        json(&body)["schedules"][0]["in_progress"] == serde_json::json!([])
    });
    let runs = finished(&db);
    assert_eq!(runs.len(), started(&db), "a run without an end: {runs:?}");
    let (code, metrics) = curl("GET", &c.url("/metrics"), Some(TOKEN));
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("faultline_run_phase{schedule=\"every 2s\",phase=\"idle\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("faultline_time_to_recover_seconds_count{schedule=\"every 2s\"}")
            && metrics
                .contains("faultline_last_verdict{schedule=\"every 2s\",verdict=\"passed\"} 1"),
        "{metrics}"
    );

    let pdir = support::tempdir();
    let config = pdir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: faultline\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            dir.path().join("token").display()
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _prometheus = Proc::spawn(&[
        PROMETHEUS,
        &format!("--config.file={}", config.display()),
        &format!("--storage.tsdb.path={}", pdir.path().join("data").display()),
        &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        "--log.level=error",
    ]);
    let want = format!("\"{}\"]", runs.len());
    let mut answer = String::new();
    let got = support::poll_until(Duration::from_secs(30), || {
        answer = prom_query(prom_port, "sum(faultline_runs_total)");
        answer.contains(&want)
    });
    assert!(
        got.is_some(),
        "Prometheus never answered {} runs for sum(faultline_runs_total); last answer: {answer}",
        runs.len()
    );
    let passed = prom_query(
        prom_port,
        "faultline_runs_total{schedule=%22every%202s%22,verdict=%22passed%22}",
    );
    assert!(passed.contains(&want), "{passed}");
    // Suspended at runtime, the 2 s cron kept coming and started nothing: each slot is recorded
    // as skipped, suspended.
    assert_eq!(started(&db), runs.len(), "a run started after suspend");
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let suspended: i64 = conn
        .query_row(
            "SELECT count(*) FROM fires WHERE skipped = 'suspended'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(suspended >= 1, "no slot recorded as skipped, suspended");
}

#[test]
fn the_dashboard_shows_the_phase_of_the_run_in_progress() {
    let dir = support::tempdir();
    let victim = Proc::spawn(&["sleep", "600"]);
    let port = free_port();
    let file = gameday(dir.path(), port, "", "nightly", "0 0 1 1 *", victim.pid());
    // The same experiment, with a pause long enough to look at it while it holds.
    let exp = dir.path().join("pause.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(
        &exp,
        text.replace("duration = \"300ms\"", "duration = \"3s\""),
    )
    .unwrap();
    let c = Coordinator::start(&file, port);
    let (code, body) = curl("POST", &c.url("/api/v1/schedules/nightly/run"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    wait_until("the victim paused", Duration::from_secs(20), || {
        support::state_of(victim.pid()) == support::ProcState::Stopped
    });
    let (_, body) = curl("GET", &c.url("/api/v1/schedules"), None);
    let schedules = json(&body);
    assert_eq!(
        schedules["schedules"][0]["in_progress"][0]["phase"], "during",
        "{body}"
    );
    let (_, metrics) = curl("GET", &c.url("/metrics"), None);
    assert!(
        metrics.contains("faultline_run_phase{schedule=\"nightly\",phase=\"during\"} 1"),
        "{metrics}"
    );
    let (_, page) = curl("GET", &c.url("/"), None);
    assert!(page.contains("<td>during</td>"), "{page}");
    wait_until("the victim resumed", Duration::from_secs(20), || {
        support::state_of(victim.pid()) == support::ProcState::Awake
    });
}
