//! Owns the `http` probe: a GET whose status must be in the allowed list (any 2xx by default).

use std::time::Duration;

use super::{Failure, io_cause};

pub(crate) struct HttpCheck {
    client: reqwest::Client,
    url: String,
    status: Vec<u16>,
}

impl HttpCheck {
    pub(crate) fn new(url: &str, status: &[u16], timeout: Duration) -> Result<HttpCheck, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("failed to build HTTP client: {e}"))?;
        Ok(HttpCheck {
            client,
            url: url.to_owned(),
            status: status.to_vec(),
        })
    }

    pub(crate) async fn check(&self) -> Result<(), Failure> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let code = response.status().as_u16();
        // Read the body: a server that sends headers and then stalls is not healthy.
        response.bytes().await.map_err(|e| describe(&e))?;
        let allowed = if self.status.is_empty() {
            (200..300).contains(&code)
        } else {
            self.status.contains(&code)
        };
        if allowed {
            Ok(())
        } else {
            Err(Failure::new(
                format!("status {code}"),
                format!("HTTP {code}"),
            ))
        }
    }
}

/// The innermost cause of a request error, which is the part a person can act on, and its short
/// form for counting.
fn describe(e: &reqwest::Error) -> Failure {
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
