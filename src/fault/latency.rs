//! Owns the `latency` fault with `backend = "proxy"`: toxics (delay, jitter, rate, corruption,
//! black hole, reset) switched on in a userspace proxy for the fault's duration and off on revert.
//!
//! The proxy is either a run resource ([`super::RunResource::Proxy`], from `listen`/`upstream`): it
//! listens from before the steady state is measured to the end of the run, so the system under
//! test can be pointed at it throughout; or a persistent proxy the agent hosts (`proxy = "db"`,
//! declared in `agent.toml`). This fault only turns its toxics on and off.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Context;
use super::check::FieldError;
use super::net::BitRate;
use crate::proxy::{self, ResetAfter, ToxicSpec, Toxics};
use crate::units::{ByteSize, Dur, Percent, format_bytes, format_ms};

/// The keys of a `latency` table with the proxy backend (the default), as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    listen: Option<String>,
    upstream: Option<String>,
    /// A persistent proxy of the agent, instead of `listen` and `upstream`.
    proxy: Option<String>,
    delay: Option<Dur>,
    jitter: Option<Dur>,
    direction: Option<String>,
    rate: Option<BitRate>,
    corrupt: Option<Percent>,
    timeout: Option<Dur>,
    slow_close: Option<Dur>,
    /// A size (`64KiB`) or a duration (`2s`).
    reset_after: Option<String>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<LatencyProxy, FieldError> {
        let via = self.via()?;
        let direction = match &self.direction {
            Some(d) => proxy::Direction::parse(d).map_err(|e| FieldError::raw("direction", e))?,
            None => proxy::Direction::default(),
        };
        let reset_after = match &self.reset_after {
            None => None,
            Some(text) => Some(match (text.parse::<ByteSize>(), text.parse::<Dur>()) {
                (Ok(b), _) if b.0 > 0 => ResetAfter::Bytes(b.0),
                (_, Ok(d)) => ResetAfter::Time(d.0),
                _ => {
                    return Err(FieldError::raw(
                        "reset_after",
                        format!(
                            "`reset_after` takes a size (`64KiB`) or a duration (`2s`), got `{text}`"
                        ),
                    ));
                }
            }),
        };
        let toxics = ToxicSpec {
            direction,
            delay: self.delay.map_or(Duration::ZERO, |d| d.0),
            jitter: self.jitter.map_or(Duration::ZERO, |d| d.0),
            rate: self.rate.map(|r| (r.0 / 8).max(1)),
            corrupt: self.corrupt.map_or(0.0, |p| p.0),
            timeout: self.timeout.map(|d| d.0),
            slow_close: self.slow_close.map(|d| d.0),
            reset_after,
        };
        let does_something = !toxics.delay.is_zero()
            || !toxics.jitter.is_zero()
            || toxics.rate.is_some()
            || toxics.corrupt > 0.0
            || toxics.timeout.is_some()
            || toxics.slow_close.is_some()
            || toxics.reset_after.is_some();
        if !does_something {
            return Err(FieldError::raw("delay",
                "give `delay` (e.g. \"100ms\") or another toxic: `jitter`, `rate`, `corrupt`, `timeout`, `slow_close` or `reset_after`".to_owned()
            ));
        }
        Ok(LatencyProxy { via, toxics })
    }

    /// `proxy = "NAME"` (a persistent proxy of the agent), or `listen` and `upstream` (a proxy
    /// opened for this run).
    fn via(&self) -> Result<Via, FieldError> {
        if let Some(proxy) = &self.proxy {
            if self.listen.is_some() || self.upstream.is_some() {
                return Err(FieldError::raw("proxy",
                    "give `proxy` (a persistent proxy of the agent) or `listen` and `upstream` (a proxy for this run), not both".to_owned()
                ));
            }
            return Ok(Via::Named(proxy.clone()));
        }
        let (Some(listen), Some(upstream)) = (&self.listen, &self.upstream) else {
            return Err(FieldError::raw("listen",
                "a proxy latency fault needs `listen` (where clients connect, e.g. \"127.0.0.1:15432\") and `upstream` (where the proxy forwards, e.g. \"127.0.0.1:5432\"), or `proxy` naming a persistent proxy of the agent".to_owned()
            ));
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            FieldError::raw("listen", format!("`listen` must be an IP address and port, e.g. \"127.0.0.1:15432\" (got `{listen}`)"))
        })?;
        Ok(Via::Run {
            listen,
            upstream: upstream.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatencyProxy {
    pub(crate) via: Via,
    pub(crate) toxics: ToxicSpec,
}

/// Which proxy the toxics go into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Via {
    /// A proxy of this run: clients connect to `listen`, it forwards to `upstream` (`host:port`).
    Run {
        listen: SocketAddr,
        upstream: String,
    },
    /// A persistent proxy of the agent, by name (`[[proxy]]` in `agent.toml`).
    Named(String),
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
    /// The proxy's name in the registry: one run proxy per listen address, or the persistent name.
    pub(crate) fn proxy_name(&self) -> String {
        match &self.via {
            Via::Run { listen, .. } => scoped_name(*listen),
            Via::Named(name) => name.clone(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        let proxy = match &self.via {
            Via::Run { listen, upstream } => format!("the proxy {listen} -> {upstream}"),
            Via::Named(name) => format!("the agent's persistent proxy `{name}`"),
        };
        format!("{} in {proxy}", describe_toxics(&self.toxics))
    }

    pub(crate) fn preview(&self) -> String {
        match &self.via {
            Via::Run { listen, .. } => {
                format!("clients connect to {listen}; the proxy listens for the whole run")
            }
            Via::Named(name) => format!("acts on the persistent proxy `{name}` of the agent"),
        }
    }

    /// The proxy to open for the run, unless the agent hosts it anyway.
    pub(crate) fn run_resource(&self) -> Option<super::RunResource> {
        match &self.via {
            Via::Run { listen, upstream } => Some(super::RunResource::Proxy {
                name: self.proxy_name(),
                listen: *listen,
                upstream: upstream.clone(),
            }),
            Via::Named(_) => None,
        }
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        use super::check::{FieldError, hold, share_or_zero};
        match &self.via {
            Via::Run { listen, upstream } => proxy::check_addresses(*listen, upstream)?,
            Via::Named(name) => {
                proxy::check_persistent_name(name).map_err(|e| FieldError::raw("proxy", e))?;
            }
        }
        let t = &self.toxics;
        hold("delay", t.delay)?;
        hold("jitter", t.jitter)?;
        share_or_zero("corrupt", t.corrupt)?;
        if t.rate == Some(0) {
            return Err(FieldError::new("rate", "must be above zero"));
        }
        let reset_time = match t.reset_after {
            Some(ResetAfter::Time(d)) => Some(d),
            _ => None,
        };
        for (field, d) in [
            ("timeout", t.timeout),
            ("slow_close", t.slow_close),
            ("reset_after", reset_time),
        ] {
            if let Some(d) = d {
                hold(field, d)?;
            }
        }
        Ok(())
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        let name = self.proxy_name();
        // The proxy must already run: the coordinator opens run proxies before the steady state,
        // and the agent opens its persistent ones when it starts.
        let Some(listen) = proxy::registry().listen_of(&name) else {
            return Err(match &self.via {
                Via::Run { listen, .. } => {
                    format!(
                        "no proxy listens on {listen} on this agent (it is opened when the run starts)"
                    )
                }
                Via::Named(name) => format!(
                    "this agent has no persistent proxy `{name}`; declare it in its agent.toml as \
                     [[proxy]] name = \"{name}\", listen = \"ADDR:PORT\", upstream = \"HOST:PORT\""
                ),
            });
        };
        Ok(Prepared {
            proxy: name,
            listen,
            toxics: self.toxics.clone(),
            owner: ctx.fault_id.to_owned(),
            seed: ctx.seed,
        })
    }
}

/// The registry name of the experiment-scoped proxy listening on `listen`.
pub(crate) fn scoped_name(listen: SocketAddr) -> String {
    format!("{}{listen}", proxy::RUN_PREFIX)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LatencyProxy, Via};
    use crate::fault::{Context, FaultSpec};
    use crate::proxy::{ToxicSpec, persistent};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fault_can_act_on_a_persistent_proxy_by_name() {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let text = format!(
            "[[proxy]]\nname = \"db-by-name\"\nlisten = \"{listen}\"\nupstream = \"127.0.0.1:9\"\n"
        );
        persistent::open_all(&persistent::parse(&text).unwrap()).unwrap();
        let spec = FaultSpec::LatencyProxy(LatencyProxy {
            via: Via::Named("db-by-name".to_owned()),
            toxics: ToxicSpec {
                delay: Duration::from_millis(5),
                ..ToxicSpec::default()
            },
        });
        assert_eq!(
            spec.run_resource(),
            None,
            "the agent hosts it: nothing to open for the run"
        );
        assert!(
            spec.describe().contains("persistent proxy `db-by-name`"),
            "{}",
            spec.describe()
        );
        let ctx = Context {
            fault_id: "f-by-name",
            seed: 3,
            control_port: None,
        };
        let prepared = tokio::task::block_in_place(|| spec.prepare(&ctx)).unwrap();
        assert_eq!(prepared.targets(), vec![format!("proxy on {listen}")]);
        prepared.inject().unwrap();
        assert!(prepared.verify().unwrap().starts_with("in force"));
        let undone = prepared.undo().revert().unwrap();
        assert!(undone.contains("toxics off"), "{undone}");
        assert!(
            prepared.verify().is_err(),
            "the toxics stayed on after the revert"
        );

        let missing = FaultSpec::LatencyProxy(LatencyProxy {
            via: Via::Named("nope".to_owned()),
            toxics: ToxicSpec::default(),
        });
        let err = missing.prepare(&ctx).unwrap_err();
        assert!(
            err.contains("this agent has no persistent proxy `nope`"),
            "{err}"
        );
    }

    #[test]
    fn a_fault_refuses_a_reset_after_time_beyond_the_longest_hold() {
        let spec = |reset: Duration| {
            FaultSpec::LatencyProxy(LatencyProxy {
                via: Via::Run {
                    listen: "127.0.0.1:40012".parse().unwrap(),
                    upstream: "127.0.0.1:40013".to_owned(),
                },
                toxics: ToxicSpec {
                    reset_after: Some(crate::proxy::ResetAfter::Time(reset)),
                    ..ToxicSpec::default()
                },
            })
        };
        let err = spec(Duration::new(u64::MAX, 0)).check().unwrap_err();
        assert_eq!(err.field, "reset_after", "{err}");
        assert!(err.message.contains("must be at most"), "{err}");
        assert_eq!(spec(Duration::from_secs(2)).check(), Ok(()));
    }

    #[test]
    fn a_fault_refuses_a_proxy_that_forwards_to_itself() {
        let spec = FaultSpec::LatencyProxy(LatencyProxy {
            via: Via::Run {
                listen: "0.0.0.0:40012".parse().unwrap(),
                upstream: "localhost:40012".to_owned(),
            },
            toxics: ToxicSpec {
                delay: Duration::from_millis(5),
                ..ToxicSpec::default()
            },
        });
        let err = spec.check().unwrap_err();
        assert_eq!(err.field, "upstream", "{err}");
        assert!(err.message.contains("forward to itself"), "{err}");
    }
}
