//! Owns probing: one task per probe runs its check every `every` for the whole run and sends each
//! [`Sample`] to the run loop. The checks themselves are one file each.

mod command;
mod http;
pub(crate) mod prometheus;
mod tcp;

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::model::{Check, ProbeSpec};

/// One observation of one probe.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) probe: usize,
    /// When the check started.
    pub(crate) at: Instant,
    pub(crate) ok: bool,
    pub(crate) latency: Duration,
    pub(crate) error: Option<String>,
    /// The short, stable cause of a failed sample (`status 503`, `connection refused`), the same
    /// for every sample that failed the same way, so the verdict can count them.
    pub(crate) cause: Option<String>,
    /// The number the check read, for probes that read one (a Prometheus query, a command's
    /// output with `value = true`); kept for failed samples too, since the value is often why.
    pub(crate) value: Option<f64>,
}

/// Why one check failed: a short cause shared by every sample that failed the same way, so a
/// reason can say "status 503 in 17/20", and the full message kept in the report's samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub(crate) cause: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(cause: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            cause: cause.into(),
            message: message.into(),
        }
    }

    /// A failure whose message is already short and stable enough to count.
    pub(crate) fn plain(message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure {
            cause: message.clone(),
            message,
        }
    }
}

/// The operating system's name for the first IO error in an error's chain ("connection refused",
/// "timed out"): stable across samples, unlike the message around it.
pub(crate) fn io_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind().to_string());
        }
        source = err.source();
    }
    None
}

/// A check ready to run repeatedly, built once per probe.
enum Prober {
    Http(http::HttpCheck),
    Tcp(String),
    Command(command::CommandCheck),
    Prometheus(prometheus::PrometheusCheck),
}

impl Prober {
    fn new(check: &Check, timeout: Duration) -> Result<Prober, String> {
        Ok(match check {
            Check::Http { url, status } => {
                Prober::Http(http::HttpCheck::new(url, status, timeout)?)
            }
            Check::Tcp { addr } => Prober::Tcp(addr.clone()),
            Check::Command {
                argv,
                expect_exit,
                stdout,
                value,
            } => Prober::Command(command::CommandCheck {
                argv: argv.clone(),
                expect_exit: *expect_exit,
                stdout: stdout.clone(),
                value: *value,
            }),
            Check::Prometheus {
                url,
                query,
                threshold,
            } => Prober::Prometheus(prometheus::PrometheusCheck::new(
                url, query, *threshold, timeout,
            )?),
        })
    }

    /// The value read, if the check reads one, and whether the check passed.
    async fn check(&self) -> (Option<f64>, Result<(), Failure>) {
        match self {
            Prober::Http(h) => (None, h.check().await),
            Prober::Tcp(addr) => (None, tcp::check(addr).await),
            Prober::Command(c) => c.check().await,
            Prober::Prometheus(p) => p.check().await,
        }
    }
}

/// Starts every probe. They stop when `stop` turns true or the receiver is dropped.
pub(crate) fn spawn_all(
    probes: &[ProbeSpec],
    tx: &mpsc::UnboundedSender<Sample>,
    stop: &watch::Receiver<bool>,
) -> Result<JoinSet<()>, String> {
    let mut set = JoinSet::new();
    for (index, spec) in probes.iter().enumerate() {
        let prober = Prober::new(&spec.check, spec.timeout)
            .map_err(|e| format!("probe `{}`: {e}", spec.name))?;
        let (every, timeout) = (spec.every, spec.timeout);
        let tx = tx.clone();
        let mut stop = stop.clone();
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                let at = Instant::now();
                let (value, outcome) = match tokio::time::timeout(timeout, prober.check()).await {
                    Ok(checked) => checked,
                    Err(_) => (
                        None,
                        Err(Failure::new(
                            "timed out",
                            format!("timed out after {}", humantime::format_duration(timeout)),
                        )),
                    ),
                };
                let latency = at.elapsed();
                let (error, cause) = match outcome {
                    Ok(()) => (None, None),
                    Err(f) => (Some(f.message), Some(f.cause)),
                };
                let sample = Sample {
                    probe: index,
                    at,
                    ok: error.is_none(),
                    latency,
                    error,
                    cause,
                    value,
                };
                if tx.send(sample).is_err() {
                    return;
                }
            }
        });
    }
    Ok(set)
}
