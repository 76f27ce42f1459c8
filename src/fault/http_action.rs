//! Owns the `http` fault: one HTTP request as the action (flip a feature flag, scale a service
//! through its API) and a `revert` request of the same shape that undoes it. The revert request is
//! the fault's [`super::Undo`], journaled before the action is sent, so it is sent on every way a
//! fault can end, as for `command`.
//!
//! Requests go out with reqwest (rustls; no redirects followed; proxies from the environment not
//! used), each bounded by `timeout`; a response body is read up to [`MAX_OUTPUT`] bytes for the
//! report and no further. Fault code runs on blocking threads, and a revert may run in the
//! watchdog, which has no async runtime: each request runs on a small runtime of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::check::{Checked, FieldError};
use super::command::{DEFAULT_TIMEOUT, MAX_OUTPUT, clip, sanitise, timeout};
use crate::protocol::ActionOutput;
use crate::units::Dur;

/// The methods an action may use.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// The longest URL, header value or header count accepted.
const MAX_URL: usize = 4096;
const MAX_HEADERS: usize = 64;
/// The largest request body.
const MAX_BODY: usize = 64 * 1024;
/// How many expected statuses a request may list.
const MAX_STATUSES: usize = 32;

/// The keys of an `http` table, as written: the action's request, and `revert`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    status: Option<Vec<u16>>,
    timeout: Option<Dur>,
    revert: RevertTable,
}

/// `revert = { method, url, headers, body, status }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevertTable {
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    status: Option<Vec<u16>>,
}

impl Table {
    #[expect(
        clippy::unnecessary_wraps,
        reason = "every kind's `validate` has this shape; bounds are in `check`"
    )]
    pub(crate) fn validate(self) -> Result<HttpAction, FieldError> {
        let timeout_ms = self
            .timeout
            .map_or(DEFAULT_TIMEOUT, |d| d.0)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        Ok(HttpAction {
            request: Request {
                method: upper(self.method),
                url: self.url,
                headers: self.headers,
                body: self.body,
                status: self.status.unwrap_or_default(),
                timeout_ms,
            },
            revert: Request {
                method: upper(self.revert.method),
                url: self.revert.url,
                headers: self.revert.headers,
                body: self.revert.body,
                status: self.revert.status.unwrap_or_default(),
                timeout_ms,
            },
        })
    }
}

/// A method as written (`put` reads as `PUT`), `GET` when absent.
fn upper(method: Option<String>) -> String {
    method.map_or_else(|| "GET".to_owned(), |m| m.to_ascii_uppercase())
}

/// An `http` fault as the wire carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpAction {
    pub(crate) request: Request,
    pub(crate) revert: Request,
}

/// One request, self-contained: what the journal holds for `revert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) body: Option<String>,
    /// The statuses that mean success; empty: any 2xx.
    #[serde(default)]
    pub(crate) status: Vec<u16>,
    pub(crate) timeout_ms: u64,
}

impl Request {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `METHOD URL`, without any user name or password the URL holds.
    pub(crate) fn show(&self) -> String {
        let url = match reqwest::Url::parse(&self.url) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => self.url.clone(),
        };
        format!("{} {}", self.method, clip(&url))
    }

    fn expected(&self) -> String {
        if self.status.is_empty() {
            "any 2xx".to_owned()
        } else {
            let list: Vec<String> = self.status.iter().map(ToString::to_string).collect();
            list.join(" or ")
        }
    }

    fn accepts(&self, status: u16) -> bool {
        if self.status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.status.contains(&status)
        }
    }

    /// Errors name the key as written (`method`, or `revert.method` for the revert request) and
    /// point at it (at `revert`, for the revert request's keys).
    fn check(&self, is_revert: bool) -> Checked {
        let bad = |key: &'static str, what: String| {
            if is_revert {
                FieldError::raw("revert", format!("`revert.{key}` {what}"))
            } else {
                FieldError::new(key, what)
            }
        };
        if !METHODS.contains(&self.method.as_str()) {
            return Err(bad(
                "method",
                format!(
                    "must be one of {} (got `{}`)",
                    METHODS.join(", "),
                    clip(&self.method)
                ),
            ));
        }
        if self.url.len() > MAX_URL {
            return Err(bad("url", format!("must be at most {MAX_URL} bytes")));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| bad("url", format!("`{}` is not a URL: {e}", clip(&self.url))))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(
                "url",
                format!(
                    "must be an http:// or https:// URL with a host (got `{}`)",
                    clip(&self.url)
                ),
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(bad(
                "headers",
                format!("has {} entries; at most {MAX_HEADERS}", self.headers.len()),
            ));
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad(
                    "headers",
                    format!("name `{}` is not an HTTP header name", clip(name)),
                ));
            }
            if value.len() > MAX_URL || HeaderValue::from_str(value).is_err() {
                return Err(bad(
                    "headers",
                    format!(
                        "value of `{name}` must be at most {MAX_URL} bytes of visible characters"
                    ),
                ));
            }
        }
        if self.body.as_ref().is_some_and(|b| b.len() > MAX_BODY) {
            return Err(bad("body", format!("must be at most {MAX_BODY} bytes")));
        }
        if self.status.len() > MAX_STATUSES {
            return Err(bad(
                "status",
                format!("lists {}; at most {MAX_STATUSES}", self.status.len()),
            ));
        }
        if let Some(s) = self.status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(bad(
                "status",
                format!("holds {s}, which is not an HTTP status (100 to 599)"),
            ));
        }
        Ok(())
    }
}

