//! Owns run notifications: the `[[notify]]` table (its TOML shape and validation, shared by
//! experiments), the JSON a webhook receives (with a one-line Slack-compatible `text`), and its
//! delivery with retries and backoff.
//!
//! A notification never delays or changes a run: it is sent after the verdict, the CLI waits for
//! it at most [`CLI_WAIT`], the coordinator sends it from a task of its own, and a delivery that
//! fails is logged with the webhook's URL cut to what carries no secret ([`shown_url`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::history::{RunEnd, RunStart};
use crate::report::{Report, Verdict};

/// How long `faultline run` waits for its deliveries after the verdict is printed; what is still
/// being retried then is abandoned (with a log line), so a dead receiver costs a pipeline at most
/// this much and never its exit code.
pub(crate) const CLI_WAIT: Duration = Duration::from_secs(10);

/// How long one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pauses before the second to fifth attempts: five attempts over about 15 s (plus their
/// timeouts), enough to ride out a receiver's restart without piling up forever.
const BACKOFF: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// The verdicts notified when `on` is not given: the runs someone must look at.
const DEFAULT_ON: [Verdict; 3] = [Verdict::Failed, Verdict::Aborted, Verdict::Error];

/// `[[notify]]` as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    webhook: Spanned<String>,
    on: Option<Spanned<Vec<Verdict>>>,
    /// The name of an environment variable holding a token, sent as `Authorization: Bearer …`.
    secret_env: Option<Spanned<String>>,
    /// The run's page, with `{run_id}` replaced, e.g. `https://chaos.example.com/runs/{run_id}`.
    link: Option<Spanned<String>>,
}

/// A validated `[[notify]]` table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notify {
    pub(crate) webhook: reqwest::Url,
    /// Which verdicts are sent; never empty.
    pub(crate) on: Vec<Verdict>,
    pub(crate) secret_env: Option<String>,
    pub(crate) link: Option<String>,
}

/// A `[[notify]]` table that is not valid: where in the file, and why.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) span: Range<usize>,
    pub(crate) message: String,
}

impl RawNotify {
    /// Checks one table; the caller turns the span into a line and column.
    pub(crate) fn validate(self) -> Result<Notify, Invalid> {
        let fail = |span: Range<usize>, message: String| Invalid { span, message };
        let webhook = http_url("webhook", self.webhook.get_ref())
            .map_err(|m| fail(self.webhook.span(), m))?;
        let on = match self.on {
            None => DEFAULT_ON.to_vec(),
            Some(on) if on.get_ref().is_empty() => {
                return Err(fail(
                    on.span(),
                    "notify: `on` lists no verdict, so nothing would ever be sent; list some of passed, failed, aborted, not_run, error, or leave `on` out for failed, aborted, error".to_owned(),
                ));
            }
            Some(on) => {
                let mut verdicts = Vec::new();
                for v in on.into_inner() {
                    if !verdicts.contains(&v) {
                        verdicts.push(v);
                    }
                }
                verdicts
            }
        };
        let secret_env = match self.secret_env {
            None => None,
            Some(name) => {
                let ok = name.get_ref().chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                });
                if !ok || name.get_ref().is_empty() {
                    return Err(fail(
                        name.span(),
                        format!(
                            "notify: `secret_env` must name an environment variable (letters, digits, `_`), got `{}`",
                            name.get_ref()
                        ),
                    ));
                }
                Some(name.into_inner())
            }
        };
        let link = match self.link {
            None => None,
            Some(link) => {
                http_url("link", &link.get_ref().replace("{run_id}", "x"))
                    .map_err(|m| fail(link.span(), m))?;
                Some(link.into_inner())
            }
        };
        Ok(Notify {
            webhook,
            on,
            secret_env,
            link,
        })
    }
}

/// An `http://` or `https://` URL with a host; the error shows the URL without its secrets.
fn http_url(key: &str, text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("notify: `{key}` is not a URL ({e}): `{}`", shown_url(text)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "notify: `{key}` must start with http:// or https:// (got scheme `{}`)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "notify: `{key}` names no host: `{}`",
            shown_url(text)
        ));
    }
    Ok(url)
}

