//! A real Alertmanager (Debian's `prometheus-alertmanager`) for the tests of the coordinator's
//! outage check: started on a free loopback port with a temporary storage directory, one receiver
//! that sends nothing and no cluster gossip; alerts posted and resolved through its API v2 with
//! curl. Killed, and its directory removed, on drop.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::agent::spawn_logged;
use super::{Proc, free_port, tempdir};

pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Alertmanager is ready in about 0.1 s; this bounds a slow start on a busy machine.
const STARTUP: Duration = Duration::from_secs(30);

/// One receiver without integrations: alerts are stored and listed, never sent anywhere.
const CONFIG: &str = "route:\n  receiver: none\nreceivers:\n  - name: none\n";

pub struct Alertmanager {
    // Field order is drop order: the process goes before its directory.
    proc: Proc,
    /// `http://127.0.0.1:PORT`, the base URL `outage.alertmanager` takes.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one and waits until `/-/ready` answers. A port taken between choosing and binding
    /// it makes the process exit; then another port is tried.
    pub fn start() -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} is missing: run scripts/setup.sh (Debian package prometheus-alertmanager)"
        );
        let dir = tempdir();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, CONFIG).expect("write the alertmanager config");
        let log = dir.path().join("alertmanager.log");
        for _ in 0..3 {
            let port = free_port();
            let mut proc = spawn_logged(
                &[
                    ALERTMANAGER,
                    &format!("--config.file={}", config.display()),
                    &format!("--storage.path={}", dir.path().join("data").display()),
                    &format!("--web.listen-address=127.0.0.1:{port}"),
                    // No gossip: no port of its own, no peers to wait for.
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                None,
                &log,
            );
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + STARTUP;
            while proc.alive() && Instant::now() < deadline {
                if curl(&[&format!("{url}/-/ready")]).0 == 200 {
                    return Alertmanager { proc, url, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                !proc.alive(),
                "alertmanager on {url} not ready within {STARTUP:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!(
            "alertmanager exited three times before it was ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `outage = { ... }` for a game day's `[coordinator]` table, pointing at this Alertmanager.
    pub fn outage_toml(&self, matchers: &[&str]) -> String {
        let matchers: Vec<String> = matchers.iter().map(|m| format!("'{m}'")).collect();
        format!(
            "outage = {{ alertmanager = \"{}\", matchers = [{}] }}",
            self.url,
            matchers.join(", ")
        )
    }

    /// Posts one alert with `labels`, started a minute ago, ending at `ends_at` (as Prometheus
    /// does; without `startsAt` Alertmanager would take `endsAt` as the start). The alert is
    /// listed as soon as this returns: Alertmanager stores it before it answers, and
    /// `group_wait` only delays notifications.
    pub fn post_alert(&self, labels: &[(&str, &str)], ends_at: Timestamp) {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let body = serde_json::json!([{
            "labels": labels,
            "startsAt": (Timestamp::now() - SignedDuration::from_secs(60)).to_string(),
            "endsAt": ends_at.to_string(),
        }]);
        let (status, answer) = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &format!("{}/api/v2/alerts", self.url),
        ]);
        assert_eq!(status, 200, "posting {body} to alertmanager: {answer}");
    }

    /// A firing alert with `labels` for the next hour.
    pub fn fire(&self, labels: &[(&str, &str)]) {
        self.post_alert(labels, Timestamp::now() + SignedDuration::from_hours(1));
    }

    /// Resolves the alert with exactly these labels: the same labels, ended a second ago.
    pub fn resolve(&self, labels: &[(&str, &str)]) {
        self.post_alert(labels, Timestamp::now() - SignedDuration::from_secs(1));
    }

    /// The `alertname` of every active alert (neither silenced nor inhibited), sorted.
    pub fn active_names(&self) -> Vec<String> {
        let (status, body) = curl(&[&format!(
            "{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
            self.url
        )]);
        assert_eq!(status, 200, "listing alerts: {body}");
        let alerts: Vec<serde_json::Value> =
            serde_json::from_str(&body).expect("alertmanager lists alerts as a JSON array");
        let mut names: Vec<String> = alerts
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_owned())
            .collect();
        names.sort();
        names
    }

    /// What Alertmanager logged so far, to explain a failure.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// One curl call (argument vector, 5 s at most); returns (status, body), status 0 and curl's
/// own message when no answer came.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    match code.trim().parse() {
        Ok(code) if code != 0 => (code, body.to_owned()),
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}
