//! Owns the outage check of game days: before a fire the coordinator asks Alertmanager (API v2)
//! whether an alert matching `[coordinator].outage.matchers` is firing, and skips the fire if one
//! is, or if the question cannot be answered (no chaos during an incident, nor while one cannot be
//! ruled out). Also owns the syntax of those matchers, checked when the game-day file is loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;

use crate::gameday::Outage;

/// How long one check may take, connection included. A fire waits for it, and an Alertmanager
/// that takes longer is treated like an unreachable one (the fire is skipped).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(3);

/// The largest answer read. Thousands of alerts fit in it; beyond it something is wrong, and the
/// check fails rather than hold the coordinator's memory hostage.
const MAX_BODY: usize = 16 << 20;

/// How many alert names a skip reason lists before it says "and N more".
const NAMED_IN_REASON: usize = 3;

/// A firing alert that matched every matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    /// The `alertname` label (`(no alertname)` when the alert has none).
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) starts_at: Timestamp,
}

/// Why the outage check gave no answer. The coordinator does not decide on the kind (every one
/// skips the fire), but the kinds keep the sentences apart and testable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutageError {
    /// Only reachable when the game-day loader did not call [`check_matcher`].
    #[error("invalid outage matcher `{matcher}`: {reason}")]
    Matcher { matcher: String, reason: String },
    #[error("invalid Alertmanager URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("Alertmanager at {url} is unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("Alertmanager at {url} did not answer within {} ms", .timeout.as_millis())]
    Timeout { url: String, timeout: Duration },
    #[error("Alertmanager at {url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("Alertmanager at {url} sent an answer that is not a list of alerts: {cause}")]
    Malformed { url: String, cause: String },
}

/// The HTTP client for outage checks: [`TIMEOUT`] for the whole request, no proxy from the
/// environment (Alertmanager is an internal service; a proxy variable meant for the internet
/// must not decide whether chaos starts).
pub(crate) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| format!("failed to build the HTTP client for Alertmanager: {e}"))
}