/// A webhook URL as logs show it: scheme, host, port and the first path segment. Credentials may
/// sit in the user part, the query, or the path itself (Slack's `/services/T…/B…/secret`), so
/// everything after the first segment is cut to `…`.
pub(crate) fn shown_url(text: &str) -> String {
    let Ok(url) = reqwest::Url::parse(text) else {
        return "(not a URL)".to_owned();
    };
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    let mut segments = url.path().split('/').filter(|s| !s.is_empty());
    if let Some(first) = segments.next() {
        shown.push('/');
        shown.push_str(first);
    }
    if segments.next().is_some() || url.query().is_some() || url.fragment().is_some() {
        shown.push_str("/…");
    }
    shown
}

/// What a notification says about a run, from its report (live, or read back from the history).
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    pub(crate) reason: String,
    pub(crate) title: String,
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) run_id: String,
    pub(crate) started_at: jiff::Timestamp,
    pub(crate) ended_at: jiff::Timestamp,
    pub(crate) exit_code: u8,
    pub(crate) time_to_recover: Option<Duration>,
    /// The schedule that fired the run, for a coordinator's run.
    pub(crate) schedule: Option<String>,
}

impl Outcome {
    pub(crate) fn of_report(report: &Report, schedule: Option<&str>) -> Outcome {
        Outcome {
            verdict: report.verdict,
            reason: report.reason.clone(),
            title: report.title.clone(),
            file: report.file.clone(),
            sha256: report.sha256.clone(),
            run_id: report.run_id.clone(),
            started_at: report.started_at,
            ended_at: report.ended_at,
            exit_code: report.exit_code(),
            time_to_recover: report.time_to_recover,
            schedule: schedule.map(str::to_owned),
        }
    }

    /// A coordinator's run as the history records it, so a run that ended without a report (an
    /// experiment that no longer loads, an unreachable agent) is notified too.
    pub(crate) fn of_run(start: &RunStart, end: &RunEnd) -> Outcome {
        let verdict = [
            Verdict::Passed,
            Verdict::Failed,
            Verdict::Aborted,
            Verdict::NotRun,
        ]
        .into_iter()
        .find(|v| v.as_str() == end.verdict)
        .unwrap_or(Verdict::Error);
        Outcome {
            verdict,
            reason: end.reason.clone(),
            title: start.title.clone(),
            file: start.file.clone(),
            sha256: start.sha256.clone(),
            run_id: start.run_id.clone(),
            started_at: start.started_at,
            ended_at: end.ended_at,
            exit_code: end.exit_code,
            time_to_recover: end.time_to_recover,
            schedule: start.schedule.clone(),
        }
    }

    /// The JSON body a webhook receives.
    pub(crate) fn body(&self, link: Option<&str>) -> serde_json::Value {
        let link = link.map(|l| l.replace("{run_id}", &self.run_id));
        serde_json::json!({
            "text": self.text(link.as_deref()),
            "verdict": self.verdict.as_str(),
            "exit_code": self.exit_code,
            "reason": self.reason,
            "experiment": {
                "title": self.title,
                "file": self.file,
                "sha256": self.sha256,
            },
            "run_id": self.run_id,
            "schedule": self.schedule,
            "started_at": format!("{:.3}", self.started_at),
            "ended_at": format!("{:.3}", self.ended_at),
            "time_to_recover_ms": self.time_to_recover.map(crate::report::millis),
            "link": link,
        })
    }

    /// One line for chat (Slack's `text`): verdict, experiment, run id, reason, and the link in
    /// Slack's `<url|label>` form. `&`, `<` and `>` are escaped as Slack asks.
    fn text(&self, link: Option<&str>) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let reason: String = self.reason.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut text = format!(
            "faultline: {} — {} (run {}): {}",
            self.verdict.as_str().to_uppercase(),
            escape(&self.title),
            self.run_id,
            escape(&reason)
        );
        if let Some(link) = link {
            text.push_str(&format!(" <{link}|details>"));
        }
        text
    }
}

