//! Owns the `latency` fault with `backend = "proxy"`: toxics (delay, jitter, rate, corruption,
//! black hole, reset) switched on in a userspace proxy for the fault's duration and off on revert.
//!
//! The proxy itself is a run resource ([`super::RunResource::Proxy`]): it listens from before the
//! steady state is measured to the end of the run, so the system under test can be pointed at it
//! throughout. This fault only turns its toxics on and off.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Context;
use crate::proxy::{self, ResetAfter, ToxicSpec, Toxics};
use crate::units::{Percent, format_bytes, format_ms};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatencyProxy {
    /// Where the proxy listens; clients connect here.
    pub(crate) listen: SocketAddr,
    /// Where it forwards to, `host:port`.
    pub(crate) upstream: String,
    pub(crate) toxics: ToxicSpec,
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) proxy: String,
    pub(crate) listen: SocketAddr,
    toxics: ToxicSpec,
    pub(crate) owner: String,
    seed: u64,
}

impl LatencyProxy {
    /// The registry name of the run-scoped proxy on `listen`: one proxy per listen address.
    pub(crate) fn proxy_name(&self) -> String {
        scoped_name(self.listen)
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} in the proxy {} -> {}",
            describe_toxics(&self.toxics),
            self.listen,
            self.upstream
        )
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        // The proxy must already run: the coordinator opens it before the steady state.
        if !proxy::registry().is_running(&self.proxy_name()) {
            return Err(format!(
                "no proxy listens on {} on this agent (it is opened when the run starts)",
                self.listen
            ));
        }
        Ok(Prepared {
            proxy: self.proxy_name(),
            listen: self.listen,
            toxics: self.toxics.clone(),
            owner: ctx.fault_id.to_owned(),
            seed: ctx.seed,
        })
    }
}

/// The registry name of the experiment-scoped proxy listening on `listen`.
pub(crate) fn scoped_name(listen: SocketAddr) -> String {
    format!("listen-{listen}")
}

impl Prepared {
    pub(crate) fn inject(&self) -> Result<String, String> {
        let toxics = Toxics {
            spec: self.toxics.clone(),
            owner: self.owner.clone(),
            since: Instant::now(),
            seed: self.seed,
        };
        proxy::registry().set_toxics(&self.proxy, toxics)?;
        Ok(format!(
            "{} on {}",
            describe_toxics(&self.toxics),
            self.listen
        ))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        proxy::registry().toxics_status(&self.proxy, &self.owner)
    }
}

/// Turns the fault's toxics off; connections open at that moment continue without them.
pub(super) fn clear(proxy: &str, owner: &str) -> String {
    proxy::registry().clear_toxics(proxy, owner)
}

/// One phrase for a set of toxics: `delay 10 ms ± 2 ms downstream`.
pub(crate) fn describe_toxics(t: &ToxicSpec) -> String {
    let mut parts = Vec::new();
    if !t.delay.is_zero() || !t.jitter.is_zero() {
        let mut s = format!("delay {}", format_ms(t.delay));
        if !t.jitter.is_zero() {
            let _ = write!(s, " ± {} (uniform, never below 0)", format_ms(t.jitter));
        }
        parts.push(s);
    }
    if let Some(rate) = t.rate {
        parts.push(format!("limit each connection to {}/s", format_bytes(rate)));
    }
    if t.corrupt > 0.0 {
        parts.push(format!("flip a bit in {} of bytes", Percent(t.corrupt)));
    }
    match t.timeout {
        Some(d) if d.is_zero() => parts.push("black-hole all data".to_owned()),
        Some(d) => parts.push(format!(
            "black-hole all data and close connections after {}",
            format_ms(d)
        )),
        None => {}
    }
    if let Some(d) = t.slow_close {
        parts.push(format!("hold each end of stream back {}", format_ms(d)));
    }
    match t.reset_after {
        Some(ResetAfter::Bytes(b)) => {
            parts.push(format!("reset connections after {}", format_bytes(b)));
        }
        Some(ResetAfter::Time(d)) => {
            parts.push(format!("reset connections after {}", format_ms(d)));
        }
        None => {}
    }
    format!("{} {}", parts.join(", "), t.direction.as_str())
}