/// The alerts that are firing now (active: neither silenced nor inhibited) and match every
/// matcher of `outage`, oldest first. Each matcher is one `filter` query parameter, which
/// Alertmanager ANDs; reqwest encodes them, no URL is built from the matchers' text.
pub(crate) async fn firing(
    outage: &Outage,
    client: &reqwest::Client,
) -> Result<Vec<Alert>, OutageError> {
    let base = outage.alertmanager.trim_end_matches('/');
    // Errors end up in logs and in the history: they name the URL without its credentials.
    let shown = &redacted(base);
    check_alertmanager_url(base).map_err(|reason| OutageError::Url {
        url: shown.clone(),
        reason,
    })?;
    let mut request = client
        .get(format!("{base}/api/v2/alerts"))
        // Also set here so the bound holds whatever client the caller built.
        .timeout(TIMEOUT)
        .query(&[
            ("active", "true"),
            ("silenced", "false"),
            ("inhibited", "false"),
        ]);
    for text in &outage.matchers {
        let matcher = parse_matcher(text).map_err(|reason| OutageError::Matcher {
            matcher: text.clone(),
            reason,
        })?;
        // The canonical form of what was checked, so Alertmanager reads exactly that.
        request = request.query(&[("filter", matcher.to_string())]);
    }
    let mut response = request.send().await.map_err(|e| failed(shown, &e))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(shown, &e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(OutageError::Malformed {
                url: shown.clone(),
                cause: format!("the answer is larger than {} MiB", MAX_BODY >> 20),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        // Alertmanager sends its errors as one JSON string ("bad matcher ...").
        let message = serde_json::from_slice::<String>(&body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(OutageError::Status {
            url: shown.clone(),
            status: status.as_u16(),
            message: excerpt(message.trim(), 200),
        });
    }
    // Unknown fields are fine here: this is another program's answer, and newer Alertmanagers add
    // fields; only the two fields read must be there.
    let listed: Vec<Listed> =
        serde_json::from_slice(&body).map_err(|e| OutageError::Malformed {
            url: shown.clone(),
            cause: e.to_string(),
        })?;
    let mut alerts: Vec<Alert> = listed
        .into_iter()
        .map(|a| Alert {
            // Another program's text on its way into a log line: no control characters.
            name: a
                .labels
                .get("alertname")
                .map_or_else(|| "(no alertname)".to_owned(), |name| excerpt(name, 200)),
            labels: a.labels,
            starts_at: a.starts_at,
        })
        .collect();
    alerts.sort_by(|a, b| (a.starts_at, &a.name).cmp(&(b.starts_at, &b.name)));
    Ok(alerts)
}

/// What the coordinator records for a fire after the check: `None` to go ahead, or the reason
/// it was skipped. Fail safe: a check that failed skips the fire too, because chaos must not start
/// while an incident cannot be ruled out, and a missed game-day fire costs little.
pub(crate) fn skip_reason(checked: &Result<Vec<Alert>, OutageError>) -> Option<String> {
    match checked {
        Ok(alerts) if alerts.is_empty() => None,
        Ok(alerts) => Some(if let [alert] = alerts.as_slice() {
            format!(
                "outage in progress: alert `{}` firing since {}",
                alert.name,
                alert.starts_at.strftime("%FT%TZ")
            )
        } else {
            let named: Vec<String> = alerts
                .iter()
                .take(NAMED_IN_REASON)
                .map(|a| format!("`{}` since {}", a.name, a.starts_at.strftime("%FT%TZ")))
                .collect();
            let more = match alerts.len().saturating_sub(NAMED_IN_REASON) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!(
                "outage in progress: {} alerts firing: {}{more}",
                alerts.len(),
                named.join(", ")
            )
        }),
        Err(e) => Some(format!("outage check failed: {e}")),
    }
}

/// [`firing`] then [`skip_reason`]: the one call the coordinator makes before a fire.
pub(crate) async fn gate(outage: &Outage, client: &reqwest::Client) -> Option<String> {
    skip_reason(&firing(outage, client).await)
}

/// Whether `text` is an Alertmanager matcher faultline accepts: `name="value"`, `name!="value"`,
/// `name=~"regex"` or `name!~"regex"`. Stricter than Alertmanager in one way: the value must be
/// in double quotes (`\"`, `\\` and `\n` escape), so what a reader sees is what is matched.
/// A regex must compile (Alertmanager anchors it at both ends). The error says what is wrong
/// without the file position, which the game-day loader adds.
pub(crate) fn check_matcher(text: &str) -> Result<(), String> {
    parse_matcher(text).map(|_| ())
}

/// Whether `url` can be Alertmanager's base URL: http or https, with a host, no query or fragment
/// (the API path is appended to it).
pub(crate) fn check_alertmanager_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not `{}`",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("the URL must not have a query or fragment (`?` or `#`)".to_owned());
    }
    Ok(())
}

/// One matcher, parsed.
#[derive(Debug, PartialEq, Eq)]
struct Matcher {
    name: String,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl Op {
    /// Longest first, so `=~` is not read as `=` followed by `~`.
    const ALL: [(&'static str, Op); 4] = [
        ("=~", Op::Regex),
        ("!=", Op::NotEqual),
        ("!~", Op::NotRegex),
        ("=", Op::Equal),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Equal => "=",
            Op::NotEqual => "!=",
            Op::Regex => "=~",
            Op::NotRegex => "!~",
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.as_str())?;
        for c in self.value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

const FORMS: &str = "write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"";

fn parse_matcher(text: &str) -> Result<Matcher, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("the matcher is empty; {FORMS}"));
    }
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    let rest = text[name_end..].trim_start();
    let Some((op_text, op)) = Op::ALL.into_iter().find(|(s, _)| rest.starts_with(s)) else {
        return Err(if name.is_empty() {
            format!("`{text}` does not start with a label name; {FORMS}")
        } else {
            format!("`{text}` has no operator after `{name}`; {FORMS}")
        });
    };
    if name.is_empty() {
        return Err(format!("`{text}` has no label name before `{op_text}`"));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "`{name}` is not a label name (letters, digits and _, not starting with a digit)"
        ));
    }
    let quoted = rest[op_text.len()..].trim_start();
    let Some(inner) = quoted.strip_prefix('"') else {
        return Err(format!(
            "the value of `{name}` must be in double quotes: {name}{op_text}\"{}\"",
            quoted.trim_matches('"')
        ));
    };
    let mut value = String::new();
    let mut chars = inner.char_indices();
    let after = loop {
        let Some((i, c)) = chars.next() else {
            return Err(format!("the value of `{name}` has no closing double quote"));
        };
        match c {
            '"' => break &inner[i + 1..],
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => {
                    return Err(format!(
                        "unknown escape `\\{other}` in the value of `{name}` (only \\\", \\\\ and \\n)"
                    ));
                }
                None => return Err(format!("the value of `{name}` has no closing double quote")),
            },
            c => value.push(c),
        }
    };
    let after = after.trim();
    if !after.is_empty() {
        return Err(format!(
            "unexpected `{after}` after the value of `{name}`: one matcher per string"
        ));
    }
    if matches!(op, Op::Regex | Op::NotRegex) {
        // Anchored as Alertmanager anchors it. The regex crate and Go's RE2 share their syntax
        // but for a few rare constructs, so a typo is caught here rather than on every fire.
        regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
            let last = e.to_string();
            let last = last.lines().last().unwrap_or_default().trim();
            format!(
                "the regex of `{name}` does not compile: {}",
                last.strip_prefix("error: ").unwrap_or(last)
            )
        })?;
    }
    Ok(Matcher {
        name: name.to_owned(),
        op,
        value,
    })
}