/// An `http` fault ready to send; nothing has been sent yet.
#[derive(Debug)]
pub(crate) struct Prepared {
    request: Request,
    pub(crate) revert: Request,
    outputs: super::command::ActionLog,
}

impl HttpAction {
    pub(crate) fn describe(&self) -> String {
        format!(
            "send `{}` (expecting {}); on revert send `{}` (each within {})",
            self.request.show(),
            self.request.expected(),
            self.revert.show(),
            Dur(self.request.timeout())
        )
    }

    /// The exact requests, for `plan`. Header values are not shown: they are often credentials.
    pub(crate) fn changes(&self) -> String {
        let one = |r: &Request| {
            let names: Vec<&str> = r.headers.keys().map(String::as_str).collect();
            let headers = if names.is_empty() {
                String::new()
            } else {
                format!("; headers {} (values not shown)", names.join(", "))
            };
            let body = r
                .body
                .as_ref()
                .map_or_else(String::new, |b| format!("; a body of {} bytes", b.len()));
            format!("{}{headers}{body}; expecting {}", r.show(), r.expected())
        };
        format!(
            "request: {}\nrevert:  {}",
            one(&self.request),
            one(&self.revert)
        )
    }

    pub(crate) fn check(&self) -> Checked {
        self.request.check(false)?;
        self.revert.check(true)?;
        timeout("timeout", self.request.timeout())?;
        timeout("timeout", self.revert.timeout())
    }

    pub(crate) fn apply_allowance(&self) -> Duration {
        self.request.timeout()
    }

    pub(crate) fn revert_allowance(&self) -> Duration {
        self.revert.timeout()
    }

    pub(crate) fn prepare(&self) -> Prepared {
        Prepared {
            request: self.request.clone(),
            revert: self.revert.clone(),
            outputs: super::command::ActionLog::default(),
        }
    }
}

impl Prepared {
    pub(crate) fn targets(&self) -> Vec<String> {
        vec![self.request.show()]
    }

    pub(crate) fn actions(&self) -> Vec<ActionOutput> {
        self.outputs.all()
    }

    pub(crate) fn inject(&self) -> Result<String, String> {
        let out = self
            .outputs
            .keep(send("request", &self.request, self.request.timeout()));
        if out.ok {
            Ok(format!("sent `{}`: {}", out.command, out.outcome))
        } else {
            Err(format!(
                "`{}` failed: {} (expected {})",
                out.command,
                out.outcome,
                self.request.expected()
            ))
        }
    }

    /// The expected status is the check that the action took effect.
    #[expect(
        clippy::unnecessary_wraps,
        reason = "every kind's `verify` has this shape"
    )]
    pub(crate) fn verify(&self) -> Result<String, String> {
        Ok(format!("the status was {}", self.request.expected()))
    }
}

/// Sends the journaled revert request, again (up to `command::REVERT_ATTEMPTS` in all) while it fails
/// and its `timeout` is not used up.
pub(super) fn revert(req: &Request) -> (Result<String, String>, Vec<ActionOutput>) {
    let outputs = super::command::revert_attempts(req.timeout(), |left| send("revert", req, left));
    let result = match outputs.last() {
        Some(out) if out.ok => Ok(format!("sent `{}`: {}", out.command, out.outcome)),
        Some(out) => Err(format!(
            "`revert` `{}` failed {} time(s) within {}; last: {} (expected {})",
            out.command,
            outputs.len(),
            Dur(req.timeout()),
            out.outcome,
            req.expected()
        )),
        None => Err(format!(
            "`revert` `{}` could not be sent: its timeout is used up",
            req.show()
        )),
    };
    (result, outputs)
}