/// Sends `outcome` to every webhook whose `on` lists its verdict, all at once, each retried with
/// backoff; returns when every delivery has been made or given up. `log` reports failures.
pub(crate) async fn send(notifies: Vec<Notify>, outcome: Outcome, log: fn(&str)) {
    // A webhook named by both the game day and the experiment is told once.
    let mut wanted: Vec<Notify> = Vec::new();
    for n in notifies {
        if n.on.contains(&outcome.verdict) && !wanted.iter().any(|w| w.webhook == n.webhook) {
            wanted.push(n);
        }
    }
    if wanted.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            log(&format!(
                "notifications not sent: failed to build the HTTP client: {e}"
            ));
            return;
        }
    };
    let outcome = Arc::new(outcome);
    let mut tasks = tokio::task::JoinSet::new();
    for notify in wanted {
        let client = client.clone();
        let outcome = outcome.clone();
        tasks.spawn(async move { deliver(&client, &notify, &outcome, log).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// `send`, waited for at most `bound`: what is not delivered by then is abandoned, and said so.
pub(crate) async fn send_within(
    notifies: &[Notify],
    outcome: Outcome,
    bound: Duration,
    log: fn(&str),
) {
    if !notifies.iter().any(|n| n.on.contains(&outcome.verdict)) {
        return;
    }
    let sending = send(notifies.to_vec(), outcome, log);
    if tokio::time::timeout(bound, sending).await.is_err() {
        log(&format!(
            "notifications not delivered within {} of the verdict were abandoned (the run's exit code is unaffected)",
            crate::units::Dur(bound)
        ));
    }
}

/// What an answer means for the next attempt.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Delivered,
    /// A 5xx, a 429, or no answer: the receiver may take it later.
    Retry,
    /// Another 4xx: the request itself is wrong, sending it again cannot help.
    Refused,
}

fn judge(status: reqwest::StatusCode) -> Answer {
    if status.is_success() {
        Answer::Delivered
    } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Answer::Retry
    } else if status.is_client_error() {
        Answer::Refused
    } else {
        // 1xx and 3xx (redirects are followed by the client): nothing to hope for by waiting.
        Answer::Refused
    }
}

/// One webhook: up to five attempts, the pauses of [`BACKOFF`] between them.
async fn deliver(client: &reqwest::Client, notify: &Notify, outcome: &Outcome, log: fn(&str)) {
    let shown = shown_url(notify.webhook.as_str());
    let secret = match &notify.secret_env {
        None => None,
        Some(name) => match std::env::var(name) {
            Ok(value) if !value.is_empty() => Some(value),
            _ => {
                log(&format!(
                    "notification for run {} not sent to {shown}: the environment variable `{name}` (secret_env) is not set",
                    outcome.run_id
                ));
                return;
            }
        },
    };
    // The receiver is outside: no secret of the experiment goes into what it is sent.
    let body =
        crate::secrets::redact(&outcome.body(notify.link.as_deref()).to_string()).into_owned();
    let mut pauses = BACKOFF.iter();
    let mut attempt = 1;
    loop {
        let mut request = client
            .post(notify.webhook.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            // The same key on every attempt, so a receiver can drop a repeat of a delivery whose
            // answer was lost.
            .header("Idempotency-Key", format!("faultline-{}", outcome.run_id))
            .body(body.clone());
        if let Some(secret) = &secret {
            request = request.bearer_auth(secret);
        }
        let problem = match request.send().await {
            Ok(response) => match judge(response.status()) {
                Answer::Delivered => return,
                Answer::Refused => {
                    log(&format!(
                        "notification for run {} refused by {shown}: HTTP {} (attempt {attempt}); not retried",
                        outcome.run_id,
                        response.status()
                    ));
                    return;
                }
                Answer::Retry => format!("HTTP {}", response.status()),
            },
            // The error's text names the URL; say what kind it was instead.
            Err(e) if e.is_timeout() => {
                format!("no answer within {}", crate::units::Dur(ATTEMPT_TIMEOUT))
            }
            Err(e) if e.is_connect() => "connection failed".to_owned(),
            Err(_) => "the request failed".to_owned(),
        };
        let Some(pause) = pauses.next() else {
            log(&format!(
                "notification for run {} to {shown} failed: {problem} (attempt {attempt} of {}); gave up",
                outcome.run_id,
                BACKOFF.len() + 1
            ));
            return;
        };
        log(&format!(
            "notification for run {} to {shown} failed: {problem} (attempt {attempt} of {}); trying again in {}",
            outcome.run_id,
            BACKOFF.len() + 1,
            crate::units::Dur(*pause)
        ));
        tokio::time::sleep(*pause).await;
        attempt += 1;
    }
}

/// For the places that read `[[notify]]`: validated tables, or the first problem.
pub(crate) fn validate_all(raw: Vec<RawNotify>) -> Result<Vec<Notify>, Invalid> {
    raw.into_iter().map(RawNotify::validate).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn experiment(notify: &str) -> Result<crate::model::Experiment, String> {
        let text = format!(
            "{}kind = \"process-kill\"\nselect = {{ name = \"x\" }}\n{notify}",
            crate::experiment::ONE_FAULT_HEAD
        );
        crate::experiment::parse(Path::new("x.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn on_defaults_to_the_verdicts_someone_must_look_at() {
        let e = experiment("[[notify]]\nwebhook = \"https://hooks.example.com/x\"\n").unwrap();
        assert_eq!(e.notify.len(), 1);
        assert_eq!(e.notify[0].on, DEFAULT_ON.to_vec());
        let e = experiment("[[notify]]\nwebhook = \"http://127.0.0.1:9/\"\non = [\"passed\", \"not_run\", \"passed\"]\n").unwrap();
        assert_eq!(e.notify[0].on, vec![Verdict::Passed, Verdict::NotRun]);
        assert!(experiment("").unwrap().notify.is_empty());
    }

    #[test]
    fn bad_notify_tables_are_refused_at_their_position() {
        let e = experiment("[[notify]]\nwebhook = \"ftp://user:pw@hooks.example.com/x\"\n")
            .unwrap_err();
        assert_eq!(
            e,
            "x.toml: line 15, column 11: notify: `webhook` must start with http:// or https:// (got scheme `ftp`)"
        );
        let e = experiment("[[notify]]\nwebhook = \"hooks.example.com/T1/secret\"\n").unwrap_err();
        assert!(
            e.starts_with("x.toml: line 15, column 11: notify: `webhook` is not a URL"),
            "{e}"
        );
        assert!(
            !e.contains("secret"),
            "the URL is shown without its path: {e}"
        );
        let e = experiment("[[notify]]\nwebhook = \"https://h/\"\non = [\"failed\", \"faild\"]\n")
            .unwrap_err();
        assert!(e.starts_with("x.toml: line 16, column 17: `on`: unknown variant `faild`, expected one of `passed`, `failed`, `aborted`, `not_run`, `error`"), "{e}");
        let e = experiment("[[notify]]\nwebhook = \"https://h/\"\non = []\n").unwrap_err();
        assert!(
            e.starts_with("x.toml: line 16, column 6: notify: `on` lists no verdict"),
            "{e}"
        );
        let e = experiment("[[notify]]\nwebhook = \"https://h/\"\nsecret_env = \"MY TOKEN\"\n")
            .unwrap_err();
        assert!(
            e.starts_with(
                "x.toml: line 16, column 14: notify: `secret_env` must name an environment variable"
            ),
            "{e}"
        );
        let e = experiment("[[notify]]\nwebhook = \"https://h/\"\nlink = \"/runs/{run_id}\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("x.toml: line 16, column 8: notify: `link` is not a URL"),
            "{e}"
        );
        let e = experiment("[[notify]]\nwebhook = \"https://h/\"\nretries = 3\n").unwrap_err();
        assert!(
            e.starts_with("x.toml: line 16, column 1: unknown field `retries`"),
            "{e}"
        );
        let e = experiment("[[notify]]\non = [\"failed\"]\n").unwrap_err();
        assert!(e.contains("missing field `webhook`"), "{e}");
    }

    #[test]
    fn a_game_day_checks_its_notify_tables_like_an_experiment() {
        let text = "[coordinator]\nstate_dir = \"s\"\n[[notify]]\nwebhook = \"https://h/x\"\non = [\"failed\"]\n";
        let g = crate::gameday::parse(Path::new("g.toml"), text).unwrap();
        assert_eq!(g.notify[0].on, vec![Verdict::Failed]);
        let e = crate::gameday::parse(
            Path::new("g.toml"),
            &text.replace("https://h/x", "mailto:x@h"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "g.toml: line 4, column 11: notify: `webhook` must start with http:// or https:// (got scheme `mailto`)"
        );
        let e = crate::gameday::parse(Path::new("g.toml"), &text.replace("on =", "onn ="))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("g.toml: line 5, column 1: unknown field `onn`"),
            "{e}"
        );
    }

    #[test]
    fn a_coordinator_run_without_a_report_is_described_from_its_history_rows() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let start = RunStart {
            run_id: "20261202T080000Z-0001".to_owned(),
            schedule: Some("nightly".to_owned()),
            fire_at: Some(at("2026-12-02T08:00:00Z")),
            title: "gone.toml".to_owned(),
            file: "gone.toml".to_owned(),
            sha256: String::new(),
            seed: 1,
            started_at: at("2026-12-02T08:00:00Z"),
            coordinator: Some("c".to_owned()),
        };
        let mut end =
            RunEnd::error("invalid experiment gone.toml: failed to read; nothing was injected");
        end.ended_at = at("2026-12-02T08:00:01Z");
        let body = Outcome::of_run(&start, &end).body(None);
        assert_eq!(body["verdict"], "error");
        assert_eq!(body["exit_code"], 5);
        assert_eq!(body["schedule"], "nightly");
        assert_eq!(body["run_id"], "20261202T080000Z-0001");
        assert_eq!(body["ended_at"], "2026-12-02T08:00:01.000Z");
        for verdict in [
            Verdict::Passed,
            Verdict::Failed,
            Verdict::Aborted,
            Verdict::NotRun,
        ] {
            end.verdict = verdict.as_str().to_owned();
            assert_eq!(Outcome::of_run(&start, &end).verdict, verdict);
        }
    }

    #[test]
    fn logged_urls_keep_no_credentials() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/services/…"
        );
        assert_eq!(
            shown_url("http://user:pw@127.0.0.1:8080/hook?token=abc"),
            "http://127.0.0.1:8080/hook/…"
        );
        assert_eq!(shown_url("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(shown_url("nonsense"), "(not a URL)");
    }

    #[test]
    fn retries_on_server_errors_and_429_only() {
        use reqwest::StatusCode;
        assert_eq!(judge(StatusCode::OK), Answer::Delivered);
        assert_eq!(judge(StatusCode::NO_CONTENT), Answer::Delivered);
        assert_eq!(judge(StatusCode::INTERNAL_SERVER_ERROR), Answer::Retry);
        assert_eq!(judge(StatusCode::SERVICE_UNAVAILABLE), Answer::Retry);
        assert_eq!(judge(StatusCode::TOO_MANY_REQUESTS), Answer::Retry);
        assert_eq!(judge(StatusCode::NOT_FOUND), Answer::Refused);
        assert_eq!(judge(StatusCode::UNAUTHORIZED), Answer::Refused);
    }

    #[test]
    fn the_body_carries_the_run_and_a_one_line_slack_text() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let outcome = Outcome {
            verdict: Verdict::Failed,
            reason: "front page success was 0% (0/5)\nnot recovered <in> 2 s".to_owned(),
            title: "kill & see".to_owned(),
            file: "experiments/k.toml".to_owned(),
            sha256: "ab".repeat(32),
            run_id: "20261202T070739Z-9ef2".to_owned(),
            started_at: at("2026-12-02T07:07:39Z"),
            ended_at: at("2026-12-02T07:07:45.5Z"),
            exit_code: 1,
            time_to_recover: None,
            schedule: None,
        };
        let body = outcome.body(Some("https://chaos.example.com/runs/{run_id}"));
        assert_eq!(
            body["text"],
            "faultline: FAILED — kill &amp; see (run 20261202T070739Z-9ef2): front page success was 0% (0/5) not recovered &lt;in&gt; 2 s <https://chaos.example.com/runs/20261202T070739Z-9ef2|details>"
        );
        assert_eq!(
            body["link"],
            "https://chaos.example.com/runs/20261202T070739Z-9ef2"
        );
        assert_eq!(body["verdict"], "failed");
        assert_eq!(body["exit_code"], 1);
        assert_eq!(body["experiment"]["title"], "kill & see");
        assert_eq!(body["started_at"], "2026-12-02T07:07:39.000Z");
        assert_eq!(body["ended_at"], "2026-12-02T07:07:45.500Z");
        assert!(body["time_to_recover_ms"].is_null());
        assert!(outcome.body(None)["link"].is_null());
    }
}
