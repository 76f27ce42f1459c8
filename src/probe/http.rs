//! Owns the `http` probe: one request (method, headers, body) whose response must have an allowed
//! status and, optionally, a body matching a regex and a JSON value at a pointer. Connections are
//! kept between samples; a sample that opened one records its connect time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{ConnectTimer, Failure, Timing, io_cause};
use crate::model::{HttpSpec, MAX_CHECKED_BODY, RequestBody};

/// How much of an unexpected value a failure quotes.
const QUOTE: usize = 120;

pub(crate) struct HttpCheck {
    client: reqwest::Client,
    timer: ConnectTimer,
    method: reqwest::Method,
    url: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    spec: Checks,
}

/// What the response must show.
struct Checks {
    status: crate::model::StatusSet,
    body_matches: Option<regex::Regex>,
    json: Option<(String, Option<serde_json::Value>)>,
    reads_body: bool,
}

impl HttpCheck {
    pub(crate) fn new(spec: &HttpSpec, timeout: Duration) -> Result<HttpCheck, String> {
        let timer = ConnectTimer::default();
        let redirects = if spec.redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(usize::from(spec.redirects))
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(redirects)
            .connector_layer(TimingLayer(timer.clone()));
        if let Some(ca) = &spec.tls.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("failed to read `ca` {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("invalid `ca` {}: {e}", ca.display()))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &spec.tls.client_cert {
            let mut pem = std::fs::read(cert)
                .map_err(|e| format!("failed to read `client_cert` {}: {e}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| format!("failed to read `client_key` {}: {e}", key.display()))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("invalid `client_cert` or `client_key`: {e}"))?;
            builder = builder.identity(identity);
        }
        if spec.tls.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| format!("failed to build the HTTP client: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            // Both were checked when the experiment was validated.
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
            headers.append(name, value);
        }
        let body = match &spec.body {
            None => None,
            Some(RequestBody::Text(t)) => Some(t.clone().into_bytes()),
            Some(RequestBody::Json(v)) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
        };
        let method =
            reqwest::Method::from_bytes(spec.method.as_bytes()).map_err(|e| e.to_string())?;
        Ok(HttpCheck {
            client,
            timer,
            method,
            url: spec.url.clone(),
            headers,
            body,
            spec: Checks {
                status: spec.status.clone(),
                body_matches: spec.body_matches.clone(),
                json: spec
                    .json
                    .as_ref()
                    .map(|j| (j.pointer.clone(), j.equals.clone())),
                reads_body: spec.body_matches.is_some() || spec.json.is_some(),
            },
        })
    }

    pub(crate) async fn check(&self) -> (Timing, Result<(), Failure>) {
        let generation = self.timer.begin();
        let mut timing = Timing::default();
        let mut request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let sent = Instant::now();
        let response = request.send().await;
        timing.connect = self.timer.connect_time(generation);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return (timing, Err(describe_error(&e))),
        };
        timing.first_byte = Some(sent.elapsed());
        let code = response.status().as_u16();
        // Read the body (a server that sends headers and then stalls is not healthy), keeping at
        // most what the checks read.
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if !self.spec.reads_body {
                        continue;
                    }
                    let room = MAX_CHECKED_BODY - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return (timing, Err(describe_error(&e))),
            }
        }
        (timing, self.spec.judge(code, &body, truncated))
    }
}

impl Checks {
    fn judge(&self, code: u16, body: &[u8], truncated: bool) -> Result<(), Failure> {
        if !self.status.allows(code) {
            return Err(Failure::new(
                format!("status {code}"),
                format!("HTTP {code}, expected {}", self.status),
            ));
        }
        if let Some(re) = &self.body_matches {
            let text = String::from_utf8_lossy(body);
            if !re.is_match(&text) {
                let limit = if truncated { " (the first 1 MiB)" } else { "" };
                return Err(Failure::new(
                    format!("body did not match /{re}/"),
                    format!("the response body{limit} did not match `body_matches` /{re}/"),
                ));
            }
        }
        if let Some((pointer, equals)) = &self.json {
            if truncated {
                return Err(Failure::plain(format!(
                    "the response body is larger than 1 MiB: the `json` check on {pointer} reads at most 1 MiB"
                )));
            }
            let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                Failure::new(
                    "body is not JSON",
                    format!("the response body is not JSON (the `json` check on {pointer} needs it): {e}"),
                )
            })?;
            let Some(seen) = doc.pointer(pointer) else {
                return Err(Failure::new(
                    format!("json {pointer} missing"),
                    format!("JSON pointer {pointer} found nothing in the response body"),
                ));
            };
            if let Some(expected) = equals {
                if seen != expected {
                    let seen = quote(seen);
                    return Err(Failure::new(
                        format!("json {pointer} was {seen}"),
                        format!(
                            "JSON pointer {pointer} is {seen}, expected {}",
                            quote(expected)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A JSON value as text, cut to `QUOTE` characters.
fn quote(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= QUOTE {
        return text;
    }
    let cut: String = text.chars().take(QUOTE).collect();
    format!("{cut}… (cut)")
}

/// The `plan` line: method, URL, what is expected; header names only, never their values.
pub(super) fn describe(h: &HttpSpec) -> String {
    let mut line = format!("{} {}", h.method, h.url);
    if !h.headers.is_empty() {
        let names: Vec<&str> = h.headers.iter().map(|(n, _)| n.as_str()).collect();
        line.push_str(&format!(" with headers {}", names.join(", ")));
    }
    match &h.body {
        Some(RequestBody::Text(t)) => line.push_str(&format!(", a {}-byte body", t.len())),
        Some(RequestBody::Json(_)) => line.push_str(", a JSON body"),
        None => {}
    }
    line.push_str(&format!(", expect status {}", h.status));
    if let Some(re) = &h.body_matches {
        line.push_str(&format!(", body matching /{re}/"));
    }
    if let Some(j) = &h.json {
        match &j.equals {
            Some(v) => line.push_str(&format!(", JSON {} = {}", j.pointer, quote(v))),
            None => line.push_str(&format!(", JSON {} present", j.pointer)),
        }
    }
    if h.redirects > 0 {
        line.push_str(&format!(", following up to {} redirects", h.redirects));
    }
    if let Some(ca) = &h.tls.ca {
        line.push_str(&format!(", trusting only the CA {}", ca.display()));
    }
    if let Some((cert, _)) = &h.tls.client_cert {
        line.push_str(&format!(", client certificate {}", cert.display()));
    }
    if h.tls.insecure {
        line.push_str(" (INSECURE: the server's certificate is not checked)");
    }
    line
}

/// The innermost cause of a request error, which is the part a person can act on, and its short
/// form for counting.
fn describe_error(e: &reqwest::Error) -> Failure {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        Failure::plain("timed out")
    } else {
        let message = source.to_string();
        Failure::new(io_cause(e).unwrap_or_else(|| message.clone()), message)
    }
}

/// The layer that puts a [`ConnectTimer`] around reqwest's connector (DNS, TCP and TLS).
#[derive(Clone)]
struct TimingLayer(ConnectTimer);

impl<S> tower::Layer<S> for TimingLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            timer: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Timed<S> {
    inner: S,
    timer: ConnectTimer,
}

impl<S, R> tower::Service<R> for Timed<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        Box::pin(self.timer.time(self.inner.call(request)))
    }
}