/// Sends one request on a runtime of its own and says what came back.
pub(crate) fn send(step: &str, req: &Request, timeout: Duration) -> ActionOutput {
    let started = Instant::now();
    let failed = |outcome: String| ActionOutput {
        step: step.to_owned(),
        command: req.show(),
        ok: false,
        exit_code: None,
        status: None,
        outcome,
        stdout: String::new(),
        stderr: String::new(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let owned = req.clone();
    let step_owned = step.to_owned();
    let sent = std::thread::Builder::new()
        .name("faultline-http-action".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("failed to start a runtime for the request: {e}"))?;
            runtime.block_on(send_async(&step_owned, &owned, timeout, started))
        })
        .map_err(|e| format!("failed to start a thread for the request: {e}"))
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err("the request panicked".to_owned()))
        });
    sent.unwrap_or_else(failed)
}

async fn send_async(
    step: &str,
    req: &Request,
    timeout: Duration,
    started: Instant,
) -> Result<ActionOutput, String> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("failed to set up the HTTP client: {e}"))?;
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|e| format!("bad method: {e}"))?;
    let mut builder = client.request(method, &req.url);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some(body) = &req.body {
        builder = builder.body(body.clone());
    }
    let done = |status: Option<u16>, ok: bool, outcome: String, body: String| ActionOutput {
        step: step.to_owned(),
        command: req.show(),
        ok,
        exit_code: None,
        status,
        outcome,
        stdout: body,
        stderr: String::new(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let mut response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {}", Dur(timeout))
            } else {
                format!("request failed: {}", error_chain(&e))
            };
            return Ok(done(None, false, why, String::new()));
        }
    };
    let status = response.status().as_u16();
    let mut kept = Vec::new();
    let mut cut = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_OUTPUT.saturating_sub(kept.len()).min(chunk.len());
        kept.extend_from_slice(&chunk[..room]);
        if room < chunk.len() {
            // Read no further than what the report keeps.
            cut = true;
            break;
        }
    }
    let mut body = sanitise(&kept, 0);
    if cut {
        body.push_str("… (the rest was not read)");
    }
    Ok(done(
        Some(status),
        req.accepts(status),
        format!("status {status}"),
        body,
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    clip(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, url: &str) -> Request {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: BTreeMap::new(),
            body: None,
            status: Vec::new(),
            timeout_ms: 5000,
        }
    }

    fn action(request: Request, revert: Request) -> HttpAction {
        HttpAction { request, revert }
    }

    #[test]
    fn bad_methods_urls_headers_and_statuses_are_refused_naming_the_key() {
        let ok = || request("PUT", "http://127.0.0.1:1/flags/x");
        let check = |a: HttpAction| a.check().unwrap_err();
        let e = check(action(request("FETCH", "http://h/"), ok()));
        assert_eq!(e.field, "method");
        assert_eq!(
            e.message,
            "`method` must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got `FETCH`)"
        );
        let e = check(action(ok(), request("GET", "ftp://h/x")));
        assert_eq!(e.field, "revert");
        assert_eq!(
            e.message,
            "`revert.url` must be an http:// or https:// URL with a host (got `ftp://h/x`)"
        );
        let e = check(action(request("GET", "not a url"), ok()));
        assert!(
            e.message.starts_with("`url` `not a url` is not a URL"),
            "{e}"
        );
        let mut bad_header = ok();
        bad_header
            .headers
            .insert("X-Flag".to_owned(), "a\nb".to_owned());
        let e = check(action(bad_header, ok()));
        assert_eq!(
            e.message,
            "`headers` value of `X-Flag` must be at most 4096 bytes of visible characters"
        );
        let mut bad_status = ok();
        bad_status.status = vec![200, 999];
        let e = check(action(ok(), bad_status));
        assert_eq!(
            e.message,
            "`revert.status` holds 999, which is not an HTTP status (100 to 599)"
        );
        let mut slow = ok();
        slow.timeout_ms = 600_000;
        let e = check(action(slow, ok()));
        assert_eq!(e.message, "`timeout` must be at most 5m (got 10m)");
        assert_eq!(action(ok(), ok()).check(), Ok(()));
    }

    #[test]
    fn a_url_s_credentials_never_reach_a_report() {
        let r = request("GET", "https://user:secret@flags.example/x?y=1");
        assert_eq!(r.show(), "GET https://flags.example/x?y=1");
    }

    #[test]
    fn a_request_with_no_server_fails_with_the_reason_and_a_revert_is_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = request("POST", &format!("http://127.0.0.1:{port}/x"));
        let out = send("request", &r, Duration::from_secs(5));
        assert!(!out.ok);
        assert!(out.outcome.starts_with("request failed: "), "{out:?}");
        let (result, outputs) = revert(&r);
        assert_eq!(outputs.len(), 3);
        assert!(result.unwrap_err().contains("failed 3 time(s) within 5s"));
    }
}