/// An alert as `GET /api/v2/alerts` lists it (only what is read).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    labels: BTreeMap<String, String>,
    starts_at: Timestamp,
}

fn failed(url: &str, e: &reqwest::Error) -> OutageError {
    if e.is_timeout() {
        return OutageError::Timeout {
            url: url.to_owned(),
            timeout: TIMEOUT,
        };
    }
    // The operating system's short name ("connection refused") when there is one, else the
    // innermost cause, which says more than reqwest's "error sending request" and, unlike it,
    // does not repeat the URL with its credentials.
    let cause = crate::probe::io_cause(e).unwrap_or_else(|| {
        let mut source: &dyn std::error::Error = e;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    });
    if e.is_builder() {
        return OutageError::Url {
            url: url.to_owned(),
            reason: cause,
        };
    }
    OutageError::Unreachable {
        url: url.to_owned(),
        cause,
    }
}

/// `url` without the user name and password it may carry (`http://user:secret@am:9093` is shown
/// as `http://am:9093`); as written when it does not parse (then it is refused before any request).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.as_str().trim_end_matches('/').to_owned()
        }
        _ => url.to_owned(),
    }
}

/// At most `max_chars` characters of another program's message, control characters replaced, so
/// an error answer cannot flood a log line or forge one.
fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    //! The matcher syntax and the skip sentences are pure; `firing` is tested against a real
    //! Alertmanager (Debian's `prometheus-alertmanager`) started here, because the integration
    //! test binary cannot call this crate's functions. `tests/it/support/alertmanager.rs` is the
    //! integration tests' copy of the start routine.

    use std::io::Read;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;

    const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

    fn outage(base: &str, matchers: &[&str]) -> Outage {
        Outage {
            alertmanager: base.to_owned(),
            matchers: matchers.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    /// A real Alertmanager on a free loopback port, killed and its directory removed on drop.
    struct TestAlertmanager {
        child: Child,
        base: String,
        // Dropped after the process is killed (fields drop after `Drop::drop` runs).
        dir: tempfile::TempDir,
    }

    impl TestAlertmanager {
        async fn start() -> TestAlertmanager {
            assert!(
                std::path::Path::new(ALERTMANAGER).exists(),
                "{ALERTMANAGER} is missing: run scripts/setup.sh (Debian package prometheus-alertmanager)"
            );
            let dir = tempfile::Builder::new()
                .prefix("faultline-am-")
                .tempdir()
                .unwrap();
            let config = dir.path().join("alertmanager.yml");
            // One receiver without integrations: alerts are stored and listed, never sent.
            std::fs::write(
                &config,
                "route:\n  receiver: none\nreceivers:\n  - name: none\n",
            )
            .unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let child = Command::new(ALERTMANAGER)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut am = TestAlertmanager {
                child,
                base: format!("http://127.0.0.1:{port}"),
                dir,
            };
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = client.get(format!("{}/-/ready", am.base)).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return am;
                }
                let exited = am.child.try_wait().unwrap();
                if exited.is_some() || Instant::now() > deadline {
                    let mut log = String::new();
                    std::fs::File::open(am.dir.path().join("log"))
                        .and_then(|mut f| f.read_to_string(&mut log))
                        .unwrap();
                    panic!("alertmanager on {} not ready ({exited:?}):\n{log}", am.base);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Posts one alert with `labels`, started a minute ago and ending at `ends_at`.
        async fn post(&self, labels: &[(&str, &str)], ends_at: Timestamp) {
            let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
            // Without startsAt, Alertmanager takes endsAt as the start.
            let starts_at = Timestamp::now() - jiff::SignedDuration::from_secs(60);
            let body = serde_json::json!([{
                "labels": labels,
                "startsAt": starts_at.to_string(),
                "endsAt": ends_at.to_string(),
            }]);
            let answer = reqwest::Client::new()
                .post(format!("{}/api/v2/alerts", self.base))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "post alert: {answer:?}");
        }

        async fn fire(&self, labels: &[(&str, &str)]) {
            self.post(
                labels,
                Timestamp::now() + jiff::SignedDuration::from_hours(1),
            )
            .await;
        }

        /// Resolves the alert with these labels, as Prometheus does: the same labels, ended.
        async fn resolve(&self, labels: &[(&str, &str)]) {
            self.post(
                labels,
                Timestamp::now() - jiff::SignedDuration::from_secs(1),
            )
            .await;
        }
    }

    impl Drop for TestAlertmanager {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    const CRITICAL: [&str; 1] = [r#"severity="critical""#];

    #[tokio::test]
    async fn matching_critical_alert_is_firing_by_name_and_a_warning_is_not() {
        let am = TestAlertmanager::start().await;
        let client = client().unwrap();
        let gate = outage(&am.base, &CRITICAL);
        assert_eq!(firing(&gate, &client).await.unwrap(), vec![]);

        am.fire(&[("alertname", "HighLatency"), ("severity", "warning")])
            .await;
        // No pause between POST and GET: Alertmanager stores a posted alert before it answers,
        // and lists it (as `unprocessed`, then `active`) at once; group_wait only delays
        // notifications.
        assert_eq!(firing(&gate, &client).await.unwrap(), vec![]);

        am.fire(&[
            ("alertname", "DiskFull"),
            ("severity", "critical"),
            ("team", "db"),
        ])
        .await;
        let alerts = firing(&gate, &client).await.unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].name, "DiskFull");
        assert_eq!(alerts[0].labels["team"], "db");
        let reason = skip_reason(&Ok(alerts)).unwrap();
        assert!(
            reason.starts_with("outage in progress: alert `DiskFull` firing since "),
            "{reason}"
        );

        // Every matcher must match (Alertmanager ANDs the filters).
        let both = outage(&am.base, &[r#"severity="critical""#, r#"team!="db""#]);
        assert_eq!(firing(&both, &client).await.unwrap(), vec![]);
        let regex = outage(
            &am.base,
            &[r#"severity=~"crit.*|page""#, r#"alertname!~"High.*""#],
        );
        let names: Vec<String> = firing(&regex, &client)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["DiskFull"]);

        // No matcher: every active alert counts.
        let mut any: Vec<String> = firing(&outage(&am.base, &[]), &client)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        any.sort();
        assert_eq!(any, ["DiskFull", "HighLatency"]);
    }

    #[tokio::test]
    async fn resolved_alert_is_no_longer_firing() {
        let am = TestAlertmanager::start().await;
        let client = client().unwrap();
        let gate = outage(&am.base, &CRITICAL);
        let labels = [("alertname", "NodeDown"), ("severity", "critical")];
        am.fire(&labels).await;
        assert_eq!(firing(&gate, &client).await.unwrap().len(), 1);
        am.resolve(&labels).await;
        let left = firing(&gate, &client).await.unwrap();
        assert_eq!(left, vec![], "a resolved alert still counts");
        assert_eq!(skip_reason(&Ok(left)), None);
    }

    #[tokio::test]
    async fn matcher_values_with_quotes_and_url_characters_reach_alertmanager_intact() {
        let am = TestAlertmanager::start().await;
        let client = client().unwrap();
        am.fire(&[("alertname", "Odd"), ("team", "a&b \"c\" =?#%")])
            .await;
        am.fire(&[("alertname", "Other"), ("team", "a")]).await;
        let gate = outage(&am.base, &[r#"team="a&b \"c\" =?#%""#]);
        let names: Vec<String> = firing(&gate, &client)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["Odd"]);
    }

    #[tokio::test]
    async fn unreachable_alertmanager_is_an_error_that_skips_the_fire() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let checked = firing(&outage(&base, &CRITICAL), &client().unwrap()).await;
        let err = checked.as_ref().unwrap_err();
        assert!(matches!(err, OutageError::Unreachable { .. }), "{err:?}");
        assert_eq!(
            skip_reason(&checked).unwrap(),
            format!(
                "outage check failed: Alertmanager at {base} is unreachable: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn alertmanager_that_never_answers_times_out_within_the_bound() {
        // Accepts connections (the kernel does, from the backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", silent.local_addr().unwrap());
        let started = Instant::now();
        let checked = firing(&outage(&base, &CRITICAL), &client().unwrap()).await;
        let took = started.elapsed();
        assert!(
            matches!(checked, Err(OutageError::Timeout { .. })),
            "{checked:?}"
        );
        // A bound, not a speed assertion: the check must not hang a fire.
        assert!(took < TIMEOUT * 3, "took {took:?}");
        assert_eq!(
            skip_reason(&checked).unwrap(),
            format!("outage check failed: Alertmanager at {base} did not answer within 3000 ms")
        );
    }

    /// Serves `answer` (a whole HTTP response) once to the first connection, on a free port;
    /// returns the base URL and the request's head as it arrives.
    async fn one_answer(answer: &'static str) -> (String, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 8192];
            let n = stream.read(&mut request).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&request[..n]).into_owned());
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        (base, rx)
    }

    #[tokio::test]
    async fn the_request_is_one_get_with_encoded_filters_and_basic_auth_from_the_url() {
        let (base, request) =
            one_answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]").await;
        let with_auth = base.replace("http://", "http://ops:hunter2@");
        let gate = outage(
            &format!("{with_auth}/prefix/"),
            &[r#"severity="critical""#, r#"team=~"a&b|c d""#],
        );
        assert_eq!(firing(&gate, &client().unwrap()).await.unwrap(), vec![]);
        let request = request.await.unwrap();
        let first = request.lines().next().unwrap();
        assert_eq!(
            first,
            "GET /prefix/api/v2/alerts?active=true&silenced=false&inhibited=false\
             &filter=severity%3D%22critical%22&filter=team%3D%7E%22a%26b%7Cc+d%22 HTTP/1.1"
        );
        // ops:hunter2 in base64
        assert!(
            request
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Basic b3BzOmh1bnRlcjI=")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn answers_that_are_not_a_list_of_alerts_fail_the_check() {
        let client = client().unwrap();
        let (base, _) = one_answer(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"not\":\"alerts\"}",
        )
        .await;
        let err = firing(&outage(&base, &CRITICAL), &client)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Alertmanager at {base} sent an answer that is not a list of alerts: \
                 invalid type: map, expected a sequence at line 1 column 0"
            )
        );

        // A wrong base path: Alertmanager's router answers 404.
        let am = TestAlertmanager::start().await;
        let wrong = outage(&format!("{}/nothing-here/", am.base), &CRITICAL);
        let err = firing(&wrong, &client).await.unwrap_err();
        assert!(
            matches!(err, OutageError::Status { status: 404, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "Alertmanager at {}/nothing-here answered HTTP 404: ",
                am.base
            )),
            "{err}"
        );
    }

    #[test]
    fn matchers_in_every_form_are_accepted_and_sent_in_canonical_form() {
        for (text, canonical) in [
            (r#"severity="critical""#, r#"severity="critical""#),
            (r#"  severity = "critical"  "#, r#"severity="critical""#),
            (r#"team!="db""#, r#"team!="db""#),
            (
                r#"alertname=~"Disk.*|Node(Down|Lost)""#,
                r#"alertname=~"Disk.*|Node(Down|Lost)""#,
            ),
            (r#"env!~"dev|test""#, r#"env!~"dev|test""#),
            (r#"_x9="""#, r#"_x9="""#),
            (r#"msg="say \"hi\"\\n\n""#, r#"msg="say \"hi\"\\n\n""#),
            (r#"team="a,b{c}=~""#, r#"team="a,b{c}=~""#),
        ] {
            check_matcher(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parse_matcher(text).unwrap().to_string(), canonical);
        }
        let m = parse_matcher(r#"msg="say \"hi\"\\n\n""#).unwrap();
        assert_eq!(m.value, "say \"hi\"\\n\n");
        assert_eq!(m.op, Op::Equal);
    }

    #[test]
    fn bad_matchers_are_refused_saying_what_is_wrong() {
        for (text, error) in [
            (
                "",
                "the matcher is empty; write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"",
            ),
            (
                "severity",
                "`severity` has no operator after `severity`; write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"",
            ),
            (
                "severity>\"1\"",
                "`severity>\"1\"` has no operator after `severity`; write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"",
            ),
            ("=\"x\"", "`=\"x\"` has no label name before `=`"),
            (
                "-x=\"1\"",
                "`-x=\"1\"` does not start with a label name; write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"",
            ),
            (
                "9lives=\"x\"",
                "`9lives` is not a label name (letters, digits and _, not starting with a digit)",
            ),
            (
                "sev-erity=\"x\"",
                "`sev-erity=\"x\"` has no operator after `sev`; write name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"",
            ),
            (
                "severity=critical",
                "the value of `severity` must be in double quotes: severity=\"critical\"",
            ),
            (
                "severity='critical'",
                "the value of `severity` must be in double quotes: severity=\"'critical'\"",
            ),
            (
                "severity=\"critical",
                "the value of `severity` has no closing double quote",
            ),
            (
                "severity=\"critical\\\"",
                "the value of `severity` has no closing double quote",
            ),
            (
                "severity=\"crit\\tical\"",
                "unknown escape `\\t` in the value of `severity` (only \\\", \\\\ and \\n)",
            ),
            (
                "severity=\"critical\", team=\"db\"",
                "unexpected `, team=\"db\"` after the value of `severity`: one matcher per string",
            ),
            (
                "alertname=~\"Disk(\"",
                "the regex of `alertname` does not compile: unclosed group",
            ),
            (
                "alertname!~\"*\"",
                "the regex of `alertname` does not compile: repetition operator missing expression",
            ),
        ] {
            assert_eq!(check_matcher(text).unwrap_err(), error, "for {text:?}");
        }
    }

    #[test]
    fn urls_in_errors_carry_no_credentials() {
        assert_eq!(redacted("http://am:9093"), "http://am:9093");
        assert_eq!(redacted("http://user:secret@am:9093/"), "http://am:9093");
        assert_eq!(
            redacted("https://token@am.example.com/prefix"),
            "https://am.example.com/prefix"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[tokio::test]
    async fn unreachable_alertmanager_behind_basic_auth_is_named_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let checked = firing(
            &outage(&format!("http://ops:hunter2@127.0.0.1:{port}"), &CRITICAL),
            &client().unwrap(),
        )
        .await;
        let reason = skip_reason(&checked).unwrap();
        assert_eq!(
            reason,
            format!(
                "outage check failed: Alertmanager at http://127.0.0.1:{port} is unreachable: connection refused"
            )
        );
    }

    #[test]
    fn alertmanager_urls_must_be_http_with_a_host() {
        for ok in [
            "http://alertmanager:9093",
            "https://am.example.com/",
            "http://127.0.0.1:9093/prefix",
        ] {
            check_alertmanager_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, error) in [
            (
                "alertmanager:9093",
                "the scheme must be http or https, not `alertmanager`",
            ),
            ("am.example.com", "relative URL without a base"),
            (
                "ftp://am.example.com",
                "the scheme must be http or https, not `ftp`",
            ),
            ("http://", "empty host"),
            (
                "http://am:9093/?x=1",
                "the URL must not have a query or fragment (`?` or `#`)",
            ),
        ] {
            assert_eq!(check_alertmanager_url(bad).unwrap_err(), error, "for {bad}");
        }
    }

    fn alert(name: &str, at: &str) -> Alert {
        Alert {
            name: name.to_owned(),
            labels: BTreeMap::from([("alertname".to_owned(), name.to_owned())]),
            starts_at: at.parse().unwrap(),
        }
    }

    #[test]
    fn skip_reasons_name_the_alerts_or_the_failed_check() {
        assert_eq!(skip_reason(&Ok(vec![])), None);
        assert_eq!(
            skip_reason(&Ok(vec![alert("DiskFull", "2027-03-02T09:58:12.345Z")])).unwrap(),
            "outage in progress: alert `DiskFull` firing since 2027-03-02T09:58:12Z"
        );
        let many = vec![
            alert("A", "2027-03-02T09:00:00Z"),
            alert("B", "2027-03-02T09:01:00Z"),
            alert("C", "2027-03-02T09:02:00Z"),
            alert("D", "2027-03-02T09:03:00Z"),
            alert("E", "2027-03-02T09:04:00Z"),
        ];
        assert_eq!(
            skip_reason(&Ok(many)).unwrap(),
            "outage in progress: 5 alerts firing: `A` since 2027-03-02T09:00:00Z, \
             `B` since 2027-03-02T09:01:00Z, `C` since 2027-03-02T09:02:00Z and 2 more"
        );
        let status = OutageError::Status {
            url: "http://am:9093".to_owned(),
            status: 400,
            message: "bad matcher format: x".to_owned(),
        };
        assert_eq!(
            skip_reason(&Err(status)).unwrap(),
            "outage check failed: Alertmanager at http://am:9093 answered HTTP 400: bad matcher format: x"
        );
    }
}
